"""What `flyt demo` is about to do, stage by stage, with a rough time for each: the lines it opens with.

Each estimate is (units of work) x (a per-unit cost measured on the 2-core development VM by
``benchmarks/demo_costs.py``; see docs/benchmarks.md, "Demo progress"). That VM's speed moves by 2-3x
with its load, so the plan says "~" and the progress bars' own ETAs (measured as the run goes) are the
better guide once a stage has started. A stage whose output is already on disk says "cached": the
benchmark (assets + embeddings) when benchmark.json is up to date, the teacher space, each score
directory and each scorer by the same names the run looks them up by.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pyarrow.parquet as pq

from flyt.bench import assets
from flyt.bench.build import built, default_out
from flyt.bench.pool import PoolConfig
from flyt.bench.protocol import BASELINE_SCORERS, DEDUP_MIX_INPUTS, MIX_INPUTS, benchmark_key, pipeline_key
from flyt.bench.runs import scorer_run_dir
from flyt.bench.strategies import demo_strategies
from flyt.io.cache import cache_dir
from flyt.progress import duration

# ---- per-unit costs: benchmarks/demo_costs.py on the 2-core VM, 2026-12-02, three runs while other
# jobs shared the machine (load average 3.5-7); each figure is the lowest of the three. The same small
# runs came out 2-10x slower at the busiest (docs/benchmarks.md, "Demo progress"). -------------------
# Downloads (network-bound): seconds of each step in that day's first `flyt embed bench` (its markers).
FETCH_S = {"deb:fonts-noto-color-emoji": 1.1, "deb:unicode-data": 1.0, "deb:tuxpaint-stamps-default": 7.4,
           "deb:openclipart-svg": 1.5, "deb:papirus-icon-theme": 1.9, "deb:dataset-fashion-mnist": 0.7, "npm": 8.8,
           "deb:pychess": 1.0, "npm-icons": 1.1}
FETCH_DEFAULT_S = 5.0  # a package not measured
# Rendering, seconds per image (2 worker processes), and the images each source lists.
RENDER_S_PER_IMAGE = {"noto": 0.0014, "twemoji": 0.0007, "tuxpaint": 0.0058, "openclipart": 0.0049,
                      "papirus": 0.0030, "openmoji": 0.0026, "fluent": 0.0029, "fashion_mnist": 0.0004,
                      "digits": 0.0005, "flags": 0.0030, "chess": 0.0023, "remix_icons": 0.0016, "animal_emoji": 0.0032}
RENDER_IMAGES = {"noto": 3655, "twemoji": 1911, "tuxpaint": 950, "openclipart": 7594, "papirus": 5819,
                 "openmoji": 1914, "fluent": 1242, "fashion_mnist": 3000, "digits": 1797, "flags": 513, "chess": 408,
                 "remix_icons": 1669, "animal_emoji": 251}
RENDER_DEFAULT = (0.005, 2000)  # a source not measured: seconds per image, images
# Embedding with the offline encoder (PNG decode included), and loading its two models.
EMBED_S_PER_IMAGE, EMBED_S_PER_TEXT, EMBED_LOAD_S = 0.0123, 0.0032, 3.8
# Students in lockstep: seconds per step of K students (batch 512, dim 128) = a + b K; a zero-shot evaluation.
STUDENT_STEP_S = (0.001, 0.0054)
STUDENT_BATCH = 512
STUDENT_EVAL_S = 0.007
# Scoring: the baseline scorers (fit + score) and a trained scorer, seconds per pool row.
BASELINES_S_PER_ROW = 0.0004
DEDUP_S_PER_ROW = 0.00084  # dedup + contamination: 17.5 s for 20,884 rows (docs/demo.md)
SCORER_S_PER_ROW = 0.000015
# FLYT / M-FLYT, seconds per step at upstream 1024 / downstream 256 (4 tasks), and a run's start.
FLYT_STEP_S, MFLYT_STEP_S, TRAIN_START_S = 0.12, 0.11, 0.7
REPORT_S = 5.0  # plots, thumbnails, results (docs/benchmarks.md "Demo": 4 s)


@dataclass
class Stage:
    name: str
    what: str
    seconds: float
    cached: bool = False


def student_seconds(students: int, lockstep: int, samples: int, batch: int) -> float:
    """``students`` students trained ``lockstep`` at a time, ``samples`` each, then each evaluated."""
    if students <= 0:
        return 0.0
    a, b = STUDENT_STEP_S
    steps = math.ceil(samples / batch) * batch / STUDENT_BATCH  # in units of the measured batch
    calls = math.ceil(students / lockstep)
    return calls * steps * (a + b * lockstep) + students * STUDENT_EVAL_S


def _rendered_rows(cache: Path, name: str) -> int:
    path = assets.rendered_path(cache, name)
    return pq.read_metadata(path).num_rows if path.is_file() else RENDER_IMAGES.get(name, RENDER_DEFAULT[1])


def _cached_vectors(directory: Path) -> int:
    """Rows in an embedding cache directory (flyt.encoders.cache's parquet parts), from their footers."""
    return sum(pq.read_metadata(p).num_rows for p in directory.glob("part-*.parquet")) if directory.is_dir() else 0


def _complete(score_dir: Path, pool: Path) -> bool:
    """Every shard of ``pool`` has its score shard (what score_pool would not redo, fingerprints aside)."""
    shards = [p.name for p in pool.glob("part-*.parquet")]
    return bool(shards) and all((score_dir / s).is_file() for s in shards)


def demo_plan(cfg, scorer_config: Callable, task_dirs: Callable) -> list[Stage]:
    """The stages of ``run_demo(cfg)``; ``scorer_config`` and ``task_dirs`` are flyt.pipeline.demo's
    (passed in: this module sits below it), so the scorer runs are looked up by the run's own names."""
    stages = []
    bench = Path(cfg.bench_dir) if cfg.bench_dir is not None else None
    summary = None
    rows = round(sum(RENDER_IMAGES.get(n, 0) for n in assets.POOL_SOURCES) * (1 + PoolConfig().duplicate_rate))
    if bench is None:
        from flyt.encoders import get_encoder

        cache = cache_dir(cfg.cache)
        encoder = get_encoder("offline")  # cheap: its models load on first use
        bench = default_out(cache, encoder)
        summary = built(bench, encoder.name)
        if summary is None:
            pending = assets.pending_steps(cache)
            fetch = [s for s in pending if not s.startswith("render:")]
            render = [name for name in assets.SOURCES if assets.render_step(name) in pending]
            images = {n: RENDER_IMAGES.get(n, RENDER_DEFAULT[1]) if n in render else _rendered_rows(cache, n)
                      for n in assets.SOURCES}
            seconds = sum(FETCH_S.get(s, FETCH_DEFAULT_S) for s in fetch)
            seconds += sum(images[n] * RENDER_S_PER_IMAGE.get(n, RENDER_DEFAULT[0]) for n in render)
            stages.append(Stage("assets", f"fetch {len(fetch)} package(s), render {sum(images[n] for n in render):,} "
                                "images", seconds, not pending))
            # Every rendered image is embedded (the pool's and the tasks'), and at most one caption per
            # pool image, less what the embedding cache holds (by count: its keys are content hashes);
            # the pool adds PoolConfig's exact duplicates.
            pool_images = sum(images[n] for n in assets.POOL_SOURCES)
            vectors = cache / "embeddings" / encoder.name
            todo_images = max(0, sum(images.values()) - _cached_vectors(vectors / "image"))
            todo_texts = max(0, pool_images - _cached_vectors(vectors / "text"))
            seconds = EMBED_LOAD_S + todo_images * EMBED_S_PER_IMAGE + todo_texts * EMBED_S_PER_TEXT
            stages.append(Stage("embedding", f"~{todo_images:,} images + ~{todo_texts:,} texts not in the embedding "
                                "cache (offline towers)", seconds))
            rows = round(pool_images * (1 + PoolConfig().duplicate_rate))
    if summary is not None or cfg.bench_dir is not None:
        stages.append(Stage("assets + embedding", f"benchmark in {bench}", 0.0, True))
    ready = (bench / "benchmark.json").is_file() and (summary is not None or cfg.bench_dir is not None)
    if ready and summary is None:
        summary = json.loads((bench / "benchmark.json").read_text())
    if summary is not None:
        rows = summary["pool"]["rows"]

    # Everything after the benchmark is cached under a key of it: nothing is cached before it exists.
    key = benchmark_key(bench, cfg.teacher, cfg.validation_seed, cfg.validation_fraction) if ready else None
    teacher_dir = cfg.out / f"teacher-{pipeline_key(key, cfg)}"
    teacher = ready and (teacher_dir / "done.json").is_file()
    t = cfg.teacher
    stages.append(Stage("teacher", f"{t.samples_seen:,} samples", student_seconds(1, 1, t.samples_seen, t.batch_size),
                        teacher))
    pool, base = teacher_dir / "pool", cfg.out / "scores" / f"baselines-{pipeline_key(key, cfg)}"
    stages.append(Stage("baseline scores", f"{rows:,} pool rows x {len(BASELINE_SCORERS)} scorers",
                        rows * BASELINES_S_PER_ROW, teacher and _complete(base, pool)))
    # dedup + contamination read the benchmark's own pool (not the teacher's): cached once it is scored.
    dedup = cfg.out / "scores" / f"dedup-{key}"
    stages.append(Stage("dedup + contamination", f"{rows:,} pool rows: near-duplicate groups, nearest task test image",
                        rows * DEDUP_S_PER_ROW, ready and _complete(dedup, bench / "pool")))
    flyt_run = mflyt_run = None
    if teacher:
        tasks = task_dirs(teacher_dir)
        flyt_run = scorer_run_dir(scorer_config(cfg, "flyt", pool, tasks), cfg.out / "runs")
        inputs = [base, cfg.out / "scores" / flyt_run.name, dedup]
        mflyt_run = scorer_run_dir(scorer_config(cfg, "mflyt", pool, tasks, MIX_INPUTS + DEDUP_MIX_INPUTS, inputs),
                                   cfg.out / "runs")
    for label, steps, per_step, run in (("FLYT", cfg.flyt_steps, FLYT_STEP_S, flyt_run),
                                        ("M-FLYT", cfg.mflyt_steps, MFLYT_STEP_S, mflyt_run)):
        done = run is not None and (run / "scorer.pt").is_file() and _complete(cfg.out / "scores" / run.name, pool)
        stages.append(Stage(label, f"{steps:,} steps, then scoring the pool",
                            TRAIN_START_S + steps * per_step + rows * SCORER_S_PER_ROW, done))

    strategies = demo_strategies(cfg.fractions, cfg.penalties, cfg.random_fraction, floor_quantiles=cfg.floor_quantiles)
    # One validation student per distinct draw and seed (a floor strategy's q = 0 options are plain SCS's).
    keys = {st.name: {st.draw_key(v) for v in st.options} for st in strategies}
    grid = len({k for st in strategies if st.chooses for k in keys[st.name]}) * len(cfg.validation_seeds
                                                                                   or (cfg.validation_seed,))
    s = cfg.student
    finals = len(strategies) * len(cfg.seeds)
    # two strategies with a draw in common may both choose it: their final students are then one set
    shared = sum(bool(keys[a.name] & keys[b.name]) for i, a in enumerate(strategies) for b in strategies[i + 1:])
    # Students are cached by their subsets, known only once drawn: "cached" when everything they are
    # drawn from is, and the student results on disk are at least as many as this run needs.
    on_disk = len(list((cfg.out / "students").glob("*.json"))) if (cfg.out / "students").is_dir() else 0
    students_cached = all(st.cached for st in stages) and on_disk >= grid + finals - shared * len(cfg.seeds)
    stages.append(Stage("students: validation", f"{grid} students x {s.samples_seen:,} samples (in lockstep)",
                        student_seconds(grid, max(grid, 1), s.samples_seen, s.batch_size), students_cached))
    stages.append(Stage("students: test", f"{finals} students x {s.samples_seen:,} samples ({len(cfg.seeds)} at a time)",
                        student_seconds(finals, len(cfg.seeds), s.samples_seen, s.batch_size), students_cached))
    stages.append(Stage("report", "results.json, results.md, report.html", REPORT_S))
    return stages


def plan_lines(stages: list[Stage]) -> list[str]:
    """The plan as the demo prints it: one line per stage, then the total of what is not cached."""
    todo = sum(st.seconds for st in stages if not st.cached)
    lines = [f"plan: {len(stages)} stages, ~{duration(todo)} of work not cached (rough: costs measured on a shared "
             "2-core machine at its least busy; longer on a busy one)"]
    width = max(len(st.name) for st in stages)
    for i, st in enumerate(stages, 1):
        when = "cached" if st.cached else f"~{duration(st.seconds)}"
        lines.append(f"  {i}. {st.name:<{width}}  {when:>8}  {st.what}")
    return lines

"""`flyt demo`: the main job on the built-in offline benchmark, end to end (orchestration only: the
protocol, strategies, cached runs and renderers are flyt.bench's).

    assets -> embedded pool + tasks (cached) -> teacher CLIP -> baseline scores -> FLYT -> M-FLYT
    -> subsets (top fraction, Soft Cap Sampling) -> students (fixed samples seen, several seeds)
    -> zero-shot accuracy on test splits -> results.json, results.md, report.html

Protocol (DataComp's, in miniature; see docs/demo.md):
- Each task's *train* split is cut into fit (75%) and validation (25%). FLYT/M-FLYT and the scorers that
  read downstream data (NormSim, classifier, image-based) see only fit; fractions and SCS penalties are
  chosen by a student's average accuracy on validation; test splits are read only for the final table.
- The held-out tasks (flyt.bench.heldout: no train split) are read only by the final evaluation, after
  every option was chosen; the table reports FLYT's tasks, the held-out tasks and all tasks (DataComp's
  headline) as three averages.
- The teacher (for CLIP-score-style baselines, and the shared space FLYT's scorer and reference model
  work in) is a locked-tower CLIP trained on the whole unfiltered pool, like DFN-Base / a pool CLIP.
- Students train on the frozen towers' own embeddings (not the teacher's) for a fixed samples-seen
  budget, whatever the subset size.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from flyt.bench.evaluate import copy_detection, defect_auc
from flyt.bench.protocol import (
    BASELINE_SCORERS,
    DEDUP_MIX_INPUTS,
    DEDUP_SCORERS,
    MIX_INPUTS,
    benchmark_key,
    best_option,
    load_heldout_tasks,
    load_tasks,
    pipeline_key,
    pool_metadata,
    split_validation,
)
from flyt.bench.report import write_report
from flyt.bench.results import all_comparisons, results_markdown, verdict
from flyt.bench.runs import StudentRuns, mixer_weights, scorer_run_dir, train_scorer
from flyt.bench.strategies import DrawContext, Strategy, demo_strategies
from flyt.bench.student import StudentConfig
from flyt.bench.teacher import SEED as TEACHER_SEED
from flyt.bench.teacher import teacher_space
from flyt.errors import FlytError
from flyt.io.atomic import write_json, write_text
from flyt.io.cache import cache_key
from flyt.io.pool import PoolArrays, load_pool
from flyt.io.scores import ScoreDirs
from flyt.io.tasks import Task
from flyt.pipeline.demo_plan import demo_plan, plan_lines
from flyt.pipeline.score import score_pool
from flyt.progress import Progress, printing, quiet
from flyt.scorers.registry import ScorerOptions


@dataclass
class DemoConfig:
    out: Path
    quick: bool = False
    cache: str | None = None
    bench_dir: Path | None = None  # an already built benchmark (pool/, tasks/, benchmark.json); default: build it
    seeds: tuple = (0, 1, 2)
    validation_seed: int = 100
    # Student seeds of the validation choice: each option's validation average is the mean over them
    # (() = just validation_seed). More than one keeps a lucky student from choosing the option.
    validation_seeds: tuple = ()
    # Seeds the teacher, FLYT and M-FLYT (0: the demo's own; benchmarks/demo_robustness.py runs 0, 1, 2).
    pipeline_seed: int = 0
    validation_fraction: float = 0.25
    # Grids placed where validation chose in earlier runs (fraction 0.1 and penalty 0.5 were never chosen;
    # fraction 0.5 and penalty 0.02, the old edges, often were). Edges are still chosen: docs/demo.md.
    fractions: tuple = (0.2, 0.3, 0.5, 0.7)
    penalties: tuple = (0.01, 0.02, 0.05, 0.15)
    random_fraction: float = 0.3
    # FLYT and M-FLYT + SCS also drawn above a CLIP-score floor: the bottom q of the pool by the teacher's
    # CLIP score excluded first, q chosen on validation with the penalty (q = 0: no floor). q = 0.3 was
    # never chosen in 5 pipeline runs (and 0.3, 0.5 lost to q = 0 at every penalty): docs/demo.md.
    floor_quantiles: tuple = (0.0, 0.1, 0.2)
    teacher: StudentConfig = field(default_factory=lambda: StudentConfig(dim=128, samples_seen=200_000))
    student: StudentConfig = field(default_factory=lambda: StudentConfig(dim=128, samples_seen=100_000))
    flyt_steps: int = 400
    # M-FLYT's mix is still moving at 300 steps (its FLYT weight grows from 0.8 to 1.7 by 1200) and
    # three training seeds of 300 steps disagree; 1200 steps cost ~40 s more (docs/demo.md).
    mflyt_steps: int = 1200
    upstream_batch: int = 1024
    downstream_batch: int = 256
    # The paper trains 5000 steps at lr 1e-3; the demo trains a few hundred, so the scorer takes
    # larger steps (chosen on the validation split, see docs/demo.md).
    scorer_lr: float = 1e-2
    reference_lr: float = 1e-3
    # M-FLYT's inputs as z-scores clipped to [-3, 3] (flyt.models.mixing; None: plain z-scores). A
    # few outliers of a near-constant score (caption_non_latin) no longer set its weight (docs/demo.md).
    mflyt_score_clip: float | None = 3.0
    # flyt.progress's show: each long stage's bar on a terminal, a line every ~10% otherwise; False: none
    progress: bool | None = True

    def __post_init__(self):
        self.out = Path(self.out)
        if self.quick:  # same data, less training and a smaller search
            self.flyt_steps, self.mflyt_steps = 100, 150
            self.fractions, self.penalties = (0.5,), (0.02, 0.05)  # top half fixed; only SCS is chosen
            self.floor_quantiles = (0.0, 0.1)
            self.student = replace(self.student, samples_seen=30_000)


class Log:
    def __init__(self, printer=print):
        self.printer, self.t0 = printer, time.perf_counter()

    def __call__(self, msg: str) -> None:
        with printing():  # a bar on screen is cleared first and drawn again after
            self.printer(f"[{time.perf_counter() - self.t0:6.1f}s] {msg}")
            sys.stdout.flush()  # before the next progress line on stderr, when both go to one file


def run_demo(cfg: DemoConfig, printer=print) -> dict:
    """Run the demo into ``cfg.out``; returns the results data (what results.json holds)."""
    log = Log(printer)
    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    timings = {}
    for line in plan_lines(demo_plan(cfg, scorer_config, _task_dirs)):  # what it will do, how long, what is cached
        log(line)

    # 1. The benchmark: real images and captions through the two frozen towers (cached).
    t = time.perf_counter()
    bench_dir = open_benchmark(cfg, log)
    timings["benchmark"] = time.perf_counter() - t
    raw = load_pool(bench_dir / "pool")
    meta = pool_metadata(bench_dir / "pool", raw.uids)
    tasks = split_validation(load_tasks(bench_dir / "tasks"), cfg.validation_fraction, cfg.validation_seed)
    log(f"pool: {len(raw)} pairs; tasks: {', '.join(t.name for t in tasks)}")

    # 2. Teacher CLIP on the unfiltered pool; the pool and fit splits in its shared space. The teacher, the
    # baseline scores and the students are cached under a key of the benchmark they came from (and the
    # teacher's and split's settings): a rebuilt benchmark in the same --out never meets stale scores.
    t = time.perf_counter()
    key = benchmark_key(bench_dir, cfg.teacher, cfg.validation_seed, cfg.validation_fraction)
    teacher_dir = out / f"teacher-{pipeline_key(key, cfg)}"
    teacher_space(raw, meta.column("text"), tasks, cfg.teacher, teacher_dir, log, cfg.progress,
                  seed=TEACHER_SEED + cfg.pipeline_seed)
    timings["teacher"] = time.perf_counter() - t
    teacher_pool, teacher_tasks = teacher_dir / "pool", _task_dirs(teacher_dir)

    # 3. Baseline scores over the pool.
    t = time.perf_counter()
    # negCLIPLoss needs negclip_batches x (batch size - 1) reference rows: shrink the batch on small pools.
    options = ScorerOptions(clusters=max(8, len(raw) // 128), kmeans_sample=len(raw),
                            negclip_batch_size=min(1024, len(raw) // ScorerOptions.negclip_batches + 1),
                            classifier_negatives=min(20_000, len(raw)))
    score_dirs = {"baselines": out / "scores" / f"baselines-{pipeline_key(key, cfg)}"}
    done = score_pool(teacher_pool, score_dirs["baselines"], BASELINE_SCORERS, options, tasks=teacher_tasks,
                      progress=cfg.progress, desc="score: baselines")
    timings["baseline_scores"] = time.perf_counter() - t
    log("baseline scores written" if done.scored else "baseline scores cached")
    # 3b. Duplicates and contamination on the benchmark's own pool (the frozen image tower's embeddings, the
    # space the injected copies are identical in), against the test images of FLYT's tasks only: the held-out
    # tasks are read by the final evaluation alone (tests/test_demo.py), so they cannot be decontaminated.
    t = time.perf_counter()
    score_dirs["dedup"] = out / "scores" / f"dedup-{key}"
    done = score_pool(bench_dir / "pool", score_dirs["dedup"], DEDUP_SCORERS, dedup_options(len(raw)),
                      tasks=_task_dirs(bench_dir), progress=cfg.progress, desc="score: dedup, contamination")
    timings["dedup_scores"] = time.perf_counter() - t
    log("dedup and contamination scores written" if done.scored else "dedup and contamination scores cached")

    # 4. FLYT on the teacher's embeddings; 5. M-FLYT over all scores (FLYT's included). Runs and their
    # scores live in directories named by their settings, so --quick and full runs never share them.
    t = time.perf_counter()
    flyt_pt = train_scorer(scorer_config(cfg, "flyt", teacher_pool, teacher_tasks), out / "runs", log, cfg.progress)
    score_dirs["flyt"] = out / "scores" / flyt_pt.parent.name
    score_pool(teacher_pool, score_dirs["flyt"], [str(flyt_pt)], progress=cfg.progress, desc="score: flyt")
    timings["flyt"] = time.perf_counter() - t
    t = time.perf_counter()
    inputs = [score_dirs["baselines"], score_dirs["flyt"], score_dirs["dedup"]]
    mflyt_pt = train_scorer(scorer_config(cfg, "mflyt", teacher_pool, teacher_tasks, MIX_INPUTS + DEDUP_MIX_INPUTS,
                                          inputs),
                            out / "runs", log, cfg.progress)
    score_dirs["mflyt"] = out / "scores" / mflyt_pt.parent.name
    score_pool(teacher_pool, score_dirs["mflyt"], [str(mflyt_pt)], score_dirs=inputs, progress=cfg.progress,
               desc="score: mflyt")
    timings["mflyt"] = time.perf_counter() - t
    scores = read_scores(score_dirs, raw.uids)

    # 6. Strategies: every option drawn; fraction / penalty chosen on validation (one student per option
    # of each strategy that has a choice to make, all trained together).
    t = time.perf_counter()
    strategies = demo_strategies(cfg.fractions, cfg.penalties, cfg.random_fraction,
                                 floor_quantiles=cfg.floor_quantiles)
    context = DrawContext(raw.uids, score_dirs, cfg.student.samples_seen, cfg.validation_seed)
    with quiet():  # each draw is quick: no bars of its own
        drawn = {s.name: [s.draw(value, context) for value in s.options] for s in strategies}
    students = StudentRuns(out / "students", key, raw, cfg.student)
    grid = [(s.name, i) for s in strategies if s.chooses for i in range(len(s.options))]
    vseeds = tuple(cfg.validation_seeds) or (cfg.validation_seed,)
    candidates = [drawn[name][i].indices(raw.uids) for name, i in grid]
    with student_bar(students, [(c, vs) for c in candidates for vs in vseeds], "validation", cfg) as bar:
        accuracy = dict(zip(grid, students.validation_means(candidates, vseeds, tasks, bar)))
    chosen, validation = {}, {}
    for s in strategies:
        accs = [accuracy.get((s.name, i)) for i in range(len(s.options))]
        best = best_option(accs)
        validation[s.name] = [{"option": s.option(v), "val_average": a} for v, a in zip(s.options, accs)]
        chosen[s.name] = (best, {"option": s.option(s.options[best]), "val_average": accs[best]})
        s.write(out / "subsets" / f"{s.name}.npy", drawn[s.name][best], s.options[best])
        log(f"strategy {s.name}: chose {tuple(s.option(s.options[best]))} (validation accuracy {accs[best]})")
    timings["validation"] = time.perf_counter() - t

    # 7. The final evaluation: the chosen subset of each strategy, students of every seed, on the test
    # splits of FLYT's tasks and of the held-out tasks. The held-out tasks are read here and nowhere before:
    # no scorer, training run or option choice above saw them (they have no train split at all). These
    # students' accuracies are cached under a key that also names the tasks they are evaluated on.
    t = time.perf_counter()
    log("final evaluation: reading the held-out tasks")
    heldout = load_heldout_tasks(bench_dir)
    log(f"final evaluation: test splits of {len(tasks)} FLYT tasks and {len(heldout)} held-out tasks"
        + (f" ({', '.join(h.name for h in heldout)})" if heldout else ""))
    finals, groups = final_students(out, key, raw, cfg, tasks, heldout)
    results = {}
    bar = student_bar(finals, [(drawn[s.name][chosen[s.name][0]].indices(raw.uids), seed) for s in strategies
                               for seed in cfg.seeds], "test", cfg)
    for s in strategies:
        best, choice = chosen[s.name]
        indices = drawn[s.name][best].indices(raw.uids)
        res = finals.test_summary(indices, cfg.seeds, tasks + heldout, groups, bar)
        results[s.name] = {**res, "label": s.label, "chosen": choice}
        m, sd = res["mean"], res["std"]
        log(f"{s.name:>22}: " + ", ".join(f"{label} {m[a]:.4f} +- {sd[a]:.4f}" for a, label in
                                           (("average_flyt", "FLYT tasks"), ("average_heldout", "held-out"),
                                            ("average", "all")) if a in m))
    bar.close()
    timings["students"] = time.perf_counter() - t
    log(f"students: {students.trained + finals.trained} trained, {students.cached + finals.cached} reused from "
        f"{out / 'students'}")

    defects = np.asarray(meta.column("defect").to_pylist()) if "defect" in meta.column_names else None
    summary = {
        "benchmark": json.loads((bench_dir / "benchmark.json").read_text()),
        "protocol": {
            "seeds": list(cfg.seeds), "student": asdict(cfg.student), "teacher": asdict(cfg.teacher),
            "validation_fraction": cfg.validation_fraction, "fractions": list(cfg.fractions),
            "penalties": list(cfg.penalties), "floor_quantiles": list(cfg.floor_quantiles),
            "flyt_steps": cfg.flyt_steps, "mflyt_steps": cfg.mflyt_steps,
            "quick": cfg.quick, "pipeline_seed": cfg.pipeline_seed,
            "validation_seeds": list(cfg.validation_seeds or (cfg.validation_seed,)),
            "mflyt_score_clip": cfg.mflyt_score_clip,
        },
        "tasks": [t.name for t in tasks],
        "heldout_tasks": [h.name for h in heldout],
        "results": results,
        "validation": validation,
        "mflyt_weights": mixer_weights(mflyt_pt),
        "verdict": verdict(results),  # on FLYT's tasks
        "comparisons": all_comparisons(results),  # each learned strategy vs no filtering and CLIP score
        # how each score ranks clean pairs above each injected or natural defect (analysis only)
        "defect_auc": defect_auc(defect_scores(scores), defects) if defects is not None else {},
        "dedup": dedup_summary(scores, meta),
        "timings_s": timings,
    }
    write_json(summary, out / "results.json")
    write_text(results_markdown(summary), out / "results.md")
    write_report(summary, scores, meta, bench_dir, out / "subsets", out / "report.html")
    log(f"wrote {out / 'results.md'} and {out / 'report.html'}")
    return summary


# --------------------------------------------------------------------------- stages


def open_benchmark(cfg: DemoConfig, log: Callable[[str], None]) -> Path:
    """The benchmark directory: ``cfg.bench_dir``, else the built-in one, built (or found) in the cache."""
    if cfg.bench_dir is not None:
        return Path(cfg.bench_dir)
    from flyt.bench.build import build_benchmark
    from flyt.encoders import get_encoder

    summary = build_benchmark(get_encoder("offline"), cache=cfg.cache, log=log, progress=cfg.progress)
    return Path(summary["out"])


def dedup_options(rows: int) -> ScorerOptions:
    """dedup's settings for a pool of ``rows``: ~128 rows per k-means cluster, fitted on the whole pool."""
    return ScorerOptions(dedup_clusters=max(8, rows // 128), dedup_sample=rows)


def defect_scores(scores: dict) -> dict:
    """The score columns of the defect table, each oriented so that higher = cleaner: every score but
    dedup's ids, sizes and flags and contamination's task index; dedup as ``dedup_distance`` = 1 -
    dedup_nearest (cosine distance to the nearest other pool row: 0 for an exact copy) and contamination
    as ``contamination_distance`` = 1 - contamination_max (to the nearest test image)."""
    skip = {"dedup_group", "dedup_group_size", "dedup_keep", "dedup_nearest", "contamination_max", "contamination_task"}
    out = {c: v for c, v in scores.items() if c not in skip}
    if "dedup_nearest" in scores:
        out["dedup_distance"] = 1.0 - scores["dedup_nearest"]
    if "contamination_max" in scores:
        out["contamination_distance"] = 1.0 - scores["contamination_max"]
    return out


def dedup_summary(scores: dict, meta) -> dict:
    """dedup's groups on the pool; the best AUC any per-row detector can reach on the ``duplicate``
    defect: an injected copy is byte-identical (image and caption) to its original, which keeps its own
    label (``none`` when clean), so the two always tie: ceiling = 1 - share of clean rows that are
    originals of a copy / 2; and dedup as a detector of the rows that have an exact copy in the pool
    (``copy_detection``: the same copies, judged by a truth that does not tell a copy from its original)."""
    if "dedup_group_size" not in scores:
        return {}
    size = scores["dedup_group_size"]
    out = {"rows_in_groups": int((size > 1).sum()), "groups": int(len(np.unique(scores["dedup_group"][size > 1]))),
           "kept": int(scores["dedup_keep"].sum())}
    if {"defect", "image_sha1", "text"} <= set(meta.column_names):
        defect = np.asarray(meta.column("defect").to_pylist())
        pair = [f"{h}\0{t}" for h, t in zip(meta.column("image_sha1").to_pylist(), meta.column("text").to_pylist())]
        copied = {p for p, d in zip(pair, defect) if d == "duplicate"}
        clean = defect == "none"
        if clean.any() and copied:
            originals = np.array([p in copied for p in pair]) & clean
            out["duplicate_auc_ceiling"] = float(1.0 - originals.sum() / clean.sum() / 2.0)
    if "image_sha1" in meta.column_names:
        out["copy_detection"] = copy_detection(scores["dedup_nearest"], size, meta.column("image_sha1").to_pylist())
    return out


def student_bar(students: StudentRuns, runs: list, split: str, cfg: DemoConfig) -> Progress:
    """One bar over the samples the students of ``runs`` that are not cached will see."""
    total = students.todo(runs, split) * cfg.student.samples_seen
    return Progress(total, f"students: {split}", unit="sample", show=cfg.progress, scale=True)


def final_students(out: Path, key: str, raw, cfg: DemoConfig, tasks: list[Task], heldout: list[Task]):
    """The final evaluation's cached students (keyed by the benchmark and by the tasks evaluated: a
    cached accuracy file always holds every one of them) and the task groups of its averages."""
    students = StudentRuns(out / "students", cache_key(key, [t.name for t in tasks + heldout]), raw, cfg.student)
    return students, {"average_flyt": [t.name for t in tasks], "average_heldout": [h.name for h in heldout]}


def scorer_config(cfg: DemoConfig, mode: str, pool: Path, tasks: list[str], score_columns=(), scores=()) -> dict:
    """flyt.training's config for the demo's FLYT (``mode="flyt"``) or M-FLYT scorer, without ``out``
    (``seed`` and M-FLYT's ``score_clip`` only when set, so other runs keep their cache keys)."""
    extra = {"seed": int(cfg.pipeline_seed)} if cfg.pipeline_seed else {}
    if mode == "mflyt" and cfg.mflyt_score_clip is not None:
        extra["score_clip"] = float(cfg.mflyt_score_clip)
    return {**extra,
        "mode": mode, "pool": str(pool), "tasks": list(tasks),
        "steps": cfg.flyt_steps if mode == "flyt" else cfg.mflyt_steps,
        "upstream_batch": cfg.upstream_batch, "downstream_batch": cfg.downstream_batch,
        "scorer_lr": cfg.scorer_lr, "reference_lr": cfg.reference_lr, "warmup_steps": 20,
        "scorer": {"cosine_init": mode == "flyt"},
        "score_columns": list(score_columns), "scores": [str(s) for s in scores],
        "checkpoint_every": 50,
    }


def read_scores(score_dirs: dict, uids: np.ndarray) -> dict[str, np.ndarray]:
    """Every score column of the score directories, aligned to the pool's rows (joined by uid)."""
    dirs = ScoreDirs(score_dirs.values())
    return dirs.join(uids, dirs.columns(), where="demo scores")


def _task_dirs(root: Path) -> list[str]:
    return sorted(str(p) for p in (root / "tasks").iterdir())


@dataclass
class FinishedDemo:
    """A finished full demo's stages, reopened for experiments on top of it (benchmarks/demo_*.py)."""

    cfg: DemoConfig
    raw: PoolArrays  # the benchmark pool
    tasks: list[Task]  # train (fit), validation and test splits
    key: str
    teacher_dir: Path
    score_dirs: dict  # baselines, flyt, mflyt -> score directory
    students: StudentRuns
    bench_dir: Path | None = None

    @property
    def teacher_pool(self) -> Path:
        return self.teacher_dir / "pool"

    @property
    def teacher_tasks(self) -> list[str]:
        return _task_dirs(self.teacher_dir)

    def scores(self) -> dict[str, np.ndarray]:
        return read_scores(self.score_dirs, self.raw.uids)

    def strategies(self) -> dict[str, Strategy]:
        """The demo's strategies by name."""
        return {s.name: s for s in demo_strategies(self.cfg.fractions, self.cfg.penalties, self.cfg.random_fraction,
                                                   grouped="dedup" in self.score_dirs,
                                                   floor_quantiles=self.cfg.floor_quantiles)}

    def draw_context(self, score_dirs: dict | None = None) -> DrawContext:
        """How the demo draws, with ``score_dirs`` (column -> directory) added to its own."""
        return DrawContext(self.raw.uids, {**self.score_dirs, **(score_dirs or {})}, self.cfg.student.samples_seen,
                           self.cfg.validation_seed)

    def final_evaluation(self) -> tuple[list[Task], StudentRuns, dict]:
        """For a final, test-split evaluation of options already chosen on validation only: FLYT's tasks
        plus the held-out tasks (read now), the demo's cached final students and the groups for
        flyt.bench.evaluate.group_averages."""
        heldout = load_heldout_tasks(self.bench_dir)
        students, groups = final_students(self.cfg.out, self.key, self.raw, self.cfg, self.tasks, heldout)
        return self.tasks + heldout, students, groups


def open_finished(out: Path, pipeline_seed: int = 0, cfg: DemoConfig | None = None) -> FinishedDemo:
    """Reopen a finished `flyt demo --out OUT`: benchmark, splits, teacher, scores, students. ``cfg``: the
    run's settings (default: the full demo's with ``pipeline_seed``, e.g. a benchmarks/demo_robustness.py
    seed directory); its ``out`` is replaced by ``out``."""
    cfg = DemoConfig(out=out, pipeline_seed=pipeline_seed) if cfg is None else replace(cfg, out=Path(out))
    bench_dir = open_benchmark(cfg, print)
    raw = load_pool(bench_dir / "pool")
    tasks = split_validation(load_tasks(bench_dir / "tasks"), cfg.validation_fraction, cfg.validation_seed)
    key = benchmark_key(bench_dir, cfg.teacher, cfg.validation_seed, cfg.validation_fraction)
    dirs = {"baselines": cfg.out / "scores" / f"baselines-{pipeline_key(key, cfg)}"}
    if (cfg.out / "scores" / f"dedup-{key}").is_dir():
        dirs["dedup"] = cfg.out / "scores" / f"dedup-{key}"
    teacher_dir = cfg.out / f"teacher-{pipeline_key(key, cfg)}"
    pool, tasks_dirs = teacher_dir / "pool", _task_dirs(teacher_dir)
    # each run's directory is named by its settings (M-FLYT's include its inputs): the ones run_demo uses now
    dirs["flyt"] = cfg.out / "scores" / scorer_run_dir(scorer_config(cfg, "flyt", pool, tasks_dirs), cfg.out / "runs").name
    inputs = [dirs["baselines"], dirs["flyt"], *([dirs["dedup"]] if "dedup" in dirs else [])]
    columns = MIX_INPUTS + (DEDUP_MIX_INPUTS if "dedup" in dirs else [])
    dirs["mflyt"] = cfg.out / "scores" / scorer_run_dir(scorer_config(cfg, "mflyt", pool, tasks_dirs, columns, inputs),
                                                        cfg.out / "runs").name
    for prefix in ("flyt", "mflyt"):
        if not dirs[prefix].is_dir():
            raise FlytError(f"{dirs[prefix]}: missing {prefix} score directory (run `flyt demo --out {cfg.out}` first)")
    return FinishedDemo(cfg, raw, tasks, key, teacher_dir, dirs,
                        StudentRuns(cfg.out / "students", key, raw, cfg.student), bench_dir)

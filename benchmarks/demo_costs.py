"""Per-unit costs of the demo's stages on this machine: where flyt.pipeline.demo_plan's constants come from.

    nice -n 5 python benchmarks/demo_costs.py CACHE WORK [OTHER_CACHE ...]

CACHE: a cache in which `flyt embed bench` (or a first `flyt demo`) has finished; it is only read (the
fetched sources, the rendered tables, the built benchmark). WORK: a scratch directory (replaced).
OTHER_CACHE: more caches, read only, for the render costs of sources CACHE has not fetched.

Small runs of each stage's own code. The development VM is shared (its wall times move by 2-3x with the
other jobs), so every figure is the best of REPEATS runs, the least disturbed one (a training step: the
25th percentile of TRAIN_STEPS steps):

- render: RENDER_SAMPLE random render jobs of every source through one 2-process pool (the demo's
  workers), seconds per image; and the start of such a pool;
- embedding: the offline encoder on pool images (PNG decode included) and captions; the models' load;
- teacher / students: train_students on the benchmark pool for STUDENT_STEPS steps of batch 512 with
  K = 1 and K = 8 students in lockstep -> seconds per step = a + b K; one student's zero-shot evaluation;
- baseline scores: the demo's baseline scorers over the whole pool (in a 20k-sample teacher's space);
- FLYT / M-FLYT: TRAIN_STEPS steps of the demo's configs (step seconds from metrics.jsonl); scoring the pool.

Prints one JSON object (what demo_plan.py's constants were set from).
"""

from __future__ import annotations

import json
import multiprocessing
import shutil
import sys
import time
from pathlib import Path

import numpy as np

RENDER_SAMPLE = 120
STUDENT_STEPS = 20
TRAIN_STEPS = 24
REPEATS = 3


def best(fn, repeats: int = REPEATS) -> float:
    """The fastest of ``repeats`` timed calls of ``fn``, in seconds."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    cache, work = Path(sys.argv[1]), Path(sys.argv[2])
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    import torch

    from flyt.bench import assets
    from flyt.bench.build import default_out
    from flyt.bench.evaluate import evaluate
    from flyt.bench.protocol import BASELINE_SCORERS, MIX_INPUTS, load_tasks, pool_metadata, split_validation
    from flyt.bench.student import StudentConfig, train_students
    from flyt.bench.teacher import teacher_space
    from flyt.encoders.offline import OfflineEncoder
    from flyt.errors import FlytError
    from flyt.io.images import decode_image
    from flyt.io.pool import load_pool
    from flyt.pipeline.demo import DemoConfig, scorer_config
    from flyt.pipeline.score import score_pool
    from flyt.scorers.registry import ScorerOptions
    from flyt.training.loop import train

    out = {"threads": torch.get_num_threads(), "repeats": REPEATS}
    rng = np.random.default_rng(0)

    # Render: one pool for all sources (its start timed on its own).
    t = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.map(assets._render_job, [("array", np.zeros((8, 8)), 8)] * 2)
        out["render_pool_start_s"] = round(time.perf_counter() - t, 3)
        per_image = {}
        for name in assets.SOURCES:
            for where in [cache] + [Path(p) for p in sys.argv[3:]]:
                try:
                    _, jobs = assets.SOURCES[name](where / "root", where)
                except (OSError, FlytError) as exc:  # a source this cache has not fetched
                    per_image[name] = {"skipped": str(exc)[:200]}
                    continue
                if jobs:
                    break
            else:
                continue
            pick = rng.choice(len(jobs), size=min(RENDER_SAMPLE, len(jobs)), replace=False)
            sample = [(*jobs[i], assets.RENDER_SIZE) for i in pick]
            seconds = best(lambda s=sample: pool.map(assets._render_job, s, chunksize=8))
            per_image[name] = {"s_per_image": round(seconds / len(sample), 5), "listed": len(jobs)}
    out["render"] = per_image

    # Embedding: the offline encoder, models loaded first.
    encoder = OfflineEncoder()
    rendered = assets.load_rendered(cache, "openclipart").to_pydict()
    pngs, texts = rendered["image"], rendered["text"]
    t = time.perf_counter()
    encoder.encode_images([decode_image(b) for b in pngs[:16]])
    encoder.encode_texts(texts[:64])
    out["embed_load_s"] = round(time.perf_counter() - t, 2)
    picks = rng.choice(len(pngs), size=256, replace=False)
    seconds = best(lambda: encoder.encode_images([decode_image(pngs[i]) for i in picks]))
    out["embed_s_per_image"] = round(seconds / len(picks), 5)
    seconds = best(lambda: encoder.encode_texts([texts[i % len(texts)] for i in range(1024)]))
    out["embed_s_per_text"] = round(seconds / 1024, 6)

    # Students in lockstep: seconds per step = a + b K (batch 512, dim 128), and one evaluation.
    bench = default_out(cache, encoder)
    raw = load_pool(bench / "pool")
    cfg = DemoConfig(out=work / "demo")
    tasks = split_validation(load_tasks(bench / "tasks"), cfg.validation_fraction, cfg.validation_seed)
    config = StudentConfig(dim=128, samples_seen=512 * STUDENT_STEPS, batch_size=512)
    step, students = {}, []
    for k in (1, 8):
        runs = [(rng.integers(0, len(raw), size=10_000), seed) for seed in range(k)]
        step[k] = best(lambda r=runs: students.append(train_students(raw.image, raw.text, r, config))) / STUDENT_STEPS
    b = (step[8] - step[1]) / 7
    out["student_step_s"] = {"a": round(step[1] - b, 5), "b": round(b, 5), "measured": step}
    out["student_eval_s"] = round(best(lambda: evaluate(students[0][0], tasks, "test")), 3)

    # Baseline scores over the whole pool, in a (short-trained) teacher's space.
    meta = pool_metadata(bench / "pool", raw.uids)
    teacher_dir = work / "teacher"
    teacher_space(raw, meta.column("text"), tasks, StudentConfig(dim=128, samples_seen=20_480), teacher_dir,
                  lambda *_: None)
    teacher_pool = teacher_dir / "pool"
    teacher_tasks = sorted(str(p) for p in (teacher_dir / "tasks").iterdir())
    options = ScorerOptions(clusters=max(8, len(raw) // 128), kmeans_sample=len(raw),
                            negclip_batch_size=min(1024, len(raw) // ScorerOptions.negclip_batches + 1),
                            classifier_negatives=min(20_000, len(raw)))
    counter = iter(range(REPEATS))
    seconds = best(lambda: score_pool(teacher_pool, work / f"baselines-{next(counter)}", BASELINE_SCORERS, options,
                                      tasks=teacher_tasks, progress=False))
    out["baselines_s_per_row"] = round(seconds / len(raw), 7)

    # FLYT; M-FLYT; scoring the pool with each.
    def run(name, config):
        config = {**config, "steps": TRAIN_STEPS, "checkpoint_every": 10_000, "out": str(work / name)}
        t = time.perf_counter()
        train(config, progress=False)
        total = time.perf_counter() - t
        rows = [json.loads(line) for line in (work / name / "metrics.jsonl").read_text().splitlines()]
        seconds = [r["seconds"] for r in rows]
        return round(float(np.percentile(seconds, 25)), 4), round(total - sum(seconds), 2)

    def score(scorer, name, inputs=()):
        counter = iter(range(REPEATS))
        seconds = best(lambda: score_pool(teacher_pool, work / f"{name}-{next(counter)}", [scorer], score_dirs=inputs,
                                          progress=False))
        return round(seconds / len(raw), 7)

    out["flyt_step_s"], out["flyt_start_s"] = run("flyt", scorer_config(cfg, "flyt", teacher_pool, teacher_tasks))
    out["flyt_score_s_per_row"] = score(str(work / "flyt" / "scorer.pt"), "flyt-scores")
    inputs = [work / "baselines-0", work / "flyt-scores-0"]
    out["mflyt_step_s"], out["mflyt_start_s"] = run(
        "mflyt", scorer_config(cfg, "mflyt", teacher_pool, teacher_tasks, MIX_INPUTS, inputs))
    out["mflyt_score_s_per_row"] = score(str(work / "mflyt" / "scorer.pt"), "mflyt-scores", inputs)
    out["pool_rows"] = len(raw)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

"""Does a generic pool-retrieval downstream task make FLYT's subsets better on held-out tasks?

    FLYT_CACHE=... OMP_NUM_THREADS=1 nice -n 5 python benchmarks/demo_pooltask.py DEMO_OUT [--pairs N]
        [--variants uniform above_median_clip] [--seed S]

Needs a finished full `flyt demo --out DEMO_OUT`. Reuses its benchmark, teacher and students' cache.
For each variant it writes, in the teacher's space, a task directory ``pool_pairs`` (flyt.io.tasks'
format): N pool pairs, one class per pair (class name: the pair's uid; one template ``{c}``; the class's
prompt embedding is the pair's caption embedding, its one training image the pair's image embedding, label
= its row), i.e. caption retrieval among N pool captions. It then retrains FLYT with the demo's settings
on the demo's five tasks plus ``pool_pairs`` into DEMO_OUT/pooltask/<variant>-n<N>/ and scores the pool.

- ``uniform``: the N pairs drawn uniformly at random (seed SEED) from the whole pool; nothing about CLIP
  score or defects is used to choose them;
- ``above_median_clip``: the same, but only among pairs whose teacher CLIP score is above the pool's
  median: this variant builds CLIP-score knowledge into FLYT's training data.

FLYT top fraction and FLYT + SCS options are then chosen, for each variant and for the demo's own FLYT
scores (``demo_flyt``, the baseline, chosen by the same rule), on the validation average of the demo's
five tasks (``pool_pairs`` is no validation task) over two student seeds (VALIDATION_SEEDS). Only then
are the held-out tasks read (the demo's final_evaluation): each choice is evaluated on the test splits
with the demo's student seeds. Prints JSON lines: per variant the task build, training time and per-step
cost, the pool task's loss, diagnostics against the teacher's CLIP score, validation of every option and
the choices; then the test averages (mean, std over student seeds) beside the demo's no-filtering and
CLIP-score rows from DEMO_OUT/results.json.

``--seed S`` (S != 0) trains every FLYT with training seed S (runs named ``-seedS``), the demo's own FLYT
included (DEMO_OUT/pooltask/demo_flyt-seedS/), so one can see whether a difference survives FLYT's seed;
the pool task's pairs stay the same.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np

from flyt.bench.protocol import best_of_each_kind
from flyt.io.atomic import write_json
from flyt.io.parquet import list_shards, read_table
from flyt.io.pool import CAPTION, load_pool
from flyt.io.tasks import load_task, write_task
from flyt.pipeline.demo import open_finished, read_scores, scorer_config
from flyt.pipeline.score import score_pool
from flyt.training.loop import train

SEED = 0
TASK = "pool_pairs"
VARIANTS = ("uniform", "above_median_clip")
VALIDATION_SEEDS = (100, 101)
AVERAGES = ("average_flyt", "average_heldout", "average")


def pool_task(demo, variant: str, n: int, directory: Path, clip: np.ndarray) -> dict:
    """Write the ``pool_pairs`` task of ``variant`` (N pairs of the teacher pool) into ``directory``."""
    pool = load_pool(demo.teacher_pool)
    if not np.array_equal(pool.uids, demo.raw.uids):
        raise SystemExit(f"{demo.teacher_pool}: rows not in the benchmark pool's order")
    eligible = np.arange(len(pool))
    if variant == "above_median_clip":  # CLIP-score knowledge built in
        eligible = np.flatnonzero(clip > np.median(clip))
    elif variant != "uniform":
        raise SystemExit(f"unknown variant {variant!r} (one of {', '.join(VARIANTS)})")
    rows = np.sort(np.random.default_rng(SEED).choice(eligible, size=n, replace=False))
    shards = [read_table(p, ["uid", CAPTION]) for p in list_shards(demo.teacher_pool)]
    if not np.array_equal(np.concatenate([t.column("uid").to_numpy(zero_copy_only=False) for t in shards]), pool.uids):
        raise SystemExit(f"{demo.teacher_pool}: captions not in the pool's row order")
    captions = np.concatenate([t.column(CAPTION).to_numpy(zero_copy_only=False) for t in shards])
    write_task(directory, [str(u) for u in pool.uids[rows]], ["{c}"], pool.text[rows][None],
               {"train": (pool.image[rows], np.arange(n))})
    task = load_task(directory)  # read back: the format flyt.training reads
    assert task.num_classes == n and task.prompts.shape == (1, n, pool.text.shape[1])
    # how often a pair's own caption is its image's nearest among the N (the teacher's retrieval top-1)
    top1 = float(np.mean(np.argmax(task.train.images @ task.prompts[0].T, axis=1) == task.train.labels))
    info = {"variant": variant, "pairs": n, "eligible": int(len(eligible)), "seed": SEED,
            "uids_sha1": hashlib.sha1("\n".join(pool.uids[rows]).encode()).hexdigest(),
            "duplicate_captions": int(n - len(set(captions[rows]))),
            "teacher_top1_retrieval": round(top1, 4)}
    write_json(info, directory.parent / f"{TASK}.json")
    return info


def train_flyt(demo, task_dirs: list[str], run: Path, seed: int) -> dict:
    """The demo's FLYT (training seed ``seed``) on ``task_dirs`` into ``run`` (reused when finished,
    resumed when interrupted)."""
    t = time.perf_counter()
    if not (run / "scorer.pt").is_file():
        cfg = {**scorer_config(demo.cfg, "flyt", demo.teacher_pool, task_dirs), "out": str(run)}
        if seed:
            cfg["seed"] = seed
        train(cfg, resume=(run / "checkpoints" / "latest.pt").is_file(), progress=False)
    seconds = time.perf_counter() - t
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {"train_s": round(seconds, 1), "step_s_median": round(float(np.median([m["seconds"] for m in metrics])), 4),
            "task_losses_first10": _mean_losses(metrics[:10]), "task_losses_last10": _mean_losses(metrics[-10:])}


def _mean_losses(metrics: list) -> dict:
    return {k: round(float(np.mean([m["task_losses"][k] for m in metrics])), 4) for k in metrics[0]["task_losses"]}


def clip_diagnostics(flyt: np.ndarray, clip: np.ndarray) -> dict:
    """Spearman correlation with the teacher's CLIP score, and the overlap of the top halves."""
    def ranks(x):
        return np.argsort(np.argsort(x)).astype(np.float64)
    half = len(flyt) // 2
    top = np.intersect1d(np.argsort(-flyt)[:half], np.argsort(-clip)[:half])
    return {"spearman_vs_clip": round(float(np.corrcoef(ranks(flyt), ranks(clip))[0, 1]), 4),
            "top50_overlap_with_clip": round(len(top) / half, 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--pairs", type=int, default=2048)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--seed", type=int, default=0,
                    help="FLYT's training seed (0: the demo's; another also retrains the demo's FLYT with it, as "
                         "the baseline). The pool task's pairs are the same for every seed.")
    args = ap.parse_args()
    demo = open_finished(args.out)
    cfg, raw, students = demo.cfg, demo.raw, demo.students
    strategies = demo.strategies()
    options = [(s, v) for s in (strategies["flyt_topk"], strategies["flyt_scs"]) for v in s.options]
    clip = demo.scores()["clip_score"]

    suffix = f"-seed{args.seed}" if args.seed else ""
    if args.seed:
        root = args.out / "pooltask" / f"demo_flyt{suffix}"
        info = {"demo_flyt": train_flyt(demo, demo.teacher_tasks, root / "run", args.seed)}
        score_pool(demo.teacher_pool, root / "scores", [str(root / "run" / "scorer.pt")], progress=False)
        score_dirs = {"demo_flyt": root / "scores"}
    else:
        info = {"demo_flyt": {"step_s_median": round(float(np.median(
            [json.loads(line)["seconds"] for line in (args.out / "runs" / demo.score_dirs["flyt"].name /
                                                      "metrics.jsonl").read_text().splitlines() if line.strip()])), 4)}}
        score_dirs = {"demo_flyt": demo.score_dirs["flyt"]}
    for variant in args.variants:
        root = args.out / "pooltask" / f"{variant}-n{args.pairs}{suffix}"
        task = pool_task(demo, variant, args.pairs, root / TASK, clip)
        trained = train_flyt(demo, demo.teacher_tasks + [str(root / TASK)], root / "run", args.seed)
        score_pool(demo.teacher_pool, root / "scores", [str(root / "run" / "scorer.pt")], progress=False)
        score_dirs[variant] = root / "scores"
        info[variant] = {"task": task, **trained}

    # Validation: each option's average over the demo's five tasks and two student seeds.
    chosen = {}
    for name, directory in score_dirs.items():
        context = demo.draw_context({"flyt": directory})
        flyt = read_scores({"flyt": directory}, raw.uids)["flyt"]
        indices = [s.draw(v, context).indices(raw.uids) for s, v in options]
        val = students.validation_means(indices, VALIDATION_SEEDS, demo.tasks)
        picks = best_of_each_kind(options, val)
        chosen[name] = (picks, indices)
        print(json.dumps({"scores": name, "flyt_seed": args.seed, **info[name], **clip_diagnostics(flyt, clip),
                          "val": {" ".join(map(str, s.option(v))): round(a, 4) for (s, v), a in zip(options, val)},
                          "chosen_on_val": {kind: options[i][0].option(options[i][1]) for kind, i in picks.items()}}),
              flush=True)

    # The final evaluation: only now are the held-out tasks read.
    tasks, finals, groups = demo.final_evaluation()
    for name, (picks, indices) in chosen.items():
        for kind, i in picks.items():
            res = finals.test_summary(indices[i], cfg.seeds, tasks, groups)
            print(json.dumps({"test": f"{name} {kind}", "flyt_seed": args.seed, "option": options[i][0].option(options[i][1]),
                              **{a: [round(res["mean"][a], 4), round(res["std"][a], 4)] for a in AVERAGES}}),
                  flush=True)
    results = json.loads((args.out / "results.json").read_text())["results"]
    for name in ("no_filter", "clip_score", "flyt_topk", "flyt_scs"):
        print(json.dumps({"test": f"results.json {name}", "option": results[name]["chosen"]["option"],
                          **{a: [round(results[name]["mean"][a], 4), round(results[name]["std"][a], 4)]
                             for a in AVERAGES}}), flush=True)


if __name__ == "__main__":
    main()

"""K-step and iterative FLYT against one-step FLYT on the demo benchmark (issue 15, item 3).

    cd /work/main && FLYT_CACHE=/tmp/flyt-cache OMP_NUM_THREADS=1 nice -n 5 \\
        python benchmarks/demo_kstep.py DEMO_OUT [--variants k1 k2 ...] [--validation-seeds 100 101] [--seed S]

Needs a finished full `flyt demo --out DEMO_OUT`; reuses its benchmark, teacher, splits and student cache.
Every variant is the demo's FLYT (flyt.pipeline.demo.scorer_config: 400 scorer steps, the same batches,
learning rates and seed) with only these keys changed (docs/kstep.md):

- ``k1``: one-step FLYT (the demo's FLYT, retrained here to time it; with torch's 2 threads, as `flyt demo`
  ran, it is bit for bit the demo's scorer; with OMP_NUM_THREADS=1 its scores differ by float rounding);
- ``k2``, ``k4``, ``k8``: ``inner_steps`` K = 2, 4, 8 (exact gradient through all K steps, the reference
  advancing by K after each scorer step: ``truncate`` and ``reference_advance`` at their defaults);
- ``iter2``, ``iter3``: iterative FLYT at K = 1 with 2 and 3 rounds (``iterative.round_steps`` 200 and
  134 of the 400 steps); ``k4-iter2``: K = 4 with 2 rounds. Between rounds the pool is drawn with SCS of
  ``scs_total`` = the demo's SCS total (the students' samples seen, 100,000) and ``scs_penalty`` = the
  penalty the demo's validation chose for FLYT + SCS (read from DEMO_OUT/results.json), and the reference
  continues ``reference_steps`` = 100 steps on the draw (100 x 1024 rows ~ what one student sees).

Each variant trains into DEMO_OUT/kstep/<variant>/ (skipped when its scorer.pt exists, resumed when only a
checkpoint does; its training wall and CPU seconds are kept in timing.json there), scores the teacher pool
into DEMO_OUT/kstep/scores/<variant>/, and draws the demo's FLYT top-fraction and FLYT + SCS option grids
from those scores. Each option's validation average is the mean over ``--validation-seeds`` students
(default: the demo's validation seed and the next one) of the unweighted average of FLYT's tasks'
validation accuracies; each variant's top fraction and SCS penalty are chosen on it (best_option), and so is
the choice among variants (per kind, and overall). Only then does the final evaluation read the held-out
tasks (FinishedDemo.final_evaluation): each variant's two chosen subsets, students of the demo's seeds, test
splits of FLYT's tasks and the held-out tasks; mean and std over student seeds of the FLYT-task, held-out
and all-task averages. A margin "exceeds the seed spread" when it is larger than the larger of the two
standard deviations (flyt.bench.results.verdict's rule). Writes DEMO_OUT/kstep/results.json and prints a
markdown table. ``--seed S`` repeats it with FLYT's training seed S (the teacher and everything else
the demo's) under DEMO_OUT/kstep/seed<S>/: one training run per variant is one draw, and the student-seed
spread does not include the scorer's own training noise.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from flyt.bench.protocol import best_of_each_kind, best_option
from flyt.io.atomic import write_json
from flyt.pipeline.demo import open_finished, read_scores, scorer_config
from flyt.pipeline.score import score_pool
from flyt.progress import quiet
from flyt.training.loop import train

KINDS = ("topk", "scs")
AVERAGES = (("average_flyt", "FLYT tasks"), ("average_heldout", "held-out"), ("average", "all tasks"))
REFERENCE_STEPS = 100  # iterative FLYT: reference steps on each round's SCS draw (x upstream_batch 1024 rows)


def variants(steps: int, scs_total: int, scs_penalty: float) -> dict[str, dict]:
    """Variant name -> the training config keys it changes from the demo's FLYT."""
    def rounds(n: int) -> dict:
        return {"iterative": {"round_steps": -(-steps // n), "reference_steps": REFERENCE_STEPS,
                              "scs_penalty": scs_penalty, "scs_total": scs_total}}

    return {"k1": {}, "k2": {"inner_steps": 2}, "k4": {"inner_steps": 4}, "iter2": rounds(2), "iter3": rounds(3),
            "k8": {"inner_steps": 8}, "k4-iter2": {"inner_steps": 4, **rounds(2)}}


def train_variant(config: dict, run: Path) -> dict:
    """Train (or reuse, or resume) one variant; its timing (kept in run/timing.json)."""
    timing_path = run / "timing.json"
    if (run / "scorer.pt").is_file():  # trained before (by this script: it wrote timing.json then)
        timing = json.loads(timing_path.read_text()) if timing_path.is_file() else {
            "train_wall_s": float("nan"), "train_cpu_s": float("nan"), "resumed": None}
        return {**timing, "cached": True}
    resume = (run / "checkpoints" / "latest.pt").is_file()
    wall, cpu = time.perf_counter(), time.process_time()
    train({**config, "out": str(run)}, resume=resume, progress=False)
    timing = {"train_wall_s": round(time.perf_counter() - wall, 1), "train_cpu_s": round(time.process_time() - cpu, 1),
              "resumed": resume}
    write_json(timing, timing_path)
    return timing


def round_rows(run: Path) -> list[dict]:
    """The round summaries iterative FLYT wrote into metrics.jsonl (empty for one round)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r["round"] for r in rows if "round" in r]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="a finished full `flyt demo --out` directory")
    ap.add_argument("--variants", nargs="+", default=None, help="a subset of the variants, in this order")
    ap.add_argument("--validation-seeds", type=int, nargs="+", default=None,
                    help="student seeds of the validation choice (default: validation_seed and the next)")
    ap.add_argument("--seed", type=int, default=0,
                    help="FLYT's training seed (0: the demo's); another trains under DEMO_OUT/kstep/seed<S>/")
    args = ap.parse_args(argv)
    out = Path(args.out)
    demo = open_finished(out)
    cfg, raw = demo.cfg, demo.raw
    vseeds = tuple(args.validation_seeds or (cfg.validation_seed, cfg.validation_seed + 1))
    demo_results = json.loads((out / "results.json").read_text())
    scs_penalty = float(demo_results["results"]["flyt_scs"]["chosen"]["option"][1])  # chosen on validation
    scs_total = int(cfg.student.samples_seen)  # the demo's SCS draws exactly this many
    base = scorer_config(cfg, "flyt", demo.teacher_pool, demo.teacher_tasks)
    if args.seed:
        base["seed"] = args.seed
    grid = variants(base["steps"], scs_total, scs_penalty)
    names = args.variants or list(grid)
    unknown = [n for n in names if n not in grid]
    if unknown:
        ap.error(f"unknown variant(s) {unknown}; known: {list(grid)}")
    strategies = demo.strategies()
    options = [(s, v) for s in (strategies["flyt_topk"], strategies["flyt_scs"]) for v in s.options]
    demo_flyt = demo.scores()["flyt"]
    root = out / "kstep" / (f"seed{args.seed}" if args.seed else "")
    print(f"variants {names}; validation seeds {vseeds}; iterative: SCS penalty {scs_penalty} (the demo's "
          f"validation choice), total {scs_total}, reference_steps {REFERENCE_STEPS}", flush=True)

    report: dict = {}
    for name in names:
        run = root / name
        config = {**base, **grid[name]}
        timing = train_variant(config, run)
        scores_dir = root / "scores" / name
        score_pool(demo.teacher_pool, scores_dir, [str(run / "scorer.pt")], progress=False)
        flyt = read_scores({"flyt": scores_dir}, raw.uids)["flyt"]
        context = demo.draw_context({"flyt": scores_dir})
        with quiet():
            indices = [s.draw(v, context).indices(raw.uids) for s, v in options]
        per_seed = [[r["average"] for r in runs] for runs in demo.students.per_seed(indices, vseeds, demo.tasks,
                                                                                    "validation")]
        val = [float(np.mean(a)) for a in per_seed]
        chosen = {kind: {"index": best, "option": options[best][0].option(options[best][1]), "val_average": val[best]}
                  for kind, best in best_of_each_kind(options, val, KINDS).items()}
        report[name] = {
            "changes": grid[name], **timing,
            "rounds": round_rows(run),
            "score_max_abs_diff_vs_demo_flyt": float(np.max(np.abs(flyt - demo_flyt))),
            "validation": [{"option": s.option(v), "val_average": a, "per_seed": per_seed[j]}
                           for j, ((s, v), a) in enumerate(zip(options, val))],
            "chosen": chosen,
        }
        print(f"{name}: trained in {timing['train_wall_s']} s wall / {timing['train_cpu_s']} s CPU"
              + (" (cached)" if timing.get("cached") else "")
              + "; validation chose " + ", ".join(f"{c['option']} ({100 * c['val_average']:.2f})"
                                                  for c in chosen.values()), flush=True)
        report[name]["_indices"] = {kind: indices[chosen[kind]["index"]] for kind in KINDS}

    # The choice among variants, on validation only (ties: the earlier variant, one-step FLYT first).
    pairs = [(n, k) for n in names for k in KINDS]
    choice = {kind: names[best_option([report[n]["chosen"][kind]["val_average"] for n in names])] for kind in KINDS}
    overall = pairs[best_option([report[n]["chosen"][k]["val_average"] for n, k in pairs])]

    # The final evaluation: only now are the held-out tasks read.
    tasks, finals, groups = demo.final_evaluation()
    # every chosen subset's students in one batch; test_summary then reads them back from the cache
    finals.per_seed([report[n]["_indices"][k] for n, k in pairs], cfg.seeds, tasks, "test")
    for n, k in pairs:
        res = finals.test_summary(report[n]["_indices"][k], cfg.seeds, tasks, groups)
        report[n]["chosen"][k]["test"] = {key: res[key] for key in ("mean", "std", "per_seed", "selected", "unique")}
    for n in names:
        del report[n]["_indices"]

    def stat(n, k, a):
        t = report[n]["chosen"][k]["test"]
        return t["mean"][a], t["std"][a]

    comparisons = {}
    if "k1" in report:
        one_step = ("k1", KINDS[best_option([report["k1"]["chosen"][k]["val_average"] for k in KINDS])])
        against = [((n, k), ("k1", k)) for n, k in pairs if n != "k1"]
        if overall != one_step:  # validation's pick among everything vs its pick among one-step FLYT's two
            against.append((overall, one_step))
        for (n, k), (b, bk) in against:
            row = {}
            for a, _ in AVERAGES:
                (x, xs), (y, ys) = stat(n, k, a), stat(b, bk, a)
                row[a] = {"margin": x - y, "exceeds_seed_spread": bool(abs(x - y) > max(xs, ys)),
                          "beats": bool(x - y > max(xs, ys))}
            comparisons[f"{n} {k} vs {b} {bk}"] = row
    summary = {
        "demo_out": str(out), "train_seed": args.seed, "steps": base["steps"], "student_seeds": list(cfg.seeds),
        "validation_seeds": list(vseeds), "validation_tasks": [t.name for t in demo.tasks],
        "heldout_tasks": [t.name for t in tasks[len(demo.tasks):]],
        "iterative": {"scs_penalty": scs_penalty, "scs_total": scs_total, "reference_steps": REFERENCE_STEPS},
        "chosen_on_validation": {**choice, "overall": list(overall)},
        "variants": report, "comparisons": comparisons,
    }
    write_json(summary, root / "results.json")
    print(f"\nwrote {root / 'results.json'}\n")
    print(markdown(summary))


def markdown(summary: dict) -> str:
    head = ("| variant | train wall / CPU s | kind | chosen on validation | validation | "
            + " | ".join(label for _, label in AVERAGES) + " |")
    lines = [head, "|" + " --- |" * (5 + len(AVERAGES))]
    for n, r in summary["variants"].items():
        for k, c in r["chosen"].items():
            t = c["test"]
            mark = " **(validation's pick)**" if [n, k] == summary["chosen_on_validation"]["overall"] else ""
            lines.append(f"| {n}{mark} | {r['train_wall_s']:.0f} / {r['train_cpu_s']:.0f} | {k} | {c['option'][1]} | "
                         f"{100 * c['val_average']:.2f} | "
                         + " | ".join(f"{100 * t['mean'][a]:.2f} +- {100 * t['std'][a]:.2f}" for a, _ in AVERAGES)
                         + " |")
    if summary["comparisons"]:
        lines += ["", "| comparison | " + " | ".join(f"{label} margin" for _, label in AVERAGES) + " |",
                  "|" + " --- |" * (1 + len(AVERAGES))]
        for name, row in summary["comparisons"].items():
            lines.append(f"| {name} | " + " | ".join(
                f"{100 * row[a]['margin']:+.2f}{' (> spread)' if row[a]['exceeds_seed_spread'] else ''}"
                for a, _ in AVERAGES) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

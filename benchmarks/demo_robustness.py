"""Robustness of the demo's verdict: the whole pipeline (teacher, FLYT, M-FLYT, option choice, students)
repeated with different pipeline seeds, and each verdict's spread across those runs.

    FLYT_CACHE=... nice -n 5 python benchmarks/demo_robustness.py [--quick] [--out DIR] [--seeds 0 1 2]
        [--validation-seeds 100 101] [--reuse-seed0 DEMO_OUT]

Each pipeline seed ``s`` is one `flyt demo` run (flyt.pipeline.demo.run_demo) in ``DIR/seed<s>`` with
``pipeline_seed=s`` (the teacher's, FLYT's and M-FLYT's seeds) and every option chosen on the mean
validation accuracy of ``--validation-seeds`` students (two by default: one lucky student no longer
picks the option). ``--quick`` runs the demo's quick mode (same data, short training, a small grid): a
look at the spread in minutes, not the demo's verdict. ``--reuse-seed0 DEMO_OUT`` runs seed 0 in a
finished `flyt demo --out DEMO_OUT` of the same mode (pipeline seed 0 is the demo itself: its teacher,
scores and students are reused; only the extra validation students train).

A verdict is "learned strategy L beats reference R on average A" for L in FLYT + SCS and M-FLYT + SCS
(and their top fractions), R in no filtering and CLIP-score filtering, A in FLYT's tasks, held-out tasks,
all tasks (results.json's ``comparisons``). For each, the script reports its margin in every run, the
mean and spread (population std) of the margin over the runs, in how many runs L beat R and in how many
by more than that run's student-seed spread; plus whether M-FLYT + SCS >= FLYT + SCS. Writes
``DIR/robustness.json`` and ``DIR/robustness.md`` and prints the markdown.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import time
from pathlib import Path

import numpy as np

from flyt.bench.results import AVERAGES
from flyt.io.atomic import write_json, write_text
from flyt.pipeline.demo import DemoConfig, run_demo

LEARNED = ["flyt_scs", "mflyt_scs", "flyt_scs_floor", "mflyt_scs_floor", "flyt_topk", "mflyt_topk"]
REFERENCES = ["no_filter", "clip_score"]


def verdicts(runs: list[dict]) -> list[dict]:
    """One row per (learned, reference, average): margins per run and their summary across runs.
    ``runs``: results.json dicts of the pipeline seeds."""
    rows = []
    for learned in LEARNED:
        for ref in REFERENCES:
            for avg in AVERAGES:
                cmp = [r["comparisons"].get(avg, {}).get(learned, {}).get(ref) for r in runs]
                if any(c is None for c in cmp):
                    continue
                margins = np.array([c["margin"] for c in cmp])
                rows.append({"learned": learned, "reference": ref, "average": avg,
                             "margins": margins.tolist(), "margin_mean": float(margins.mean()),
                             "margin_std_across_runs": float(margins.std()),
                             "seed_spread": [max(c["std"], c["reference_std"]) for c in cmp],
                             "beats": int(sum(c["beats"] for c in cmp)),
                             "beyond_spread": int(sum(c["beyond_spread"] for c in cmp)), "runs": len(cmp)})
    for avg in AVERAGES:  # the paper's ordering: M-FLYT >= FLYT (both with SCS)
        if all(avg in r["results"]["mflyt_scs"]["mean"] for r in runs):
            margins = np.array([r["results"]["mflyt_scs"]["mean"][avg] - r["results"]["flyt_scs"]["mean"][avg]
                                for r in runs])
            rows.append({"learned": "mflyt_scs", "reference": "flyt_scs", "average": avg,
                         "margins": margins.tolist(), "margin_mean": float(margins.mean()),
                         "margin_std_across_runs": float(margins.std()), "beats": int((margins >= 0).sum()),
                         "beyond_spread": None, "runs": len(runs)})
    return rows


def markdown(seeds: list[int], runs: list[dict], rows: list[dict], quick: bool, seconds: list[float]) -> str:
    pts = lambda x: f"{100 * x:+.1f}"  # noqa: E731
    lines = [f"# Demo robustness: {len(runs)} pipeline seeds {seeds} ({'quick' if quick else 'full'} mode)", "",
             "Accuracy in points, mean +- std over student seeds, per pipeline seed:", "",
             "| strategy | " + " | ".join(f"seed {s}: {AVERAGES[a]}" for s in seeds for a in AVERAGES) + " |",
             "|---|" + "---|" * (len(seeds) * len(AVERAGES))]
    for name in ["no_filter", "clip_score", *LEARNED]:
        cells = []
        for r in runs:
            res = r["results"][name]
            cells += [f"{100 * res['mean'][a]:.1f} +- {100 * res['std'][a]:.1f}" if a in res["mean"] else "-"
                      for a in AVERAGES]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Chosen options: " + "; ".join(
        f"seed {s}: " + ", ".join(f"{n} {tuple(r['results'][n]['chosen']['option'])}" for n in LEARNED)
        for s, r in zip(seeds, runs)), "",
        "| learned | vs | average | margin per run | mean +- std across runs | runs it beats | beyond student-seed spread |",
        "|---|---|---|---|---|---|---|"]
    for v in rows:
        beyond = "-" if v["beyond_spread"] is None else f"{v['beyond_spread']}/{v['runs']}"
        lines.append(f"| {v['learned']} | {v['reference']} | {AVERAGES[v['average']]} | "
                     f"{', '.join(pts(m) for m in v['margins'])} | {pts(v['margin_mean'])} +- "
                     f"{100 * v['margin_std_across_runs']:.1f} | {v['beats']}/{v['runs']} | {beyond} |")
    lines += ["", f"Wall time per run (s): {', '.join(f'{t:.0f}' for t in seconds)}. For mflyt_scs vs flyt_scs "
              "'runs it beats' counts M-FLYT + SCS >= FLYT + SCS."]
    return "\n".join(lines) + "\n"


OUTPUTS = ["results.json", "results.md", "report.html", "subsets"]


@contextlib.contextmanager
def kept_outputs(demo_out: Path | None, backup: Path):
    """Run inside a reused `flyt demo --out` (``demo_out``; None: nothing to keep) and put its own
    results back afterwards: the robustness run writes its results there too, the demo's are the record."""
    if demo_out is None:
        yield
        return
    shutil.rmtree(backup, ignore_errors=True)
    backup.mkdir(parents=True)
    for name in OUTPUTS:
        src = demo_out / name
        if src.is_dir():
            shutil.copytree(src, backup / name)
        elif src.is_file():
            shutil.copy2(src, backup / name)
    try:
        yield
    finally:
        for name in OUTPUTS:
            if (backup / name).is_dir():
                shutil.rmtree(demo_out / name, ignore_errors=True)
                shutil.copytree(backup / name, demo_out / name)
            elif (backup / name).is_file():
                shutil.copy2(backup / name, demo_out / name)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="flyt-robustness")
    ap.add_argument("--cache", default=None)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--validation-seeds", type=int, nargs="+", default=[100, 101])
    ap.add_argument("--reuse-seed0", default=None, help="a finished `flyt demo --out` of the same mode (seed 0)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    runs, seconds = [], []
    for seed in args.seeds:
        run_out = Path(args.reuse_seed0) if seed == 0 and args.reuse_seed0 else out / f"seed{seed}"
        cfg = DemoConfig(out=run_out, quick=args.quick, cache=args.cache, pipeline_seed=seed,
                         validation_seeds=tuple(args.validation_seeds), progress=False)
        t = time.perf_counter()
        with kept_outputs(run_out if run_out != out / f"seed{seed}" else None, out / "reused-demo-outputs"):
            summary = run_demo(cfg, printer=lambda m, s=seed: print(f"[seed {s}] {m}", flush=True))
        seconds.append(time.perf_counter() - t)
        write_json(summary, out / f"seed{seed}-results.json")
        runs.append(summary)
    rows = verdicts(runs)
    md = markdown(args.seeds, runs, rows, args.quick, seconds)
    write_json({"seeds": args.seeds, "quick": args.quick, "validation_seeds": args.validation_seeds,
                "wall_s": seconds, "verdicts": rows,
                "results": {s: {n: {"mean": r["results"][n]["mean"], "std": r["results"][n]["std"],
                                    "chosen": r["results"][n]["chosen"]} for n in r["results"]}
                            for s, r in zip(args.seeds, runs)}}, out / "robustness.json")
    write_text(md, out / "robustness.md")
    print(md)


if __name__ == "__main__":
    main()

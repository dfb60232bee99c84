"""What each chosen subset spends its samples on, beside its held-out accuracy (an analysis, after the fact).

    FLYT_CACHE=... python benchmarks/demo_coverage.py DEMO_OUT [STRATEGY ...] [--pipeline-seed S]

Needs a finished `flyt demo --out DEMO_OUT` (its results.json and subsets/; a robustness seed directory
with ``--pipeline-seed S``). For each strategy (default:
no filtering, CLIP score and the learned ones) it prints the unique pool rows its subset holds, the
share of its training samples (copies counted) from each pool source, and, per held-out task, the share
of samples whose caption names one of that task's classes as a whole word (case-insensitive), beside
that task's test accuracy (mean over student seeds). No filtering's shares are the pool's own. First
it prints where those rows rank under the scores the strategies draw by: the median percentile (0 =
lowest in the pool, 100 = highest) of each task's rows under clip_score, flyt and mflyt.

It reads the held-out tasks' class names, so it is run only after every choice was made, and nothing
here feeds a choice: it describes the subsets the demo already chose on validation.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
from pathlib import Path

import numpy as np

from flyt.bench.protocol import pool_metadata
from flyt.io.pool import load_pool
from flyt.io.uids import uids_to_pairs
from flyt.pipeline.demo import DemoConfig, open_benchmark, open_finished

DEFAULT = ["no_filter", "clip_score", "flyt_topk", "flyt_scs", "flyt_scs_floor", "mflyt_topk", "mflyt_scs",
           "mflyt_scs_floor", "mflyt_scs_groups"]


def naming(texts: list[str], classnames: list[str]) -> np.ndarray:
    """Whether each caption names any of ``classnames`` as a whole word (case-insensitive)."""
    pattern = re.compile(r"\b(" + "|".join(re.escape(c.lower()) for c in classnames) + r")\b")
    return np.array([bool(pattern.search(t.lower())) for t in texts])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("strategies", nargs="*", default=DEFAULT)
    ap.add_argument("--pipeline-seed", type=int, default=0)
    args = ap.parse_args()
    out, names = Path(args.out), args.strategies
    summary = json.loads((out / "results.json").read_text())
    bench = open_benchmark(DemoConfig(out=out), lambda m: print(m, file=sys.stderr))  # stdout: JSON lines only
    raw = load_pool(bench / "pool")
    meta = pool_metadata(bench / "pool", raw.uids)
    texts, sources = meta.column("text").to_pylist(), np.asarray(meta.column("source").to_pylist())
    keys = uids_to_pairs(raw.uids, "pool")
    order = np.argsort(keys, order=["f0", "f1"])
    heldout = summary["heldout_tasks"]
    named = {t: naming(texts, (bench / "heldout_tasks" / t / "classnames.txt").read_text().splitlines())
             for t in heldout}
    print(json.dumps({"pool_rows": len(texts), "rows_naming": {t: int(v.sum()) for t, v in named.items()}}))
    with contextlib.redirect_stdout(sys.stderr):  # its log lines; stdout is JSON lines only
        scores = open_finished(out, args.pipeline_seed).scores()  # pool order, as texts
    for column in ("clip_score", "flyt", "mflyt"):
        percentile = 100.0 * np.argsort(np.argsort(scores[column], kind="stable"), kind="stable") / (len(texts) - 1)
        print(json.dumps({"score": column, "median_percentile_of_rows_naming": {
            t: round(float(np.median(percentile[v])), 1) for t, v in named.items() if v.any()}}))
    for name in (n for n in names if n in summary["results"]):
        pairs = np.load(out / "subsets" / f"{name}.npy")
        rows = order[np.searchsorted(keys[order], pairs)]  # each copy's pool row (subset files hold every copy)
        assert np.array_equal(keys[rows], pairs), name
        res = summary["results"][name]
        print(json.dumps({
            "strategy": name, "option": res["chosen"]["option"], "samples": len(rows),
            "unique_rows": int(len(np.unique(rows))),
            "source_share": {s: round(float((sources[rows] == s).mean()), 4) for s in sorted(set(sources))},
            "share_naming_class": {t: round(float(named[t][rows].mean()), 4) for t in heldout},
            "heldout_accuracy": {t: round(res["mean"][t], 4) for t in heldout},
            "average_heldout": round(res["mean"]["average_heldout"], 4)}), flush=True)


if __name__ == "__main__":
    main()

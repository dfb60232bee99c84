"""`flyt sample`: score shards -> DataComp subset (.npy) + summary (.json)."""

from __future__ import annotations

import argparse

HELP = "turn per-example scores into the pretraining subset (SCS, HCS, top-k, threshold)"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "sample",
        help=HELP,
        description=HELP + ". Results depend only on the scores, the options and the seed "
        "(not on sharding, file order, workers or engine).",
    )
    p.add_argument("--scores", required=True, metavar="DIR", help="directory of score (or pool) parquet shards with 'uid' and COL")
    p.add_argument("--column", required=True, metavar="COL", help="score column to sample by (logits: higher = better)")
    p.add_argument("--method", required=True, choices=["scs", "hcs", "topk", "threshold"],
                   help="scs: Soft Cap Sampling; hcs: Hard Cap Sampling; topk: best fraction/count once each; "
                   "threshold: score >= X once each")
    p.add_argument("--total", type=int, metavar="N", help="scs/hcs: number of draws (samples seen); topk/threshold: samples-seen budget")
    p.add_argument("--penalty", type=float, metavar="D", help="scs: logit drop per draw (paper: 0.15, 0.25)")
    p.add_argument("--cap", type=int, metavar="K", help="hcs: max copies per example (also allowed as an extra cap for scs)")
    p.add_argument("--fraction", type=float, metavar="F", help="topk: keep the best F of the pool")
    p.add_argument("--count", type=int, metavar="N", help="topk: keep the best N examples")
    p.add_argument("--fraction-rule", choices=["datacomp", "exact"], metavar="RULE",
                   help="topk --fraction F of N rows: datacomp (default; DataComp baselines.py): keep every row scoring at "
                   "least the (int(N*F)+1)-th best score, ties included, so int(N*F)+1 rows or more; "
                   "exact: exactly int(N*F) rows (at least 1), ties at the cut to the smaller uid")
    p.add_argument("--threshold", type=float, metavar="X",
                   help="threshold: keep examples with score >= X, compared in the column's dtype as DataComp does "
                   "(a float32 column against float32(X))")
    p.add_argument("--temperature", type=float, default=1.0, metavar="T", help="scores are divided by T (default 1)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default 0)")
    p.add_argument("--batch", type=int, metavar="B",
                   help="scs/hcs: run the authors' batched procedure with batch B instead (in memory, O(pool) per batch; "
                   "small pools). scs: B draws without replacement from the current softmax, then each drawn logit "
                   "drops by D; hcs: B draws with replacement from the softmax of the examples below the cap, copies "
                   "past the cap rejected (the sequential hard-cap law at every B)")
    p.add_argument("--budget", type=int, metavar="N",
                   help="samples-seen budget for the repeats the summary reports (default: --total, else pool rows)")
    p.add_argument("--out", required=True, metavar="SUBSET.npy", help="output subset; the summary goes to SUBSET.json")
    p.add_argument("--counts-parquet", metavar="PATH", help="also write a uid,count parquet")
    p.add_argument("--engine", default="local", choices=["local", "ray"], help="where per-shard work runs (default local)")
    p.add_argument("--workers", type=int, default=1, metavar="N", help="parallel shard workers (default 1)")
    p.add_argument("--part-rows", type=int, metavar="R",
                   help="write the subset as a directory --out of sorted .npy parts of R rows (contiguous uid ranges: "
                   "their concatenation is the single file) plus manifest.json (parts, rows, sha256 of the rows); for "
                   "subsets too large for one file (xlarge). flyt.io.subsets.read_subset reads either form")
    p.add_argument("--max-memory", metavar="SIZE",
                   help="memory for the draw (default 8G; 512M, 16G, ...). A draw whose estimate (8 B per pool row + "
                   "32 B per drawn uid) is larger runs out of core: each worker holds one shard, each shard's drawn uids "
                   "are spilled as a sorted run to a temporary directory beside --out, and the driver holds the firings "
                   "near the level (a few %% of T x 16 B), fingerprint ranges sorted in about SIZE/2 for the duplicate "
                   "check, then one block per run in the streaming merge (about SIZE/2); needs disk for ~40 B per pool row. "
                   "The subset is the same either way (not for --batch, which runs in memory)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flyt.api.sample import SampleConfig, sample

    fields = {k: getattr(args, k) for k in SampleConfig.__dataclass_fields__}
    result = sample(SampleConfig(**fields))
    print(f"flyt sample: {result.line()}")
    return 0

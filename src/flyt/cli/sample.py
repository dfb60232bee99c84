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
                   "subsets too large for one file (xlarge). flyt reshard and flyt.subset_stream read either form, part by part")
    p.add_argument("--max-memory", metavar="SIZE",
                   help="memory for the draw (default 8G; 512M, 16G, ...). A draw whose estimate (8 B per pool row + "
                   "32 B per drawn uid) is larger runs out of core: each worker holds one shard, each shard's drawn uids "
                   "are spilled as a sorted run to a temporary directory (beside --out, or in --spill-dir), the driver "
                   "holds the firings near the level (a few %% of T x 19 B) and 8 KB per shard, and the duplicate check "
                   "and the merge run as tasks by fingerprint range and by uid range (local processes or Ray tasks, "
                   "--workers at a time), each holding about SIZE / (2 x workers); needs disk for ~40 B per pool row. "
                   "The subset is the same either way (not for --batch, which runs in memory)")
    p.add_argument("--spill-dir", metavar="DIR",
                   help="an existing directory for the files of a draw that spills (see --max-memory; default: beside "
                   "--out); a temporary directory inside it is removed at the end. With --engine ray on a cluster it must be "
                   "a path every node can reach (shared storage): Ray tasks on every node write and read the spilled runs there")
    p.add_argument("--groups", metavar="SCORES_DIR:COLUMN",
                   help="scs/hcs: count copies per group, not per uid: every draw of any member of a group raises the "
                   "group's count, so --penalty and --cap act on the group (e.g. scores/dedup:dedup_group from the dedup "
                   "scorer; an integer or string column, joined by uid; every row needs one). Exact and shard-invariant: "
                   "the race runs over one row per group (its score temp*logsumexp(s/temp) over the members) and each "
                   "group's copies go to its members multinomially by exp(s/temp). Singleton groups give plain scs/hcs")
    p.add_argument("--exclude", action="append", metavar="RULE",
                   help="drop rows before any method runs when COLUMN OP VALUE holds (OP: > >= < <= == !=; repeat for "
                   "several, a row matching any is dropped), e.g. 'contamination_max>0.9' (near copies of test images) or "
                   "'dedup_keep==0' (all but each duplicate group's representative). VALUE compares in the column's dtype; "
                   "the summary reports the rows excluded. Same result as removing the rows from the pool first")
    p.add_argument("--exclude-scores", action="append", metavar="DIR",
                   help="score directories holding --exclude columns that --scores lacks (joined by uid; repeatable)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flyt.api.sample import SampleConfig, sample

    fields = {k: getattr(args, k) for k in SampleConfig.__dataclass_fields__}
    result = sample(SampleConfig(**fields))
    print(f"flyt sample: {result.line()}")
    return 0

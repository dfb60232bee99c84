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
    p.add_argument("--threshold", type=float, metavar="X", help="threshold: keep examples with score >= X")
    p.add_argument("--temperature", type=float, default=1.0, metavar="T", help="scores are divided by T (default 1)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default 0)")
    p.add_argument("--batch", type=int, metavar="B",
                   help="scs/hcs: run the authors' batched procedure with batch B instead (in memory; small pools)")
    p.add_argument("--budget", type=int, metavar="N",
                   help="samples-seen budget for the repeats the summary reports (default: --total, else pool rows)")
    p.add_argument("--out", required=True, metavar="SUBSET.npy", help="output subset; the summary goes to SUBSET.json")
    p.add_argument("--counts-parquet", metavar="PATH", help="also write a uid,count parquet")
    p.add_argument("--engine", default="local", choices=["local", "ray"], help="where per-shard work runs (default local)")
    p.add_argument("--workers", type=int, default=1, metavar="N", help="parallel shard workers (default 1)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flyt.api.sample import SampleConfig, sample

    fields = {k: getattr(args, k) for k in SampleConfig.__dataclass_fields__}
    result = sample(SampleConfig(**fields))
    print(f"flyt sample: {result.line()}")
    return 0

"""``flyt reshard``: a subset + the pool's webdataset tars -> new training shards, copies spread apart."""

from __future__ import annotations

import argparse

HELP = "write a subset's samples into new webdataset shards, the copies of each uid in different shards"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "reshard",
        help=HELP,
        description=HELP + ". Copy k of a uid with c copies goes to shard (H(seed, uid) + floor(k n / c)) mod n; "
        "inside a shard samples are ordered by a seeded hash of (uid, k). Two metadata passes (index, route), then "
        "every image is read once and written once. Output: DIR/<8-digit>.tar and DIR/_stats.json (per-shard counts, "
        "the subset's sha256, the uids found in no tar). A re-run resumes; the output does not depend on the "
        "workers, the engine or the order of the inputs.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--subset", required=True, metavar="SUBSET.npy", help="DataComp subset (.npy of sorted uid pairs), or the parts form of "
                   "flyt sample --part-rows (its directory or manifest.json), read part by part")
    p.add_argument("--shards", required=True, nargs="+", action="extend", metavar="PATTERN",
                   help="input tars: brace pattern (shards/{00000000..00000127}.tar), glob or directory")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (new, or one this reshard started)")
    p.add_argument("--samples-per-shard", type=int, default=10_000, metavar="N",
                   help="output shards = ceil(copies found / N); each holds about N samples")
    p.add_argument("--engine", choices=["local", "ray"], default="local", help="where per-tar and per-shard work runs")
    p.add_argument("--workers", type=int, default=1, metavar="N", help="parallel workers")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the shard routing and the order inside shards")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flyt.api.reshard import ReshardConfig, reshard

    result = reshard(ReshardConfig(subset=args.subset, shards=args.shards, out=args.out, samples_per_shard=args.samples_per_shard,
                                   engine=args.engine, workers=args.workers, seed=args.seed), check=False)
    print(f"flyt reshard: {result.line()}")
    result.raise_for_failures()
    return 0

"""``flyt score``: per-example scores for every pool shard (baselines or a trained scorer.pt)."""

from __future__ import annotations

import argparse
import sys


def add_parser(subparsers) -> None:
    from flyt.scorers.registry import SCORERS, ScorerOptions

    d = ScorerOptions()
    p = subparsers.add_parser(
        "score",
        help="score every pool shard (one score shard per pool shard, same stem)",
        description=(
            "Compute per-example scores over a pool (flyt pool shards or a DataComp metadata "
            "directory) and write one score shard per pool shard, atomically. An existing --out is "
            "extended, never replaced: the new columns are joined by uid to the columns a shard already "
            "holds, and a column scored again replaces its old values (keeping other columns is refused "
            "if the pool shard changed since they were computed). A re-run skips a shard when the "
            "fingerprint stored in it (the pool shard's files and each column's scorer settings) still "
            "matches, and removes what a killed run left in --out. --out may not be the pool, a --tasks "
            "or a --scores directory. Scorers: " + ", ".join(SCORERS) + ", or PATH/scorer.pt "
            "(a FLYT or M-FLYT scorer from 'flyt train')."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--pool", required=True, help="pool directory (flyt shards, or DataComp <stem>.parquet + <stem>.npz)")
    p.add_argument("--out", required=True, help="output score directory (extended if it exists)")
    p.add_argument("--scorer", required=True, nargs="+", action="extend", metavar="NAME|PATH",
                   help="scorer name(s) or scorer.pt path(s); each writes its own column(s)")
    p.add_argument("--tasks", nargs="+", action="extend", default=[], metavar="DIR",
                   help="downstream task directories (normsim_2, normsim_inf, classifier, image_based; "
                   "contamination reads their test.parquet)")
    p.add_argument("--scores", nargs="+", action="extend", default=[], metavar="DIR",
                   help="extra score directories, joined by uid, for M-FLYT input columns not in the pool")
    p.add_argument("--workers", type=int, default=1,
                   help="shards scored in parallel (worker processes; they exit when the run does, even if killed)")
    p.add_argument("--engine", choices=["local", "ray"], default="local", help="where shards are scored")
    p.add_argument("--pair", choices=["b32", "l14"], default="l14", help="DataComp embedding pair to read")
    p.add_argument("--batch-rows", type=int, default=8192, help="rows read and scored at a time")
    p.add_argument("--seed", type=int, default=0, help="seed of the pool samples (negclip_loss, classifier, image_based, dedup)")
    p.add_argument("--negclip-batches", type=int, default=d.negclip_batches, help="negclip_loss: reference batches")
    p.add_argument("--negclip-batch-size", type=int, default=d.negclip_batch_size,
                   help="negclip_loss: batch size (the example plus batch-size - 1 pool examples)")
    p.add_argument("--teacher-temperature", type=float, default=d.teacher_temperature,
                   help="negclip_loss: the teacher CLIP's temperature (1 / logit scale)")
    p.add_argument("--clusters", type=int, default=d.clusters, help="image_based: k-means clusters")
    p.add_argument("--kmeans-sample", type=int, default=d.kmeans_sample, help="image_based: pool rows k-means is fitted on")
    p.add_argument("--classifier", default=None, metavar="PATH", help="classifier: load this saved probe instead of fitting")
    p.add_argument("--save-classifier", default=None, metavar="PATH", help="classifier: save the probe (.npz) for reuse")
    p.add_argument("--classifier-negatives", type=int, default=d.classifier_negatives,
                   help="classifier: pool rows sampled as negatives")
    p.add_argument("--dedup-embedding", choices=["image", "image+text"], default=d.dedup_embedding,
                   help="dedup: the embedding compared (image+text: both unit embeddings concatenated / sqrt(2))")
    p.add_argument("--dedup-clusters", type=int, default=d.dedup_clusters, help="dedup: k-means clusters (SemDeDup's k)")
    p.add_argument("--dedup-threshold", type=float, default=d.dedup_threshold,
                   help="dedup: rows with cosine >= this are linked; groups are the connected components")
    p.add_argument("--dedup-max-cluster", type=int, default=d.dedup_max_cluster,
                   help="dedup: clusters with more rows are split by k-means (exact duplicates kept together)")
    p.add_argument("--dedup-split", choices=["exact", "fast"], default=d.dedup_split,
                   help="dedup: clusters over --dedup-max-cluster are covered by overlapping leaves that lose no linked "
                   "pair (exact) or partitioned, faster where clusters have no clear sub-structure, losing pairs that "
                   "straddle a boundary (fast)")
    p.add_argument("--dedup-sample", type=int, default=d.dedup_sample, help="dedup: pool rows the k-means is fitted on")
    p.add_argument("--dedup-hash", default=d.dedup_hash, metavar="COLUMN|auto|none",
                   help="dedup: pool column of image hashes whose equal values always group (auto: sha256 when present)")
    p.add_argument("--dedup-spill", default=d.dedup_spill, metavar="DIR",
                   help="dedup: directory for its temporary files, ~2 bytes x dim + 48 a row (none given: inside --out)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    from flyt.api.score import ScoreConfig, score
    from flyt.scorers.registry import ScorerOptions

    options = ScorerOptions(**{k: getattr(args, k) for k in ScorerOptions.__dataclass_fields__})
    config = ScoreConfig(
        pool=args.pool, out=args.out, scorers=args.scorer, tasks=args.tasks, scores=args.scores, workers=args.workers,
        engine=args.engine, pair=args.pair, batch_rows=args.batch_rows, seed=args.seed, options=options,
        progress=False if args.no_progress else None,
    )
    try:
        result = score(config, check=False)
    except OSError as exc:  # the environment, not the input (a read-only --out, a full disk): one line, exit 1
        reason = exc.strerror or (str(exc).splitlines() or [type(exc).__name__])[0]
        print(f"flyt score: error: {exc.filename}: {reason}" if exc.filename else f"flyt score: error: {reason}", file=sys.stderr)
        return 1
    print(result.line(args.out))
    result.raise_for_failures()
    return 0

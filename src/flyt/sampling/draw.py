"""``sample()``: scores in, the drawn multiset and its summary out (what ``flyt.sample`` and the demo call)."""

from __future__ import annotations

import math
import numbers
from typing import Sequence

import numpy as np

from flyt.engines import get_map_shards
from flyt.errors import FlytError
from flyt.sampling.batched import batched_counts
from flyt.sampling.clocks import check_log_weights
from flyt.sampling.methods import SampleSpec
from flyt.sampling.randomness import checksum, combine_checksums, fingerprint
from flyt.sampling.select import Selection, check_total, select, uid_order


def sample(spec: SampleSpec, sources: Sequence, engine: str = "local", workers: int = 1) -> Selection:
    """Draw the multiset ``spec`` asks for from score ``sources`` (see flyt.sampling.sources)."""
    spec.validate()
    if isinstance(workers, bool) or not isinstance(workers, numbers.Integral) or workers < 1:
        raise FlytError(f"--workers must be a positive integer, got {workers!r}")
    sources = list(sources)
    # More workers than shards only idles, and a process pool forks all its workers up front.
    workers = min(workers, max(1, len(sources)))
    map_shards = get_map_shards(engine)
    clock = spec.clock()
    if spec.batch is not None:
        return _sample_batched(spec, sources, map_shards, workers)
    if spec.method == "threshold":
        return select(sources, clock, level=-spec.threshold, map_shards=map_shards, workers=workers)
    if spec.method == "topk":
        n = sum(s.num_rows() for s in sources)
        count = spec.count if spec.count is not None else max(1, math.floor(spec.fraction * n))
        if count > n:
            raise FlytError(f"--count {count} is more than the {n} rows of the pool")
        return select(sources, clock, total=count, map_shards=map_shards, workers=workers)
    return select(sources, clock, total=spec.total, map_shards=map_shards, workers=workers)


def _load(source):
    return source.load()


def _sample_batched(spec: SampleSpec, sources, map_shards, workers) -> Selection:
    """The authors' procedure on the whole pool in memory, rows in uid order (so the result
    does not depend on sharding; it does depend on the numpy generator, unlike the race)."""
    parts = list(map_shards(_load, list(sources), workers))
    if not parts:
        raise FlytError("no score shards given (empty pool)")
    for source, (_, s) in zip(sources, parts):
        check_log_weights(s, spec.temperature, source.where)
    pairs = np.concatenate([p for p, _ in parts])
    scores = np.concatenate([s for _, s in parts])
    if len(pairs) == 0:
        raise FlytError("the score shards have no rows (empty pool)")
    check_total(spec.total, len(pairs))
    order = uid_order(pairs)
    pairs, scores = pairs[order], scores[order]
    same = np.flatnonzero((pairs["f0"][1:] == pairs["f0"][:-1]) & (pairs["f1"][1:] == pairs["f1"][:-1]))
    if same.size:
        p = pairs[same[0]]
        raise FlytError(f"duplicate uid {int(p['f0']):016x}{int(p['f1']):016x} in the score shards")
    delta = spec.penalty if spec.method == "scs" else 0.0
    if spec.cap is not None and spec.total > spec.cap * len(pairs):
        raise FlytError(f"--total {spec.total} cannot be reached: at most {spec.cap * len(pairs)} draws from {len(pairs)} rows")
    counts = batched_counts(scores, spec.total, spec.batch, delta, spec.temperature, spec.cap, spec.seed)
    keep = counts > 0
    digest = combine_checksums([checksum(fingerprint(pairs), scores)])
    return Selection(pairs[keep], counts[keep], len(pairs), digest, math.nan)


def summarize(spec: SampleSpec, result: Selection, column: str | None = None, scores: str | None = None) -> dict:
    """The ``.json`` summary: what was drawn, from what, and what training needs."""
    total, unique = result.total, len(result.counts)
    hist = np.bincount(result.counts) if unique else np.zeros(1, np.int64)
    budget = spec.budget or (spec.total if spec.total is not None else result.pool_rows)
    out = {
        "method": spec.method,
        "procedure": "batched" if spec.batch is not None else ("race" if spec.method in ("scs", "hcs") else "rank"),
        "column": column,
        "scores": scores,
        "parameters": spec.parameters(),
        "seed": spec.seed,
        "pool_rows": result.pool_rows,
        "total": total,
        "unique": unique,
        "max_count": int(result.counts.max()) if unique else 0,
        "count_histogram": {str(c): int(k) for c, k in enumerate(hist) if c > 0 and k > 0},
        "budget": budget,
        "repeats_for_budget": (budget / total) if total else None,
        "input_checksum": f"{result.checksum:016x}",
        "input_checksum_kind": "sum mod 2^64 of splitmix64(uid, float64 score) over rows (order-independent)",
    }
    if spec.method in ("topk", "threshold") and unique:
        out["epochs_for_budget"] = math.ceil(budget / total)
    if spec.method == "topk" and not math.isnan(result.level):
        out["lowest_score_kept"] = -result.level
    if spec.method in ("scs", "hcs") and not math.isnan(result.level):
        out["level_log_time"] = result.level
    return out

"""``sample()``: scores in, the drawn multiset and its summary out (what ``flyt.sample`` and the demo call)."""

from __future__ import annotations

import math
import numbers
from typing import Sequence

import numpy as np

from flyt.engines import get_map_shards
from flyt.errors import FlytError
from flyt.sampling.batched import batched_counts, hard_cap_counts
from flyt.sampling.clocks import check_log_weights
from flyt.sampling.groups import grouped_sample
from flyt.sampling.methods import SampleSpec
from flyt.sampling.randomness import checksum, combine_checksums, fingerprint
from flyt.sampling.select import Selection, check_total, select, uid_order
from flyt.sampling.sources import ArrayScores, GeneratedScores


def sample(spec: SampleSpec, sources: Sequence, engine: str = "local", workers: int = 1,
           max_memory: int | None = None, spill_dir=None, groups=None) -> Selection:
    """Draw the multiset ``spec`` asks for from score ``sources`` (see flyt.sampling.sources).
    With ``spill_dir``, a draw larger than ``max_memory`` runs out of core there (flyt.sampling.select).
    With ``groups`` (flyt.sampling.group_keys), SCS / HCS count copies per group (flyt.sampling.groups)."""
    spill = {"max_memory": max_memory, "spill_dir": spill_dir}
    spec.validate()
    if isinstance(workers, bool) or not isinstance(workers, numbers.Integral) or workers < 1:
        raise FlytError(f"--workers must be a positive integer, got {workers!r}")
    sources = list(sources)
    # More workers than shards only idles, and a process pool forks all its workers up front.
    workers = min(workers, max(1, len(sources)))
    map_shards = get_map_shards(engine)
    clock = spec.clock()
    if groups is not None:
        return grouped_sample(spec, sources, groups, map_shards, workers, **spill)
    if spec.batch is not None:
        return _sample_batched(spec, sources, map_shards, workers)
    if spec.method == "threshold":
        cut = threshold_cut(spec.threshold, sources)
        return select(sources, clock, level=-cut, map_shards=map_shards, workers=workers, **spill)
    if spec.method == "topk":
        n = sum(s.num_rows() for s in sources)
        if spec.count is None and spec.rule() == "datacomp":
            return _datacomp_fraction(spec.fraction, n, sources, clock, map_shards, workers, spill)
        count = spec.count if spec.count is not None else max(1, math.floor(spec.fraction * n))
        if count > n:
            raise FlytError(f"--count {count} is more than the {n} rows of the pool")
        return select(sources, clock, total=count, map_shards=map_shards, workers=workers, **spill)
    return select(sources, clock, total=spec.total, map_shards=map_shards, workers=workers, **spill)


def _datacomp_fraction(fraction, n, sources, clock, map_shards, workers, spill) -> Selection:
    """DataComp's top fraction (baselines/apply_filter.py, get_threshold + the ``>=`` filter): with
    k = int(n * fraction) (float64 product, truncated), the cut t is the (k+1)-th largest score counting
    ties (entry k of the scores sorted descending) and every row with score >= t is kept: k + 1 rows plus
    any tied with t. DataComp fails for k = n (fraction 1); here every row is kept.

    Two passes of the rank race: the k+1 best rows give t (their last firing is at log-time -t), then
    every row firing at log-time <= -t. t is a stored value, so comparing in float64 is comparing in the
    column's dtype."""
    k = int(n * fraction)
    if k >= n:
        return select(sources, clock, total=n, map_shards=map_shards, workers=workers, **spill)
    best = select(sources, clock, total=k + 1, map_shards=map_shards, workers=workers, **spill)
    cut = -best.level if not math.isnan(best.level) else _lowest_score(best, sources, map_shards, workers)
    return select(sources, clock, level=-cut, map_shards=map_shards, workers=workers, **spill)


def _lowest_score(best: Selection, sources, map_shards, workers) -> float:
    """The lowest score among the rows of ``best`` (when the race could not report its last firing)."""
    f0, f1 = np.asarray(best.pairs["f0"]), np.asarray(best.pairs["f1"])
    found = [v for v in map_shards(_lowest_in_shard, [(s, f0, f1) for s in sources], workers) if v is not None]
    return min(found)


def _lowest_in_shard(item):
    """Lowest score of a shard's rows whose uid is in the sorted (f0, f1) list, or None."""
    source, f0, f1 = item
    pairs, scores = source.load()
    lo = np.searchsorted(f0, pairs["f0"], side="left")
    hi = np.searchsorted(f0, pairs["f0"], side="right")
    hit = np.zeros(len(pairs), dtype=bool)
    for r in np.flatnonzero(hi > lo):  # sorted by (f0, f1): f1 is sorted within one f0
        j = lo[r] + np.searchsorted(f1[lo[r] : hi[r]], pairs["f1"][r])
        hit[r] = j < hi[r] and f1[j] == pairs["f1"][r]
    return float(scores[hit].min()) if hit.any() else None


def score_dtype(source) -> np.dtype:
    """The dtype a source stores its scores in (float64 when it does not say)."""
    report = getattr(source, "score_dtype", None)
    if report is not None:
        return np.dtype(report())
    if isinstance(source, ArrayScores):
        return np.asarray(source.scores).dtype
    if isinstance(source, GeneratedScores):
        return np.dtype(np.float32)
    return np.dtype(np.float64)


def threshold_cut(x: float, sources) -> float:
    """A float64 cut c with ``score >= c`` exactly when ``score >= X`` compared in each shard's own dtype,
    as DataComp's threshold baseline compares (a float32 column against float32(X), rounded to nearest).

    In dtype d the kept values are v >= d(X), i.e. the float64 cuts in (previous d value below d(X), d(X)];
    integer columns compare in float64. Shards of several dtypes need a cut in every interval."""
    lo, hi = -math.inf, math.inf
    for dtype in {score_dtype(s) for s in sources}:
        if dtype.kind != "f":
            dtype = np.dtype(np.float64)
        with np.errstate(over="ignore"):
            top = dtype.type(x)
        below = np.nextafter(top, dtype.type(-np.inf))
        lo, hi = max(lo, float(below)), min(hi, float(top))
    if not (lo < hi or lo == hi == -math.inf):  # X below the dtype's range: every row is kept
        raise FlytError(f"--threshold {x!r}: the shards store the score in several dtypes that round it differently; "
                        "store the column in one dtype or give a threshold they all represent")
    return hi


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
    if spec.method == "hcs":
        counts = hard_cap_counts(scores, spec.total, spec.batch, spec.cap, spec.temperature, spec.seed)
    else:
        counts = batched_counts(scores, spec.total, spec.batch, delta, spec.temperature, spec.cap, spec.seed)
    keep = counts > 0
    digest = combine_checksums([checksum(fingerprint(pairs), scores)])
    return Selection(pairs[keep], counts[keep], len(pairs), digest, math.nan)


def summarize(spec: SampleSpec, result: Selection, column: str | None = None, scores: str | None = None) -> dict:
    """The ``.json`` summary: what was drawn, from what, and what training needs."""
    total, unique = result.total, result.unique
    hist = result.histogram()
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
        "max_count": len(hist) - 1 if unique else 0,
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
    if getattr(result, "groups", None) is not None:  # --groups: what the copies were counted per
        out["groups"] = result.groups
    return out

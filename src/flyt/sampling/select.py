"""The pool-scale draw: per-shard passes plus a small global reduction.

1. Subsample pass (per shard): every k-th row (about SUBSAMPLE_ROWS in all).
2. On the subsample, bracket the global level: log-times tau_lo < tau_hi whose firing counts
   should fall just below and just above the total T.
3. Collect pass (per shard): every clock runs up to tau_hi; firings <= tau_lo are counted per
   example, firings in (tau_lo, tau_hi] are listed; only examples with a firing come back, with
   the shard's checksum and sorted uid fingerprints.
4. Global checks: every uid at most once in the pool; N(tau_lo) <= T <= N(tau_hi), else widen
   the bracket and repeat step 3 (rare).
5. The (T - N(tau_lo)) earliest listed firings complete the draw; exact ties at the last
   log-time go to the smaller uid. The result is the multiset of the T earliest firings.

Each example's firings depend on its uid, score and the seed alone, and the global steps only
sort, count and select, so the result is the same for any sharding, file order, number of
workers, engine, or bracket (the bracket only decides how much is listed in step 3).
Memory: the driver holds the result, 8 bytes per pool row of fingerprints (duplicate check)
and the listed firings (a few % of T).
"""

from __future__ import annotations

import math
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from tqdm import tqdm

from flyt.errors import FlytError
from flyt.sampling.randomness import checksum, combine_checksums, fingerprint

SUBSAMPLE_ROWS = 1 << 18  # examples the level search looks at; bounds driver memory and time
BLOCK_ROWS = 1 << 16  # rows processed at once inside a shard, so temporaries stay in cache
FP_BUCKETS = 16  # the duplicate check sorts fingerprints bucket by bucket (by their top bits)
MAX_ATTEMPTS = 6
# The race runs one vectorised round per firing index, so draws far beyond the pool's size cost
# rounds, not rows: refuse totals no subset needs rather than run for days.
MAX_DRAWS_PER_ROW = 1024


@dataclass
class Selection:
    """A drawn multiset: unique uids (sorted) and how many copies of each."""

    pairs: np.ndarray  # UID_DTYPE, sorted, unique
    counts: np.ndarray  # int64, >= 1
    pool_rows: int
    checksum: int
    level: float  # log-time of the last firing taken (nan when not known exactly)

    @property
    def total(self) -> int:
        return int(self.counts.sum())


# --------------------------------------------------------------------------- per-shard steps


@dataclass(frozen=True)
class _Subsample:
    """Every ``stride``-th row of a shard, as the clock's per-example state."""

    clock: object
    stride: int

    def __call__(self, source):
        pairs, scores = source.load(self.stride)
        self.clock.check(scores, source.where, self.stride)
        return self.clock.prepare(fingerprint(pairs), scores)


@dataclass
class _ShardPart:
    rows: int
    checksum: int
    fp_buckets: list  # sorted fingerprints, split by their top bits
    pairs: np.ndarray  # examples with a firing <= tau_hi
    count_lo: np.ndarray  # uint32, aligned with pairs
    between_t: np.ndarray
    between_i: np.ndarray  # index into pairs
    n_lo: int = 0
    n_hi: int = 0


@dataclass(frozen=True)
class _Collect:
    """Run the clocks of one shard up to tau_hi (see the module docstring, step 3)."""

    clock: object
    tau_lo: float
    tau_hi: float

    def __call__(self, source) -> _ShardPart:
        pairs, scores = source.load()
        self.clock.check(scores, source.where)
        fps, sums, sel_pairs, sel_counts, bts, bis = [], [], [], [], [], []
        n_sel = n_lo = n_hi = 0
        for start in range(0, len(pairs), BLOCK_ROWS):
            p, s = pairs[start : start + BLOCK_ROWS], scores[start : start + BLOCK_ROWS]
            fp = fingerprint(p)
            fps.append(fp)
            sums.append(checksum(fp, s))
            scan = self.clock.scan(*self.clock.prepare(fp, s), self.tau_lo, self.tau_hi)
            n_lo, n_hi = n_lo + scan.n_lo, n_hi + scan.n_hi
            hit = scan.count_lo > 0
            hit[scan.between_i] = True
            sel = np.flatnonzero(hit)
            position = np.empty(len(p), dtype=np.int64)
            position[sel] = np.arange(n_sel, n_sel + len(sel))
            sel_pairs.append(p[sel])
            sel_counts.append(scan.count_lo[sel])
            bts.append(scan.between_t)
            bis.append(position[scan.between_i])
            n_sel += len(sel)
        fp = np.sort(np.concatenate(fps)) if fps else np.zeros(0, np.uint64)
        edges = np.searchsorted(fp, _bucket_edges(), side="left")
        return _ShardPart(
            rows=len(pairs),
            checksum=combine_checksums(sums),
            fp_buckets=np.split(fp, edges),
            pairs=_cat(sel_pairs, pairs.dtype),
            count_lo=_cat(sel_counts, np.uint32),
            between_t=_cat(bts, np.float64),
            between_i=_cat(bis, np.int64),
            n_lo=n_lo,
            n_hi=n_hi,
        )


@dataclass(frozen=True)
class _FindFingerprints:
    wanted: np.ndarray

    def __call__(self, source):
        pairs, _ = source.load()
        rows = np.flatnonzero(np.isin(fingerprint(pairs), self.wanted))
        return [(source.where, int(r), int(pairs["f0"][r]), int(pairs["f1"][r])) for r in rows]


# --------------------------------------------------------------------------- helpers


def _apply(step_and_source):
    step, source = step_and_source
    return step(source)


def _cat(parts, dtype):
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


def _bucket_edges() -> np.ndarray:
    width = (1 << 64) // FP_BUCKETS
    return np.array([k * width for k in range(1, FP_BUCKETS)], dtype=np.uint64)


def uid_order(pairs: np.ndarray) -> np.ndarray:
    """Indices that sort uid pairs by (high, low) word.

    Sorts one uint64 per row, the high word's top bits with the row index packed below them
    (a plain value sort is many times faster than argsort at this scale), then fixes the rare
    groups whose packed prefixes tie.
    """
    n = len(pairs)
    if n < 2:
        return np.arange(n, dtype=np.int64)
    bits = np.uint64(int(n - 1).bit_length())
    packed = (pairs["f0"] >> bits) << bits
    packed |= np.arange(n, dtype=np.uint64)
    packed.sort()
    prefix = packed >> bits
    order = (packed & np.uint64((1 << int(bits)) - 1)).astype(np.int64)
    del packed
    tie = prefix[1:] == prefix[:-1]
    if tie.any():
        member = np.zeros(n, dtype=bool)
        member[1:] |= tie
        member[:-1] |= tie
        group = np.cumsum(np.concatenate([[True], ~tie]))
        pos = np.flatnonzero(member)
        rows = order[pos]
        order[pos] = rows[np.lexsort((pairs["f1"][rows], pairs["f0"][rows], group[pos]))]
    return order


def _check_duplicates(parts, sources, run, threads: int) -> None:
    """Every uid at most once in the whole pool: sort fingerprints bucket by bucket."""

    def repeated(b):
        fp = np.sort(np.concatenate([p.fp_buckets[b] for p in parts]))
        return fp[1:][fp[1:] == fp[:-1]]

    with ThreadPoolExecutor(max(1, threads)) as pool:  # numpy sorts release the GIL
        same = np.concatenate(list(pool.map(repeated, range(FP_BUCKETS))))
    for p in parts:
        p.fp_buckets = None
    if not same.size:
        return
    # A shared fingerprint is a duplicate uid unless two uids collide in 64 bits: confirm.
    seen = {}
    for part in run(_FindFingerprints(np.unique(same)), sources):
        for where, row, hi, lo in part:
            if (hi, lo) in seen:
                w0, r0 = seen[(hi, lo)]
                raise FlytError(f"duplicate uid {hi:016x}{lo:016x} ({w0} row {r0} and {where} row {row})")
            seen[(hi, lo)] = (where, row)
def _level(n_at: Callable[[float], int], target: float, start: float, slack: float, at_most: bool) -> float:
    """A log-time tau with n_at(tau) >= target (or <= target if at_most), within slack of it.

    n_at is non-decreasing; search outward from start, then bisect.
    """
    step = 1.0
    c = n_at(start)
    if c >= target:
        hi, c_hi = start, c
        lo = start - step
        while (c_lo := n_at(lo)) >= target:
            hi, c_hi, step = lo, c_lo, step * 2
            lo = hi - step
    else:
        lo, c_lo = start, c
        hi = start + step
        while (c_hi := n_at(hi)) < target:
            lo, c_lo, step = hi, c_hi, step * 2
            hi = lo + step
    for _ in range(200):
        if (at_most and target - c_lo <= slack) or (not at_most and c_hi - target <= slack):
            break
        mid = 0.5 * (lo + hi)
        if mid <= lo or mid >= hi:
            break
        c = n_at(mid)
        if c >= target:
            hi, c_hi = mid, c
        else:
            lo, c_lo = mid, c
    return lo if at_most else hi


def _bracket(clock, sub_a, sub_keys, rate: float, total: int, widen: float):
    """(tau_lo, tau_hi) expected to hold the total's level, from the subsample."""
    m = rate * total
    if len(sub_a) == 0:
        return -math.inf, math.inf

    def counts_at(tau):
        return clock.scan(sub_a, sub_keys, tau, tau).count_lo

    def n_at(tau):
        return int(counts_at(tau).sum(dtype=np.int64))

    start = clock.guess(sub_a, m)
    if m >= clock.capacity(len(sub_a)):
        mid = math.inf
        var = 0.0
    else:
        mid = _level(n_at, m, start, max(1.0, 0.01 * m), at_most=False)
        c = counts_at(mid).astype(np.float64)
        var = float((c * c).sum())
    # N(tau) / rate estimates the pool's count; its sampling variance is (1 - rate) * sum c^2.
    margin = widen * (6.0 * math.sqrt((1.0 - rate) * var) + 0.001 * m + 1.0)
    lo_t, hi_t = m - margin, m + margin
    tau_lo = -math.inf if lo_t <= 0 else _level(n_at, lo_t, min(mid, start), margin, at_most=True)
    if hi_t > clock.capacity(len(sub_a)) and clock.capacity(len(sub_a)) < math.inf:
        tau_hi = math.inf
    else:
        tau_hi = _level(n_at, hi_t, mid if mid < math.inf else start, margin, at_most=False)
    return tau_lo, tau_hi


# --------------------------------------------------------------------------- the driver


def select(
    sources: Sequence,
    clock,
    total: int | None = None,
    level: float | None = None,
    map_shards: Callable | None = None,
    workers: int = 1,
) -> Selection:
    """Draw the ``total`` earliest firings of ``clock`` over all sources (or, with ``level``,
    every firing at log-time <= level). ``map_shards(fn, items, workers)`` runs the per-shard
    steps (flyt.engines.local or flyt.engines.ray)."""
    if map_shards is None:
        from flyt.engines.local import map_shards

    def run(step, items):
        # Engines take module-level functions (Ray), so each item carries its step.
        results = map_shards(_apply, [(step, item) for item in items], workers)
        name = type(step).__name__.strip("_").lower()
        return tqdm(results, total=len(items), desc=f"sample: {name}", unit="shard", disable=not sys.stderr.isatty())

    sources = list(sources)
    if not sources:
        raise FlytError("no score shards given (empty pool)")
    n_rows = sum(s.num_rows() for s in sources)
    if n_rows == 0:
        raise FlytError(f"the score shards ({sources[0].where}, ...) have no rows (empty pool)")
    if level is not None:
        parts = list(run(_Collect(clock, level, level), sources))
        _check_duplicates(parts, sources, run, workers)
        return _combine(parts, sum(p.n_lo for p in parts), level)
    check_total(total, n_rows)
    capacity = clock.capacity(n_rows)
    if total > capacity:
        raise FlytError(f"--total {total} cannot be reached: at most {int(capacity)} draws from {n_rows} rows")
    # The subsample only places the bracket; the draw is exact whatever it holds.
    stride = max(1, n_rows // SUBSAMPLE_ROWS)
    subs = list(run(_Subsample(clock, stride), sources))
    sub_a = _cat([a for a, _ in subs], np.float64)
    sub_keys = _cat([k for _, k in subs], np.uint64)
    del subs
    widen, checked = 1.0, False
    for attempt in range(MAX_ATTEMPTS):
        tau_lo, tau_hi = _bracket(clock, sub_a, sub_keys, 1.0 / stride, total, widen)
        if attempt == MAX_ATTEMPTS - 1:
            tau_lo = -math.inf
        parts = list(run(_Collect(clock, tau_lo, tau_hi), sources))
        if not checked:
            _check_duplicates(parts, sources, run, workers)
            checked = True
        n_lo, n_hi = sum(p.n_lo for p in parts), sum(p.n_hi for p in parts)
        if n_lo <= total <= n_hi:
            return _combine(parts, total, math.nan)
        del parts
        widen *= 4.0
    raise FlytError(f"could not bracket the level for --total {total} (last counts {n_lo}..{n_hi})")


def check_total(total: int, n_rows: int) -> None:
    """At most MAX_DRAWS_PER_ROW draws per pool row on average (the race's rounds grow with the copies)."""
    if total > MAX_DRAWS_PER_ROW * n_rows:
        raise FlytError(f"--total {total} is more than {MAX_DRAWS_PER_ROW} draws per pool row ({n_rows} rows); "
                        f"no subset repeats examples that often")


def _combine(parts, total: int, level: float) -> Selection:
    """Merge shard parts and take the (total - N(tau_lo)) earliest listed firings.

    ``level`` is reported unless firings were taken from the list (then it is the last one's)."""
    pool_rows = sum(p.rows for p in parts)
    digest = combine_checksums(p.checksum for p in parts)
    n_lo = sum(p.n_lo for p in parts)
    offsets = np.cumsum([0] + [len(p.pairs) for p in parts])
    pairs = np.concatenate([p.pairs for p in parts])
    counts = np.concatenate([p.count_lo for p in parts]).astype(np.int64)
    between_t = np.concatenate([p.between_t for p in parts])
    between_i = np.concatenate([p.between_i + off for p, off in zip(parts, offsets)])
    parts.clear()  # the caller's list too: shard results are freed before the big sort
    need = total - n_lo
    if need > 0:
        level = float(np.partition(between_t, need - 1)[need - 1])
        earlier = between_t < level
        counts += np.bincount(between_i[earlier], minlength=len(counts))
        # Exact ties at the last log-time: the smaller uid goes first.
        tied = between_i[between_t == level]
        tied = tied[np.lexsort((pairs["f1"][tied], pairs["f0"][tied]))][: need - int(earlier.sum())]
        counts += np.bincount(tied, minlength=len(counts))
    del between_t, between_i
    keep = np.flatnonzero(counts)
    pairs, counts = pairs[keep], counts[keep]
    order = uid_order(pairs)
    return Selection(pairs[order], counts[order], pool_rows, digest, level)

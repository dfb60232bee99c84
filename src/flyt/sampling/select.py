"""The pool-scale draw: per-shard passes plus a small global reduction.

1. Subsample pass (per shard): every k-th row (about SUBSAMPLE_ROWS in all, or one row in
   SUBSAMPLE_SHARE on pools over 2^29 rows: the listed firings of step 3 are a share of T that falls
   like 1 / sqrt(subsample), so a larger pool needs a larger subsample to keep them a few GB).
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
Memory: in memory, the driver holds the result, 8 bytes per pool row of fingerprints (duplicate
check) and the listed firings (a few % of T). When that estimate (``in_memory_bytes``) exceeds
``max_memory`` and a spill directory is given, step 3 writes each shard's selected rows as a sorted
run (and its fingerprints) to disk, and steps 4-5 run on the files as engine tasks too
(flyt.sampling.external: the duplicate check by fingerprint range, the merge by uid range): the
driver then holds the listed firings and small per-shard counts, and the result comes back as
memory-mapped files (SpilledSelection), byte-identical to the in-memory one.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from flyt.errors import FlytError
from flyt.io.uids import UID_DTYPE
from flyt.progress import Progress
from flyt.sampling import external
from flyt.sampling.order import uid_order
from flyt.sampling.randomness import checksum, combine_checksums, fingerprint

SUBSAMPLE_ROWS = 1 << 18  # examples the level search looks at (at least); bounds driver memory and time
SUBSAMPLE_SHARE = 1 << 11  # ... and at least one pool row in this many (12.8B rows: 6.25M, 100 MB, ~2% of T listed)
BLOCK_ROWS = 1 << 16  # rows processed at once inside a shard, so temporaries stay in cache
FP_BUCKETS = 16  # the duplicate check sorts fingerprints bucket by bucket (by their top bits)
MAX_ATTEMPTS = 6
DEFAULT_MAX_MEMORY = 8 << 30  # bytes the driver may hold before the draw spills to disk
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

    @property
    def unique(self) -> int:
        return len(self.counts)

    def histogram(self) -> np.ndarray:
        """How many uids are drawn c times, indexed by c."""
        return np.bincount(self.counts) if len(self.counts) else np.zeros(1, np.int64)

    def chunks(self, rows: int = 1 << 22):
        """(pairs, counts) in uid order, ``rows`` unique uids at a time."""
        for i in range(0, len(self.counts), rows):
            yield self.pairs[i : i + rows], self.counts[i : i + rows]


class SpilledSelection(Selection):
    """A draw merged on disk (flyt.sampling.external, or the grouped split in flyt.sampling.groups):
    ``pairs`` and ``counts`` are read-only memory maps of two files (``stats``: pairs_path, counts_path,
    counts_dtype, default the runs' uint32); ``chunks`` reads them block by block, so writing never
    holds them."""

    def __init__(self, stats: dict, pool_rows: int, checksum: int, level: float):
        self.stats = stats
        n = stats["unique"]
        self._count_dtype = np.dtype(stats.get("counts_dtype", external.RUN_COUNT_DTYPE))
        pairs = _map(stats["pairs_path"], UID_DTYPE, n)
        counts = _map(stats["counts_path"], self._count_dtype, n)
        super().__init__(pairs, counts, pool_rows, checksum, level)

    @property
    def total(self) -> int:
        return int(self.stats["total"])

    def histogram(self) -> np.ndarray:
        return self.stats["histogram"]

    def chunks(self, rows: int = 1 << 22):
        n = self.stats["unique"]
        pairs_path, counts_path = self.stats["pairs_path"], self.stats["counts_path"]
        for i in range(0, n, rows):
            m = min(rows, n - i)
            yield (np.fromfile(pairs_path, dtype=UID_DTYPE, count=m, offset=16 * i),
                   np.fromfile(counts_path, dtype=self._count_dtype, count=m,
                               offset=self._count_dtype.itemsize * i).astype(np.int64))


def _map(path, dtype, n):
    return np.memmap(path, dtype=dtype, mode="r", shape=(n,)) if n else np.zeros(0, dtype)


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
    run: external.RunInfo | None = None  # spilled: pairs/count_lo sorted by uid in run.path (between_i follows)
    fp_path: str | None = None  # spilled: the shard's sorted fingerprints (indexed by range in the file)


@dataclass(frozen=True)
class _Collect:
    """Run the clocks of one shard up to tau_hi (see the module docstring, step 3)."""

    clock: object
    tau_lo: float
    tau_hi: float
    spill_dir: str | None = None  # write the selected rows (and fingerprints) there as a sorted run
    spill_fingerprints: bool = True

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
        if self.spill_dir is not None:
            return self._spill(pairs, sums, fp, sel_pairs, sel_counts, bts, bis, n_lo, n_hi)
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


    def _spill(self, pairs, sums, fp, sel_pairs, sel_counts, bts, bis, n_lo, n_hi) -> _ShardPart:
        sel = _cat(sel_pairs, pairs.dtype)
        order = uid_order(sel)
        rank = np.empty(len(sel), dtype=np.int64)
        rank[order] = np.arange(len(sel))
        between_i = rank[_cat(bis, np.int64)]
        run = external.write_run(self.spill_dir, sel[order], _cat(sel_counts, np.uint32)[order], between_i)
        fp_path = external.write_fingerprints(self.spill_dir, fp) if self.spill_fingerprints else None
        return _ShardPart(
            rows=len(pairs), checksum=combine_checksums(sums), fp_buckets=None, pairs=None, count_lo=None,
            between_t=_cat(bts, np.float64), between_i=between_i, n_lo=n_lo, n_hi=n_hi, run=run, fp_path=fp_path,
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


def _check_duplicates(parts, sources, run, threads: int, max_memory: int | None = None) -> None:
    """Every uid at most once in the whole pool: sort fingerprints bucket by bucket (spilled: in tasks)."""

    def repeated(b):
        fp = np.sort(np.concatenate([p.fp_buckets[b] for p in parts]))
        return fp[1:][fp[1:] == fp[:-1]]

    if parts and parts[0].fp_path is not None:  # spilled: tasks read the files one fingerprint range at a time
        paths = [p.fp_path for p in parts]
        external.release_memory()  # the collect pass's freed buffers, before the tasks hold their share
        try:
            same = external.repeated_fingerprints(run, [(p.fp_path, p.rows) for p in parts], max_memory or DEFAULT_MAX_MEMORY,
                                                  threads)
        finally:
            external.remove(paths)
        for p in parts:
            p.fp_path = None
    else:
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
    max_memory: int | None = None,
    spill_dir: str | None = None,
) -> Selection:
    """Draw the ``total`` earliest firings of ``clock`` over all sources (or, with ``level``,
    every firing at log-time <= level). ``map_shards(fn, items, workers)`` runs the per-shard
    steps (flyt.engines.local or flyt.engines.ray).

    With ``spill_dir``, a draw whose in-memory estimate (``in_memory_bytes``) exceeds ``max_memory``
    (default DEFAULT_MAX_MEMORY) goes out of core (flyt.sampling.external) and returns a
    SpilledSelection whose files live in ``spill_dir``; the result is the same either way."""
    if map_shards is None:
        from flyt.engines.local import map_shards

    def run(step, items):
        # Engines take module-level functions (Ray), so each item carries its step.
        results = map_shards(_apply, [(step, item) for item in items], workers)
        name = type(step).__name__.strip("_").lower()
        # a bar on a terminal only (flyt.progress's show=None), and none inside flyt.progress.quiet()
        return Progress(len(items), f"sample: {name}", unit="shard", show=None).iterate(results)

    sources, n_rows = pool_rows(sources)
    budget, spill = memory_plan(n_rows, total, max_memory, spill_dir)
    if level is not None:
        parts = list(run(_Collect(clock, level, level, spill), sources))
        _check_duplicates(parts, sources, run, workers, budget)
        return _finish(parts, sum(p.n_lo for p in parts), level, spill, budget, run, workers)
    check_total(total, n_rows)
    capacity = clock.capacity(n_rows)
    if total > capacity:
        raise FlytError(f"--total {total} cannot be reached: at most {int(capacity)} draws from {n_rows} rows")
    # The subsample only places the bracket; the draw is exact whatever it holds.
    stride = max(1, n_rows // max(SUBSAMPLE_ROWS, n_rows // SUBSAMPLE_SHARE))
    subs = list(run(_Subsample(clock, stride), sources))
    sub_a = _cat([a for a, _ in subs], np.float64)
    sub_keys = _cat([k for _, k in subs], np.uint64)
    del subs
    widen, checked = 1.0, False
    for attempt in range(MAX_ATTEMPTS):
        tau_lo, tau_hi = _bracket(clock, sub_a, sub_keys, 1.0 / stride, total, widen)
        if attempt == MAX_ATTEMPTS - 1:
            tau_lo = -math.inf
        parts = list(run(_Collect(clock, tau_lo, tau_hi, spill, not checked), sources))
        if not checked:
            _check_duplicates(parts, sources, run, workers, budget)
            checked = True
        n_lo, n_hi = sum(p.n_lo for p in parts), sum(p.n_hi for p in parts)
        if n_lo <= total <= n_hi:
            return _finish(parts, total, math.nan, spill, budget, run, workers)
        external.remove(p.run.path for p in parts if p.run is not None)
        del parts
        widen *= 4.0
    raise FlytError(f"could not bracket the level for --total {total} (last counts {n_lo}..{n_hi})")


def pool_rows(sources) -> tuple[list, int]:
    """The sources as a list and their row count; an empty pool is refused in one line."""
    sources = list(sources)
    if not sources:
        raise FlytError("no score shards given (empty pool)")
    n_rows = sum(s.num_rows() for s in sources)
    if n_rows == 0:
        raise FlytError(f"the score shards ({sources[0].where}, ...) have no rows (empty pool)")
    return sources, n_rows


def memory_plan(n_rows: int, total: int | None, max_memory: int | None, spill_dir) -> tuple[int, str | None]:
    """(the memory budget, the spill directory or None): a draw spills only when a directory is given and
    its in-memory estimate exceeds the budget."""
    budget = DEFAULT_MAX_MEMORY if max_memory is None else max_memory
    if spill_dir is None or in_memory_bytes(n_rows, total) <= budget:
        return budget, None
    os.makedirs(spill_dir, exist_ok=True)  # only a draw that spills leaves a directory to clean
    return budget, str(spill_dir)


def check_total(total: int, n_rows: int) -> None:
    """At most MAX_DRAWS_PER_ROW draws per pool row on average (the race's rounds grow with the copies)."""
    if total > MAX_DRAWS_PER_ROW * n_rows:
        raise FlytError(f"--total {total} is more than {MAX_DRAWS_PER_ROW} draws per pool row ({n_rows} rows); "
                        f"no subset repeats examples that often")


def in_memory_bytes(n_rows: int, total: int | None) -> int:
    """What the in-memory path holds at most, about: 8 B per pool row of fingerprints, and per
    drawn unique uid its pair, count and sort keys (~32 B; at most min(total, rows) of them)."""
    drawn = n_rows if total is None else min(int(total), n_rows)
    return 8 * n_rows + 32 * drawn


def _finish(parts, total: int, level: float, spill: str | None, max_memory: int, run, workers: int) -> Selection:
    if spill is None:
        return _combine(parts, total, level)
    try:
        return _combine_spilled(parts, total, level, spill, max_memory, run, workers)
    finally:
        external.remove(p.run.path for p in parts if p.run is not None)


def _combine_spilled(parts, total: int, level: float, spill: str, max_memory: int, run, workers: int) -> Selection:
    """``_combine`` on spilled runs: the same choice of listed firings, then the merge by uid range as tasks."""
    pool_rows = sum(p.rows for p in parts)
    digest = combine_checksums(p.checksum for p in parts)
    n_lo = sum(p.n_lo for p in parts)
    runs = [p.run for p in parts]
    rows = np.array([r.rows for r in runs], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(rows)])
    # The listed firings laid end to end, each shard's freed once copied: never held twice (19 B a firing).
    m = sum(len(p.between_t) for p in parts)
    between_t, between_i = np.empty(m, np.float64), np.empty(m, np.int64)
    between_bucket, between_zero = np.empty(m, np.uint16), np.empty(m, bool)
    at = 0
    for p, r, off in zip(parts, runs, offsets):  # the run files stay listed in parts, for cleanup
        n = len(p.between_t)
        between_t[at : at + n], between_i[at : at + n] = p.between_t, p.between_i + off
        between_bucket[at : at + n], between_zero[at : at + n] = r.listed_bucket, r.listed_zero
        p.between_t = p.between_i = r.listed_bucket = r.listed_zero = None
        at += n
    chosen = np.zeros(0, np.int64)
    need = total - n_lo
    if need > 0:
        level = float(np.partition(between_t, need - 1)[need - 1])
        earlier = np.flatnonzero(between_t < level)
        tied = np.flatnonzero(between_t == level)
        tp = external.pairs_at([r.path for r in runs], rows, offsets, between_i[tied])
        tied = tied[np.lexsort((tp["f1"], tp["f0"]))][: need - len(earlier)]
        chosen = np.concatenate([earlier, tied])
        del earlier, tied
    del between_t
    step, jobs, unique = external.plan_merge(runs, between_i[chosen], between_bucket[chosen], between_zero[chosen], spill,
                                             max_memory, workers)
    del between_i, between_bucket, between_zero, chosen  # only the jobs' share is held while the tasks run
    external.release_memory()
    return SpilledSelection(external.merge(run, step, jobs, unique), pool_rows, digest, level)


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

"""The out-of-core half of the draw: shard results spilled as sorted runs, merged by uid range in tasks.

When the draw would not fit in ``max_memory`` (see ``flyt.sampling.select``), each shard's collect
pass writes to a spill directory instead of returning them:

- its selected examples as a *run*: uid pairs sorted by (high, low) word (16 B each), then their
  counts below the lower level (uint32), then where each of RUN_BUCKETS equal ranges of the high word
  starts in the run (RUN_BUCKETS + 1 int64 offsets), in one file;
- its sorted uid fingerprints (8 B per pool row), then where each of FP_RANGES equal fingerprint ranges
  starts (FP_RANGES + 1 int64 offsets), for the global duplicate check.

The driver keeps the firings listed near the level (a few % of T, as in memory) and, per shard, two
small per-bucket counts. Everything else runs as engine tasks (local processes or Ray tasks, at most
``2 * workers`` in flight), reading the files at offsets from their own trailers:

- **duplicate check**: a task takes one group of consecutive fingerprint ranges of every file, sorts
  them together and returns the repeated fingerprints (a handful);
- **merge**: a task takes one group of consecutive uid buckets of every run, adds the listed firings
  the driver chose there, and writes the merged unique uids and counts of its uid range, in uid order,
  into two shared files at its own offset. Inside a task, block by block, a round takes from every run
  the rows up to the smallest last uid among the runs' current blocks (so that run's block is used up
  and each round makes progress), sorts them and appends them.

Why the offsets are known before any task runs: a run row is kept exactly when its count below the
lower level is positive or a chosen listed firing lands on it. Each shard reports, per bucket, how many
of its rows have a positive count, and for each listed firing its bucket and whether its row's count is
zero; so the driver knows every range's number of unique uids, hence where it starts in the output.
Runs hold disjoint uids (the duplicate check ran first) and buckets are uid ranges, so the merged files
hold the same multiset, in the same order, as the in-memory path's: whatever the block size, the
number of ranges, the workers or the engine. Buckets split the high word evenly; uids that are hashes
(DataComp's, flyt's) spread over them, and uids that are not still merge correctly, in fewer tasks.

Memory: per worker one shard in the collect pass (as in memory); in the driver the listed firings
(~19 B each), per shard two counts per bucket (8 KB); per task, with ``budget`` = max_memory /
(2 x workers): a fingerprint group of about ``budget`` (capped by FP_RANGES groups), or in the merge one
or two blocks per run plus the round's sort, about ``budget``. Files are read at offsets, never
memory-mapped in bulk: mapped pages once touched count as the process's resident memory. On a cluster
the spill directory must be on storage every node reaches (``flyt sample --spill-dir``).
"""

from __future__ import annotations

import math
import os
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flyt.io.uids import UID_DTYPE
from flyt.sampling.order import uid_order

RUN_COUNT_DTYPE = np.uint32
MERGED_PAIRS = "merged-pairs"  # file name prefixes of the merged result (uid pairs, uint32 counts)
MERGED_COUNTS = "merged-counts"
FP_RANGES = 4096  # equal fingerprint ranges each fingerprint file is indexed by; duplicate-check tasks take groups
RUN_BUCKETS = 1024  # equal ranges of the uid's high word each run is indexed by; merge tasks take groups
EDGE_DTYPE = np.dtype("<i8")
FP_BYTES = 10  # a duplicate-check row: its fingerprint, the comparison mask, slack
ROW_BYTES = 28  # a merge buffer row: uid pair (16 B), int64 count (8 B), sort keys (~4 B)
TASKS_PER_WORKER = 4  # merge ranges per worker: enough to balance, few enough that runs are opened rarely


def _cuts(parts: int) -> np.ndarray:
    width = (1 << 64) // parts
    return np.array([k * width for k in range(1, parts)], dtype=np.uint64)


def _edges(sorted_keys: np.ndarray, parts: int) -> np.ndarray:
    """Where each of ``parts`` equal ranges of uint64 values starts in ``sorted_keys`` (parts + 1 offsets)."""
    inner = np.searchsorted(sorted_keys, _cuts(parts), side="left")
    return np.concatenate([[0], inner, [len(sorted_keys)]]).astype(EDGE_DTYPE)


def _read_edges(path: str, data_bytes: int, first: int, stop: int) -> tuple[int, int]:
    """Offsets ``first`` and ``stop`` of a file's trailer of edges (which follows ``data_bytes`` of data)."""
    e = np.fromfile(path, dtype=EDGE_DTYPE, count=stop - first + 1, offset=data_bytes + 8 * first)
    return int(e[0]), int(e[-1])


@dataclass
class RunInfo:
    """What a spilled shard tells the driver about its run (all small)."""

    path: str
    rows: int
    bucket_rows: np.ndarray  # uint32 (RUN_BUCKETS,): run rows per bucket
    bucket_kept: np.ndarray  # uint32 (RUN_BUCKETS,): run rows per bucket with a positive count (always kept)
    listed_bucket: np.ndarray  # uint16, per listed firing: the bucket of its row
    listed_zero: np.ndarray  # bool, per listed firing: its row's count is zero (kept only if the firing is taken)


def write_run(directory: str, pairs: np.ndarray, counts: np.ndarray, listed: np.ndarray) -> RunInfo:
    """Spill sorted ``pairs`` and their ``counts`` as one run file; ``listed``: run positions of the
    shard's listed firings."""
    fd, path = tempfile.mkstemp(prefix="run-", suffix=".bin", dir=directory)
    edges = _edges(pairs["f0"], RUN_BUCKETS)
    with os.fdopen(fd, "wb") as f:
        np.ascontiguousarray(pairs, dtype=UID_DTYPE).tofile(f)
        np.ascontiguousarray(counts, dtype=RUN_COUNT_DTYPE).tofile(f)
        edges.tofile(f)
    kept = np.concatenate([[0], np.cumsum(counts > 0, dtype=np.int64)])[edges]
    return RunInfo(
        path=path, rows=len(pairs), bucket_rows=np.diff(edges).astype(np.uint32), bucket_kept=np.diff(kept).astype(np.uint32),
        listed_bucket=(np.searchsorted(edges, listed, side="right") - 1).clip(0, RUN_BUCKETS - 1).astype(np.uint16),
        listed_zero=counts[listed] == 0,
    )


def write_fingerprints(directory: str, fp_sorted: np.ndarray) -> str:
    """Spill sorted fingerprints, then where each of FP_RANGES equal value ranges starts; returns the path."""
    fd, path = tempfile.mkstemp(prefix="fp-", suffix=".bin", dir=directory)
    with os.fdopen(fd, "wb") as f:
        np.ascontiguousarray(fp_sorted, dtype=np.uint64).tofile(f)
        _edges(fp_sorted, FP_RANGES).tofile(f)
    return path


def remove(paths) -> None:
    for p in paths:
        if p:
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass


def release_memory() -> None:
    """Give the driver's freed heap pages back to the system before the tasks run: glibc keeps the
    pages of many shard-sized arrays freed out of order (they would stay resident for the whole merge)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def task_budget(max_memory: int, workers: int) -> int:
    """Bytes one task may hold: ``workers`` tasks (and the driver) share ``max_memory`` on one machine."""
    return max(1, int(max_memory) // (2 * max(1, workers)))


# --------------------------------------------------------------------------- duplicate check


@dataclass(frozen=True)
class RepeatedFingerprints:
    """Task: the fingerprints found more than once in FP ranges [first, stop) of every file."""

    files: tuple  # ((path, rows), ...) of every fingerprint file

    def __call__(self, bounds: tuple[int, int]) -> np.ndarray:
        first, stop = bounds
        spans = [(path, *_read_edges(path, 8 * rows, first, stop)) for path, rows in self.files]
        fp = np.empty(sum(b - a for _, a, b in spans), dtype=np.uint64)
        at = 0
        for path, a, b in spans:  # read straight into one array, sorted in place: ~9 B a row in all
            if b > a:
                with open(path, "rb") as f:
                    f.seek(8 * a)
                    if f.readinto(memoryview(fp[at : at + b - a]).cast("B")) != 8 * (b - a):
                        raise RuntimeError(f"{path}: fingerprint file shorter than its index says")
                at += b - a
        fp.sort()
        return fp[1:][fp[1:] == fp[:-1]]


def repeated_fingerprints(run, files: list[tuple[str, int]], max_memory: int, workers: int) -> np.ndarray:
    """Fingerprints found more than once over all (sorted) fingerprint files, as ``run`` tasks, each
    sorting one group of consecutive fingerprint ranges of every file (8 B a row, plus a 1 B mask)."""
    rows = sum(n for _, n in files)
    groups = min(FP_RANGES, max(workers, math.ceil(FP_BYTES * rows / task_budget(max_memory, workers))))
    cut = np.linspace(0, FP_RANGES, groups + 1).round().astype(np.int64)
    found = list(run(RepeatedFingerprints(tuple(files)), [(int(a), int(b)) for a, b in zip(cut[:-1], cut[1:]) if b > a]))
    return np.concatenate(found) if found else np.zeros(0, np.uint64)


# --------------------------------------------------------------------------- merge


def pairs_at(run_paths: list[str], run_rows: np.ndarray, offsets: np.ndarray, index: np.ndarray) -> np.ndarray:
    """The uid pairs at global positions ``index`` (runs laid end to end)."""
    out = np.zeros(len(index), dtype=UID_DTYPE)
    run = np.searchsorted(offsets, index, side="right") - 1
    for r in np.unique(run):
        sel = np.flatnonzero(run == r)
        m = np.memmap(run_paths[r], dtype=UID_DTYPE, mode="r", shape=(int(run_rows[r]),))
        out[sel] = m[index[sel] - offsets[r]]
    return out


class _Reader:
    """Rows [start, stop) of one run read in blocks, with the extra firings (sorted run positions) added."""

    def __init__(self, path: str, rows: int, start: int, stop: int, extra: np.ndarray, block: int):
        self.path, self.rows, self.stop, self.extra, self.block = path, rows, stop, extra, block
        self.pos = start
        self.pairs = np.zeros(0, UID_DTYPE)
        self.counts = np.zeros(0, np.int64)

    def fill(self) -> bool:
        """Top the buffer up to at least ``block`` rows (while the range lasts); False when nothing is left.

        Topping up (not only refilling an empty buffer) keeps every round's bound, the smallest last
        uid over the buffers, far ahead: a run left with a few rows would otherwise make rounds tiny."""
        while len(self.pairs) < self.block and self.pos < self.stop:
            n = min(self.block, self.stop - self.pos)
            p = np.fromfile(self.path, dtype=UID_DTYPE, count=n, offset=16 * self.pos)
            c = np.fromfile(self.path, dtype=RUN_COUNT_DTYPE, count=n, offset=16 * self.rows + 4 * self.pos).astype(np.int64)
            a, b = np.searchsorted(self.extra, [self.pos, self.pos + n], side="left")
            if b > a:
                c += np.bincount(self.extra[a:b] - self.pos, minlength=n)
            keep = c > 0
            self.pairs = np.concatenate([self.pairs, p[keep]]) if len(self.pairs) else p[keep]
            self.counts = np.concatenate([self.counts, c[keep]]) if len(self.counts) else c[keep]
            self.pos += n
        return len(self.pairs) > 0

    def take_through(self, hi: int, lo: int):
        """Remove and return the leading rows with uid <= (hi, lo)."""
        f0 = self.pairs["f0"]
        a = int(np.searchsorted(f0, np.uint64(hi), side="left"))
        b = int(np.searchsorted(f0, np.uint64(hi), side="right"))
        n = a + int(np.searchsorted(self.pairs["f1"][a:b], np.uint64(lo), side="right"))
        p, c = self.pairs[:n], self.counts[:n]
        self.pairs, self.counts = self.pairs[n:], self.counts[n:]
        return p, c


@dataclass(frozen=True)
class MergeRange:
    """Task: merge uid buckets [first, stop) of every run into the shared merged files (module doc)."""

    runs: tuple  # ((path, rows), ...) of every run
    pairs_path: str
    counts_path: str
    block: int

    def __call__(self, job: dict) -> dict:
        readers = []
        for r, (path, rows) in enumerate(self.runs):
            start, stop = _read_edges(path, 20 * rows, job["first"], job["stop"])
            if stop > start:
                extra = job["extras"].get(r, np.zeros(0, np.int64))
                readers.append(_Reader(path, rows, start, stop, extra, self.block))
        active = [r for r in readers if r.fill()]
        unique = total = 0
        hist = np.zeros(1, np.int64)
        with open(self.pairs_path, "r+b") as fp, open(self.counts_path, "r+b") as fc:
            fp.seek(16 * job["offset"])
            fc.seek(4 * job["offset"])
            while active:
                hi, lo = min((int(r.pairs["f0"][-1]), int(r.pairs["f1"][-1])) for r in active)
                taken = [r.take_through(hi, lo) for r in active]
                pairs = np.concatenate([p for p, _ in taken])
                counts = np.concatenate([c for _, c in taken])
                order = uid_order(pairs)
                fp.write(pairs[order].tobytes())
                fc.write(counts[order].astype(RUN_COUNT_DTYPE).tobytes())
                unique += len(counts)
                total += int(counts.sum())
                h = np.bincount(counts)
                if len(h) > len(hist):
                    hist = np.concatenate([hist, np.zeros(len(h) - len(hist), np.int64)])
                hist[: len(h)] += h
                active = [r for r in active if r.fill()]
        if unique != job["unique"]:  # the runs changed under us (or a bug): never write a shifted result
            raise RuntimeError(f"merge of uid buckets {job['first']}..{job['stop'] - 1}: {unique} uids, "
                               f"{job['unique']} expected from the runs' counts ({self.pairs_path})")
        return {"unique": unique, "total": total, "histogram": hist}


def plan_ranges(bucket_rows: np.ndarray, tasks: int) -> np.ndarray:
    """Group bounds over buckets (first bucket of each group, then RUN_BUCKETS): about equal rows each."""
    cum = np.concatenate([[0], np.cumsum(bucket_rows, dtype=np.int64)])
    targets = np.arange(1, tasks) * (cum[-1] / max(1, tasks))
    inner = np.searchsorted(cum, targets, side="left").clip(1, RUN_BUCKETS - 1)
    return np.unique(np.concatenate([[0], inner, [RUN_BUCKETS]]))


def plan_merge(runs: list[RunInfo], add: np.ndarray, add_bucket: np.ndarray, add_zero: np.ndarray, directory: str,
               max_memory: int, workers: int) -> tuple[MergeRange, list[dict], int]:
    """The merge's tasks: the runs with the chosen listed firings added, by uid range, into two new files
    in ``directory`` (created here at their final size). ``add``: one global position per chosen firing
    (the runs laid end to end; repeats allowed), with its row's bucket and whether its row's count is
    zero. Returns (the task step, one job per range, unique uids in all); ``merge`` runs them."""
    bucket_rows = np.zeros(RUN_BUCKETS, np.int64)
    bucket_kept = np.zeros(RUN_BUCKETS, np.int64)
    for info in runs:
        bucket_rows += info.bucket_rows
        bucket_kept += info.bucket_kept
    bounds = plan_ranges(bucket_rows, TASKS_PER_WORKER * max(1, workers))
    group_of = np.searchsorted(bounds, np.arange(RUN_BUCKETS), side="right") - 1
    # Unique uids per range: the rows kept whatever is chosen, plus each distinct zero-count row chosen.
    unique = np.bincount(group_of, weights=bucket_kept, minlength=len(bounds) - 1).astype(np.int64)
    _, first = np.unique(add[add_zero], return_index=True)
    unique += np.bincount(group_of[add_bucket[add_zero][first]], minlength=len(unique))
    offsets = np.concatenate([[0], np.cumsum(unique)])
    tag = uuid.uuid4().hex[:8]
    pairs_path = str(Path(directory) / f"{MERGED_PAIRS}-{tag}.bin")
    counts_path = str(Path(directory) / f"{MERGED_COUNTS}-{tag}.bin")
    for path, width in ((pairs_path, 16), (counts_path, 4)):
        with open(path, "wb") as f:  # each task writes its own slice
            f.truncate(width * int(offsets[-1]))
    # The chosen firings of each range, split by run, as sorted run positions.
    run_start = np.concatenate([[0], np.cumsum([r.rows for r in runs], dtype=np.int64)])
    group = group_of[add_bucket]
    order = np.lexsort((add, group))
    add, group = add[order], group[order]
    jobs = []
    for g in np.flatnonzero(unique):
        a, b = np.searchsorted(group, [g, g + 1], side="left")
        mine = add[a:b]  # sorted
        which = np.searchsorted(run_start, mine, side="right") - 1
        cut = np.flatnonzero(np.diff(which)) + 1
        extras = {int(which[i]): mine[i:j] - run_start[which[i]] for i, j in zip([0, *cut], [*cut, len(mine)]) if j > i}
        jobs.append({"first": int(bounds[g]), "stop": int(bounds[g + 1]), "offset": int(offsets[g]),
                     "unique": int(unique[g]), "extras": extras})
    k = max(1, len(runs))
    # A round holds every run's buffer (up to 2 blocks after a top-up), then concatenates, orders and
    # permutes what it takes: about 8 blocks' worth of ROW_BYTES per run, kept under the task's budget.
    block = max(1024, task_budget(max_memory, workers) // (8 * ROW_BYTES * k))
    step = MergeRange(tuple((r.path, r.rows) for r in runs), pairs_path, counts_path, block)
    return step, jobs, int(offsets[-1])


def merge(run, step: MergeRange, jobs: list[dict], unique: int) -> dict:
    """Run ``plan_merge``'s jobs as ``run`` tasks; the result's statistics: pairs_path, counts_path,
    unique, total, max_count, histogram (int64, indexed by count)."""
    total = 0
    hist = np.zeros(1, np.int64)
    for res in run(step, jobs):
        total += res["total"]
        h = res["histogram"]
        if len(h) > len(hist):
            hist = np.concatenate([hist, np.zeros(len(h) - len(hist), np.int64)])
        hist[: len(h)] += h
    return {"pairs_path": step.pairs_path, "counts_path": step.counts_path, "unique": unique, "total": total,
            "max_count": len(hist) - 1 if unique else 0, "histogram": hist}

"""The out-of-core half of the draw: shard results spilled as sorted runs, merged in a streaming pass.

When the draw would not fit in ``max_memory`` (see ``flyt.sampling.select``), each shard's collect
pass writes to a spill directory, instead of returning them:

- its selected examples as a *run*: uid pairs sorted by (high, low) word (16 B each), then their
  counts below the lower level (uint32), in one file;
- its sorted uid fingerprints (8 B per pool row), for the global duplicate check.

The driver keeps only the firings listed near the level (a few % of T, as in memory). The duplicate
check then reads the fingerprint files one fingerprint range at a time (each range's rows sorted
together), and the merge reads every run in blocks, adds the firings taken from the list, and
writes the merged unique uids and their counts in uid order: block by block, a round takes from
every run the rows up to the smallest last uid among the runs' current blocks (so that run's block
is used up and each round makes progress), sorts them and appends them. Runs hold disjoint uids
(the duplicate check ran first), so the result is the same multiset, in the same order, as the
in-memory path's, whatever the block size.

Memory: per worker one shard (as in memory); in the driver the listed firings (16 B each), then
fingerprint ranges sorted in about ``max_memory / 2`` (all threads together), then in the merge one or
two blocks per run plus the round's sort, sized to about ``max_memory / 2``. Files are read, never
memory-mapped in bulk: mapped pages once touched count as the process's resident memory.
"""

from __future__ import annotations

import math
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from flyt.io.uids import UID_DTYPE
from flyt.sampling.order import uid_order

RUN_COUNT_DTYPE = np.uint32
MERGED_PAIRS = "merged-pairs.bin"
MERGED_COUNTS = "merged-counts.bin"  # uint32
FP_RANGES = 1024  # value ranges each fingerprint file is indexed by; the duplicate check groups them


def write_run(directory: str, pairs: np.ndarray, counts: np.ndarray) -> str:
    """Spill sorted ``pairs`` and their ``counts`` as one run file; returns its path."""
    fd, path = tempfile.mkstemp(prefix="run-", suffix=".bin", dir=directory)
    with os.fdopen(fd, "wb") as f:
        np.ascontiguousarray(pairs, dtype=UID_DTYPE).tofile(f)
        np.ascontiguousarray(counts, dtype=RUN_COUNT_DTYPE).tofile(f)
    return path


def write_fingerprints(directory: str, fp_sorted: np.ndarray) -> tuple[str, np.ndarray]:
    """Spill sorted fingerprints; returns the path and where each of FP_RANGES equal value ranges starts
    (FP_RANGES + 1 offsets), so the driver reads a range without searching (or mapping) the file."""
    fd, path = tempfile.mkstemp(prefix="fp-", suffix=".bin", dir=directory)
    with os.fdopen(fd, "wb") as f:
        np.ascontiguousarray(fp_sorted, dtype=np.uint64).tofile(f)
    width = (1 << 64) // FP_RANGES
    cuts = np.array([k * width for k in range(1, FP_RANGES)], dtype=np.uint64)
    edges = np.concatenate([[0], np.searchsorted(fp_sorted, cuts, side="left"), [len(fp_sorted)]]).astype(np.int64)
    return path, edges


def remove(paths) -> None:
    for p in paths:
        if p:
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass


def repeated_fingerprints(paths: list[str], edges: list[np.ndarray], rows: int, max_memory: int, threads: int) -> np.ndarray:
    """Fingerprints found more than once over all (sorted) fingerprint files, one range at a time
    (a range is a group of consecutive FP_RANGES value ranges; ``edges`` from ``write_fingerprints``)."""
    threads = max(1, threads)
    # Each range's rows are concatenated and sorted (~3 copies of 8 B), one range per thread at a time;
    # the number of ranges is capped (a tiny limit would otherwise mean millions of empty ones).
    ranges = min(FP_RANGES, max(1, math.ceil(3 * 8 * rows * threads / max(1, max_memory // 2))))
    groups = np.linspace(0, FP_RANGES, ranges + 1).round().astype(np.int64)

    def repeated(k):
        pieces = []
        for path, e in zip(paths, edges):
            a, b = int(e[groups[k]]), int(e[groups[k + 1]])
            # Read, never memory-mapped: mapped pages once touched count as this process's memory.
            pieces.append(np.fromfile(path, dtype=np.uint64, count=b - a, offset=8 * a) if b > a else np.zeros(0, np.uint64))
        fp = np.sort(np.concatenate(pieces)) if pieces else np.zeros(0, np.uint64)
        return fp[1:][fp[1:] == fp[:-1]]

    with ThreadPoolExecutor(threads) as pool:
        found = list(pool.map(repeated, range(ranges)))
    return np.concatenate(found) if found else np.zeros(0, np.uint64)


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
    """One run read in blocks, with the extra firings (sorted local positions) added to its counts."""

    def __init__(self, path: str, rows: int, extra: np.ndarray, block: int):
        self.path, self.rows, self.extra, self.block = path, rows, extra, block
        self.pos = 0
        self.pairs = np.zeros(0, UID_DTYPE)
        self.counts = np.zeros(0, np.int64)

    def fill(self) -> bool:
        """Top the buffer up to at least ``block`` rows (while the run lasts); False when nothing is left.

        Topping up (not only refilling an empty buffer) keeps every round's bound, the smallest last
        uid over the buffers, far ahead: a run left with a few rows would otherwise make rounds tiny."""
        while len(self.pairs) < self.block and self.pos < self.rows:
            n = min(self.block, self.rows - self.pos)
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


def merge_runs(run_paths: list[str], run_rows: list[int], extras: list[np.ndarray], directory: str, max_memory: int) -> dict:
    """Merge the runs into ``directory``/MERGED_PAIRS and MERGED_COUNTS; returns the result's statistics
    (unique, total, max_count, histogram as an int64 array indexed by count)."""
    k = max(1, len(run_paths))
    # A round holds every run's block (28 B a row with int64 counts), then concatenates, orders and
    # permutes what it takes (~3x more): about 4 blocks' worth in all, kept under max_memory / 2.
    block = max(1024, int(max_memory // (k * 28 * 16)))  # a buffer holds up to 2 blocks after a top-up
    readers = [_Reader(p, int(n), e, block) for p, n, e in zip(run_paths, run_rows, extras)]
    active = [r for r in readers if r.fill()]
    unique = total = 0
    hist = np.zeros(1, np.int64)
    with open(Path(directory) / MERGED_PAIRS, "wb") as fp, open(Path(directory) / MERGED_COUNTS, "wb") as fc:
        while active:
            hi, lo = min((int(r.pairs["f0"][-1]), int(r.pairs["f1"][-1])) for r in active)
            taken = [r.take_through(hi, lo) for r in active]
            pairs = np.concatenate([p for p, _ in taken])
            counts = np.concatenate([c for _, c in taken])
            order = uid_order(pairs)
            pairs, counts = pairs[order], counts[order]
            pairs.tofile(fp)
            counts.astype(RUN_COUNT_DTYPE).tofile(fc)
            unique += len(counts)
            total += int(counts.sum())
            h = np.bincount(counts)
            if len(h) > len(hist):
                hist = np.concatenate([hist, np.zeros(len(h) - len(hist), np.int64)])
            hist[: len(h)] += h
            for r in active:
                if not r.fill():
                    remove([r.path])  # used up: give its disk back before the merge ends
            active = [r for r in active if len(r.pairs)]
    for r in readers:
        remove([r.path])
    return {"unique": unique, "total": total, "max_count": len(hist) - 1 if unique else 0, "histogram": hist}

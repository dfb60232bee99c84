"""Group-aware Soft / Hard Cap Sampling (``flyt sample --groups DIR:COLUMN``): copies counted per group.

The process. Rows i carry weights w_i = exp(s_i / temp) and a group g(i) (flyt.sampling.group_keys);
c_g counts the draws of any member of g so far. Each draw picks row i with probability
    w_i e^{-delta c_g(i)} / sum_j w_j e^{-delta c_g(j)},
and with a cap K (HCS, or SCS's optional extra ``--cap``) no row of a group with c_g = K is drawn. HCS is
delta = 0 with the cap. Singleton groups make this plain SCS / HCS.

Why it is the ungrouped race over super-rows, then a split. Sum the probabilities over the members of g:
g is picked with probability W_g e^{-delta c_g} / sum_h W_h e^{-delta c_h} (0 when c_g = K), where
W_g = sum_{i in g} w_i; given g, the member is i with probability w_i / W_g, which depends on neither the
counts nor the past. So the sequence of picked groups is exactly the ungrouped sequential process over
one "super-row" per group with log-weight A_g = log W_g = logsumexp_{i in g}(s_i / temp), and the members
are an independent i.i.d. categorical(w / W_g) draw per copy. Hence, exactly:
1. the counts c_g are the clock race of flyt.sampling.clocks over the super-rows (same delta, cap, seed):
   a super-row's score is S_g = temp * A_g, so the race's s / temp is A_g. The temperature enters only
   there and in the split below; the penalty and the cap act on c_g, in the race's own units;
2. each c_g is split among the members by a multinomial(c_g, w_i / W_g), w_i = exp(s_i / temp) with the
   SAME temperature (not the raw scores). For HCS this is what makes a member's copies right: a member
   may take any number of its group's K copies, and sum over members <= K.
The multinomial is c_g independent categorical draws: copy k of g lands on the first member (in uid
order) whose cumulative weight exceeds u_k W_g, u_k uniform from counter-based randomness keyed by
(seed, the group's smallest uid, k), salted apart from the race's streams. A super-row's uid is its
group's smallest uid, so the race's keys are distinct per group. Everything is a function of the rows,
their groups and the seed alone: shard count, file order, workers and engine change nothing.

Singleton groups pass through untouched: the row itself (same uid, same float64 score, never S_g
recomputed), whose only member takes all c_g. With only singleton groups the draw is plain SCS / HCS
byte for byte.

What it means: a group of n equal-score copies is drawn like ONE example of score s + temp * log n,
so it gets about log(n) / delta more copies than a single copy would (not n times as many, as without
--groups). To count a group exactly as one example, drop all but one member instead (the ``dedup``
scorer's representative).

Passes and memory (driver). (A) per shard: scores and groups read, every row's group folded to a uint64
(``detect_hash``) and returned in row order: 8 B per pool row, or written to the spill directory with a
sorted copy when the draw spills (then the repeated values are found range by range, as select's
duplicate check). Values seen twice are the non-singleton groups; a packed bit per row marks their rows.
(B) per shard with marked rows: those rows (uid, score, key, row) come back; the driver holds them,
GROUPED_ROW_BYTES each (a pool whose grouped rows exceed --max-memory that way is refused up front), and
aggregates them into super-rows (sort by key, logsumexp). (C) the race of flyt.sampling.select over the
shards' singleton rows (each worker re-reads its shard and drops the marked rows) plus the super-rows.
(D) the split: per drawn copy of a non-singleton group, in blocks of SPLIT_BLOCK, then the members
merged into the draw (in memory, or streamed over a spilled draw's files block by block).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flyt.errors import FlytError
from flyt.io.uids import UID_DTYPE
from flyt.progress import Progress
from flyt.sampling.clocks import check_log_weights
from flyt.sampling.group_keys import KEY_DTYPE, UidIndex, detect_hash, source_stem, uid_hex
from flyt.sampling.order import uid_order
from flyt.sampling.randomness import checksum, combine_checksums, fingerprint, mix, seed_keys
from flyt.sampling.select import Selection, SpilledSelection, memory_plan, pool_rows, select
from flyt.sampling.sources import ArrayScores

# Driver memory per row of a group of two or more, beyond the plain draw's: uid, score, key, sorts, split.
# Measured (tracemalloc, 1M rows, 20% / 100% of them grouped): 95 / 134 B.
GROUPED_ROW_BYTES = 144
SPLIT_BLOCK = 1 << 20  # drawn copies split at once
MERGE_ROWS = 1 << 20  # rows of a spilled draw read at once by the merge
SPILL_RANGE_BITS = 10
SPILL_RANGES = 1 << SPILL_RANGE_BITS  # value ranges of the spilled detect hashes, checked a group at a time
_SPLIT_SALT = np.uint64(0x8CB92BA72F3D8DD7)
_STEP = np.uint64(0x9E3779B97F4A7C15)  # counter stride (the golden ratio in 64 bits, as the race's)
_HIGH_BITS = np.uint64(60)  # 16 value ranges of detect hashes for the in-memory repeated check


def check_method(spec) -> None:
    """--groups counts copies for SCS and HCS; the rank methods have no copies to count."""
    if spec.method not in ("scs", "hcs"):
        raise FlytError(f"--groups applies to --method scs or hcs (it counts copies per group), not {spec.method}")
    if spec.batch is not None:
        raise FlytError("--groups runs on the race of clocks; it does not combine with --batch")


# --------------------------------------------------------------------------- per-shard passes


@dataclass(frozen=True)
class _Tally:
    """Pass A: check the shard's log-weights, fold each row's group to a uint64 (row order)."""

    groups: object
    temperature: float
    spill_dir: str | None

    def __call__(self, source):
        pairs, scores = source.load()
        check_log_weights(scores, self.temperature, source.where)
        d = detect_hash(self.groups.keys_for(pairs, source.where, source_stem(source)))
        digest = checksum(fingerprint(pairs), scores)
        if self.spill_dir is None:
            return len(pairs), digest, d, None
        row_path = _write(self.spill_dir, d)  # row order: read back block by block for the marks
        d.sort()
        cuts = (np.arange(1, SPILL_RANGES, dtype=np.uint64) << np.uint64(64 - SPILL_RANGE_BITS))
        edges = np.concatenate([[0], np.searchsorted(d, cuts), [len(d)]]).astype(np.int64)
        return len(pairs), digest, row_path, (_write(self.spill_dir, d), edges)


def _write(directory: str, values: np.ndarray) -> str:
    fd, path = tempfile.mkstemp(prefix="groups-", suffix=".bin", dir=directory)
    with os.fdopen(fd, "wb") as f:
        values.tofile(f)
    return path


@dataclass(frozen=True)
class _Grouped:
    """Pass B: the shard's marked rows (members of groups of two or more) with their keys."""

    groups: object

    def __call__(self, item):
        source, packed, rows = item
        pairs, scores = source.load()
        if len(pairs) != rows:
            raise FlytError(f"{source.where}: the shard changed while sampling ({rows} rows, now {len(pairs)})")
        r = np.flatnonzero(np.unpackbits(packed, count=rows))
        keys = self.groups.keys_for(pairs[r], source.where, source_stem(source))
        return pairs[r], scores[r], keys, r


@dataclass(frozen=True)
class _Singletons:
    """A shard's rows whose group has no other member: what the race sees of it (``load`` as any source)."""

    source: object
    packed: np.ndarray | None  # bit per row: 1 = member of a larger group (None: no such row)
    rows: int  # rows left
    total: int  # rows of the shard

    @property
    def where(self) -> str:
        return self.source.where

    def num_rows(self) -> int:
        return self.rows

    def load(self, stride: int = 1):
        pairs, scores = self.source.load(stride)
        if self.packed is None:
            return pairs, scores
        grouped = np.unpackbits(self.packed, count=self.total)[::stride].astype(bool)
        return pairs[~grouped], scores[~grouped]


def _apply(step_and_item):
    step, item = step_and_item
    return step(item)


# --------------------------------------------------------------------------- the driver


@dataclass
class _Table:
    """Non-singleton groups: members sorted by (group, uid), with per-group offsets and weights."""

    pairs: np.ndarray  # members
    a: np.ndarray  # s / temp of each member
    start: np.ndarray  # first member of each group
    size: np.ndarray
    top: np.ndarray  # max a in the group
    super_pairs: np.ndarray  # the group's smallest uid
    super_scores: np.ndarray  # temp * logsumexp(a), or the raw score of a one-member group


def grouped_sample(spec, sources, groups, map_shards, workers: int = 1, max_memory: int | None = None,
                   spill_dir=None) -> Selection:
    """The draw of ``spec`` (scs or hcs) with copies counted per group of ``groups`` (module docstring)."""
    check_method(spec)

    def run(step, items, name):
        results = map_shards(_apply, [(step, item) for item in items], workers)
        # flyt.progress (as select.py): a bar on a terminal only, and none inside quiet() (the demo's draws)
        return Progress(len(items), f"sample: {name}", unit="shard", show=None).iterate(results)

    sources, n_rows = pool_rows(sources)
    budget, spill = memory_plan(n_rows, spec.total, max_memory, spill_dir)
    tallies = list(run(_Tally(groups, spec.temperature, spill), sources, "groups"))
    rows = [t[0] for t in tallies]
    digest = combine_checksums(t[1] for t in tallies)
    packed = _marks(tallies, spill, budget)
    del tallies
    grouped_rows = sum(int(np.unpackbits(p, count=n).sum()) for p, n in zip(packed, rows) if p is not None)
    if grouped_rows * GROUPED_ROW_BYTES > budget:
        raise FlytError(f"--groups: {grouped_rows} rows are in groups of two or more; holding them takes about "
                        f"{_size(grouped_rows * GROUPED_ROW_BYTES)}, more than --max-memory {_size(budget)}: "
                        "raise --max-memory")
    marked = [i for i, p in enumerate(packed) if p is not None]
    parts = list(run(_Grouped(groups), [(sources[i], packed[i], rows[i]) for i in marked], "grouped rows"))
    table = _aggregate(parts, [sources[i].where for i in marked], spec.temperature)
    race = [_Singletons(s, p, n - (0 if p is None else int(np.unpackbits(p, count=n).sum())), n)
            for s, p, n in zip(sources, packed, rows)]
    race = [s for s in race if s.rows]
    n_groups = sum(s.rows for s in race) + len(table.start)
    if len(table.start):
        race.append(ArrayScores(table.super_pairs, table.super_scores, "<groups of two or more rows>"))
    if spec.cap is not None and spec.total > spec.cap * n_groups:
        raise FlytError(f"--total {spec.total} cannot be reached: with --groups at most --cap {spec.cap} draws per group, "
                        f"{spec.cap * n_groups} from {n_groups} groups")
    selection = select(race, spec.clock(), total=spec.total, map_shards=map_shards, workers=workers,
                       max_memory=max_memory, spill_dir=spill_dir)
    info = {"from": groups.describe(), "groups": n_groups, "rows_in_larger_groups": grouped_rows,
            "larger_groups": len(table.start), "largest_group": int(table.size.max()) if len(table.size) else 1}
    result = _expand(selection, table, spec.seed, info, spill_dir) if len(table.start) else selection
    result.pool_rows, result.checksum = n_rows, digest
    result.groups = info
    return result


def _marks(tallies, spill: str | None, budget: int) -> list:
    """Per shard, a packed bit per row marking members of repeated detect hashes (None: no such row)."""
    if spill is None:
        repeated = []
        for b in range(16):
            fp = np.sort(np.concatenate([d[(d >> _HIGH_BITS) == b] for _, _, d, _ in tallies]))
            repeated.append(np.unique(fp[1:][fp[1:] == fp[:-1]]))
        repeated = np.concatenate(repeated)
        return [_pack(np.isin(d, repeated, assume_unique=False), len(d)) for _, _, d, _ in tallies]
    repeated = _repeated_spilled([t[3] for t in tallies], budget)
    out = []
    for n, _, row_path, (sorted_path, _) in tallies:
        bits = np.zeros(n, dtype=bool)
        for i in range(0, n, MERGE_ROWS):
            d = np.fromfile(row_path, dtype=np.uint64, count=min(MERGE_ROWS, n - i), offset=8 * i)
            bits[i : i + len(d)] = np.isin(d, repeated)
        _remove([row_path, sorted_path])
        out.append(_pack(bits, n))
    return out


def _repeated_spilled(files, budget: int) -> np.ndarray:
    """Values found more than once over the shards' sorted files, a group of value ranges at a time
    (each group's slices are concatenated and sorted: ~3 x 8 B a row, kept under budget / 2)."""
    edges = np.stack([e for _, e in files])  # (shards, SPILL_RANGES + 1)
    per_range = (edges[:, 1:] - edges[:, :-1]).sum(axis=0)
    found = []
    a = 0
    while a < SPILL_RANGES:
        b, rows = a + 1, int(per_range[a])
        while b < SPILL_RANGES and 24 * (rows + int(per_range[b])) <= budget // 2:
            rows += int(per_range[b])
            b += 1
        pieces = [np.fromfile(path, dtype=np.uint64, count=int(e[b] - e[a]), offset=8 * int(e[a])) for path, e in files]
        d = np.sort(np.concatenate(pieces))
        found.append(np.unique(d[1:][d[1:] == d[:-1]]))
        a = b
    return np.concatenate(found)


def _remove(paths) -> None:
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _pack(bits: np.ndarray, n: int):
    return np.packbits(bits) if n and bits.any() else None


def _aggregate(parts: list, wheres, temperature: float) -> _Table:
    """Super-rows of the groups of two or more rows: sorted by (key, uid); logsumexp of s / temp.
    Consumes ``parts`` field by field, so the shards' copies are freed as the pool-wide arrays are built."""
    fields = [list(f) for f in zip(*parts)] if parts else [[], [], [], []]
    parts.clear()
    # where each row came from (shard << 40 | row), only for naming a duplicate uid
    fields[3] = [(np.int64(i) << np.int64(40)) | r for i, r in enumerate(fields[3])]
    pairs, scores, keys, loc = (_take_all(f, dt) for f, dt in zip(fields, (UID_DTYPE, np.float64, KEY_DTYPE, np.int64)))
    order = np.lexsort((pairs["f1"], pairs["f0"], keys["k1"], keys["k0"]))
    pairs, keys, scores, loc = pairs[order], keys[order], scores[order], loc[order]
    del order
    new = np.ones(len(pairs), dtype=bool)
    new[1:] = (keys["k0"][1:] != keys["k0"][:-1]) | (keys["k1"][1:] != keys["k1"][:-1])
    del keys
    # A uid repeated in the pool has one group, so its copies sit side by side here.
    dup = np.flatnonzero(~new[1:] & (pairs["f0"][1:] == pairs["f0"][:-1]) & (pairs["f1"][1:] == pairs["f1"][:-1]))
    if dup.size:
        i = int(dup[0])
        (s0, r0), (s1, r1) = (divmod(int(loc[j]), 1 << 40) for j in (i, i + 1))
        raise FlytError(f"duplicate uid {uid_hex(pairs[i])} ({wheres[s0]} row {r0} and {wheres[s1]} row {r1})")
    del loc
    start = np.flatnonzero(new)
    del new
    size = np.diff(np.append(start, len(pairs)))
    a = scores / temperature
    top = np.maximum.reduceat(a, start) if len(a) else np.zeros(0)
    with np.errstate(under="ignore"):
        mass = np.add.reduceat(np.exp(a - np.repeat(top, size)), start) if len(a) else np.zeros(0)
    super_scores = temperature * (top + np.log(mass))
    one = size == 1  # a detect-hash collision of different keys: the row itself, exactly
    super_scores[one] = scores[start[one]]
    return _Table(pairs, a, start, size, top, pairs[start], super_scores)


def _take_all(arrays: list, dtype) -> np.ndarray:
    """Concatenate and empty the list (its arrays are freed once copied)."""
    out = _cat(arrays, dtype)
    arrays.clear()
    return out


def _cat(parts, dtype):
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


# --------------------------------------------------------------------------- the split


def split_counts(table: _Table, drawn: np.ndarray, seed: int) -> np.ndarray:
    """Member counts (int64, aligned with table.pairs): group g's drawn[g] copies, multinomial(w / W_g)."""
    counts = np.zeros(len(table.pairs), dtype=np.int64)
    member_group = np.repeat(np.arange(len(table.start)), table.size)
    with np.errstate(under="ignore"):
        w = np.exp(table.a - table.top[member_group])
    cum = _segmented_cumsum(w, member_group)
    keys = mix(seed_keys(fingerprint(table.super_pairs), seed) ^ _SPLIT_SALT)
    hit = np.flatnonzero(drawn > 0)
    block_end = np.cumsum(drawn[hit])
    lo = 0
    while lo < len(hit):
        # groups [lo, hi): at least one, and no more than SPLIT_BLOCK copies unless one group alone has more
        hi = max(lo + 1, int(np.searchsorted(block_end, (block_end[lo - 1] if lo else 0) + SPLIT_BLOCK, side="right")))
        g_ids = hit[lo:hi]
        c = drawn[g_ids]
        g = np.repeat(g_ids, c)
        first = np.repeat(np.cumsum(c) - c, c)
        k = (np.arange(len(g)) - first).astype(np.uint64)
        h = keys[g] + (k + np.uint64(1)) * _STEP
        mix(h)
        u = ((h >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53  # in (0, 1)
        left = table.start[g]
        right = left + table.size[g] - 1
        target = u * cum[right]
        while True:  # first member whose cumulative weight exceeds the target
            active = left < right
            if not active.any():
                break
            mid = (left + right) // 2
            go_right = active & (cum[mid] <= target)
            left = np.where(go_right, mid + 1, left)
            right = np.where(active & ~go_right, mid, right)
        counts += np.bincount(left, minlength=len(counts))
        lo = hi
    return counts


def _segmented_cumsum(x: np.ndarray, segment: np.ndarray) -> np.ndarray:
    """Inclusive cumulative sums restarting at each segment (segment ids non-decreasing). A doubling scan:
    an element's sum involves only its own segment's elements at fixed relative positions, so a group's
    cumulative weights do not depend on which other groups are present."""
    out = x.astype(np.float64, copy=True)
    shift = 1
    while shift < len(out):
        same = segment[shift:] == segment[:-shift]
        if not same.any():
            break
        out[shift:] = out[shift:] + np.where(same, out[:-shift], 0.0)
        shift *= 2
    return out


def _expand(selection: Selection, table: _Table, seed: int, info: dict, spill_dir) -> Selection:
    """Replace each drawn super-row of a larger group by its members' split counts."""
    index = UidIndex(table.super_pairs, "<groups>")
    drawn = np.zeros(len(table.start), dtype=np.int64)
    for pairs, counts in selection.chunks(MERGE_ROWS):
        g = index.find(pairs)
        drawn[g[g >= 0]] = counts[g >= 0]
    info["larger_groups_drawn"] = int((drawn > 0).sum())
    member = split_counts(table, drawn, seed)
    keep = member > 0
    m_pairs, m_counts = table.pairs[keep], member[keep]
    order = uid_order(m_pairs)
    m_pairs, m_counts = m_pairs[order], m_counts[order]
    if isinstance(selection, SpilledSelection):
        return _merge_spilled(selection, index, m_pairs, m_counts, spill_dir)
    other = index.find(selection.pairs) < 0
    pairs = np.concatenate([selection.pairs[other], m_pairs])
    counts = np.concatenate([np.asarray(selection.counts)[other], m_counts])
    order = uid_order(pairs)
    return Selection(pairs[order], counts[order], selection.pool_rows, selection.checksum, selection.level)


def _merge_spilled(selection: Selection, index: UidIndex, m_pairs, m_counts, spill_dir) -> Selection:
    """The members merged into a spilled draw, block by block, into a new directory of ``spill_dir``."""
    out_dir = Path(tempfile.mkdtemp(prefix="grouped-", dir=spill_dir))
    unique = total = 0
    hist = np.zeros(1, np.int64)
    taken = 0
    with open(out_dir / "pairs.bin", "wb") as fp, open(out_dir / "counts.bin", "wb") as fc:
        def write(p, c):
            nonlocal unique, total, hist
            order = uid_order(p)
            p[order].tofile(fp)
            np.asarray(c, dtype=np.int64)[order].tofile(fc)
            unique, total = unique + len(c), total + int(c.sum())
            h = np.bincount(c) if len(c) else np.zeros(1, np.int64)
            if len(h) > len(hist):
                hist = np.concatenate([hist, np.zeros(len(h) - len(hist), np.int64)])
            hist[: len(h)] += h

        for pairs, counts in selection.chunks(MERGE_ROWS):
            if not len(pairs):
                continue
            # members up to this block's last uid go in with it (both sides are in uid order)
            upto = int(np.searchsorted(m_pairs, pairs[-1:], side="right")[0]) if len(m_pairs) else 0
            other = index.find(pairs) < 0
            write(np.concatenate([pairs[other], m_pairs[taken:upto]]),
                  np.concatenate([np.asarray(counts, dtype=np.int64)[other], m_counts[taken:upto]]))
            taken = upto
        if taken < len(m_pairs):
            write(m_pairs[taken:], m_counts[taken:])
    stats = {"unique": unique, "total": total, "max_count": len(hist) - 1 if unique else 0, "histogram": hist,
             "pairs_path": str(out_dir / "pairs.bin"), "counts_path": str(out_dir / "counts.bin"),
             "counts_dtype": "int64"}
    return SpilledSelection(stats, selection.pool_rows, selection.checksum, selection.level)


__all__ = ["GROUPED_ROW_BYTES", "check_method", "grouped_sample", "split_counts"]

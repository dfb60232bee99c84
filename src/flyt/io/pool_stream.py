"""A pool streamed for training: examples drawn with replacement in row blocks, through a bounded shuffle buffer.

For pools whose embeddings do not fit in memory (a DataComp pool: 128M rows of l14 are ~780 GB as
float32). The method is open_clip's ``--dataset-resampled`` with a row block in place of a tar shard:

- **Blocks, with replacement.** A block is ``min(block_rows, rows_s)`` consecutive rows of shard ``s``,
  starting at a uniform row and wrapping round the shard's end; ``s`` is drawn with probability
  proportional to ``max(rows_s, block_rows)`` (0 for a shard with no kept rows). Then every row of the
  pool is read at the same rate: ``P(s) * min(block_rows, rows_s) / rows_s`` is proportional to
  ``block_rows`` for every shard, short or long. So the stream of rows is a uniform draw from the pool
  with replacement, made in contiguous blocks (the only access a 3 GB npz or a parquet file affords
  cheaply). Blocks are read through the row-range readers: ``NpyMember.read(start, stop)`` (one
  ``pread`` per block on a stored npz member; a compressed one decompresses from its start, ~80x
  slower) and the parquet row groups that hold the range (flyt shards: decoded in slices through a
  buffered stream, from the row group's start to the block's end; parquet cannot seek inside a row
  group, so a block costs ~0.04 s in a 10,000-row shard, ``flyt embed pool``'s default, and ~0.35 s
  in a 100,000-row one, l14: stream large pools from small flyt shards or the DataComp layout).
- **pool_fraction**: a row whose uid falls outside the kept fraction of uid space
  (``flyt.io.pool.fraction_limit``) is dropped as it is read, exactly the rows ``load_pool`` keeps.
- **Shuffle buffer, swap-remove-and-refill.** The buffer holds ``buffer_rows`` rows. A batch takes
  ``n`` distinct slots uniformly at random, hands their rows out, and refills those slots with the next
  ``n`` rows of the block stream (webdataset's shuffle buffer, which open_clip's resampled pipeline
  uses, done a batch at a time). Every row read is handed out exactly once, so the batches carry the
  block stream's marginal (uniform over the pool, with replacement); the buffer only spreads a block's
  rows over about ``buffer_rows / n`` batches. (Drawing from the buffer with replacement instead would
  hand out a row as many times as it happened to be drawn while it sat there: a bias the buffer adds.)
- **Memory**: the buffer (``buffer_rows x ((d_img + d_txt) x 4 + 8 K + ~110)`` bytes: float32
  embeddings, K float64 score columns, the row identity and uid string) plus the block being consumed
  (``block_rows`` rows, twice that while a wrapping block is joined), the open shards' readers (at most
  ``OPEN_SHARDS``: npz handles, parquet footers and ``GROUP_CACHE`` row groups of uid + score columns
  of DataComp parquets) and the joined score columns of ``JOIN_CACHE`` pool shards (rows x K x 8 bytes
  each). ``peak_rows_held`` counts the rows held (buffer + block) for tests.
- **State** (``state()`` / ``restore()``): the generator's state and the identities (shard, row) of
  the buffer's rows and of the block's unread rest, never their data; ``restore`` re-reads those rows,
  so a resumed stream continues exactly as the uninterrupted one.

The stream does not check uids for uniqueness across shards (that would hold every uid in memory);
``load_pool`` does.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from flyt.errors import FlytError
from flyt.io.arrays import embedding_matrix, float_column, l2_normalise
from flyt.io.datacomp import DataCompEmbeddings
from flyt.io.parquet import check_columns
from flyt.io.pool import IMAGE, TEXT, PoolShard, fraction_limit
from flyt.io.scores import ScoreDirs
from flyt.io.uids import uids_to_pairs

OPEN_SHARDS = 8  # shard readers kept open (npz handles, parquet footers)
GROUP_CACHE = 4  # decoded parquet row groups of uid + score columns per DataComp shard reader
JOIN_CACHE = 8  # pool shards whose score columns joined from score directories are kept
PARQUET_BUFFER = 1 << 22  # bytes: flyt shards' column chunks are read through a buffered stream, not whole
STREAM_SEED_TAG = 0x5354524D  # 'STRM': the stream's generator is its own, apart from the step draws


@dataclass
class Rows:
    """Rows of a pool, aligned across fields; ``ids`` names each as (shard index, row in shard)."""

    ids: np.ndarray  # (n, 2) int64
    uids: np.ndarray  # (n,) str (object)
    image: np.ndarray  # (n, d_img) float32, L2-normalised
    text: np.ndarray  # (n, d_txt) float32, L2-normalised
    scores: np.ndarray  # (n, K) float64

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, index) -> Rows:
        return Rows(self.ids[index], self.uids[index], self.image[index], self.text[index], self.scores[index])

    @staticmethod
    def concat(parts: list[Rows]) -> Rows:
        if len(parts) == 1:
            return parts[0]
        return Rows(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("ids", "uids", "image", "text", "scores")))


class _LRU(OrderedDict):
    """A mapping that keeps its ``size`` most recently used entries; ``on_evict`` sees each dropped value."""

    def __init__(self, size: int, on_evict=None):
        super().__init__()
        self.size, self.on_evict = size, on_evict

    def get_or(self, key, make):
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = make()
        self[key] = value
        while len(self) > self.size:
            _, old = self.popitem(last=False)
            if self.on_evict:
                self.on_evict(old)
        return value


class ShardRangeReader:
    """Open handles on one pool shard for repeated reads of row ranges [start, stop).

    ``columns``: score columns the shard's parquet holds. DataComp: embeddings from the npz by row
    range, uid and columns from the parquet row groups holding the range (the last ``GROUP_CACHE``
    decoded, they are small). flyt: the row groups holding the range, decoded in slices of the range's
    size through a buffered stream, so a large row group is never held whole.
    """

    def __init__(self, shard: PoolShard, columns: list[str], dims: tuple[int, int]):
        self.shard, self.columns, self.dims = shard, list(columns), dims
        names = shard.schema_names()
        self.light = ["uid", *self.columns]
        check_columns(shard.parquet, names, self.light + ([] if shard.is_datacomp else [IMAGE, TEXT]))
        try:
            self.pf = pq.ParquetFile(shard.parquet, buffer_size=PARQUET_BUFFER)
            sizes = [self.pf.metadata.row_group(g).num_rows for g in range(self.pf.num_row_groups)]
        except Exception as exc:
            raise FlytError(f"{shard.parquet}: unreadable parquet shard ({type(exc).__name__}: {exc})") from None
        self.starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        self.rows = int(self.starts[-1])
        self.emb = DataCompEmbeddings.open(shard.npz, shard.pair, self.rows) if shard.is_datacomp else None
        self._groups = _LRU(GROUP_CACHE)

    def _groups_of(self, start: int, stop: int) -> range:
        first = int(np.searchsorted(self.starts, start, side="right")) - 1
        last = int(np.searchsorted(self.starts, stop - 1, side="right")) - 1
        return range(first, last + 1)

    def _light_table(self, start: int, stop: int) -> pa.Table:
        parts = []
        for g in self._groups_of(start, stop):
            table = self._groups.get_or(g, lambda g=g: self.pf.read_row_group(g, columns=self.light))
            lo, hi = max(start, self.starts[g]) - self.starts[g], min(stop, self.starts[g + 1]) - self.starts[g]
            parts.append(table.slice(int(lo), int(hi - lo)))
        return pa.concat_tables(parts)

    def _scan(self, start: int, stop: int) -> pa.Table:
        """Rows [start, stop) with the embeddings (flyt shards): forward through each row group."""
        cols = self.light + [IMAGE, TEXT]
        parts, size = [], max(stop - start, 1)
        for g in self._groups_of(start, stop):
            at = int(self.starts[g])
            for rb in self.pf.iter_batches(batch_size=size, row_groups=[g], columns=cols):
                lo, hi = max(start, at), min(stop, at + rb.num_rows)
                if hi > lo:
                    parts.append(pa.Table.from_batches([rb.slice(lo - at, hi - lo)]))
                at += rb.num_rows
                if at >= stop:
                    break
        return pa.concat_tables(parts)

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """(uids, image, text, {column: float64}) of rows [start, stop); embeddings float32, unit rows."""
        where = f"{self.shard.parquet} [rows {start}..{stop - 1}]"
        try:
            if self.emb is not None:
                table = self._light_table(start, stop)
                image, text = self.emb.read(start, stop)
            else:
                table = self._scan(start, stop)
                image = l2_normalise(embedding_matrix(table, IMAGE, where, self.dims[0]))
                text = l2_normalise(embedding_matrix(table, TEXT, where, self.dims[1]))
        except (OSError, pa.ArrowException) as exc:
            raise FlytError(f"{self.shard.parquet}: unreadable parquet shard ({type(exc).__name__}: {exc})") from None
        if table.num_rows != stop - start:
            raise FlytError(f"{where}: read {table.num_rows} rows, expected {stop - start} (shard changed while training?)")
        if image.shape[1] != self.dims[0] or text.shape[1] != self.dims[1]:
            raise FlytError(f"{where}: embeddings are {image.shape[1]}/{text.shape[1]}-d, the pool's are "
                            f"{self.dims[0]}/{self.dims[1]}-d")
        uids = table.column("uid").to_numpy(zero_copy_only=False)
        return uids, image, text, {c: float_column(table, c, where) for c in self.columns}

    def close(self) -> None:
        if self.emb is not None:
            self.emb.close()
            self.emb = None


class JoinedColumns:
    """Score columns of pool rows that live in score directories (``flyt score`` outputs), joined by
    uid a whole pool shard at a time and kept for the last ``JOIN_CACHE`` shards, aligned with the
    shard's rows (``rows x K x 8`` bytes each; the uid strings are not kept)."""

    def __init__(self, dirs, shards: list[PoolShard]):
        self.dirs = ScoreDirs(dirs) if dirs else None
        self.shards = shards
        self._cache = _LRU(JOIN_CACHE)

    def get(self, s: int, columns: list[str]) -> np.ndarray:
        """(rows of shard s, len(columns)) float64."""
        if not columns:
            return np.zeros((self.shards[s].rows or 0, 0))
        if self.dirs is None:
            shard = self.shards[s]
            raise FlytError(f"{shard.parquet}: missing score column '{columns[0]}' (and no score directories given)")

        def join() -> np.ndarray:
            shard = self.shards[s]
            uids = shard.read_uids()
            found = self.dirs.join(uids, columns, shard.parquet, shard.stem)
            return np.stack([found[c] for c in columns], axis=1)

        return self._cache.get_or((s, tuple(columns)), join)


def split_columns(shard: PoolShard, score_columns) -> tuple[list[str], list[str]]:
    """(columns in the shard's parquet, columns to join from the score directories), in order."""
    names = set(shard.schema_names())
    return [c for c in score_columns if c in names], [c for c in score_columns if c not in names]


@dataclass
class PoolCensus:
    """What one pass over a pool's uid (and score) columns finds: rows kept per shard after
    pool_fraction, and the mean and (population) standard deviation of each score column over them."""

    kept: np.ndarray  # (S,) int64
    mean: np.ndarray  # (K,) float64
    std: np.ndarray  # (K,) float64

    @property
    def rows(self) -> int:
        return int(self.kept.sum())


def census(shards: list[PoolShard], fraction: float = 1.0, score_columns=(), score_dirs=(),
           batch_rows: int = 65536) -> PoolCensus:
    """Count the kept rows of each shard and the score columns' statistics, reading columns only.

    With ``fraction`` 1 and no score columns nothing is read: the counts are the parquet footers'.
    """
    score_columns = list(score_columns)
    for shard in shards:
        if shard.rows is None:
            raise FlytError(f"{shard.parquet}: unreadable parquet shard (its footer cannot be read)")
    if fraction >= 1.0 and not score_columns:
        return PoolCensus(np.array([s.rows for s in shards], dtype=np.int64), np.zeros(0), np.zeros(0))
    limit = fraction_limit(fraction)
    joined = JoinedColumns(score_dirs, shards)
    k = len(score_columns)
    count, mean, m2 = 0, np.zeros(k), np.zeros(k)
    kept = np.zeros(len(shards), dtype=np.int64)
    for s, shard in enumerate(shards):
        inside, outside = split_columns(shard, score_columns)
        extra = joined.get(s, outside) if outside else None
        for start, batch in shard.iter_batches(batch_rows, embeddings=False, columns=inside):
            where = f"{shard.parquet} [batch from row {start}]"
            keep = uids_to_pairs(batch.uids, where)["f0"] < limit if fraction < 1.0 else np.ones(len(batch), bool)
            kept[s] += int(keep.sum())
            if not k or not keep.any():
                continue
            values = {c: batch.columns[c][keep] for c in inside}
            if extra is not None:
                values |= {c: extra[start : start + len(batch)][keep, j] for j, c in enumerate(outside)}
            x = np.stack([values[c] for c in score_columns], axis=1)
            # Chan et al.'s pairwise update of (count, mean, sum of squared deviations)
            n_b, mean_b = len(x), x.mean(axis=0)
            m2_b = ((x - mean_b) ** 2).sum(axis=0)
            delta, total = mean_b - mean, count + n_b
            mean = mean + delta * (n_b / total)
            m2 = m2 + m2_b + delta**2 * (count * n_b / total)
            count = total
    std = np.sqrt(m2 / count) if count else np.zeros(k)
    return PoolCensus(kept, mean, std)


class ResampledPoolStream:
    """Batches of pool rows drawn with replacement, in blocks, through a shuffle buffer (module docstring).

    ``kept``: rows of each shard that pass ``fraction`` (``census``); a shard with none is never drawn.
    ``dims``: (d_img, d_txt). Deterministic for ``seed``; ``state()`` / ``restore()`` resume it.
    """

    def __init__(self, shards: list[PoolShard], kept: np.ndarray, dims: tuple[int, int], *, buffer_rows: int,
                 block_rows: int, seed: int, fraction: float = 1.0, score_columns=(), score_dirs=()):
        if buffer_rows < 1 or block_rows < 1:
            raise FlytError(f"pool stream: buffer_rows ({buffer_rows}) and block_rows ({block_rows}) must be positive")
        self.shards, self.dims = list(shards), dims
        self.buffer_rows, self.block_rows = int(buffer_rows), int(block_rows)
        self.fraction, self.limit = fraction, fraction_limit(fraction)
        self.score_columns = list(score_columns)
        rows = np.array([s.rows or 0 for s in self.shards], dtype=np.float64)
        weights = np.where(np.asarray(kept) > 0, np.maximum(rows, self.block_rows), 0.0)
        if weights.sum() == 0:
            raise FlytError("pool has no rows to stream (empty pool, or pool_fraction keeps none)")
        self.p = weights / weights.sum()
        self.rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), STREAM_SEED_TAG])))
        self._joined = JoinedColumns(score_dirs, self.shards)
        self._readers = _LRU(OPEN_SHARDS, on_evict=lambda r: r.close())
        self._buffer: Rows | None = None
        self._filled = 0
        self._pending: Rows | None = None  # the unread rest of the current block
        self._block_alloc = 0  # rows of the block the pending rows are a view of
        self.peak_rows_held = 0  # buffer + block: the instrumented memory bound
        self.blocks_read = 0

    # -- reading ------------------------------------------------------------------------------
    def _reader(self, s: int) -> ShardRangeReader:
        inside, _ = split_columns(self.shards[s], self.score_columns)
        return self._readers.get_or(s, lambda: ShardRangeReader(self.shards[s], inside, self.dims))

    def _read_range(self, s: int, start: int, stop: int) -> Rows:
        shard = self.shards[s]
        uids, image, text, cols = self._reader(s).read(start, stop)
        inside, outside = split_columns(shard, self.score_columns)
        extra = self._joined.get(s, outside)[start:stop] if outside else None
        k = len(self.score_columns)
        scores = np.empty((stop - start, k))
        for j, c in enumerate(self.score_columns):
            scores[:, j] = cols[c] if c in cols else extra[:, outside.index(c)]
        ids = np.stack([np.full(stop - start, s, dtype=np.int64), np.arange(start, stop, dtype=np.int64)], axis=1)
        return Rows(ids, uids, image, text, scores)

    def _read_block(self) -> Rows:
        s = int(self.rng.choice(len(self.shards), p=self.p))
        rows = int(self.shards[s].rows)
        n = min(self.block_rows, rows)
        start = int(self.rng.integers(rows))
        parts = [self._read_range(s, start, min(start + n, rows))]
        if start + n > rows:  # wrap round the shard's end
            parts.append(self._read_range(s, 0, start + n - rows))
        block = Rows.concat(parts)
        self.blocks_read += 1
        if self.fraction < 1.0:
            block = block.take(uids_to_pairs(block.uids, self.shards[s].parquet)["f0"] < self.limit)
        return block

    def _note(self) -> None:
        self.peak_rows_held = max(self.peak_rows_held, self._filled + self._block_alloc)

    def _fill(self, slots: np.ndarray) -> None:
        """Put the next len(slots) rows of the block stream into these buffer slots, in order."""
        i = 0
        while i < len(slots):
            if self._pending is None or not len(self._pending):
                self._pending, self._block_alloc = None, 0  # drop the spent block before reading the next
                self._pending = self._read_block()
                self._block_alloc = len(self._pending)
                self._note()
            k = min(len(self._pending), len(slots) - i)
            self._put(slots[i : i + k], self._pending.take(slice(0, k)))
            self._pending = self._pending.take(slice(k, None))
            i += k

    def _allocate(self) -> None:
        c, (di, dt), k = self.buffer_rows, self.dims, len(self.score_columns)
        self._buffer = Rows(np.zeros((c, 2), np.int64), np.empty(c, dtype=object), np.zeros((c, di), np.float32),
                            np.zeros((c, dt), np.float32), np.zeros((c, k)))

    def _put(self, slots: np.ndarray, rows: Rows) -> None:
        for f in ("ids", "uids", "image", "text", "scores"):
            getattr(self._buffer, f)[slots] = getattr(rows, f)

    # -- the stream ---------------------------------------------------------------------------
    def next_batch(self, n: int) -> Rows:
        """``n`` rows from distinct buffer slots (a copy); the slots are refilled from the blocks."""
        if n > self.buffer_rows:
            raise FlytError(f"pool stream: a batch of {n} rows needs a buffer of at least {n} rows (pool_buffer)")
        if self._buffer is None:
            self._allocate()
        if self._filled < self.buffer_rows:
            self._fill(np.arange(self._filled, self.buffer_rows))
            self._filled = self.buffer_rows
            self._note()
        slots = self.rng.choice(self.buffer_rows, size=n, replace=False)
        out = self._buffer.take(slots)  # fancy indexing copies
        self._fill(slots)
        return out

    def state(self) -> dict:
        """The stream's position: generator state and row identities (no row data)."""
        return {
            "version": 1,
            "rng": json.dumps(self.rng.bit_generator.state),
            "shards": [[s.stem, int(s.rows)] for s in self.shards],
            "buffer": self._buffer.ids[: self._filled].copy() if self._buffer is not None else np.zeros((0, 2), np.int64),
            "pending": self._pending.ids.copy() if self._pending is not None else np.zeros((0, 2), np.int64),
        }

    def restore(self, state: dict, where: str = "checkpoint") -> None:
        """Continue from ``state()``: the same generator state, the same rows in the same slots."""
        try:
            shards = [[str(a), int(b)] for a, b in state["shards"]]
            rng_state = json.loads(state["rng"])
            buffer_ids = np.asarray(state["buffer"], dtype=np.int64).reshape(-1, 2)
            pending_ids = np.asarray(state["pending"], dtype=np.int64).reshape(-1, 2)
        except (KeyError, TypeError, ValueError) as exc:
            raise FlytError(f"{where}: the pool stream's state is not readable ({type(exc).__name__}: {exc})") from None
        mine = [[s.stem, int(s.rows)] for s in self.shards]
        if shards != mine:
            diff = next((i for i, (a, b) in enumerate(zip(shards, mine)) if a != b), min(len(shards), len(mine)))
            was = shards[diff] if diff < len(shards) else "nothing"
            now = mine[diff] if diff < len(mine) else "nothing"
            raise FlytError(f"{where}: the pool changed since the checkpoint (shard {diff}: was {was}, now {now})")
        if len(buffer_ids) not in (0, self.buffer_rows):
            raise FlytError(f"{where}: the pool stream's buffer holds {len(buffer_ids)} rows, not pool_buffer "
                            f"({self.buffer_rows})")
        for ids in (buffer_ids, pending_ids):
            bad = (ids[:, 0] < 0) | (ids[:, 0] >= len(mine)) | (ids[:, 1] < 0)
            bad |= ids[:, 1] >= np.array([r for _, r in mine] + [0])[np.clip(ids[:, 0], 0, len(mine))]
            if bad.any():
                raise FlytError(f"{where}: the pool stream names row {ids[np.argmax(bad)].tolist()} that the pool lacks")
        self.rng.bit_generator.state = rng_state
        self._allocate()
        self._filled = len(buffer_ids)
        self._read_ids(buffer_ids, self._buffer)
        self._pending, self._block_alloc = None, 0
        if len(pending_ids):
            di, dt = self.dims
            m = len(pending_ids)
            self._pending = Rows(np.zeros((m, 2), np.int64), np.empty(m, dtype=object), np.zeros((m, di), np.float32),
                                 np.zeros((m, dt), np.float32), np.zeros((m, len(self.score_columns))))
            self._read_ids(pending_ids, self._pending)
            self._block_alloc = m
        self._note()

    def _read_ids(self, ids: np.ndarray, into: Rows) -> None:
        """Fill ``into`` (aligned with ``ids``) by re-reading those rows: sorted, in contiguous runs of
        at most ``block_rows`` rows, so the reads are the row-range reads the blocks used."""
        if not len(ids):
            return
        order = np.lexsort((ids[:, 1], ids[:, 0]))
        sid = ids[order]
        new = np.r_[True, (sid[1:, 0] != sid[:-1, 0]) | (sid[1:, 1] - sid[:-1, 1] > 1)]
        run_starts = np.flatnonzero(new).tolist() + [len(sid)]
        for a, b in zip(run_starts[:-1], run_starts[1:]):
            s, first = int(sid[a, 0]), int(sid[a, 1])
            # split a long run into reads of at most block_rows rows
            cuts = np.searchsorted(sid[a:b, 1], np.arange(first, int(sid[b - 1, 1]) + 1, self.block_rows)) + a
            for lo, hi in zip(cuts.tolist(), cuts[1:].tolist() + [b]):
                if hi <= lo:
                    continue
                r0, r1 = int(sid[lo, 1]), int(sid[hi - 1, 1]) + 1
                rows = self._read_range(s, r0, r1)
                block = rows.take(sid[lo:hi, 1] - r0)
                for f in ("ids", "uids", "image", "text", "scores"):
                    getattr(into, f)[order[lo:hi]] = getattr(block, f)

    def close(self) -> None:
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()

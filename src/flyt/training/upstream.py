"""Where each training step's upstream batch comes from: the whole pool in memory, or a resampled stream.

``pool_buffer`` (config) chooses:
- ``"auto"`` (default): in memory when the pool's embeddings, ``rows x pool_fraction x (d_img + d_txt)
  x 4`` bytes (rows from the parquet footers), take less than ``AUTO_MEMORY_BYTES`` (2 GiB), exactly
  as before streaming existed (so small pools, the demo and their resumes give the same results);
  else stream with a buffer of ``max(DEFAULT_STREAM_BUFFER, upstream_batch)`` rows;
- an integer: stream with that many rows in the shuffle buffer, whatever the pool's size.

In memory (``MemoryUpstream``): step t's batch is ``upstream_batch`` distinct rows drawn from the
generator of (seed, t), as the loop has always drawn them. Streaming (``StreamUpstream``): the batch
is the next one of ``flyt.io.pool_stream.ResampledPoolStream`` (rows with replacement, in blocks of
``pool_block`` rows, through the buffer; its own generator), whose state travels in the checkpoint.
The buffer costs ``pool_buffer x ((d_img + d_txt) x 4 + 8 K + ~110)`` bytes (K: M-FLYT score
columns; l14: about 6 KiB a row, 65,536 rows = 384 MiB; b32: about 4 KiB a row) plus one block of
``pool_block`` rows being read (see the stream module for the readers' small caches).
M-FLYT's standardisation statistics come from one pass over the score columns (``census``) when
streaming, from the loaded columns in memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from flyt.errors import FlytError
from flyt.io.datacomp import check_pair
from flyt.io.pool import IMAGE, TEXT, load_pool, pool_shards
from flyt.io.pool_stream import ResampledPoolStream, census
from flyt.training.config import TrainConfig

AUTO_MEMORY_BYTES = 2 * 2**30  # pool_buffer auto: pools whose float32 embeddings take less are held in memory
DEFAULT_STREAM_BUFFER = 65536  # pool_buffer auto: the streaming buffer's rows (at least upstream_batch)


@dataclass
class UpstreamBatch:
    """One step's global upstream batch (every data-parallel rank holds all of it and keeps its chunk)."""

    uids: np.ndarray  # (B,) str
    image: np.ndarray  # (B, d_img) float32, L2-normalised
    text: np.ndarray  # (B, d_txt) float32, L2-normalised
    scores: np.ndarray | None  # (B, K) float64: M-FLYT's inputs


class MemoryUpstream:
    """The whole pool in memory (``load_pool``); step t draws from the generator of (seed, t)."""

    streaming = False

    def __init__(self, cfg: TrainConfig):
        self.pool = load_pool(cfg.pool, embeddings=True, score_columns=cfg.score_columns, score_dirs=cfg.scores,
                              fraction=cfg.pool_fraction, pair=cfg.pair)
        self.rows = len(self.pool)
        self.dims = (self.pool.image.shape[1], self.pool.text.shape[1])
        self.uids = self.pool.uids

    def score_statistics(self) -> tuple[np.ndarray, np.ndarray]:
        return self.pool.scores.mean(axis=0), self.pool.scores.std(axis=0)

    def draw(self, rng: np.random.Generator, batch: int) -> UpstreamBatch:
        idx = np.sort(rng.choice(self.rows, size=batch, replace=False))
        p = self.pool
        return UpstreamBatch(p.uids[idx], p.image[idx], p.text[idx], p.scores[idx] if p.scores is not None else None)

    def state(self) -> None:
        return None

    def restore(self, state, where: str) -> None:
        if state is not None:
            raise FlytError(f"{where}: written by a streaming run (pool_buffer), but this run holds the pool in memory "
                            f"(the pool changed size?)")

    def close(self) -> None:
        pass


class StreamUpstream:
    """The pool streamed: blocks of rows with replacement through a shuffle buffer (module docstring)."""

    streaming = True

    def __init__(self, cfg: TrainConfig, shards, dims: tuple[int, int], buffer_rows: int):
        self.census = census(shards, cfg.pool_fraction, cfg.score_columns, cfg.scores)
        self.rows = self.census.rows
        if self.rows == 0:
            raise FlytError(f"pool directory {cfg.pool} has no rows (empty pool, or pool_fraction keeps none)")
        self.dims = dims
        self.uids = None  # not known in advance
        self.stream = ResampledPoolStream(shards, self.census.kept, dims, buffer_rows=buffer_rows,
                                          block_rows=cfg.pool_block, seed=cfg.seed, fraction=cfg.pool_fraction,
                                          score_columns=cfg.score_columns, score_dirs=cfg.scores)
        self.has_scores = bool(cfg.score_columns)

    def score_statistics(self) -> tuple[np.ndarray, np.ndarray]:
        return self.census.mean, self.census.std

    def draw(self, rng: np.random.Generator, batch: int) -> UpstreamBatch:
        rows = self.stream.next_batch(batch)  # the stream's own generator: rng (the step's) is for the tasks
        return UpstreamBatch(rows.uids, rows.image, rows.text, rows.scores if self.has_scores else None)

    def state(self) -> dict:
        """The stream's state as checkpoint values (tensors and plain values: read back with weights_only)."""
        s = self.stream.state()
        return {**s, "buffer": torch.from_numpy(s["buffer"]), "pending": torch.from_numpy(s["pending"])}

    def restore(self, state, where: str) -> None:
        if not isinstance(state, dict):
            raise FlytError(f"{where}: written by a run that held the pool in memory, but this run streams it "
                            f"(pool_buffer); resume with the run's pool_buffer")
        state = {**state, **{k: np.asarray(state[k]) for k in ("buffer", "pending") if isinstance(state.get(k), torch.Tensor)}}
        self.stream.restore(state, where)

    def close(self) -> None:
        self.stream.close()


def open_upstream(cfg: TrainConfig) -> MemoryUpstream | StreamUpstream:
    """In memory or streamed, as ``pool_buffer`` says (module docstring)."""
    shards = pool_shards(cfg.pool, cfg.pair)
    buffer = cfg.pool_buffer
    if buffer == "auto":
        size = embedding_bytes(shards)
        if size is None or size * cfg.pool_fraction < AUTO_MEMORY_BYTES:  # unreadable: load_pool names the fault
            return MemoryUpstream(cfg)
        buffer = max(DEFAULT_STREAM_BUFFER, cfg.upstream_batch)
    return StreamUpstream(cfg, shards, _dims(shards, cfg.pool), buffer)


def embedding_bytes(shards) -> int | None:
    """The pool's embeddings as float32 in memory, from the parquet footers (no data read): rows x
    (d_img + d_txt) x 4; a flyt shard whose embeddings are variable-size lists counts the columns'
    uncompressed size instead. None when a footer cannot be read."""
    total = 0
    for shard in shards:
        if shard.rows is None:
            return None
        if shard.is_datacomp:
            total += shard.rows * 2 * check_pair(shard.pair)[2] * 4
            continue
        try:
            pf = pq.ParquetFile(shard.parquet)
        except Exception:
            return None
        width = 0
        for name in (IMAGE, TEXT):
            field = pf.schema_arrow.field(name) if name in pf.schema_arrow.names else None
            if field is not None and pa.types.is_fixed_size_list(field.type):
                width += field.type.list_size * 4 * shard.rows
            else:
                md = pf.metadata
                width += sum(md.row_group(g).column(c).total_uncompressed_size for g in range(md.num_row_groups)
                             for c in range(md.num_columns) if md.row_group(g).column(c).path_in_schema.split(".")[0] == name)
        total += width
    return total


def _dims(shards, pool_dir) -> tuple[int, int]:
    """(d_img, d_txt): the DataComp pair's, or a flyt pool's first non-empty shard's."""
    if shards[0].is_datacomp:
        return (check_pair(shards[0].pair)[2],) * 2
    for shard in shards:
        if shard.rows:
            return shard.first_dims()
    raise FlytError(f"pool directory {pool_dir} has no rows (empty pool)")

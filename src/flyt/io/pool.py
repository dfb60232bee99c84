"""Pools of image-text pairs (ARCHITECTURE.md "Pool"): the one reader and the one writer.

A pool directory holds shards in one of two layouts:
- flyt pool shards ``*.parquet``: ``uid`` (32-hex string), ``image_embedding`` and
  ``text_embedding`` (list or fixed-size list of floats), optionally ``text``, ``source`` and float
  score columns;
- DataComp metadata: ``<stem>.parquet`` (``uid``, ``text``, score columns) beside ``<stem>.npz``
  (``b32_img``/``b32_txt`` 512-d, ``l14_img``/``l14_txt`` 768-d, same row order); the embedding
  pair is an option.

``PoolShard`` names one shard of either layout and streams it as ``Batch`` es, so memory is
bounded by the batch size, never by the pool; it is a small frozen dataclass, so it travels to
worker processes and Ray tasks. Training, scoring and sampling all read pools through it
(``pool_shards``); ``load_pool`` gathers a whole pool into memory on top of it. Embeddings come
out float32 and L2-normalised whatever the layout, so the same rows give the same arrays.
Rows are joined across different shard sets by uid, never by position.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from flyt.errors import FlytError
from flyt.io.arrays import embedding_matrix, fixed_size_list, float_column, l2_normalise
from flyt.io.atomic import write_parquet
from flyt.io.datacomp import DataCompEmbeddings, check_pair, datacomp_stems
from flyt.io.parquet import (
    check_columns,
    check_unique,
    list_shards,
    read_schema,
    read_table,
    row_count,
    shard_uids,
    take_rows,
)
from flyt.io.scores import ScoreDirs
from flyt.io.uids import uids_to_pairs

IMAGE = "image_embedding"
TEXT = "text_embedding"
CAPTION = "text"
DEFAULT_PAIR = "l14"


@dataclass
class Batch:
    """Rows of one pool shard, aligned across fields."""

    uids: np.ndarray  # (n,) str
    image: np.ndarray | None = None  # (n, d_img) float32, L2-normalised
    text: np.ndarray | None = None  # (n, d_txt) float32, L2-normalised
    captions: pa.Array | None = None  # (n,) strings (may hold nulls)
    columns: dict[str, np.ndarray] = field(default_factory=dict)  # float64 score columns

    def __len__(self) -> int:
        return len(self.uids)


@dataclass(frozen=True)
class PoolShard:
    """One shard of a pool: a flyt ``*.parquet`` shard, or a DataComp parquet + npz pair."""

    stem: str
    parquet: str
    npz: str | None = None  # set for DataComp shards
    pair: str | None = None  # DataComp embedding pair (b32 | l14)
    rows: int | None = None  # None: the parquet footer could not be read

    @property
    def is_datacomp(self) -> bool:
        return self.npz is not None

    def schema_names(self) -> list[str]:
        return read_schema(self.parquet).names

    def read_uids(self) -> np.ndarray:
        """The shard's uids, validated (present, 32 hex, unique in the shard)."""
        return shard_uids(read_table(self.parquet, ["uid"]), self.parquet)

    def iter_batches(
        self,
        batch_rows: int,
        embeddings: bool = True,
        captions: bool = False,
        columns: list[str] | tuple = (),
        dims: tuple[int, int] | None = None,
    ) -> Iterator[tuple[int, Batch]]:
        """Yield (first row, Batch) over the shard in order. Embeddings are float32, L2-normalised."""
        names = self.schema_names()
        cols = ["uid"] + list(columns)
        if captions:
            if CAPTION not in names:
                raise FlytError(f"{self.parquet}: missing column '{CAPTION}' (captions are needed by the caption scorer)")
            cols.append(CAPTION)
        flyt_emb = embeddings and not self.is_datacomp
        if flyt_emb:
            cols += [IMAGE, TEXT]
        check_columns(self.parquet, names, cols)
        emb = DataCompEmbeddings.open(self.npz, self.pair, self.rows) if embeddings and self.is_datacomp else None
        try:
            pf = pq.ParquetFile(self.parquet)
            start = 0
            for rb in pf.iter_batches(batch_size=batch_rows, columns=cols):
                table = pa.Table.from_batches([rb])
                n = table.num_rows
                where = f"{self.parquet} [batch from row {start}]"
                batch = Batch(uids=table.column("uid").to_numpy(zero_copy_only=False))
                if flyt_emb:
                    batch.image = l2_normalise(embedding_matrix(table, IMAGE, where, dims[0] if dims else None))
                    batch.text = l2_normalise(embedding_matrix(table, TEXT, where, dims[1] if dims else None))
                elif emb is not None:
                    batch.image, batch.text = emb.read(start, start + n)  # already unit rows
                if captions:
                    batch.captions = table.column(CAPTION).combine_chunks()
                for c in columns:
                    batch.columns[c] = float_column(table, c, where)
                yield start, batch
                start += n
        except OSError as exc:
            raise FlytError(f"{self.parquet}: unreadable parquet shard ({type(exc).__name__}: {exc})") from None
        finally:
            if emb is not None:
                emb.close()

    def take(self, rows: np.ndarray) -> Batch:
        """uids and L2-normalised embeddings of the given rows (any order)."""
        rows = np.asarray(rows, dtype=np.int64)
        if self.is_datacomp:
            uids = take_rows(self.parquet, rows, ["uid"]).column("uid").to_numpy(zero_copy_only=False)
            with DataCompEmbeddings.open(self.npz, self.pair, self.rows) as emb:
                image, text = emb.take(rows)
            return Batch(uids=uids, image=image, text=text)
        table = take_rows(self.parquet, rows, ["uid", IMAGE, TEXT])
        where = f"{self.parquet} [sampled rows]"
        return Batch(
            uids=table.column("uid").to_numpy(zero_copy_only=False),
            image=l2_normalise(embedding_matrix(table, IMAGE, where)),
            text=l2_normalise(embedding_matrix(table, TEXT, where)),
        )

    def first_dims(self) -> tuple[int, int]:
        """(image dim, text dim) of this shard."""
        if self.is_datacomp:
            return (check_pair(self.pair)[2],) * 2
        for _, batch in self.iter_batches(1):
            return batch.image.shape[1], batch.text.shape[1]
        raise FlytError(f"{self.parquet}: shard has no rows")


def pool_shards(pool_dir, pair: str = DEFAULT_PAIR) -> list[PoolShard]:
    """Every shard of a pool directory: DataComp when ``<stem>.npz`` files sit beside the parquets."""
    pool_dir = Path(pool_dir)
    shards = list_shards(pool_dir)
    stems = set(datacomp_stems(pool_dir))
    if not stems:
        return [PoolShard(p.stem, str(p), rows=row_count(p)) for p in shards]
    check_pair(pair)
    lonely = [p for p in shards if p.stem not in stems]
    if lonely:
        raise FlytError(f"{lonely[0]}: DataComp pool shard without {lonely[0].stem}.npz beside it")
    return [PoolShard(p.stem, str(p), npz=str(p.with_suffix(".npz")), pair=pair, rows=row_count(p)) for p in shards]


def fraction_limit(fraction: float) -> np.uint64:
    """``pool_fraction``'s filter: a row is kept when its uid's high 64 bits are below this (uids are
    random 128-bit numbers, so the kept rows are a uniform sample, the same however the pool is sharded)."""
    return np.uint64(min(fraction * 2.0**64, 2.0**64 - 2**11))


@dataclass
class PoolArrays:
    """A pool loaded into memory (for training): rows aligned across all fields."""

    uids: np.ndarray  # (n,) str
    image: np.ndarray | None = None  # (n, d_img) float32, L2-normalised
    text: np.ndarray | None = None  # (n, d_txt) float32, L2-normalised
    scores: np.ndarray | None = None  # (n, K) float64
    score_columns: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.uids)


def load_pool(
    pool_dir,
    embeddings: bool = True,
    score_columns: list[str] | tuple = (),
    score_dirs: list | tuple = (),
    fraction: float = 1.0,
    pair: str = DEFAULT_PAIR,
    batch_rows: int = 65536,
) -> PoolArrays:
    """Load a pool (embeddings and/or score columns) into memory, validated; either layout.

    Score columns are looked up first in the pool shards, then in the score directories, whose
    rows are joined to the pool by uid. ``fraction`` < 1 keeps only the rows whose uid falls in the
    first ``fraction`` of uid space (uids are random 128-bit numbers): a uniform sample that is the
    same however the pool is sharded, and memory in proportion to it.
    """
    shards = pool_shards(pool_dir, pair)
    extra = ScoreDirs(score_dirs, cache=True) if score_dirs else None
    limit = fraction_limit(fraction)
    uid_parts, img_parts, txt_parts, score_parts = [], [], [], []
    dims = None
    for shard in shards:
        in_shard = [c for c in score_columns if c in shard.schema_names()]
        if len(in_shard) < len(score_columns) and extra is None:
            missing = next(c for c in score_columns if c not in in_shard)
            raise FlytError(f"{shard.parquet}: missing score column '{missing}' (and no score directories given)")
        for start, batch in shard.iter_batches(batch_rows, embeddings, columns=in_shard, dims=dims):
            where = f"{shard.parquet} [batch from row {start}]"
            pairs = uids_to_pairs(batch.uids, where)
            keep = pairs["f0"] < limit if fraction < 1.0 else slice(None)
            uids = batch.uids[keep]
            uid_parts.append(uids)
            if embeddings:
                img_parts.append(batch.image[keep])
                txt_parts.append(batch.text[keep])
                if dims is None and len(batch):
                    dims = (batch.image.shape[1], batch.text.shape[1])
            if score_columns:
                joined = extra.join(uids, [c for c in score_columns if c not in in_shard], where, shard.stem) if extra else {}
                values = {c: batch.columns[c][keep] for c in in_shard} | joined
                score_parts.append(np.stack([values[c] for c in score_columns], axis=1))
    uids = np.concatenate(uid_parts) if uid_parts else np.zeros(0, dtype=object)
    if len(uids) == 0:
        raise FlytError(f"pool directory {pool_dir} has no rows (empty pool)")
    check_unique(uids_to_pairs(uids, str(pool_dir)), uids, f"pool {pool_dir}")
    return PoolArrays(
        uids=uids,
        image=np.concatenate(img_parts) if embeddings else None,
        text=np.concatenate(txt_parts) if embeddings else None,
        scores=np.concatenate(score_parts) if score_columns else None,
        score_columns=list(score_columns),
    )


def write_pool_shard(path, uids, image: np.ndarray, text: np.ndarray, columns: dict | None = None) -> Path:
    """Write one flyt pool shard atomically: ``uid``, both embeddings as fixed-size float32 lists,
    then ``columns`` in order (Arrow arrays as they are; numpy 2-D as fixed-size lists, 1-D as is)."""
    image, text = np.asarray(image, np.float32), np.asarray(text, np.float32)
    n = len(uids)
    if image.shape[0] != n or text.shape[0] != n:
        raise FlytError(f"{path}: {n} uids but {image.shape[0]} image and {text.shape[0]} text embeddings")
    data = {"uid": pa.array(np.asarray(uids).astype(str), pa.string()), IMAGE: fixed_size_list(image),
            TEXT: fixed_size_list(text)}
    for name, values in (columns or {}).items():
        if isinstance(values, (pa.Array, pa.ChunkedArray)):
            data[name] = values
        elif np.asarray(values).ndim == 2:
            data[name] = fixed_size_list(np.asarray(values))
        else:
            data[name] = pa.array(np.asarray(values))
    path = Path(path)
    write_parquet(pa.table(data), path)
    return path

"""Pool shards as sources of row batches, for both pool formats (ARCHITECTURE.md "Pool").

A ``ShardSource`` names one shard (a flyt ``*.parquet`` shard, or a DataComp ``<stem>.parquet`` +
``<stem>.npz`` pair) and streams it in row batches, so memory is bounded by the batch size (plus
the shard's uid column), never by the pool. Sources are small frozen dataclasses: they travel to
worker processes and Ray tasks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from flyt.errors import FlytError
from flyt.io.arrays import embedding_matrix, float_column
from flyt.io.datacomp import DataCompEmbeddings, check_pair, datacomp_stems
from flyt.io.pool import IMAGE, TEXT, l2_normalise, list_shards, read_table, shard_uids
from flyt.scorers.base import Batch

CAPTION = "text"


@dataclass(frozen=True)
class ShardSource:
    stem: str
    parquet: str
    npz: str | None = None  # set for DataComp shards
    pair: str | None = None  # DataComp embedding pair (b32 | l14)
    rows: int | None = None  # None: the parquet footer could not be read

    @property
    def is_datacomp(self) -> bool:
        return self.npz is not None

    def schema_names(self) -> list[str]:
        return read_table_schema(self.parquet).names

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
        cols = ["uid"] + [c for c in columns]
        if captions:
            if CAPTION not in names:
                raise FlytError(f"{self.parquet}: missing column '{CAPTION}' (captions are needed by the caption scorer)")
            cols.append(CAPTION)
        flyt_emb = embeddings and not self.is_datacomp
        if flyt_emb:
            cols += [IMAGE, TEXT]
        _check_columns(self.parquet, names, cols)
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
            uids = _take_rows(self.parquet, rows, ["uid"]).column("uid").to_numpy(zero_copy_only=False)
            with DataCompEmbeddings.open(self.npz, self.pair, self.rows) as emb:
                image, text = emb.take(rows)
            return Batch(uids=uids, image=image, text=text)
        table = _take_rows(self.parquet, rows, ["uid", IMAGE, TEXT])
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


def _take_rows(path, rows: np.ndarray, columns: list[str]) -> pa.Table:
    """The given rows of a parquet file, reading only the row groups that hold them."""
    pf = pq.ParquetFile(path)
    sizes = [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)]
    starts = np.concatenate([[0], np.cumsum(sizes)])
    group_of = np.searchsorted(starts, rows, side="right") - 1
    groups = np.unique(group_of)
    table = pf.read_row_groups([int(g) for g in groups], columns=columns)
    # position of each row inside the concatenation of the groups read
    offsets = np.concatenate([[0], np.cumsum([sizes[g] for g in groups])])
    local = offsets[np.searchsorted(groups, group_of)] + (rows - starts[group_of])
    return table.take(pa.array(local))


def _check_columns(path, names, cols) -> None:
    missing = [c for c in cols if c not in names]
    if missing:
        raise FlytError(f"{path}: missing column '{missing[0]}' (have: {', '.join(names)})")


def read_table_schema(path) -> pa.Schema:
    try:
        return pq.read_schema(path)
    except Exception as exc:
        raise FlytError(f"{path}: unreadable parquet shard ({type(exc).__name__}: {exc})") from None


def _row_count(path: Path) -> int | None:
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except Exception:
        return None  # reported when the shard is scored (a per-shard failure)


def list_sources(pool_dir, pair: str = "l14") -> list[ShardSource]:
    """Every shard of a pool directory: DataComp when ``<stem>.npz`` files sit beside the parquets."""
    pool_dir = Path(pool_dir)
    shards = list_shards(pool_dir)
    stems = set(datacomp_stems(pool_dir))
    if not stems:
        return [ShardSource(p.stem, str(p), rows=_row_count(p)) for p in shards]
    check_pair(pair)
    lonely = [p for p in shards if p.stem not in stems]
    if lonely:
        raise FlytError(f"{lonely[0]}: DataComp pool shard without {lonely[0].stem}.npz beside it")
    return [
        ShardSource(p.stem, str(p), npz=str(p.with_suffix(".npz")), pair=pair, rows=_row_count(p)) for p in shards
    ]

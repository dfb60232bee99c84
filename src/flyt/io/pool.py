"""Pools of image-text pairs stored as flyt pool shards (``*.parquet``).

A shard holds ``uid`` (32-hex string), ``image_embedding`` and ``text_embedding`` (list or
fixed-size list of floats), optionally ``text``, ``source`` and float score columns. Rows are
joined across different shard sets by uid, never by position.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from flyt.errors import FlytError
from flyt.io.arrays import embedding_matrix, float_column
from flyt.io.uids import uids_to_pairs

IMAGE = "image_embedding"
TEXT = "text_embedding"


def list_shards(directory, kind: str = "pool") -> list[Path]:
    """The ``*.parquet`` shards of a directory, sorted by name. Hidden temp files are skipped."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FlytError(f"{kind} directory {directory} does not exist")
    shards = sorted(p for p in directory.glob("*.parquet") if not p.name.startswith("."))
    if not shards:
        raise FlytError(f"{kind} directory {directory} has no .parquet shards (empty {kind})")
    return shards


def read_schema(path) -> pa.Schema:
    try:
        return pq.read_schema(path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise FlytError(f"{path}: unreadable parquet shard ({type(exc).__name__}: {exc})") from None


def read_table(path, columns=None) -> pa.Table:
    """Read one parquet shard; an unreadable file or a missing column is one clear error."""
    path = Path(path)
    schema = read_schema(path)
    if columns is not None:
        missing = [c for c in columns if c not in schema.names]
        if missing:
            raise FlytError(f"{path}: missing column '{missing[0]}' (have: {', '.join(schema.names)})")
    try:
        return pq.read_table(path, columns=columns)
    except Exception as exc:
        raise FlytError(f"{path}: unreadable parquet shard ({type(exc).__name__}: {exc})") from None


def shard_uids(table: pa.Table, where: str) -> np.ndarray:
    """Validated uid strings of a shard (present, well-formed, unique within the shard)."""
    if "uid" not in table.column_names:
        raise FlytError(f"{where}: missing column 'uid' (have: {', '.join(table.column_names)})")
    uids = table.column("uid").to_numpy(zero_copy_only=False)
    check_unique(uids_to_pairs(uids, where), uids, where)
    return uids


def check_unique(pairs: np.ndarray, uids: np.ndarray, where: str) -> None:
    """Raise naming the first duplicate uid."""
    order = np.lexsort((pairs["f1"], pairs["f0"]))
    s = pairs[order]
    dup = np.flatnonzero((s["f0"][1:] == s["f0"][:-1]) & (s["f1"][1:] == s["f1"][:-1]))
    if dup.size:
        rows = sorted(order[dup[0] : dup[0] + 2])
        raise FlytError(f"{where}: duplicate uid {uids[rows[1]]} (rows {rows[0]} and {rows[1]})")


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


def l2_normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def load_pool(
    pool_dir,
    embeddings: bool = True,
    score_columns: list[str] | tuple = (),
    score_dirs: list | tuple = (),
    fraction: float = 1.0,
) -> PoolArrays:
    """Load a pool (embeddings and/or score columns) into memory, validated.

    Score columns are looked up first in the pool shards, then in the score directories, whose
    rows are joined to the pool by uid. ``fraction`` < 1 keeps only the rows whose uid falls in the
    first ``fraction`` of uid space (uids are random 128-bit numbers): a uniform sample that is the
    same however the pool is sharded, and memory in proportion to it.
    """
    shards = list_shards(pool_dir)
    uid_parts, img_parts, txt_parts, score_parts = [], [], [], []
    dims = {IMAGE: None, TEXT: None}
    extra = _ScoreLookup(score_dirs) if score_dirs else None
    for path in shards:
        where = str(path)
        names = read_schema(path).names
        in_shard = [c for c in score_columns if c in names]
        cols = ["uid"] + ([IMAGE, TEXT] if embeddings else []) + in_shard
        table = read_table(path, cols)
        uids = shard_uids(table, where)
        if fraction < 1.0:
            keep = uids_to_pairs(uids, where)["f0"] < np.uint64(min(fraction * 2.0**64, 2.0**64 - 2**11))
            table, uids = table.filter(pa.array(keep)), uids[keep]
        uid_parts.append(uids)
        if embeddings:
            for name, parts in ((IMAGE, img_parts), (TEXT, txt_parts)):
                m = embedding_matrix(table, name, where, dims[name])
                if m.shape[0]:
                    dims[name] = m.shape[1]
                parts.append(l2_normalise(m))
        if score_columns:
            cols_here = {}
            for c in score_columns:
                if c in in_shard:
                    cols_here[c] = float_column(table, c, where)
                elif extra is not None:
                    cols_here[c] = extra.lookup(c, uids, where)
                else:
                    raise FlytError(f"{where}: missing score column '{c}' (and no score directories given)")
            score_parts.append(np.stack([cols_here[c] for c in score_columns], axis=1))
    uids = np.concatenate(uid_parts)
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


class _ScoreLookup:
    """Score columns from score directories, looked up by uid."""

    def __init__(self, score_dirs):
        tables = []
        for d in score_dirs:
            for path in list_shards(d, kind="scores"):
                t = read_table(path)
                shard_uids(t, str(path))
                tables.append((str(path), t))
        self.tables = tables
        self._index = {}

    def lookup(self, column: str, uids: np.ndarray, where: str) -> np.ndarray:
        if column not in self._index:
            parts = [(w, t) for w, t in self.tables if column in t.column_names]
            if not parts:
                raise FlytError(f"score column '{column}' is in neither the pool shards nor the score directories")
            keys = np.concatenate([t.column("uid").to_numpy(zero_copy_only=False) for _, t in parts])
            vals = np.concatenate([float_column(t, column, w) for w, t in parts])
            order = np.argsort(keys)
            self._index[column] = (keys[order], vals[order])
        keys, vals = self._index[column]
        pos = np.searchsorted(keys, uids)
        pos_c = np.minimum(pos, len(keys) - 1)
        found = (pos < len(keys)) & (keys[pos_c] == uids)
        if not found.all():
            r = int(np.flatnonzero(~found)[0])
            raise FlytError(f"{where}: row {r}: uid {uids[r]} has no '{column}' in the score directories")
        return vals[pos_c]

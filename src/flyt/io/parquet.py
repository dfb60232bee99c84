"""Parquet shards, the unit every flyt file set is stored in: listing, validated reads, uids.

A shard set is a directory of ``*.parquet`` files sorted by name (hidden temporary files skipped).
Every reader here turns an unreadable file or a missing column into one ``FlytError`` naming it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from flyt.errors import FlytError
from flyt.io.uids import uids_to_pairs


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


def row_count(path) -> int | None:
    """Rows of a shard from its footer; None when the footer cannot be read (reported later, per shard)."""
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except Exception:
        return None


def take_rows(path, rows: np.ndarray, columns: list[str]) -> pa.Table:
    """The given rows (any order) of a parquet file, reading only the row groups that hold them."""
    rows = np.asarray(rows, dtype=np.int64)
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


def check_columns(path, names, columns) -> None:
    """Raise naming the first of ``columns`` missing from ``names``."""
    missing = [c for c in columns if c not in names]
    if missing:
        raise FlytError(f"{path}: missing column '{missing[0]}' (have: {', '.join(names)})")

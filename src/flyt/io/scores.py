"""Score directories: parquet shards with ``uid`` plus one float column per score.

Written by ``flyt score``: one output shard per input pool shard, same stem, written atomically,
float32 columns (the dtype DataComp metadata uses for scores). Read back by uid, never by
position: ``ScoreDirs.join`` is the one place rows of different shard sets are matched.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from flyt.errors import FlytError
from flyt.io.arrays import float_column
from flyt.io.atomic import write_parquet
from flyt.io.parquet import list_shards, read_schema, read_table, shard_uids
from flyt.io.uids import uids_to_pairs


def score_table(uids, columns: dict[str, np.ndarray]) -> pa.Table:
    """uid + float32 score columns; integer and boolean columns (dedup's group ids, sizes and flags)
    keep their dtype."""
    data = {"uid": pa.array(np.asarray(uids), type=pa.string())}
    for name, values in columns.items():
        values = np.asarray(values)
        data[name] = pa.array(values if values.dtype.kind in "iub" else values.astype(np.float32))
    return pa.table(data)


def write_score_shard(out_dir, stem: str, uids, columns: dict[str, np.ndarray], metadata: dict | None = None) -> Path:
    """``<out_dir>/<stem>.parquet``, atomically; ``metadata``: parquet key-value metadata (what it was computed from)."""
    path = Path(out_dir) / f"{stem}.parquet"
    table = score_table(uids, columns)
    if metadata:
        table = table.replace_schema_metadata(metadata)
    write_parquet(table, path)
    return path


class ScoreDirs:
    """Score columns from one or more score directories, joined to any rows by uid.

    For each column the shard with the caller's stem is read first, and only uids still missing
    send the lookup on to the other shards: a score directory sharded like the pool costs one
    read per pool shard. ``cache=True`` keeps every shard read in memory (for whole-pool loads,
    where a directory sharded differently from the pool would otherwise be re-read per shard).
    """

    def __init__(self, dirs, cache: bool = False):
        self.dirs = [Path(d) for d in dirs]
        self._cache: dict | None = {} if cache else None

    def columns(self) -> list[str]:
        """Every score column the directories hold, in first-seen order."""
        names: dict[str, None] = {}
        for d in self.dirs:
            for path in list_shards(d, kind="scores"):
                names.update((c, None) for c in read_schema(path).names if c != "uid")
        return list(names)

    def _sorted_column(self, path: Path, column: str) -> tuple[np.ndarray, np.ndarray]:
        key = (str(path), column)
        if self._cache is not None and key in self._cache:
            return self._cache[key]
        t = read_table(path, ["uid", column])
        keys = shard_uids(t, str(path))
        vals = float_column(t, column, str(path))
        order = np.argsort(keys)
        result = keys[order], vals[order]
        if self._cache is not None:
            self._cache[key] = result
        return result

    def join(self, uids: np.ndarray, columns, where: str, stem: str | None = None) -> dict[str, np.ndarray]:
        """{column: float64 values aligned with ``uids``}; every uid must be found."""
        uids = np.asarray(uids)
        out = {}
        for c in columns:
            values = np.full(len(uids), np.nan)
            have = np.zeros(len(uids), dtype=bool)
            seen = False
            for d in self.dirs:
                shards = list_shards(d, kind="scores")
                shards.sort(key=lambda p: p.stem != stem)  # same stem first, stable otherwise
                for path in shards:
                    if c not in read_schema(path).names:
                        continue
                    seen = True
                    keys, vals = self._sorted_column(path, c)
                    if not len(keys):
                        continue
                    todo = np.flatnonzero(~have)
                    pos = np.searchsorted(keys, uids[todo])
                    pos_c = np.minimum(pos, len(keys) - 1)
                    hit = (pos < len(keys)) & (keys[pos_c] == uids[todo])
                    values[todo[hit]] = vals[pos_c[hit]]
                    have[todo[hit]] = True
                    if have.all():
                        break
                if have.all():
                    break
            if not seen:
                raise FlytError(f"{where}: score column '{c}' is in neither the pool shard nor the --scores directories")
            if not have.all():
                r = int(np.flatnonzero(~have)[0])
                raise FlytError(f"{where}: row {r}: uid {uids[r]} has no '{c}' in the --scores directories")
            out[c] = values
        return out


@dataclass(frozen=True)
class ParquetScores:
    """One score (or pool) parquet shard and one score column, read as (uid pairs, float64 scores): what
    the samplers read, a shard at a time (``load(stride)`` reads every stride-th row)."""

    path: str
    column: str

    @property
    def where(self) -> str:
        return self.path

    def num_rows(self) -> int:
        try:
            return pq.ParquetFile(self.path).metadata.num_rows
        except Exception as exc:
            raise FlytError(f"{self.path}: unreadable parquet shard ({type(exc).__name__}: {exc})") from None

    def score_dtype(self) -> np.dtype:
        """The column's stored dtype (a threshold compares in it, as DataComp does); float64 if not numeric."""
        schema = read_schema(self.path)
        if self.column not in schema.names:
            raise FlytError(f"{self.path}: missing column '{self.column}' (have: {', '.join(schema.names)})")
        kind = schema.field(self.column).type
        return np.dtype(kind.to_pandas_dtype()) if pa.types.is_floating(kind) else np.dtype(np.float64)

    def load(self, stride: int = 1):
        table = read_table(self.path, ["uid", self.column])
        scores = float_column(table, self.column, self.path)
        uids = table.column("uid")
        if stride > 1:  # parse only the uids asked for: parsing is most of a shard's read time
            uids, scores = uids.take(pa.array(np.arange(0, len(scores), stride))), scores[::stride]
        return uids_to_pairs(uids, self.path), scores


def score_sources(directory, column: str) -> list[ParquetScores]:
    """One source per ``*.parquet`` shard of a score directory (sorted by name)."""
    return [ParquetScores(str(p), column) for p in list_shards(directory, kind="scores")]

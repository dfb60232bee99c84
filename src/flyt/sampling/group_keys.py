"""Group keys for group-aware sampling (``flyt sample --groups DIR:COLUMN``): each pool row's group, by uid.

A group column holds integers (any width, e.g. the ``dedup`` scorer's int64 ``dedup_group``) or strings.
Every row gets a 128-bit key (k0, k1): an integer v is (v as uint64, 0), exact; a string is its 16-byte
BLAKE2b digest (equal strings, equal keys; two different strings share a key with probability 2^-128).
``detect_hash`` folds a key into one uint64 for the pool-wide "is this group a singleton" check; it is a
bijection of k0 for a fixed k1, so for integer columns that check is exact too.

A group directory is read shard by shard and joined to the score rows by uid (never by position): the
shard with the score shard's stem first (``flyt score`` writes one shard per pool shard, same stem), then
the others until every uid is found. A uid with no group, a null group, a non-integer non-string column
or a uid listed twice in a group shard is one FlytError naming the shard and row.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from flyt.errors import FlytError
from flyt.io.parquet import list_shards, read_table
from flyt.io.uids import UID_DTYPE, uids_to_pairs
from flyt.sampling.randomness import fingerprint, mix

KEY_DTYPE = np.dtype([("k0", "<u8"), ("k1", "<u8")])
_DETECT_SALT = np.uint64(0x5BD1E9955BD1E995)


def uid_hex(pair) -> str:
    return f"{int(pair['f0']):016x}{int(pair['f1']):016x}"


def detect_hash(keys: np.ndarray) -> np.ndarray:
    """One uint64 per key, for finding repeated groups; a bijection of k0 when k1 is fixed."""
    h = keys["k1"] ^ _DETECT_SALT
    mix(h)
    h ^= keys["k0"]
    return mix(h)


def value_keys(values, where: str, column: str) -> np.ndarray:
    """KEY_DTYPE keys of a group column (pyarrow or numpy array)."""
    arr = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(np.asarray(values))
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if arr.null_count:
        r = int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])
        raise FlytError(f"{where}: row {r}: group column '{column}' is null")
    keys = np.zeros(len(arr), dtype=KEY_DTYPE)
    if pa.types.is_integer(arr.type):
        v = arr.to_numpy(zero_copy_only=False)
        keys["k0"] = v.view(np.uint64) if v.dtype.itemsize == 8 else v.astype(np.int64).view(np.uint64)
        return keys
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type) or pa.types.is_binary(arr.type) \
            or pa.types.is_large_binary(arr.type):
        enc = arr.dictionary_encode()
        digests = b"".join(hashlib.blake2b(v.as_py() if isinstance(v.as_py(), bytes) else v.as_py().encode("utf-8"),
                                           digest_size=16).digest() for v in enc.dictionary)
        unique = np.frombuffer(digests, dtype="<u8").reshape(-1, 2) if digests else np.zeros((0, 2), np.uint64)
        idx = enc.indices.to_numpy(zero_copy_only=False)
        keys["k0"], keys["k1"] = unique[idx, 0], unique[idx, 1]
        return keys
    raise FlytError(f"{where}: group column '{column}' has type {arr.type}; --groups needs integers or strings")


class UidIndex:
    """Exact lookup of 128-bit uids: sorted 64-bit fingerprints, every candidate checked against the pair."""

    def __init__(self, pairs: np.ndarray, where: str = "uids"):
        self.pairs = np.asarray(pairs, dtype=UID_DTYPE)
        fp = fingerprint(self.pairs)
        self.order = np.argsort(fp, kind="stable")
        self.fp = fp[self.order]
        same = np.flatnonzero(self.fp[1:] == self.fp[:-1])
        if same.size:  # equal fingerprints: a repeated uid, unless two uids collide in 64 bits
            a, b = self.pairs[self.order[same]], self.pairs[self.order[same + 1]]
            dup = np.flatnonzero((a["f0"] == b["f0"]) & (a["f1"] == b["f1"]))
            if dup.size:
                rows = sorted((int(self.order[same[dup[0]]]), int(self.order[same[dup[0]] + 1])))
                raise FlytError(f"{where}: duplicate uid {uid_hex(self.pairs[rows[0]])} (rows {rows[0]} and {rows[1]})")

    def find(self, query: np.ndarray) -> np.ndarray:
        """Row of each query uid in the index (int64), -1 where absent."""
        query = np.asarray(query, dtype=UID_DTYPE)
        qfp = fingerprint(query)
        found = np.full(len(query), -1, dtype=np.int64)
        if not len(self.fp):
            return found
        pos = np.searchsorted(self.fp, qfp)
        pending = np.arange(len(query))
        step = 0
        while pending.size:  # more than one round only where fingerprints collide
            p = pos[pending] + step
            ok = p < len(self.fp)
            pending, p = pending[ok], p[ok]
            ok = self.fp[p] == qfp[pending]
            pending, p = pending[ok], p[ok]
            cand = self.order[p]
            hit = (self.pairs["f0"][cand] == query["f0"][pending]) & (self.pairs["f1"][cand] == query["f1"][pending])
            found[pending[hit]] = cand[hit]
            pending = pending[~hit]
            step += 1
        return found


def _missing(found: np.ndarray, pairs: np.ndarray, where: str, what: str):
    r = int(np.flatnonzero(found < 0)[0])
    return FlytError(f"{where}: row {r}: uid {uid_hex(pairs[r])} has no group in {what}")


@dataclass(frozen=True)
class ParquetGroups:
    """The group column of a directory of parquet shards (uid + column), e.g. the ``dedup`` scorer's."""

    directory: str
    column: str

    def describe(self) -> str:
        return f"--groups {self.directory}:{self.column}"

    def keys_for(self, pairs: np.ndarray, where: str, stem: str | None = None) -> np.ndarray:
        """KEY_DTYPE keys aligned with ``pairs``; the shard named ``stem`` is read first."""
        keys = np.zeros(len(pairs), dtype=KEY_DTYPE)
        have = np.zeros(len(pairs), dtype=bool)
        shards = list_shards(self.directory, kind="groups")
        shards.sort(key=lambda p: p.stem != stem)  # same stem first, stable otherwise
        for path in shards:
            if have.all():
                break
            table = read_table(path, ["uid", self.column])
            index = UidIndex(uids_to_pairs(table.column("uid"), str(path)), str(path))
            todo = np.flatnonzero(~have)
            row = index.find(pairs[todo])
            hit = row >= 0
            if hit.any():
                shard_keys = value_keys(table.column(self.column), str(path), self.column)
                keys[todo[hit]] = shard_keys[row[hit]]
                have[todo[hit]] = True
        if not have.all():
            raise _missing(np.where(have, 0, -1), pairs, where, f"{self.describe()}")
        return keys


class ArrayGroups:
    """Groups given as arrays (the Python API, tests): ``values[i]`` is the group of uid ``pairs[i]``."""

    def __init__(self, pairs: np.ndarray, values, name: str = "<group arrays>"):
        self.pairs, self.values, self.name = np.asarray(pairs, dtype=UID_DTYPE), values, name
        self._index = self._keys = None

    def describe(self) -> str:
        return self.name

    def keys_for(self, pairs: np.ndarray, where: str, stem: str | None = None) -> np.ndarray:
        if len(self.values) != len(self.pairs):
            raise FlytError(f"{self.name}: need one group per uid, got {len(self.values)} for {len(self.pairs)} uids")
        if self._index is None:  # built once per process (every shard of every pass looks up here)
            self._index = UidIndex(self.pairs, self.name)
            self._keys = value_keys(self.values, self.name, "group")
        row = self._index.find(pairs)
        if (row < 0).any():
            raise _missing(row, pairs, where, self.name)
        return self._keys[row]


def parse_groups(text: str) -> ParquetGroups:
    """``SCORES_DIR:COLUMN`` (the last ':' splits) -> ParquetGroups."""
    directory, sep, column = str(text).rpartition(":")
    if not sep or not directory or not column:
        raise FlytError(f"--groups must be SCORES_DIR:COLUMN (e.g. scores/dedup:dedup_group), got {text!r}")
    if column == "uid":
        raise FlytError("--groups: 'uid' is the key column, not a group column: name the column that holds the group")
    return ParquetGroups(directory, column)


def source_stem(source) -> str | None:
    """The file stem of a parquet score source (its groups are looked up in the same-stem shard first)."""
    path = getattr(source, "path", None)
    return Path(path).stem if path else None

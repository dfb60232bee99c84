"""DataComp subset files: the ``.npy`` of a drawn multiset, its ``.json`` summary and an optional
``uid,count`` parquet.

The ``.npy`` is DataComp's format: a structured array of dtype ``[('f0','<u8'),('f1','<u8')]`` (high,
low 64 bits of the uid), sorted; a uid repeated c times means c copies. Written files appear
atomically, together or not at all."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from flyt.errors import FlytError
from flyt.io.atomic import atomic_path
from flyt.io.uids import UID_DTYPE, pairs_to_uids

CHUNK_ROWS = 1 << 22  # unique uids expanded per write, so the subset is never held twice


def summary_path(out) -> Path:
    return Path(out).with_suffix(".json")


def check_output_file(path, flag: str) -> None:
    """Fail early, in one line naming ``flag``, if a file cannot be written at ``path``: it is a
    directory, a parent is a regular file, or the nearest existing parent is not writable."""
    path = Path(path)
    if path.is_dir():
        raise FlytError(f"{flag} {path} is a directory")
    for above in path.parents:
        if above.exists():
            if not above.is_dir():
                raise FlytError(f"{flag} {path}: {above} is not a directory")
            if not os.access(above, os.W_OK | os.X_OK):
                raise FlytError(f"{flag} {path}: directory {above} is not writable")
            return


def write_subset(out, pairs: np.ndarray, counts: np.ndarray, summary: dict, counts_parquet=None) -> None:
    """``out``: sorted structured (f0, f1) uint64 array with uid i repeated counts[i] times.

    An OSError that names no file (a full disk) is raised again naming ``out``: the files appear together."""
    try:
        _write_subset(out, pairs, counts, summary, counts_parquet)
    except OSError as exc:
        if exc.filename is not None:
            raise
        raise OSError(exc.errno, exc.strerror or str(exc), str(out)) from exc


def _write_subset(out, pairs: np.ndarray, counts: np.ndarray, summary: dict, counts_parquet=None) -> None:
    total = int(counts.sum())
    with contextlib.ExitStack() as stack:
        npy_tmp = stack.enter_context(atomic_path(out))
        json_tmp = stack.enter_context(atomic_path(summary_path(out)))
        with open(npy_tmp, "wb") as f:
            header = {"descr": np.lib.format.dtype_to_descr(UID_DTYPE), "fortran_order": False, "shape": (total,)}
            np.lib.format.write_array_header_1_0(f, header)
            for i in range(0, len(pairs), CHUNK_ROWS):
                np.repeat(pairs[i : i + CHUNK_ROWS], counts[i : i + CHUNK_ROWS]).tofile(f)
        json_tmp.write_text(json.dumps(summary, indent=2) + "\n")
        if counts_parquet is not None:
            pq_tmp = stack.enter_context(atomic_path(counts_parquet))
            writer = None
            try:
                for i in range(0, len(pairs), CHUNK_ROWS):
                    table = pa.table(
                        {
                            "uid": pa.array(pairs_to_uids(pairs[i : i + CHUNK_ROWS]), type=pa.string()),
                            "count": pa.array(counts[i : i + CHUNK_ROWS].astype(np.int64)),
                        }
                    )
                    if writer is None:
                        writer = pq.ParquetWriter(pq_tmp, table.schema)
                    writer.write_table(table)
                if writer is None:
                    pq.write_table(pa.table({"uid": pa.array([], pa.string()), "count": pa.array([], pa.int64())}), pq_tmp)
            finally:
                if writer is not None:
                    writer.close()


def read_subset(path, mmap: bool = True) -> np.ndarray:
    """A subset ``.npy``, validated: DataComp's dtype, one dimension, sorted (memory-mapped by default)."""
    path = Path(path)
    try:
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise FlytError(f"{path}: not a readable .npy subset ({exc})") from None
    if arr.dtype != UID_DTYPE or arr.ndim != 1:
        raise FlytError(f"{path}: a subset must be a 1-D array of dtype {UID_DTYPE.descr}, found {arr.dtype.descr} {arr.shape}")
    step = 1 << 24
    for i in range(0, max(len(arr) - 1, 0), step):
        a, b = arr[i : i + step + 1]["f0"], arr[i : i + step + 1]["f1"]
        bad = (a[1:] < a[:-1]) | ((a[1:] == a[:-1]) & (b[1:] < b[:-1]))
        if bad.any():
            raise FlytError(f"{path}: subset is not sorted (row {i + int(np.argmax(bad)) + 1})")
    return arr

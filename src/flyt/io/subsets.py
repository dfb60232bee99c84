"""DataComp subset files: the ``.npy`` of a drawn multiset, its ``.json`` summary and an optional
``uid,count`` parquet.

The ``.npy`` is DataComp's format: a structured array of dtype ``[('f0','<u8'),('f1','<u8')]`` (high,
low 64 bits of the uid), sorted; a uid repeated c times means c copies. Written files appear
atomically, together or not at all.

For subsets too large for one file (DataComp xlarge: 12.8B rows, 205 GB), the *parts* form: a
directory of ``part-NNNNN.npy`` files, each a sorted ``.npy`` of at most ``part_rows`` rows covering a
contiguous uid range (so their concatenation is the single sorted file, byte for byte after the
headers), and ``manifest.json``: ``{"format": "flyt-subset-parts", "rows", "part_rows", "parts":
[{"file", "rows"}], "sha256"}`` where sha256 is that of the concatenated rows (the single file's data)."""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from flyt.errors import FlytError
from flyt.io.atomic import atomic_dir, atomic_path, check_writable_dir
from flyt.io.uids import UID_DTYPE, pairs_to_uids

CHUNK_ROWS = 1 << 22  # unique uids expanded per write, so the subset is never held twice
MANIFEST = "manifest.json"
PARTS_FORMAT = "flyt-subset-parts"


def summary_path(out) -> Path:
    return Path(out).with_suffix(".json")


def check_output_file(path, flag: str) -> None:
    """Fail early, in one line naming ``flag``, if a file cannot be written at ``path``: it is a
    directory, a parent is a regular file, or the nearest existing parent is not writable."""
    path = Path(path)
    if path.is_dir():
        raise FlytError(f"{flag} {path} is a directory")
    check_writable_dir(path.parent, flag, shown=path)


def write_subset(out, pairs: np.ndarray, counts: np.ndarray, summary: dict, counts_parquet=None) -> None:
    """``out``: sorted structured (f0, f1) uint64 array with uid i repeated counts[i] times.

    An OSError that names no file (a full disk) is raised again naming ``out``: the files appear together."""

    def chunks():
        for i in range(0, len(pairs), CHUNK_ROWS):
            yield pairs[i : i + CHUNK_ROWS], counts[i : i + CHUNK_ROWS]

    write_subset_chunks(out, chunks, int(np.sum(counts)), summary, counts_parquet)


def write_subset_chunks(out, chunks: Callable[[], Iterable], total: int, summary: dict, counts_parquet=None,
                        part_rows: int | None = None) -> None:
    """``write_subset`` from ``chunks()``: (pairs, counts) blocks in uid order (called once per file
    written), ``total`` draws in all; only one block is held at a time. With ``part_rows``, ``out`` is
    a directory written in the parts form (see the module doc)."""
    try:
        _write_subset(out, chunks, total, summary, counts_parquet, part_rows)
    except OSError as exc:
        if exc.filename is not None:
            raise
        raise OSError(exc.errno, exc.strerror or str(exc), str(out)) from exc


def _npy_header(f, rows: int) -> None:
    header = {"descr": np.lib.format.dtype_to_descr(UID_DTYPE), "fortran_order": False, "shape": (rows,)}
    np.lib.format.write_array_header_1_0(f, header)


def _write_parts(directory: Path, chunks, total: int, part_rows: int) -> None:
    """The expanded rows of ``chunks()`` cut into part files of ``part_rows`` rows, and the manifest."""
    sha = hashlib.sha256()
    parts, f, left, written = [], None, 0, 0
    try:
        for p, c in chunks():
            block = np.repeat(p, c)
            while len(block):
                if left == 0:
                    if f is not None:
                        f.close()
                    rows = min(part_rows, total - written)
                    if rows <= 0:
                        raise ValueError(f"subset writer: more rows than the {total} announced")
                    name = f"part-{len(parts):05d}.npy"
                    parts.append({"file": name, "rows": rows})
                    f = open(directory / name, "wb")
                    _npy_header(f, rows)
                    left = rows
                piece, block = block[:left], block[left:]
                data = piece.tobytes()
                f.write(data)
                sha.update(data)
                left -= len(piece)
                written += len(piece)
    finally:
        if f is not None:
            f.close()
    if written != total:
        raise ValueError(f"subset writer: {written} rows written for {total} announced")
    manifest = {"format": PARTS_FORMAT, "dtype": UID_DTYPE.descr, "rows": total, "part_rows": part_rows,
                "parts": parts, "sha256": sha.hexdigest()}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def _write_subset(out, chunks, total: int, summary: dict, counts_parquet=None, part_rows: int | None = None) -> None:
    with contextlib.ExitStack() as stack:
        if part_rows is not None:
            parts_tmp = stack.enter_context(atomic_dir(out))
            _write_parts(parts_tmp, chunks, total, part_rows)
        json_tmp = stack.enter_context(atomic_path(summary_path(out)))
        if part_rows is None:
            npy_tmp = stack.enter_context(atomic_path(out))
            with open(npy_tmp, "wb") as f:
                _npy_header(f, total)
                written = 0
                for p, c in chunks():
                    block = np.repeat(p, c)
                    block.tofile(f)
                    written += len(block)
            if written != total:
                raise ValueError(f"subset writer: {written} rows written for a header of {total}")
        json_tmp.write_text(json.dumps(summary, indent=2) + "\n")
        if counts_parquet is not None:
            pq_tmp = stack.enter_context(atomic_path(counts_parquet))
            writer = None
            try:
                for p, c in chunks():
                    table = pa.table({"uid": pa.array(pairs_to_uids(p), type=pa.string()), "count": pa.array(np.asarray(c, np.int64))})
                    if writer is None:
                        writer = pq.ParquetWriter(pq_tmp, table.schema)
                    writer.write_table(table)
                if writer is None:
                    pq.write_table(pa.table({"uid": pa.array([], pa.string()), "count": pa.array([], pa.int64())}), pq_tmp)
            finally:
                if writer is not None:
                    writer.close()


def is_parts(path) -> bool:
    """Whether ``path`` names a subset in the parts form (its directory or its manifest)."""
    path = Path(path)
    return (path.is_dir() and (path / MANIFEST).is_file()) or (path.name == MANIFEST and path.is_file())


def read_manifest(path) -> tuple[Path, dict]:
    """(directory, manifest) of a parts-form subset, validated (format, part files and row counts)."""
    path = Path(path)
    directory = path if path.is_dir() else path.parent
    where = directory / MANIFEST
    try:
        manifest = json.loads(where.read_text())
        parts = manifest["parts"]
        ok = manifest.get("format") == PARTS_FORMAT and sum(int(p["rows"]) for p in parts) == int(manifest["rows"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FlytError(f"{where}: not a readable subset manifest ({exc})") from None
    if not ok:
        raise FlytError(f"{where}: not a {PARTS_FORMAT} manifest, or its parts' rows do not add up to 'rows'")
    for p in parts:
        if Path(p["file"]).name != p["file"]:
            raise FlytError(f"{where}: part file {p['file']!r} must be a plain file name in {directory}")
    return directory, manifest


def read_subset(path, mmap: bool = True) -> np.ndarray:
    """A subset, validated: DataComp's dtype, one dimension, sorted. A ``.npy`` is memory-mapped by
    default; the parts form (a directory or its manifest.json) is read part by part and returned as one
    array in memory (each part validated, and the parts in order across their boundaries)."""
    path = Path(path)
    if is_parts(path):
        directory, manifest = read_manifest(path)
        arrays = []
        for p in manifest["parts"]:
            arr = read_subset(directory / p["file"], mmap=True)
            if len(arr) != int(p["rows"]):
                raise FlytError(f"{directory / p['file']}: {len(arr)} rows, the manifest says {p['rows']}")
            if arrays and len(arr) and len(arrays[-1]) and _before(arr[0], arrays[-1][-1]):
                raise FlytError(f"{directory / p['file']}: subset is not sorted (its first row is before the previous part's last)")
            arrays.append(arr)
        return np.concatenate(arrays) if arrays else np.zeros(0, UID_DTYPE)
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


def _before(a, b) -> bool:
    return (int(a["f0"]), int(a["f1"])) < (int(b["f0"]), int(b["f1"]))

"""DataComp subset files: the ``.npy`` of a drawn multiset, its ``.json`` summary and an optional
``uid,count`` parquet.

The ``.npy`` is DataComp's format: a structured array of dtype ``[('f0','<u8'),('f1','<u8')]`` (high,
low 64 bits of the uid), sorted; a uid repeated c times means c copies. Written files appear
atomically, together or not at all.

For subsets too large for one file (DataComp xlarge: 12.8B rows, 205 GB), the *parts* form: a
directory of ``part-NNNNN.npy`` files, each a sorted ``.npy`` of at most ``part_rows`` rows covering a
contiguous uid range (so their concatenation is the single sorted file, byte for byte after the
headers), and ``manifest.json``: ``{"format": "flyt-subset-parts", "rows", "part_rows", "parts":
[{"file", "rows"}], "sha256"}`` where sha256 is that of the concatenated rows (the single file's data).

Readers: ``open_subset`` opens either form for streaming (``Subset.blocks`` reads the rows in order,
part by part; ``Subset.locate`` finds a uid's first row and copies by binary search in memory maps,
across part boundaries; the order check and the identity hash take one pass); ``flyt reshard`` and
``subset_stream`` use it. ``read_subset`` returns the whole subset as one array (small subsets, tests)."""

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


class Subset:
    """A subset in either form, opened for streaming: part by part, block by block, never whole.

    ``rows`` in all; ``parts``: (path, rows, data offset) of each file in uid order (one for a ``.npy``);
    ``sha256``: the identity ``open_subset(..., digest=True)`` computed (``.npy``: the file's bytes; parts:
    the concatenated rows, checked against the manifest's), else None. Picklable (memory maps are
    reopened where it is unpickled)."""

    def __init__(self, path: Path, form: str, parts: list[tuple[str, int, int]], sha256: str | None = None):
        self.path, self.form, self.parts, self.sha256 = path, form, parts, sha256
        self.rows = sum(n for _, n, _ in parts)
        self.starts = np.cumsum([0] + [n for _, n, _ in parts[:-1]], dtype=np.int64)
        self._lasts = None
        self._maps = {}

    def __getstate__(self):
        return {**self.__dict__, "_maps": {}}

    def blocks(self, rows: int = CHUNK_ROWS):
        """The rows in uid order, ``rows`` at a time (never crossing a part), read with ``np.fromfile``
        (a memory map's touched pages would count as this process's memory)."""
        for path, n, offset in self.parts:
            yield from _blocks(path, n, offset, rows)

    def _map(self, k: int) -> np.ndarray:
        if k not in self._maps:
            path, n, offset = self.parts[k]
            self._maps[k] = np.memmap(path, dtype=UID_DTYPE, mode="r", offset=offset, shape=(n,))
        return self._maps[k]

    def locate(self, pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each uid pair: the first subset row holding it (or where it would go) and how many rows hold
        it (its copies; a uid's copies may run across parts). Binary search in memory maps of the parts the
        pairs fall in: only the pages the search touches are read."""
        pairs = np.asarray(pairs, dtype=UID_DTYPE)
        if self._lasts is None:  # the last row of every non-empty part: which part a uid's first/last copy is in
            self._lasts = np.array([self._map(k)[-1] if n else np.zeros((), UID_DTYPE)
                                    for k, (_, n, _) in enumerate(self.parts)], dtype=UID_DTYPE)
            self._nonempty = np.flatnonzero([n > 0 for _, n, _ in self.parts])
        bounds = []
        for side in ("left", "right"):
            out = np.full(len(pairs), self.rows, dtype=np.int64)
            lasts = self._lasts[self._nonempty]
            which = np.searchsorted(lasts, pairs, side=side)  # first part whose last row is >= (> for right) the uid
            for j in np.unique(which):
                if j == len(lasts):
                    continue
                k = int(self._nonempty[j])
                sel = which == j
                out[sel] = self.starts[k] + np.searchsorted(self._map(k), pairs[sel], side=side)
            bounds.append(out)
        lo, hi = bounds
        return lo, hi - lo


def _blocks(path: str, n: int, offset: int, rows: int = CHUNK_ROWS):
    for i in range(0, n, rows):
        yield np.fromfile(path, dtype=UID_DTYPE, count=min(rows, n - i), offset=offset + 16 * i)


def _npy_part(path: Path) -> tuple[int, int]:
    """(rows, data offset) of a subset ``.npy``, its header checked (dtype, one dimension)."""
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise FlytError(f"{path}: not a readable .npy subset ({exc})") from None
    if arr.dtype != UID_DTYPE or arr.ndim != 1:
        raise FlytError(f"{path}: a subset must be a 1-D array of dtype {UID_DTYPE.descr}, found {arr.dtype.descr} {arr.shape}")
    return len(arr), int(arr.offset)


def open_subset(path, check: bool = True, digest: bool = False) -> Subset:
    """A subset, either form (a ``.npy``, or a parts directory or its manifest.json), its headers checked.

    ``check``: read every row once, block by block, and fail (one line naming the file and row) if the
    rows are not in uid order, within a file or across parts. ``digest``: in the same pass compute
    ``sha256`` (``.npy``: of the file's bytes; parts: of the rows, which must equal the manifest's)."""
    path = Path(path)
    if is_parts(path):
        directory, manifest = read_manifest(path)
        parts = []
        for p in manifest["parts"]:
            file = directory / p["file"]
            n, offset = _npy_part(file)
            if n != int(p["rows"]):
                raise FlytError(f"{file}: {n} rows, the manifest says {p['rows']}")
            parts.append((str(file), n, offset))
        subset = Subset(directory, "parts", parts)
    else:
        n, offset = _npy_part(path)
        subset = Subset(path, "npy", [(str(path), n, offset)])
    if check or digest:
        subset.sha256 = _scan(subset, digest)
        if digest and subset.form == "parts" and subset.sha256 != manifest.get("sha256"):
            raise FlytError(f"{directory / MANIFEST}: the parts' rows do not match its sha256 (a part was changed or replaced)")
    return subset


def _scan(subset: Subset, digest: bool) -> str | None:
    """Check the order of every row (block by block, across blocks and parts); the sha256 when asked."""
    sha = hashlib.sha256() if digest else None
    prev = None
    for path, n, offset in subset.parts:
        if sha is not None and subset.form == "npy":
            with open(path, "rb") as f:
                sha.update(f.read(offset))  # the file's bytes: header first
        row = 0
        for block in _blocks(path, n, offset):
            if sha is not None:
                sha.update(block.tobytes())
            if len(block) and prev is not None and _before(block[0], prev):
                if row == 0:
                    raise FlytError(f"{path}: subset is not sorted (its first row is before the previous part's last)")
                raise FlytError(f"{path}: subset is not sorted (row {row})")
            a, b = block["f0"], block["f1"]
            bad = (a[1:] < a[:-1]) | ((a[1:] == a[:-1]) & (b[1:] < b[:-1]))
            if bad.any():
                raise FlytError(f"{path}: subset is not sorted (row {row + int(np.argmax(bad)) + 1})")
            if len(block):
                prev = block[-1]
            row += len(block)
        if sha is not None and subset.form == "npy":
            with open(path, "rb") as f:
                f.seek(offset + 16 * n)
                for rest in iter(lambda: f.read(1 << 23), b""):  # whatever follows the rows (file_sha256 hashes it too)
                    sha.update(rest)
    return sha.hexdigest() if sha is not None else None


def read_subset(path, mmap: bool = True) -> np.ndarray:
    """A subset as one array, validated (dtype, one dimension, sorted): a ``.npy`` memory-mapped by default;
    the parts form (a directory or its manifest.json) read part by part into one array in memory.
    To stream either form without holding it, use ``open_subset``."""
    subset = open_subset(path, check=True)
    if subset.form == "npy":
        return np.load(subset.path, mmap_mode="r" if mmap else None, allow_pickle=False)
    return np.concatenate(list(subset.blocks())) if subset.rows else np.zeros(0, UID_DTYPE)


def _before(a, b) -> bool:
    return (int(a["f0"]), int(a["f1"])) < (int(b["f0"]), int(b["f1"]))

"""DataComp metadata directories: ``<stem>.parquet`` beside ``<stem>.npz``, same row order.

The parquet holds ``uid``, ``text``, ``clip_b32_similarity_score``, ``clip_l14_similarity_score``, ...
The npz holds ``b32_img``, ``b32_txt`` (512-d) and ``l14_img``, ``l14_txt`` (768-d), float16,
L2-normalised. A pool shard's npz can be 3 GB, so arrays are read in row ranges, never whole:
an npz is a zip of ``.npy`` files; a *stored* (uncompressed) member is read at its byte offset in
the zip with ``os.pread``, a compressed member is decompressed as a forward stream.
"""

from __future__ import annotations

import os
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flyt.errors import FlytError
from flyt.io.arrays import l2_normalise

# embedding pair -> (image key, text key, dimension)
PAIRS = {"b32": ("b32_img", "b32_txt", 512), "l14": ("l14_img", "l14_txt", 768)}


def check_pair(pair: str) -> tuple[str, str, int]:
    if pair not in PAIRS:
        raise FlytError(f"option --pair: unknown embedding pair {pair!r} (choose from {', '.join(PAIRS)})")
    return PAIRS[pair]


def datacomp_stems(directory) -> list[str]:
    """Stems that have both ``<stem>.parquet`` and ``<stem>.npz`` (sorted); empty if not DataComp."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    npz = {p.stem for p in directory.glob("*.npz") if not p.name.startswith(".")}
    return sorted(p.stem for p in directory.glob("*.parquet") if p.stem in npz and not p.name.startswith("."))


class NpyMember:
    """One 2-D array inside an ``.npz``, readable by row ranges without loading it whole.

    Stored members support random access (``read``); compressed members only forward reads in
    increasing row order (a backwards read restarts the stream).
    """

    def __init__(self, npz_path: Path, key: str):
        self.path = Path(npz_path)
        self.key = key
        try:
            self._zip = zipfile.ZipFile(self.path)
        except (OSError, zipfile.BadZipFile) as exc:
            raise FlytError(f"{self.path}: unreadable npz ({type(exc).__name__}: {exc})") from None
        try:
            info = self._zip.getinfo(f"{key}.npy")
        except KeyError:
            keys = sorted(n[:-4] for n in self._zip.namelist() if n.endswith(".npy"))
            self._zip.close()
            raise FlytError(f"{self.path}: missing npz key '{key}' (have: {', '.join(keys)})") from None
        self._info = info
        try:
            with self._zip.open(info) as f:
                version = np.lib.format.read_magic(f)
                read_header = (
                    np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                )
                shape, fortran, dtype = read_header(f)
                header_len = f.tell()
        except Exception as exc:
            self.close()
            raise FlytError(f"{self.path}: key '{key}' is not a readable .npy array ({exc})") from None
        if len(shape) != 2 or fortran or dtype.hasobject:
            self.close()
            raise FlytError(f"{self.path}: key '{key}' must be a C-order 2-D numeric array, found shape {shape}")
        self.shape, self.dtype = shape, dtype
        self._row_bytes = shape[1] * dtype.itemsize
        self._header_len = header_len
        self._stored = info.compress_type == zipfile.ZIP_STORED
        self._fd = None
        self._stream = None
        self._stream_row = 0
        if self._stored:
            self._data_offset = self._local_data_offset() + header_len
            self._fd = os.open(self.path, os.O_RDONLY)

    @property
    def rows(self) -> int:
        return self.shape[0]

    @property
    def dim(self) -> int:
        return self.shape[1]

    def _local_data_offset(self) -> int:
        # The local file header's name/extra lengths may differ from the central directory's.
        with open(self.path, "rb") as f:
            f.seek(self._info.header_offset)
            head = f.read(30)
        if len(head) != 30 or head[:4] != b"PK\x03\x04":
            raise FlytError(f"{self.path}: corrupt zip header for key '{self.key}'")
        name_len, extra_len = struct.unpack("<HH", head[26:30])
        return self._info.header_offset + 30 + name_len + extra_len

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as an array of the stored dtype."""
        stop = min(stop, self.rows)
        n = max(stop - start, 0)
        out = np.empty((n, self.dim), dtype=self.dtype)
        if n == 0:
            return out
        buf = memoryview(out.reshape(-1).view(np.uint8))
        if self._stored:
            offset = self._data_offset + start * self._row_bytes
            got = 0
            while got < len(buf):  # pread may return fewer bytes than asked
                k = os.preadv(self._fd, [buf[got:]], offset + got)
                if k <= 0:
                    raise FlytError(f"{self.path}: key '{self.key}' is truncated (row {start + got // self._row_bytes})")
                got += k
            return out
        if self._stream is None or start < self._stream_row:
            self._restart_stream()
        self._skip_stream_rows(start - self._stream_row)
        self._read_stream_into(buf, start)
        self._stream_row = stop
        return out

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The given rows (any order) as an array of the stored dtype."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.dim), dtype=self.dtype)
        order = np.argsort(rows, kind="stable")
        if self._stored:
            for i in order:
                out[i] = self.read(int(rows[i]), int(rows[i]) + 1)[0]
            return out
        # Compressed: one forward pass over the stream in chunks, picking the wanted rows.
        chunk = 4096
        sorted_rows = rows[order]
        pos = 0
        while pos < len(sorted_rows):
            lo = int(sorted_rows[pos])
            block = self.read(lo, min(lo + chunk, self.rows))
            end = np.searchsorted(sorted_rows, lo + len(block), side="left")
            out[order[pos:end]] = block[sorted_rows[pos:end] - lo]
            pos = end
        return out

    def _restart_stream(self) -> None:
        if self._stream is not None:
            self._stream.close()
        self._stream = self._zip.open(self._info)
        self._stream.read(self._header_len)
        self._stream_row = 0

    def _skip_stream_rows(self, rows: int) -> None:
        remaining = rows * self._row_bytes
        while remaining:
            got = len(self._stream.read(min(remaining, 1 << 24)))
            if got == 0:
                raise FlytError(f"{self.path}: key '{self.key}' is truncated")
            remaining -= got

    def _read_stream_into(self, buf: memoryview, start: int) -> None:
        got = 0
        while got < len(buf):
            k = self._stream.readinto(buf[got:])
            if not k:
                raise FlytError(f"{self.path}: key '{self.key}' is truncated (row {start + got // self._row_bytes})")
            got += k

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._zip.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@dataclass
class DataCompEmbeddings:
    """The chosen image/text pair of one npz, validated against the parquet's row count."""

    image: NpyMember
    text: NpyMember

    @classmethod
    def open(cls, npz_path, pair: str, rows: int) -> "DataCompEmbeddings":
        img_key, txt_key, dim = check_pair(pair)
        members = []
        try:
            for key in (img_key, txt_key):
                m = NpyMember(Path(npz_path), key)
                members.append(m)
                if m.dim != dim:
                    raise FlytError(f"{npz_path}: key '{key}' has dimension {m.dim}, expected {dim} for pair {pair}")
                if m.rows != rows:
                    raise FlytError(
                        f"{npz_path}: key '{key}' has {m.rows} rows but {Path(npz_path).with_suffix('.parquet').name} "
                        f"has {rows} (parquet/npz row-count mismatch)"
                    )
        except BaseException:
            for m in members:
                m.close()
            raise
        return cls(*members)

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """(image, text) rows [start, stop) as float32, L2-normalised, checked finite."""
        rows = np.arange(start, min(stop, self.image.rows))
        return self._unit(self.image.read(start, stop), self.image, rows), self._unit(
            self.text.read(start, stop), self.text, rows
        )

    def take(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(image, text) of the given rows (any order), float32, L2-normalised, checked finite."""
        rows = np.asarray(rows, dtype=np.int64)
        return self._unit(self.image.take(rows), self.image, rows), self._unit(self.text.take(rows), self.text, rows)

    @staticmethod
    def _unit(block: np.ndarray, member: NpyMember, rows: np.ndarray) -> np.ndarray:
        x = block.astype(np.float32)  # fp16 -> fp32 is exact, so both pool layouts normalise alike
        bad = ~np.isfinite(x).all(axis=1)
        if bad.any():
            raise FlytError(f"{member.path}: key '{member.key}' row {int(rows[np.argmax(bad)])} is not finite")
        return l2_normalise(x)

    def close(self) -> None:
        self.image.close()
        self.text.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def write_datacomp_shard(directory, stem: str, table, arrays: dict[str, np.ndarray], compress: bool = False) -> None:
    """Write a DataComp-shaped shard (parquet + npz), atomically. For generated test pools and benchmarks."""
    from flyt.io.atomic import atomic_path, write_parquet

    directory = Path(directory)
    with atomic_path(directory / f"{stem}.npz") as tmp:
        with open(tmp, "wb") as f:
            (np.savez_compressed if compress else np.savez)(f, **arrays)
    write_parquet(table, directory / f"{stem}.parquet")  # last: the parquet marks a complete shard

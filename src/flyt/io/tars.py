"""Webdataset tars at the byte level: a strict scanner that reads headers only, and an incremental,
atomic tar writer with deterministic bytes.

Scanning (``scan_tar``) reads the 512-byte ustar headers one by one and seeks over the data, so a
shard's images are never read; only the small ``.json`` members are. Unlike ``tarfile``, which stops
silently at a damaged header after the first one (the rest of the shard would be lost without a
word), the scanner fails on a bad header checksum, a truncated member or stray bytes where the
archive should end, naming the file and the byte offset. Archives that use pax or GNU long-name
headers are handed to ``tarfile`` (then checked for stray bytes after its last member).

A sample is the run of consecutive members sharing one key (the name up to the first dot of its
base name), as in ``flyt.io.webdataset``; extensions keep their case here because members are
copied, not interpreted.

Writing (``TarWriter``) emits ustar headers with fixed metadata (mode 0644, uid/gid 0, mtime 0, no
user names), so the bytes of an output shard depend only on its member names and contents. The file
is written under a hidden temporary name beside its destination and renamed on ``close()``: a
reader (or a resumed run) sees a complete shard or none.
"""

from __future__ import annotations

import json
import mmap
import os
import re
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flyt.errors import FlytError
from flyt.io.uids import UID_DTYPE, pair_uid, uids_to_pairs

BLOCK = 512
RECORD = 20 * BLOCK  # tar's record size: tarfile pads archives to it, so do we
_ZERO = bytes(BLOCK)
_ZERO12 = bytes(12)
_EXTENDED = b"xgLK"  # pax and GNU long-name records: parsed by tarfile instead
_REGULAR = b"0\x007"  # regular (and contiguous) files; directories, links and devices are skipped
_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
_HEX32 = re.compile(r"[0-9a-fA-F]{32}")
_PREAD = hasattr(os, "pread")


# ----------------------------------------------------------------------------- scanning
@dataclass
class ScannedSample:
    """One sample of a tar: its key and where each member's data lies (no data read but .json)."""

    key: str
    exts: list[str]  # member extensions in file order ("jpg", "txt", "json", ...)
    offsets: list[int]  # byte offset of each member's data in the tar
    sizes: list[int]
    meta: bytes | None = None  # the .json member's bytes, read during the scan (small)

    @property
    def span(self) -> tuple[int, int]:
        """[start, end) of the bytes from the first member's data to the last one's end (members are contiguous)."""
        return self.offsets[0], self.offsets[-1] + self.sizes[-1]

    def member(self, *exts: str) -> int | None:
        """Position of the first member whose lower-cased extension is one of ``exts``."""
        for i, e in enumerate(self.exts):
            if e.lower() in exts:
                return i
        return None


class _NeedTarfile(Exception):
    """The archive uses pax or GNU long-name headers: let tarfile parse it."""


def _corrupt(path, pos: int, why: str) -> FlytError:
    return FlytError(f"{path}: corrupt tar at byte {pos} ({why})")


def _number(field: bytes, path, pos: int) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256 (sizes >= 8 GiB)
        value = int.from_bytes(field[1:], "big")
        return value - (1 << (8 * len(field) - 8)) if field[0] & 0x40 else value
    try:
        return int(field.split(b"\0", 1)[0] or b"0", 8)
    except ValueError:
        raise _corrupt(path, pos, f"header field {field!r} is not an octal number") from None


def _signed_sum(block: bytes) -> int:
    return sum(b - 256 if b > 127 else b for b in block)


def _check_checksums(mm, positions: list[int], stored: list[int], path) -> None:
    """Verify every header's checksum at once (numpy over the memory map); name the first bad one."""
    blocks = np.frombuffer(mm, dtype=np.uint8, count=len(mm) // BLOCK * BLOCK).reshape(-1, BLOCK)  # headers start at 512k
    try:
        for i in range(0, len(positions), 8192):
            at = np.asarray(positions[i : i + 8192], dtype=np.int64) // BLOCK
            block = blocks[at]
            total = block.sum(axis=1, dtype=np.int64) - block[:, 148:156].sum(axis=1, dtype=np.int64) + 8 * 32
            for j in np.flatnonzero(total != np.asarray(stored[i : i + 8192], dtype=np.int64)).tolist():
                hdr = bytes(block[j])
                if stored[i + j] != _signed_sum(hdr) - _signed_sum(hdr[148:156]) + 8 * 32:  # old tars: signed bytes
                    raise _corrupt(path, int(at[j]) * BLOCK, "bad header checksum")
    finally:
        del blocks


def _fast_members(mm, path, file_size: int) -> list[tuple[str, int, int]]:
    """(name, data offset, size) of every regular file, from the ustar headers; strict.

    Headers are parsed in order (each one's size gives the next one's place); their checksums are
    then verified together. When parsing fails, the first bad checksum up to that point is reported
    instead, if any: a damaged header is what usually sends the walk astray.
    """
    out, positions, stored = [], [], []
    pos = 0
    try:
        while pos < file_size:  # only the fields needed are sliced: this loop runs once per member
            if pos + BLOCK > file_size:
                raise _corrupt(path, pos, "truncated header")
            size_field = mm[pos + 124 : pos + 136]
            if size_field == _ZERO12 and mm[pos : pos + BLOCK] == _ZERO:
                _check_tail(mm, path, pos, file_size)
                break
            positions.append(pos)
            try:
                stored.append(int(mm[pos + 148 : pos + 156].split(b"\0", 1)[0] or b"0", 8))
            except ValueError:
                stored.append(-1)  # garbage where the checksum should be: reported as a bad checksum below
            kind = mm[pos + 156]
            if kind in _EXTENDED:
                raise _NeedTarfile
            size = _number(size_field, path, pos)
            data = pos + BLOCK
            if size < 0 or data + size > file_size:
                raise _corrupt(path, pos, f"member of {size} bytes runs past the end of the file ({file_size} bytes)")
            if kind in _REGULAR:
                name = mm[pos : pos + 100].split(b"\0", 1)[0]
                if mm[pos + 345] and mm[pos + 257 : pos + 262] == b"ustar":
                    name = mm[pos + 345 : pos + 500].split(b"\0", 1)[0] + b"/" + name
                out.append((name.decode("utf-8", "surrogateescape"), data, size))
            pos = data + -(-size // BLOCK) * BLOCK
    except FlytError:
        _check_checksums(mm, positions, stored, path)
        raise
    _check_checksums(mm, positions, stored, path)
    return out  # no end-of-archive blocks: accepted, as tarfile does


def _check_tail(mm, path, pos: int, file_size: int) -> None:
    """After the end-of-archive block only zero padding may follow."""
    while pos < file_size:
        chunk = mm[pos : min(pos + (1 << 20), file_size)]
        if chunk.count(0) != len(chunk):
            first = pos + next(i for i, b in enumerate(chunk) if b)
            raise _corrupt(path, first, "data after the end-of-archive marker (a damaged header?)")
        pos += len(chunk)


def _tarfile_members(path, file_size: int) -> list[tuple[str, int, int]]:
    out = []
    try:
        with tarfile.open(path, "r:") as tar:
            for info in tar:
                if info.isfile():
                    if info.offset_data + info.size > file_size:
                        raise _corrupt(path, info.offset, "member runs past the end of the file")
                    out.append((info.name, info.offset_data, info.size))
            end = tar.offset
    except (tarfile.TarError, OSError) as exc:
        raise FlytError(f"{path}: unreadable tar ({type(exc).__name__}: {exc})") from None
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        _check_tail(mm, path, end, file_size)
    return out


def _split(name: str) -> tuple[str, str]:
    base = name.rsplit("/", 1)[-1]
    if "." not in base:
        return name, ""
    stem, ext = base.split(".", 1)
    return name[: len(name) - len(base)] + stem, ext


def scan_tar(path) -> list[ScannedSample]:
    """The samples of one tar, in file order, from its headers (plus each ``.json`` member's bytes).

    Raises ``FlytError`` naming the file and byte offset when the tar is damaged or truncated.
    """
    path = str(path)
    try:
        with open(path, "rb") as f:
            file_size = os.fstat(f.fileno()).st_size
            if file_size == 0:
                return []
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                try:
                    members = _fast_members(mm, path, file_size)
                except _NeedTarfile:
                    members = _tarfile_members(path, file_size)
                samples: list[ScannedSample] = []
                for name, offset, size in members:
                    key, ext = _split(name)
                    if not samples or samples[-1].key != key:
                        samples.append(ScannedSample(key, [], [], []))
                    s = samples[-1]
                    s.exts.append(ext)
                    s.offsets.append(offset)
                    s.sizes.append(size)
                    if s.meta is None and ext.lower() == "json":
                        s.meta = mm[offset : offset + size]
    except OSError as exc:
        raise FlytError(f"{path}: unreadable tar ({type(exc).__name__}: {exc})") from None
    return samples


def read_at(f, offset: int, size: int, path) -> bytes:
    """``size`` bytes at ``offset`` of an open file; a short read (the file shrank) fails naming it."""
    if _PREAD:
        data = os.pread(f.fileno(), size, offset)
    else:
        f.seek(offset)
        data = f.read(size)
    if len(data) != size:
        raise FlytError(f"{path}: short read at byte {offset} (the file changed while being read?)")
    return data


def sample_uids(samples: list[ScannedSample], f, path) -> tuple[np.ndarray, np.ndarray]:
    """(uid pairs, has-uid mask) of scanned samples: DataComp's ``uid`` from ``.json`` when present,
    else the pair's content uid (``pair_uid`` of image bytes and caption, as ``flyt.io.webdataset``
    does); a sample with neither gets no uid (mask False). A malformed uid fails naming the sample."""
    uids = []
    ok = np.ones(len(samples), dtype=bool)
    for i, s in enumerate(samples):
        uid = None
        if s.meta is not None:
            try:
                meta = json.loads(s.meta)
            except ValueError:
                meta = None
            if isinstance(meta, dict) and meta.get("uid"):
                uid = str(meta["uid"])
                if not _HEX32.fullmatch(uid):
                    raise FlytError(f"{path}: sample {s.key!r}: .json uid {uid!r} is not 32 hexadecimal characters")
        if uid is None:
            img, txt = s.member(*_IMAGE_EXTS), s.member("txt")
            if img is None or txt is None:
                ok[i] = False
                uid = "0" * 32
            else:
                image = read_at(f, s.offsets[img], s.sizes[img], path)
                text = read_at(f, s.offsets[txt], s.sizes[txt], path).decode("utf-8", errors="replace").strip()
                uid = pair_uid(image, text)
        uids.append(uid)
    if not uids:
        return np.empty(0, dtype=UID_DTYPE), ok
    return uids_to_pairs(np.asarray(uids), str(path)), ok


# ----------------------------------------------------------------------------- writing
# ustar header pieces around the name, size, checksum and prefix fields (fixed metadata, see module doc)
_MODE_IDS = b"0000644\0" + b"0000000\0" + b"0000000\0"  # mode, uid, gid
_MTIME = b"00000000000\0"
_AFTER_SUM = b"0" + bytes(100) + b"ustar\0" + b"00" + bytes(32 + 32 + 8 + 8)  # type, link, magic, version, names, dev
_FIXED_SUM = sum(_MODE_IDS) + sum(_MTIME) + sum(_AFTER_SUM) + 8 * 32  # the checksum field counts as spaces


def tar_header(name: str, size: int) -> bytes:
    """A ustar header for a regular file with fixed metadata (see module doc); byte-identical to
    ``tarfile``'s USTAR header for the same name, size, mode 0644, mtime 0 and empty user names."""
    raw = name.encode("utf-8")
    prefix = b""
    if len(raw) > 100:
        cut = raw.find(b"/", len(raw) - 101)  # tarfile's split: the shortest prefix that leaves a name of <= 100
        if cut <= 0 or cut > 155:
            info = tarfile.TarInfo(name)  # rare: a name ustar cannot hold; GNU long-name record
            info.size, info.mtime, info.mode = size, 0, 0o644
            return info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")
        prefix, raw = raw[:cut], raw[cut + 1 :]
    if size >= 8**11:
        raise FlytError(f"tar member {name}: {size} bytes is more than a ustar member holds")
    size_field = b"%011o\0" % size
    total = _FIXED_SUM + sum(raw) + sum(prefix) + sum(size_field)
    return b"".join((raw.ljust(100, b"\0"), _MODE_IDS, size_field, _MTIME, b"%06o\0 " % total, _AFTER_SUM,
                     prefix.ljust(155, b"\0"), bytes(12)))


class TarWriter:
    """Append members to a new tar; it appears under ``path`` only when ``close()`` succeeds.

    Use as a context manager: an exception inside the block removes the temporary file and leaves
    ``path`` as it was (absent, or a previous complete shard).
    """

    def __init__(self, path, buffer_bytes: int = 1 << 20):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        self._tmp = Path(tmp)
        self._f = os.fdopen(fd, "wb", buffering=buffer_bytes)
        self.bytes = 0
        self.members = 0

    def add(self, name: str, data) -> None:
        size = len(data)
        header = tar_header(name, size)
        self._f.write(header)
        self._f.write(data)
        pad = -size % BLOCK
        if pad:
            self._f.write(_ZERO[:pad])
        self.bytes += len(header) + size + pad
        self.members += 1

    def close(self) -> Path:
        end = 2 * BLOCK
        end += -(self.bytes + end) % RECORD
        self._f.write(bytes(end))
        self.bytes += end
        self._f.close()
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        try:
            self._f.close()
        finally:
            if self._tmp.exists():
                self._tmp.unlink()

    def __enter__(self) -> "TarWriter":
        return self

    def __exit__(self, kind, exc, tb) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


def stale_temporaries(directory) -> list[Path]:
    """Temporary files a killed ``TarWriter`` (or ``atomic_path``) left in ``directory``."""
    return sorted(p for p in Path(directory).glob(".*.tmp") if p.is_file())

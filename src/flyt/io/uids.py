"""DataComp uids: 32 hex characters (128 bits), in memory as two uint64 (high, low)."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa

from flyt.errors import FlytError

# DataComp subset files are sorted structured arrays of this dtype (high, low 64 bits).
UID_DTYPE = np.dtype([("f0", "<u8"), ("f1", "<u8")])

# ASCII code -> nibble value; 255 marks a character that is not hexadecimal.
_HEX = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX[_c] = 10 + _i


def uids_to_pairs(uids, where: str = "uids") -> np.ndarray:
    """Hex uid strings (list, numpy or pyarrow array) -> structured (f0=high, f1=low) array.

    Vectorised: no Python loop per row. Rejects anything that is not exactly 32 hex digits.
    """
    if isinstance(uids, (pa.Array, pa.ChunkedArray)):
        return _arrow_uid_pairs(uids, where)
    raw = np.asarray(uids)
    n = len(raw)
    out = np.empty(n, dtype=UID_DTYPE)
    if n == 0:
        return out
    try:
        fixed = raw.astype("S33")  # one byte longer, so a 33-character uid is caught
    except (UnicodeEncodeError, ValueError, TypeError):
        fixed = np.array([str(u).encode("utf-8", "replace")[:33] for u in raw], dtype="S33")
    codes = fixed.view(np.uint8).reshape(n, 33)
    nibbles = _HEX[codes[:, :32]]
    bad_rows = (nibbles == 255).any(axis=1) | (codes[:, 32] != 0)
    if bad_rows.any():
        i = int(np.argmax(bad_rows))
        raise FlytError(f"{where}: row {i}: uid {str(raw[i])!r} is not 32 hexadecimal characters")
    packed = (nibbles[:, 0::2] << 4) | nibbles[:, 1::2]
    words = np.ascontiguousarray(packed).view(">u8").reshape(n, 2)
    out["f0"] = words[:, 0]
    out["f1"] = words[:, 1]
    return out


def _arrow_uid_pairs(col, where: str) -> np.ndarray:
    """Arrow uid string column -> uid pairs, reading the string buffer directly when it can.

    Parsing through Python strings costs seconds per million rows; 32-byte uids sit back to back
    in the Arrow data buffer, so they can be viewed as fixed-width bytes without copying.
    """
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    n = len(arr)
    if arr.null_count:
        r = int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])
        raise FlytError(f"{where}: row {r}: uid is null")
    if n and pa.types.is_string(arr.type):
        offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32, count=n + 1, offset=4 * arr.offset)
        if offsets[-1] - offsets[0] == 32 * n and np.all(np.diff(offsets) == 32):
            data = np.frombuffer(arr.buffers()[2], dtype=np.uint8, count=32 * n, offset=int(offsets[0]))
            return uids_to_pairs(data.view("S32"), where)
    return uids_to_pairs(arr.to_numpy(zero_copy_only=False), where)


def pairs_to_uids(pairs: np.ndarray) -> np.ndarray:
    """Structured (f0, f1) array -> array of 32-hex uid strings."""
    words = np.empty((len(pairs), 2), dtype=">u8")
    words[:, 0] = pairs["f0"]
    words[:, 1] = pairs["f1"]
    hexed = words.view(np.uint8).reshape(len(pairs), 16)
    digits = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    chars = np.empty((len(pairs), 32), dtype=np.uint8)
    chars[:, 0::2] = digits[hexed >> 4]
    chars[:, 1::2] = digits[hexed & 15]
    return chars.view("S32").ravel().astype(str)


def random_uids(n: int, rng: np.random.Generator) -> np.ndarray:
    """n random uids (for generated pools); 128 random bits each, so collisions do not happen."""
    words = rng.integers(0, np.iinfo(np.uint64).max, size=(n, 2), dtype=np.uint64, endpoint=True)
    pairs = np.empty(n, dtype=UID_DTYPE)
    pairs["f0"], pairs["f1"] = words[:, 0], words[:, 1]
    return pairs_to_uids(pairs)


def content_uid(*parts) -> str:
    """A deterministic 32-hex uid from content: sha1 over the parts (bytes as they are, anything
    else as its UTF-8 ``str``), each followed by a NUL byte, truncated to 128 bits."""
    h = hashlib.sha1()
    for p in parts:
        h.update(p if isinstance(p, bytes) else str(p).encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()[:32]


def pair_uid(image: bytes, text: str) -> str:
    """The uid of an image-text pair that comes without one (``flyt embed``, webdatasets without
    ``.json``): ``content_uid(sha1(image bytes), caption)``."""
    return content_uid(hashlib.sha1(image).digest(), str(text))

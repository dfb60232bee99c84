"""The cache directory: downloaded benchmark assets, encoder caches, embedded benchmarks."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def cache_dir(path=None) -> Path:
    """The cache directory: ``path``, else $FLYT_CACHE, else ~/.cache/flyt."""
    if path is None:
        path = os.environ.get("FLYT_CACHE") or Path.home() / ".cache" / "flyt"
    return Path(path).expanduser()


def cache_key(*parts, length: int = 10) -> str:
    """A short stable name for cached work: the first ``length`` hex digits of the SHA-1 of ``parts``
    as canonical JSON (keys sorted). Parts are JSON values; paths count as their string, numpy arrays
    as their dtype, shape and bytes (so a training multiset can be part of a key)."""
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=_json_part).encode()).hexdigest()[:length]


def _json_part(value):
    import numpy as np

    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, np.ndarray):
        data = np.ascontiguousarray(value)
        return {"dtype": data.dtype.str, "shape": list(data.shape), "sha1": hashlib.sha1(data.tobytes()).hexdigest()}
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cache_key: cannot hash a {type(value).__name__}")


def file_sha256(path) -> str:
    """The sha256 of a file's bytes, read in 8 MiB blocks (identities of subsets, scorer and probe files)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 23), b""):
            h.update(block)
    return h.hexdigest()

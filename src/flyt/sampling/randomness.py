"""Counter-based randomness keyed by (seed, uid, step), and uid fingerprints.

Every random number a sampler uses is a pure function of the seed, the example's uid and a
counter, so a draw does not depend on how the pool is split into shards, the order of files or
the number of workers. The mixer is splitmix64's finaliser (a bijection on 64-bit words).
Callers work in blocks of a few tens of thousands of rows so temporaries stay in cache.
"""

from __future__ import annotations

import numpy as np

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_ODD = np.uint64(0xD6E8FEB86659FD93)
_S12, _S27, _S30, _S31, _S32 = (np.uint64(k) for k in (12, 27, 30, 31, 32))
_SALT_CHECKSUM = np.uint64(0xC4EC5D3A11F00D55)


def _mix_int(z: int) -> int:
    """splitmix64 finaliser on a Python int (for seeds and counters)."""
    z &= _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def mix(z: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser applied in place to a uint64 array (returned for chaining)."""
    z ^= z >> _S30
    z *= _M1
    z ^= z >> _S27
    z *= _M2
    z ^= z >> _S31
    return z


def fingerprint(pairs: np.ndarray) -> np.ndarray:
    """A seed-independent 64-bit hash of each 128-bit uid (equal uids, equal fingerprints)."""
    h = pairs["f1"] * _ODD
    h ^= h >> _S32
    h ^= pairs["f0"]
    return mix(h)


def seed_keys(fingerprints: np.ndarray, seed: int) -> np.ndarray:
    """Per-example random-stream keys for one seed."""
    return fingerprints ^ np.uint64(_mix_int(seed + _GOLDEN))


def exponentials(keys: np.ndarray, step: int) -> np.ndarray:
    """E ~ Exp(1), the step-th one of each key (float64, strictly positive and finite)."""
    h = keys + np.uint64(((step + 1) * _GOLDEN) & _MASK)
    mix(h)
    # 52 random bits + 1/2: u lies in [2^-53, 1 - 2^-53], exactly representable, never 0 or 1.
    u = ((h >> _S12).astype(np.float64) + 0.5) * 2.0**-52
    np.log(u, out=u)
    np.negative(u, out=u)
    return u


def checksum(fingerprints: np.ndarray, scores: np.ndarray) -> int:
    """Order-independent checksum of (uid, score) rows: sum of 64-bit row hashes mod 2^64.

    Equal for the same rows however they are split into shards or ordered.
    """
    h = np.ascontiguousarray(scores, dtype=np.float64).view(np.uint64) ^ _SALT_CHECKSUM
    h += fingerprints
    mix(h)
    return int(np.add.reduce(h, dtype=np.uint64)) if len(h) else 0


def combine_checksums(parts) -> int:
    return sum(parts) & _MASK

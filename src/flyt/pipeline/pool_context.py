"""The pool-wide context scorers fit on (``FitContext``): uid-keyed pool samples and task images.

A pool sample is the n rows whose keyed uid hash is smallest ("bottom-n"), in hash order:

    key(uid) = mix( mix(fingerprint(uid) xor s(seed)) + s(salt) )      (64 bits; ties by uid)

``fingerprint`` and ``mix`` are the sampler's splitmix64 hashing of the 128-bit uid
(``flyt.sampling.randomness``); ``s(seed)`` is a mixed seed, ``s(salt)`` the first 8 bytes of
blake2b(salt). The keys of distinct uids are independent uniform draws for every (seed, salt), so the
bottom n is a uniform sample without replacement, and its order a uniform random order. The sample is
a function of the pool's rows alone: shard files may be renamed, re-split or reordered, and rows
moved between shards, without changing a single uid or byte of it. Finding it costs one pass over the
uid columns (keeping only the n best keys in memory) and then one ``take`` of the chosen rows.
"""

from __future__ import annotations

import hashlib

import numpy as np

from flyt.errors import FlytError
from flyt.io.pool import Batch, PoolShard
from flyt.io.tasks import split_images
from flyt.io.uids import uids_to_pairs
from flyt.sampling.randomness import fingerprint, mix, seed_keys

# Candidates of a pool sample: the hash key, the uid (for ties and duplicates) and where the row is.
_CANDIDATE = np.dtype([("key", "<u8"), ("f0", "<u8"), ("f1", "<u8"), ("shard", "<i8"), ("row", "<i8")])


def sample_keys(pairs: np.ndarray, seed: int, salt: str) -> np.ndarray:
    """The uint64 sample key of each uid (structured uid pairs) for (seed, salt)."""
    salt_word = np.uint64(int.from_bytes(hashlib.blake2b(salt.encode(), digest_size=8).digest(), "little"))
    keys = mix(seed_keys(fingerprint(pairs), seed))
    keys += salt_word
    return mix(keys)


def _ordered(c: np.ndarray) -> np.ndarray:
    return c[np.lexsort((c["f1"], c["f0"], c["key"]))]


def _keep_smallest(c: np.ndarray, n: int) -> np.ndarray:
    """The n candidates first in (key, uid) order (unordered beyond that)."""
    if len(c) <= n:
        return c
    kth = np.partition(c["key"], n - 1)[n - 1]
    c = c[c["key"] <= kth]
    return _ordered(c)[:n] if len(c) > n else c


class PoolContext:
    """The ``FitContext`` of a pool: uid-keyed row samples and the downstream task images."""

    def __init__(self, sources: list[PoolShard], tasks: list, seed: int, image_dim: int | None):
        self.sources, self.tasks, self.seed, self.image_dim = sources, list(tasks), seed, image_dim
        self._task_images = None

    def pool_sample(self, n: int, salt: str) -> Batch:
        """The min(n, pool rows) rows with the smallest sample keys, in key order (module doc)."""
        if n < 1:
            raise FlytError(f"a pool sample needs n >= 1 rows, got {n}")
        unknown = [s for s in self.sources if s.rows is None]
        if unknown:
            raise FlytError(f"{unknown[0].parquet}: unreadable parquet shard (a pool sample needs every shard)")
        best = np.zeros(0, dtype=_CANDIDATE)
        for i, src in enumerate(self.sources):
            uids = src.read_uids()
            if len(uids) == 0:
                continue
            pairs = uids_to_pairs(uids, src.parquet)
            c = np.empty(len(pairs), dtype=_CANDIDATE)
            c["key"], c["f0"], c["f1"] = sample_keys(pairs, self.seed, salt), pairs["f0"], pairs["f1"]
            c["shard"], c["row"] = i, np.arange(len(pairs))
            best = _keep_smallest(np.concatenate([best, _keep_smallest(c, n)]), n)
        if len(best) == 0:
            raise FlytError("the pool has no rows (empty pool)")
        best = _ordered(best)
        same = np.flatnonzero((best["f0"][1:] == best["f0"][:-1]) & (best["f1"][1:] == best["f1"][:-1]))
        if same.size:
            a, b = best[same[0]], best[same[0] + 1]
            raise FlytError(
                f"{self.sources[b['shard']].parquet}: row {b['row']} has the uid of "
                f"{self.sources[a['shard']].parquet} row {a['row']} (uids must be unique across the pool)"
            )
        return self._take(best)

    def _take(self, best: np.ndarray) -> Batch:
        k = len(best)
        uids = np.empty(k, dtype=object)
        image = text = None
        for s in np.unique(best["shard"]):
            mine = np.flatnonzero(best["shard"] == s)
            src = self.sources[s]
            b = src.take(best["row"][mine])
            if image is None:
                image = np.empty((k, b.image.shape[1]), dtype=np.float32)
                text = np.empty((k, b.text.shape[1]), dtype=np.float32)
            if b.image.shape[1] != image.shape[1] or b.text.shape[1] != text.shape[1]:
                raise FlytError(f"pool shards disagree on the embedding dimension ({b.image.shape[1]} vs {image.shape[1]})")
            got = uids_to_pairs(b.uids, src.parquet)
            if not (np.array_equal(got["f0"], best["f0"][mine]) and np.array_equal(got["f1"], best["f1"][mine])):
                raise FlytError(f"{src.parquet}: shard changed while it was being read (its uids moved)")
            uids[mine], image[mine], text[mine] = b.uids, b.image, b.text
        return Batch(uids=uids.astype(str), image=image, text=text)

    def task_images(self) -> np.ndarray:
        if self._task_images is None:
            if not self.tasks:
                raise FlytError("this scorer needs downstream tasks: pass --tasks DIR ...")
            parts = [split_images(d, "train", self.image_dim, "task training images") for d in self.tasks]
            self._task_images = np.concatenate(parts).astype(np.float32)
        return self._task_images

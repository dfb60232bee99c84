"""What every scorer shares: the batch it scores, the pool-wide context it may fit on, its interface.

A scorer is a small picklable object. ``fit(ctx)`` computes any pool-wide state once, in the driver
(a reference sample, a classifier, centroids); ``score(batch)`` is then a pure function of the batch
and that state, so the per-shard work can run anywhere (process pool, Ray) with identical results.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from flyt.io.pool import Batch


class FitContext(Protocol):
    """What the driver offers a scorer that needs pool-wide state."""

    seed: int

    def pool_sample(self, n: int, salt: str) -> Batch:
        """Up to n pool rows drawn uniformly without replacement (embeddings and uids), in random
        order, determined by (seed, salt) and the pool alone."""

    def task_images(self) -> np.ndarray:
        """The L2-normalised training images of all given downstream tasks, concatenated."""


class Scorer:
    """Base class. Subclasses set ``name`` and the needs flags and implement ``score``."""

    name: str = ""
    needs_embeddings: bool = False
    needs_captions: bool = False

    @property
    def input_columns(self) -> list[str]:
        """Score columns (from the pool shards or --scores directories) this scorer reads."""
        return []

    def output_columns(self) -> list[str]:
        return [self.name]

    def fit(self, ctx: FitContext) -> None:
        """Compute pool-wide state (default: none)."""

    def score(self, batch: Batch) -> dict[str, np.ndarray]:
        raise NotImplementedError


def row_chunks(n: int, size: int):
    """[start, stop) ranges covering n rows, to bound the memory of (rows x reference) matrices."""
    for start in range(0, n, size):
        yield start, min(start + size, n)

"""What every scorer shares: the batch it scores, the pool-wide context it may fit on, its interface.

A scorer is a small picklable object. ``fit(ctx)`` computes any pool-wide state once, in the driver
(a reference sample, a classifier, centroids); ``score(batch)`` is then a pure function of the batch
and that state, so the per-shard work can run anywhere (process pool, Ray) with identical results.

The contract, which tests/test_score_invariance.py checks for every scorer: the score of a row is
the same bits whatever the pool's layout and the run's settings (1 or many shards, file names and
order, ``--batch-rows``, worker count, local or Ray). Two rules give it:

- the fitted state depends on the pool's content only: samples come from ``FitContext.pool_sample``,
  keyed by uid hashes, never by file order; fits run single-threaded or with a fixed thread count,
  so they give the same bits on every run;
- ``score`` computes each row by itself (``flyt.models.rowwise``): matrix products and torch ops run
  on zero-padded blocks of a fixed row count with one thread per block, and a row's dot products
  with a vector are numpy row reductions of float64 products. No result for a row depends on which
  other rows share its batch.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from flyt.io.pool import Batch


class FitContext(Protocol):
    """What the driver offers a scorer that needs pool-wide state."""

    seed: int
    tasks: list  # the --tasks directories, in the order given

    def pool_sample(self, n: int, salt: str) -> Batch:
        """Up to n pool rows drawn uniformly without replacement (embeddings and uids), in random
        order, determined by (seed, salt) and the pool's rows alone: the rows with the n smallest
        keyed hashes of their uids, in hash order (not by shard files or their order)."""

    def task_images(self) -> np.ndarray:
        """The L2-normalised training images of all given downstream tasks, concatenated."""


class Scorer:
    """Base class. Subclasses set ``name`` and the needs flags and implement ``score``."""

    name: str = ""
    needs_embeddings: bool = False
    needs_captions: bool = False
    # A pool-wide scorer (``dedup``): a row's value depends on other shards' rows. The driver runs its
    # pool pass after ``fit`` (flyt.pipeline.dedup); each shard job calls ``begin_shard`` before scoring.
    pool_wide: bool = False

    @property
    def input_columns(self) -> list[str]:
        """Score columns (from the pool shards or --scores directories) this scorer reads."""
        return []

    def output_columns(self) -> list[str]:
        return [self.name]

    def fit(self, ctx: FitContext) -> None:
        """Compute pool-wide state (default: none)."""

    def begin_shard(self, source) -> None:
        """Called in the worker before the batches of pool shard ``source`` (default: nothing)."""

    def score(self, batch: Batch) -> dict[str, np.ndarray]:
        raise NotImplementedError

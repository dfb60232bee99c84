"""Where a shard's (uid, score) rows come from: score parquet shards (``flyt.io.scores.ParquetScores``),
arrays, or a generator.

A source is a small picklable object with ``where`` (a name for messages), ``num_rows()`` (cheap)
and ``load(stride=1) -> (pairs, scores)``: every stride-th row's uid pair (flyt.io.uids.UID_DTYPE)
and float64 score, validated. Samplers only ever hold one shard's rows at a time per worker.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flyt.errors import FlytError
from flyt.io.arrays import check_finite
from flyt.io.scores import ParquetScores, score_sources
from flyt.io.uids import UID_DTYPE


@dataclass(frozen=True)
class ArrayScores:
    """Rows already in memory (tests, small pools, the Python API)."""

    pairs: np.ndarray
    scores: np.ndarray
    name: str = "<arrays>"

    @property
    def where(self) -> str:
        return self.name

    def num_rows(self) -> int:
        return len(self.scores)

    def load(self, stride: int = 1):
        scores = np.asarray(self.scores, dtype=np.float64)
        if scores.ndim != 1 or len(scores) != len(self.pairs):
            raise FlytError(f"{self.name}: need one score per uid, got {scores.shape} for {len(self.pairs)} uids")
        check_finite(scores, self.name, "score")
        return np.asarray(self.pairs, dtype=UID_DTYPE)[::stride], scores[::stride]


@dataclass(frozen=True)
class GeneratedScores:
    """A synthetic shard made on demand (benchmarks): random uids, float32 N(0, scale) scores."""

    seed: int
    index: int
    rows: int
    scale: float = 1.0

    @property
    def where(self) -> str:
        return f"<generated shard {self.index}>"

    def num_rows(self) -> int:
        return self.rows

    def load(self, stride: int = 1):
        rng = np.random.default_rng([self.seed, self.index])
        pairs = rng.bit_generator.random_raw(2 * self.rows).view(UID_DTYPE)
        scores = (rng.standard_normal(self.rows, dtype=np.float32) * np.float32(self.scale)).astype(np.float64)
        return pairs[::stride], scores[::stride]


__all__ = ["ArrayScores", "GeneratedScores", "ParquetScores", "score_sources"]

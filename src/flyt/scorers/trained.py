"""FLYT and M-FLYT scorers trained by ``flyt train`` (``scorer.pt``), applied to pool batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flyt.errors import FlytError
from flyt.io.pool import Batch
from flyt.scorers.base import Scorer


class TrainedScorer(Scorer):
    """A ``scorer.pt``: FLYT reads the embeddings, M-FLYT reads its input score columns.

    The output column is the name stored in the checkpoint.
    """

    def __init__(self, path):
        from flyt.models.checkpoint import load_scorer

        self.path = Path(path)
        self.loaded = load_scorer(self.path)
        self.name = self.loaded.name
        self.needs_embeddings = self.loaded.input_kind == "embeddings"

    @property
    def input_columns(self) -> list[str]:
        return list(self.loaded.input_columns)

    def score(self, batch: Batch) -> dict[str, np.ndarray]:
        if self.needs_embeddings:
            return {self.name: self.loaded.score_arrays(image=batch.image, text=batch.text)}
        missing = [c for c in self.input_columns if c not in batch.columns]
        if missing:
            raise FlytError(f"{self.path}: input score column '{missing[0]}' is missing")
        scores = np.stack([batch.columns[c] for c in self.input_columns], axis=1)
        return {self.name: self.loaded.score_arrays(scores=scores)}

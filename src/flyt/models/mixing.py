"""The M-FLYT mixing model: a linear layer over K standardised per-example scores.

    score = sum_k a_k * z_k,   z_k = (s_k - mean_k) / std_k,   optionally z_k <- clip(z_k, -c, c)

No bias: the softmax over a batch (training) and over the pool (sampling) ignore a constant.
The statistics are those of the pool the model was trained on and travel with the model.

Clipping (``clip=c``, the training key ``score_clip``): a score that is constant on most of the pool
and far off on a few rows (``caption_non_latin``: 0 for most captions) has a small std, so its rare
rows get z-scores of 10 or more; one step of the mixer's weight then moves those rows' logits more
than any other input can, and the meta-gradient of a handful of rows decides the weight. Clipping the
z-scores bounds every input's leverage by c while leaving the bulk (|z| < c) linear and unchanged. The
clip travels with the model (``config()["clip"]``), so scoring applies the same transform.
An imported authors' mixer (``flyt.models.authors``) has ``bias=True``, mean 0 and std 1: it reads
its inputs raw, as the authors did, and adds their bias: the same float32 linear layer over the same
float32 inputs.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from flyt.errors import FlytError


class ScoreMixer(nn.Module):
    def __init__(self, columns: list[str], mean, std, bias: bool = False, clip: float | None = None):
        super().__init__()
        if clip is not None and not (0 < float(clip) < float("inf")):
            raise FlytError(f"the M-FLYT input clip must be a positive number, got {clip!r}")
        self.clip = None if clip is None else float(clip)
        if not columns:
            raise FlytError("M-FLYT needs at least one score column (score_columns)")
        self.columns = list(columns)
        self.register_buffer("mean", torch.as_tensor(np.asarray(mean), dtype=torch.float64))
        std = torch.as_tensor(np.asarray(std), dtype=torch.float64)
        self.register_buffer("std", torch.where(std > 0, std, torch.ones_like(std)))
        # Zero init: every example starts equally likely; the first meta-gradients pick the mix.
        self.linear = nn.Linear(len(columns), 1, bias=bias)
        nn.init.zeros_(self.linear.weight)
        if bias:
            nn.init.zeros_(self.linear.bias)

    @classmethod
    def fit_statistics(cls, columns: list[str], scores: np.ndarray, clip: float | None = None) -> "ScoreMixer":
        """Build a mixer whose standardisation statistics are those of ``scores`` (n, K)."""
        return cls(columns, scores.mean(axis=0), scores.std(axis=0), clip=clip)

    def standardise(self, scores: torch.Tensor) -> torch.Tensor:
        z = (scores.to(self.mean.dtype) - self.mean) / self.std
        if self.clip is not None:
            z = z.clamp(-self.clip, self.clip)
        return z.to(self.linear.weight.dtype)

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        return self.linear(self.standardise(scores)).squeeze(-1)

    def weights(self) -> dict[str, float]:
        """The learned weight of each (standardised) input score: M-FLYT's interpretable output."""
        return {c: float(w) for c, w in zip(self.columns, self.linear.weight.detach().reshape(-1))}

    def config(self) -> dict:
        out = {"columns": self.columns, "mean": self.mean.tolist(), "std": self.std.tolist()}
        if self.linear.bias is not None:  # only when set, so a trained mixer's scorer.pt is as before
            out["bias"] = True
        if self.clip is not None:  # likewise
            out["clip"] = self.clip
        return out

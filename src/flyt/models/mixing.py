"""The M-FLYT mixing model: a linear layer over K standardised per-example scores.

    score = sum_k a_k * z_k

No bias: the softmax over a batch (training) and over the pool (sampling) ignore a constant.
How each raw score s_k becomes z_k (``transform``, the training key ``score_transform``) is fitted
once, on the pool the model was trained on (``fit_statistics``), and travels with the model
(``config()``), so scoring applies the same transform:

- ``zscore`` (the default, the paper): z_k = (s_k - mean_k) / std_k, optionally clipped to [-c, c].
- ``rank``: z_k = sqrt(12) * (F_k(s_k) - 1/2), F_k the empirical CDF of s_k on the fitting sample
  (mid-ranks for ties), interpolated between stored knots. Derivation and invariants below.

Clipping (``clip=c``, the training key ``score_clip``): a score that is constant on most of the pool
and far off on a few rows (``caption_non_latin``: 0 for most captions) has a small std, so its rare
rows get z-scores of 10 or more; one step of the mixer's weight then moves those rows' logits more
than any other input can, and the meta-gradient of a handful of rows decides the weight. Clipping the
z-scores bounds every input's leverage by c while leaving the bulk (|z| < c) linear and unchanged. The
clip travels with the model (``config()["clip"]``), so scoring applies the same transform (after
either transform; it cannot bind on ``rank``, whose values lie within +-sqrt(3), for c >= sqrt(3)).

Rank standardisation. On the fitting sample x_1..x_n of one column, let u_1 < ... < u_m be its
distinct values, t_j the number of rows equal to u_j and b_j = t_1 + ... + t_{j-1} the number below.
The mid-rank CDF level of u_j is

    p_j = (b_j + t_j / 2) / n        (in (0, 1); tied rows share one level, the mean of their ranks)

and a raw value s maps to F(s): p_j at s = u_j, linear in s between consecutive knots (u_j, p_j),
(u_{j+1}, p_{j+1}), and p_1 below u_1, p_m above u_m (no extrapolation: a value outside the fitted
range is as extreme as the most extreme fitted one). Then z = sqrt(12) * (F(s) - 1/2). Invariants:

1. Monotone: F is non-decreasing in s (knots and levels both increase), strictly between distinct
   knots; so within a column z orders rows as the raw score does, ties stay tied. (A mixer cast to
   float32, as training in float32 does, may round two knots to one value: a zero-width segment, a step
   of F there, still monotone; the saved scorer.pt holds the knots as the model used them.)
2. Per row: z depends on the row's own value and the stored knots only (a ``searchsorted`` and exactly
   rounded + - * /, no reduction over rows), so a row gets the same bits in any batch, block or shard
   split, now or after ``scorer.pt`` is loaded (the knots and levels are saved with the model).
3. Bounded: |z| < sqrt(3) ~ 1.73 for every row, whatever the raw value: no row has more leverage on
   its column's weight than that (z-scores: sqrt((1 - q) / q) for the q-share of a binary column's
   rare rows, ~14 at q = 0.5%; clipped: c).
4. Centred, with the variance a column earns. When every distinct value is a knot, on the fitting
   sample sum_i F(x_i) = sum_j t_j (b_j + t_j/2) / n = n/2, so mean(z) = 0 exactly; and with the
   mid-rank variance (n^2 - 1)/12 - sum_j (t_j^3 - t_j)/(12 n) (ranks 1..n),

       var(z) = 1 - 1/n^2 - sum_j (t_j^3 - t_j) / n^3.

   A column without ties has var ~ 1 (a uniform on [-sqrt3, sqrt3]), like a z-score; a constant column
   has one knot at level 1/2, so z = 0 on every row and var 0: no signal, its weight gets no gradient;
   a binary column with a q-share of rare rows takes the values -sqrt(3) q and sqrt(3) (1 - q), var
   3 q (1 - q) (~0.015 at q = 0.5%). Ties are information the column does not have, and rank gives a
   near-constant column (``caption_non_latin``) only the little variance its few distinct rows carry,
   where a z-score inflates it to 1. (Not re-standardised after the rank, on purpose.)
5. Scale-free: any increasing transform of a raw score (log, affine, a power) leaves its levels, and so
   z on the fitting sample, unchanged; the mix is a mix of ranks.

Knots: every distinct value while there are at most ``MAX_KNOTS``; else the first and last, every value
holding at least 1/MAX_KNOTS of the rows (an atom such as caption_non_latin's 0 stays exact), and the
first value at or above each of MAX_KNOTS evenly spaced levels. Between two kept knots F moves by at most
~2/MAX_KNOTS, so z is within ~2 sqrt(12)/MAX_KNOTS ~ 0.003 of the full mid-rank value (invariant 4 then
holds to that precision); invariants 1-3 and 5 hold exactly. No gradient flows through the transform: it
is applied to the (constant) input scores, and the meta-gradient reaches only the linear weights.

An imported authors' mixer (``flyt.models.authors``) has ``bias=True``, mean 0 and std 1: it reads
its inputs raw, as the authors did, and adds their bias: the same float32 linear layer over the same
float32 inputs.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from flyt.errors import FlytError

TRANSFORMS = ("zscore", "rank")
MAX_KNOTS = 2049  # rank: knots kept per column (see the module docstring)
RANK_SCALE = math.sqrt(12.0)  # a uniform on (0, 1), centred, has variance 1/12


def rank_knots(values: np.ndarray, max_knots: int = MAX_KNOTS) -> tuple[np.ndarray, np.ndarray]:
    """One column's rank knots: its distinct values (or ~``max_knots`` of them) and their mid-rank CDF
    levels p_j = (rows below + rows equal / 2) / n (module docstring)."""
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(x) == 0 or not np.isfinite(x).all():
        raise FlytError("M-FLYT rank standardisation needs a non-empty sample of finite scores")
    knots, counts = np.unique(x, return_counts=True)
    below = np.cumsum(counts) - counts
    levels = (below + 0.5 * counts) / len(x)
    if len(knots) > max_knots:
        targets = np.linspace(levels[0], levels[-1], max_knots)
        keep = np.searchsorted(levels, targets, side="left").clip(0, len(knots) - 1)
        heavy = np.flatnonzero(counts * max_knots >= len(x))
        keep = np.unique(np.concatenate([[0, len(knots) - 1], keep, heavy]))
        knots, levels = knots[keep], levels[keep]
    return knots, levels


class ScoreMixer(nn.Module):
    def __init__(self, columns: list[str], mean, std, bias: bool = False, clip: float | None = None,
                 transform: str = "zscore", knots=None, levels=None):
        super().__init__()
        if clip is not None and not (0 < float(clip) < float("inf")):
            raise FlytError(f"the M-FLYT input clip must be a positive number, got {clip!r}")
        self.clip = None if clip is None else float(clip)
        if not columns:
            raise FlytError("M-FLYT needs at least one score column (score_columns)")
        if transform not in TRANSFORMS:
            raise FlytError(f"the M-FLYT input transform must be one of {', '.join(TRANSFORMS)}, got {transform!r}")
        self.transform = transform
        self.columns = list(columns)
        self.register_buffer("mean", torch.as_tensor(np.asarray(mean), dtype=torch.float64))
        std = torch.as_tensor(np.asarray(std), dtype=torch.float64)
        self.register_buffer("std", torch.where(std > 0, std, torch.ones_like(std)))
        if transform == "rank":
            knots_t, levels_t, self._lengths = _padded_knots(self.columns, knots, levels)
            self.register_buffer("knots", knots_t)
            self.register_buffer("levels", levels_t)
        elif knots is not None or levels is not None:
            raise FlytError("M-FLYT knots and levels belong to transform 'rank' only")
        # Zero init: every example starts equally likely; the first meta-gradients pick the mix.
        self.linear = nn.Linear(len(columns), 1, bias=bias)
        nn.init.zeros_(self.linear.weight)
        if bias:
            nn.init.zeros_(self.linear.bias)

    @classmethod
    def fit_statistics(cls, columns: list[str], scores: np.ndarray, clip: float | None = None,
                       transform: str = "zscore") -> "ScoreMixer":
        """Build a mixer whose standardisation is fitted on ``scores`` (n, K): mean and std, and for
        ``transform="rank"`` each column's knots and mid-rank levels."""
        knots = levels = None
        if transform == "rank":
            fitted = [rank_knots(scores[:, k]) for k in range(scores.shape[1])]
            knots, levels = [f[0].tolist() for f in fitted], [f[1].tolist() for f in fitted]
        return cls(columns, scores.mean(axis=0), scores.std(axis=0), clip=clip, transform=transform,
                   knots=knots, levels=levels)

    def standardise(self, scores: torch.Tensor) -> torch.Tensor:
        if self.transform == "rank":
            z = self._rank(scores.to(self.knots.dtype))
        else:
            z = (scores.to(self.mean.dtype) - self.mean) / self.std
        if self.clip is not None:
            z = z.clamp(-self.clip, self.clip)
        return z.to(self.linear.weight.dtype)

    def _rank(self, x: torch.Tensor) -> torch.Tensor:
        """sqrt(12) (F(x) - 1/2) per element, F piecewise linear through the knots (module docstring)."""
        xt = x.T.contiguous()  # (K, n): one row of values per column's knots
        width_m = self.knots.shape[1]
        i = torch.searchsorted(self.knots, xt, right=True).clamp(1, width_m - 1)
        x0, x1 = self.knots.gather(1, i - 1), self.knots.gather(1, i)
        p0, p1 = self.levels.gather(1, i - 1), self.levels.gather(1, i)
        width = x1 - x0
        has = width > 0  # padding (and a one-knot column) repeats the last knot: a flat segment
        t = torch.where(has, (xt - x0) / torch.where(has, width, torch.ones_like(width)), torch.zeros_like(width))
        p = p0 + t.clamp(0.0, 1.0) * (p1 - p0)
        return ((p - 0.5) * RANK_SCALE).T.contiguous()

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
        if self.transform != "zscore":  # likewise: a z-score mixer's config has no transform key
            out["transform"] = self.transform
            out["knots"] = [row[:n] for row, n in zip(self.knots.tolist(), self._lengths)]
            out["levels"] = [row[:n] for row, n in zip(self.levels.tolist(), self._lengths)]
        return out


def _padded_knots(columns: list[str], knots, levels) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """(K, M) float64 knots and levels, each column's run padded by repeating its last knot and level
    (a flat segment: values beyond the last knot map to its level), with each column's own length."""
    if not isinstance(knots, (list, tuple)) or not isinstance(levels, (list, tuple)) \
            or len(knots) != len(columns) or len(levels) != len(columns):
        raise FlytError(f"M-FLYT transform 'rank' needs knots and levels for each of its {len(columns)} columns")
    rows_k, rows_p = [], []
    for c, k, p in zip(columns, knots, levels):
        k, p = np.asarray(k, dtype=np.float64).reshape(-1), np.asarray(p, dtype=np.float64).reshape(-1)
        if len(k) == 0 or len(k) != len(p) or not (np.isfinite(k).all() and np.isfinite(p).all()) \
                or (np.diff(k) < 0).any() or (np.diff(p) < 0).any() or p.min() < 0 or p.max() > 1:
            raise FlytError(f"M-FLYT rank knots of column {c!r} must be non-decreasing finite values with "
                            f"non-decreasing levels in [0, 1], as many of each")
        rows_k.append(k)
        rows_p.append(p)
    lengths = [len(k) for k in rows_k]
    width = max(2, *lengths)
    pad = lambda a: np.concatenate([a, np.full(width - len(a), a[-1])])  # noqa: E731
    return (torch.as_tensor(np.stack([pad(k) for k in rows_k])), torch.as_tensor(np.stack([pad(p) for p in rows_p])),
            lengths)

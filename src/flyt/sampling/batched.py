"""The authors' batched procedures (formll/FLYT, examples.ipynb), in memory, for small pools.

Soft Cap Sampling, ``batched_counts`` (the notebook's ``soft_cap_sampling``): repeat until T draws:
take b = min(B, T - drawn) examples *without* replacement from the current softmax
p_i ~ exp(s_i/temp - delta*c_i), then add 1 to the count of every drawn example. Without-replacement
draws use Gumbel-top-b (equivalent to drawing one at a time proportionally to the weights and removing
each drawn example, as numpy's ``choice(replace=False, p=...)`` does). An optional cap excludes
examples at the cap. b = 1 is the sequential process.

Hard Cap Sampling, ``hard_cap_counts`` (the notebook's ``hard_cap_sampling``): p = softmax(s/temp) once.
Repeat until T draws: mask out the examples already drawn K times and renormalise p over the rest;
draw b = min(B, T - accepted) indices *with* replacement from it; walk the batch in order, accepting a
draw (count + 1) while its example's count is below K and rejecting the copies past the cap. At most b
draws are accepted, so the walk never stops early and its order does not matter: an example drawn m
times in the batch gains min(m, K - c). Accepted draws are rejection sampling from p restricted to the
examples still below the cap, so at every B the accepted sequence is the sequential hard-cap process
(B only changes how many draws are wasted); tests/test_datacomp_baselines.py checks it.

Both cost O(pool) per batch, O(pool * T / B) in all: this is what the clock race avoids.
"""

from __future__ import annotations

import numpy as np

from flyt.errors import FlytError


def batched_counts(
    scores: np.ndarray,
    total: int,
    batch: int,
    delta: float,
    temperature: float = 1.0,
    cap: int | None = None,
    seed: int = 0,
    max_batches: int | None = None,
) -> np.ndarray:
    """Counts (int64, aligned with ``scores``) after drawing ``total`` in batches of ``batch``
    without replacement (the SCS procedure above).

    ``max_batches`` stops early (for timing a few iterations of a long run).
    """
    if batch < 1:
        raise FlytError(f"--batch must be a positive integer, got {batch}")
    a = np.asarray(scores, dtype=np.float64) / temperature
    n = len(a)
    counts = np.zeros(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    drawn = 0
    done_batches = 0
    while drawn < total and (max_batches is None or done_batches < max_batches):
        logits = a - delta * counts
        if cap is not None:
            logits[counts >= cap] = -np.inf
        available = n if cap is None else int((counts < cap).sum())
        b = min(batch, total - drawn, available)
        if b <= 0:
            raise FlytError(f"--total {total} cannot be reached with --cap {cap} on {n} rows")
        keys = logits + rng.gumbel(size=n)
        top = np.argpartition(-keys, b - 1)[:b] if b < n else np.arange(n)
        counts[top] += 1
        drawn += b
        done_batches += 1
    return counts


def hard_cap_counts(
    scores: np.ndarray,
    total: int,
    batch: int,
    cap: int,
    temperature: float = 1.0,
    seed: int = 0,
    max_batches: int | None = None,
) -> np.ndarray:
    """Counts (int64, aligned with ``scores``) after ``total`` accepted draws of the authors' HCS
    procedure with batch ``batch`` and cap ``cap`` (with replacement, copies past the cap rejected)."""
    if batch < 1:
        raise FlytError(f"--batch must be a positive integer, got {batch}")
    a = np.asarray(scores, dtype=np.float64) / temperature
    n = len(a)
    if total > cap * n:
        raise FlytError(f"--total {total} cannot be reached: at most {cap * n} draws from {n} rows")
    counts = np.zeros(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    accepted = 0
    done_batches = 0
    while accepted < total and (max_batches is None or done_batches < max_batches):
        # p renormalised over the examples below the cap, computed from their own maximum so that
        # it never underflows to all zeros.
        below = counts < cap
        masked = np.where(below, np.exp(a - a[below].max()), 0.0)
        b = min(batch, total - accepted)
        hits = np.bincount(rng.choice(n, size=b, p=masked / masked.sum()), minlength=n)
        gain = np.minimum(hits, cap - counts)
        counts += gain
        accepted += int(gain.sum())
        done_batches += 1
    return counts

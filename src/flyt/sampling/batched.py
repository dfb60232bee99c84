"""The authors' batched procedure, in memory, for comparison on small pools.

Repeat until T draws: draw b examples without replacement from the current softmax
p_i ~ exp(s_i/temp - delta*c_i) (examples at the cap excluded), then add 1 to the count of every
drawn example. Without-replacement draws use Gumbel-top-b (equivalent to drawing one at a time
proportionally to the weights and removing each drawn example). b = 1 is the sequential process.
Its cost is O(pool) per batch, O(pool * T / b) in all: this is what the clock race avoids.
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
    """Counts (int64, aligned with ``scores``) after drawing ``total`` in batches of ``batch``.

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

"""The learning-rate schedule: linear warm-up, then cosine decay to zero."""

from __future__ import annotations

import math


def cosine_lr(step: int, base_lr: float, warmup: int, total: int) -> float:
    """lr at 0-based ``step``: base_lr (step + 1) / warmup for the first ``warmup`` steps, then
    base_lr (1 + cos(pi p)) / 2 with p = (step - warmup) / (total - warmup), reaching 0 at ``total``
    (and staying there after it)."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * base_lr * (1 + math.cos(math.pi * min(1.0, progress)))

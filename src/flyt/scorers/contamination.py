"""``contamination``: each pool row's highest cosine to any *test* image of the downstream tasks.

    contamination_max(x)  = max over tasks k, test images t of k:  <f(x), f(t)>
    contamination_task(x) = the index k (in --tasks order) of the task holding that image

The one use of test images this project allows: finding pool rows that are (near) copies of them, to
remove them before training, as DataComp removed near-duplicates of its evaluation sets from its
pools (``flyt sample --exclude 'contamination_max>X'``). Image embeddings only, L2-normalised.

Bounded memory: pool rows in fixed blocks of ``BLOCK_ROWS`` (one thread each,
``flyt.models.rowwise``), test images ``CHUNK`` at a time, so at most BLOCK_ROWS x CHUNK
similarities per thread. float32 products; among equal maxima the first task (and image) wins.
"""

from __future__ import annotations

import numpy as np

from flyt.errors import FlytError
from flyt.io.pool import Batch
from flyt.io.tasks import split_images
from flyt.models.rowwise import BLOCK_ROWS, block_map, padded
from flyt.scorers.base import FitContext, Scorer

CHUNK = 8192  # test images per product


def test_images(tasks, image_dim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(unit float32 test images of all tasks concatenated, the task index of each)."""
    images, owner = [], []
    for k, d in enumerate(tasks):
        m = split_images(d, "test", image_dim, "contamination compares the pool with the tasks' test images")
        images.append(m)
        owner.append(np.full(len(m), k, np.int32))
    if not images:
        raise FlytError("scorer 'contamination' needs downstream tasks: pass --tasks DIR ...")
    if len({m.shape[1] for m in images}) > 1:
        raise FlytError(f"the --tasks test splits have different dimensions ({', '.join(str(m.shape[1]) for m in images)})")
    return np.concatenate(images).astype(np.float32), np.concatenate(owner)


def max_similarity(x: np.ndarray, targets: np.ndarray, chunk: int = CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """(largest cosine of each row of ``x`` to ``targets``, index of the first target reaching it)."""
    import torch

    parts_t = [torch.from_numpy(np.ascontiguousarray(targets[lo : lo + chunk])).T.contiguous()
               for lo in range(0, len(targets), chunk)]

    def block(lo: int, hi: int):
        xb = padded(x, lo, hi)
        best = np.full(BLOCK_ROWS, -np.inf, dtype=np.float32)
        arg = np.zeros(BLOCK_ROWS, dtype=np.int64)
        start = 0
        for t in parts_t:
            sims = (xb @ t).numpy()
            j = np.argmax(sims, axis=1)
            v = sims[np.arange(BLOCK_ROWS), j]
            better = v > best  # strict: an earlier chunk keeps a tie
            best[better], arg[better] = v[better], start + j[better]
            start += t.shape[1]
        return best[: hi - lo], arg[: hi - lo]

    parts = block_map(block, len(x))
    if not parts:
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


class Contamination(Scorer):
    """``contamination``: ``contamination_max`` and ``contamination_task`` against the --tasks test splits."""

    name = "contamination"
    needs_embeddings = True

    def __init__(self):
        self.targets = None
        self.owner = None

    def output_columns(self) -> list[str]:
        return ["contamination_max", "contamination_task"]

    def fit(self, ctx: FitContext) -> None:
        self.targets, self.owner = test_images(ctx.tasks, getattr(ctx, "image_dim", None))

    def score(self, batch: Batch) -> dict[str, np.ndarray]:
        if batch.image.shape[1] != self.targets.shape[1]:
            raise FlytError(f"contamination: pool image embeddings are {batch.image.shape[1]}-d but the task test "
                            f"images are {self.targets.shape[1]}-d (embed both with the same model)")
        best, arg = max_similarity(batch.image, self.targets)
        return {"contamination_max": best, "contamination_task": self.owner[arg]}

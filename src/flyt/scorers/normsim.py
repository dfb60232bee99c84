"""NormSim_p (Wang et al. 2024): how close an example's image is to the downstream training images.

    normsim_p(x) = || (<f(x), f(t_j)>)_j ||_p   over target images t_j (L2-normalised)

p = inf is the largest similarity; p = 2 is taken as the RMS (SPEC.md 5), i.e. the 2-norm divided by
sqrt(#targets): a constant factor, so rankings equal the plain 2-norm's. Image embeddings only.
"""

from __future__ import annotations

import numpy as np

from flyt.errors import FlytError
from flyt.io.pool import Batch
from flyt.models.rowwise import BLOCK_ROWS, block_map, padded, row_dot
from flyt.scorers.base import FitContext, Scorer


def normsim(image: np.ndarray, targets: np.ndarray, p: float, chunk: int = 16384, block_rows: int = BLOCK_ROWS) -> np.ndarray:
    """NormSim_p of each row of ``image`` against ``targets`` (float32). p is 2 or inf.

    Similarities are float32 products (float64 when an input is float64) on fixed blocks of
    ``block_rows`` rows, one thread each; the targets are taken ``chunk`` at a time to bound memory.
    The 2-norm sums squares in float64 row by row (``row_dot``): a row's value does not depend on
    the other rows of the call.
    """
    import torch

    if p not in (2, np.inf):
        raise FlytError(f"normsim: p must be 2 or inf, got {p}")
    wide = np.asarray(image).dtype == np.float64 or np.asarray(targets).dtype == np.float64
    dtype, np_dtype = (torch.float64, np.float64) if wide else (torch.float32, np.float32)
    parts_t = [torch.from_numpy(np.ascontiguousarray(targets[lo : lo + chunk], dtype=np_dtype)).T
               for lo in range(0, len(targets), chunk)]  # bound memory for large target sets

    def block(lo: int, hi: int) -> np.ndarray:
        x = padded(image, lo, hi, block_rows, dtype)
        acc = np.full(block_rows, -np.inf) if p == np.inf else np.zeros(block_rows)
        for t in parts_t:
            sims = (x @ t).numpy()
            if p == np.inf:
                acc = np.maximum(acc, sims.max(axis=1))
            else:
                acc += row_dot(sims, sims)
        return acc[: hi - lo]

    parts = block_map(block, len(image), block_rows)
    acc = np.concatenate(parts) if parts else np.zeros(0)
    if p == 2:
        acc = np.sqrt(acc / len(targets))
    return acc.astype(np.float32)


class NormSim(Scorer):
    """``normsim_2`` / ``normsim_inf`` against the image embeddings of the --tasks training sets."""

    needs_embeddings = True

    def __init__(self, p: float):
        self.p = p
        self.name = "normsim_inf" if p == np.inf else "normsim_2"
        self.targets = None

    def fit(self, ctx: FitContext) -> None:
        self.targets = ctx.task_images()

    def score(self, batch: Batch) -> dict[str, np.ndarray]:
        if batch.image.shape[1] != self.targets.shape[1]:
            raise FlytError(
                f"{self.name}: pool image embeddings are {batch.image.shape[1]}-d but the task images are "
                f"{self.targets.shape[1]}-d (embed both with the same model)"
            )
        return {self.name: normsim(batch.image, self.targets, self.p)}

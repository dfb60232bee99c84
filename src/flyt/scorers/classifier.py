"""``classifier``: a linear probe on frozen image embeddings telling downstream-like images from pool images.

Positives: the training images of the --tasks; negatives: a uniform pool sample (seeded, by uid hash).
The probe is L2-regularised logistic regression with classes weighted to balance, fitted in float64
with L-BFGS on one torch thread, so the same inputs give the same bits on every run whatever the
thread settings. The score is the probe's logit  w . x + b, each row's dot product summed on its own
(``row_dot``). Save it with ``save`` and reuse it with ``LinearProbe.load`` (``flyt score
--classifier PATH`` / ``--save-classifier PATH``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flyt.errors import FlytError
from flyt.io.atomic import atomic_path
from flyt.io.pool import Batch
from flyt.models.rowwise import one_thread, row_dot
from flyt.scorers.base import FitContext, Scorer


class LinearProbe:
    """Logistic regression on embeddings: ``fit``, ``decision``, ``save``, ``load``."""

    def __init__(self, weight: np.ndarray, bias: float):
        self.weight = np.asarray(weight, dtype=np.float64)
        self.bias = float(bias)

    @classmethod
    def fit(cls, positives: np.ndarray, negatives: np.ndarray, l2: float = 1e-4, max_iter: int = 200) -> "LinearProbe":
        """Fit on (n_pos, d) and (n_neg, d); each class gets half the total weight."""
        import torch

        if len(positives) == 0 or len(negatives) == 0:
            raise FlytError("classifier: needs both task images and pool images to fit")
        x = torch.as_tensor(np.concatenate([positives, negatives]), dtype=torch.float64)
        y = torch.cat([torch.ones(len(positives)), torch.zeros(len(negatives))]).double()
        sw = torch.cat([torch.full((len(positives),), 0.5 / len(positives)),
                        torch.full((len(negatives),), 0.5 / len(negatives))]).double()
        w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
        b = torch.zeros((), dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=max_iter, line_search_fn="strong_wolfe", tolerance_grad=1e-10)

        def closure():
            opt.zero_grad()
            logits = x @ w + b
            loss = (sw * torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")).sum()
            loss = loss + l2 * (w @ w)
            loss.backward()
            return loss

        with one_thread():  # multi-threaded reductions would make the fit depend on the thread count
            opt.step(closure)
        return cls(w.detach().numpy().copy(), float(b.detach()))

    def decision(self, x: np.ndarray) -> np.ndarray:
        """The logit of 'downstream-like' for each row (float32)."""
        if x.shape[1] != len(self.weight):
            raise FlytError(f"classifier: fitted on {len(self.weight)}-d images, got {x.shape[1]}-d")
        return (row_dot(x, self.weight) + self.bias).astype(np.float32)

    def save(self, path) -> None:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, weight=self.weight, bias=np.float64(self.bias))

    @classmethod
    def load(cls, path) -> "LinearProbe":
        path = Path(path)
        try:
            with np.load(path) as data:
                return cls(data["weight"], float(data["bias"]))
        except FileNotFoundError:
            raise FlytError(f"option --classifier: {path} does not exist") from None
        except Exception as exc:
            raise FlytError(f"{path}: not a saved classifier ({type(exc).__name__}: {exc})") from None


class ClassifierScore(Scorer):
    """``classifier``: the probe's logit of each pool image (fitted once, or loaded)."""

    name = "classifier"
    needs_embeddings = True

    def __init__(self, load_path=None, save_path=None, negatives: int = 20000, l2: float = 1e-4):
        if negatives < 1:
            raise FlytError(f"option --classifier-negatives must be >= 1, got {negatives}")
        self.load_path, self.save_path, self.negatives, self.l2 = load_path, save_path, negatives, l2
        self.probe = LinearProbe.load(load_path) if load_path else None

    def fit(self, ctx: FitContext) -> None:
        if self.probe is None:
            neg = ctx.pool_sample(self.negatives, salt="classifier")
            self.probe = LinearProbe.fit(ctx.task_images(), neg.image, l2=self.l2)
        if self.save_path:
            self.probe.save(self.save_path)

    def score(self, batch: Batch) -> dict[str, np.ndarray]:
        return {self.name: self.probe.decision(batch.image)}

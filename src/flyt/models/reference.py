"""The embedding-space reference model theta: a locked-tower CLIP on frozen embeddings.

    I = normalise(P_img x_img),  T = normalise(P_txt x_txt),  logit scale exp(t)

P_img, P_txt are trainable projection heads; t is the learnable log logit scale, clamped to
[LOGIT_SCALE_MIN, ln 100] after every step. When both embeddings already share one space (DataComp's
CLIP embeddings), the heads start as the identity, so the reference starts as the frozen CLIP.

Parameters live in a plain dict of tensors so the training step can run them functionally
(theta' = AdamW_step(theta, g) must stay differentiable with respect to g).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from flyt.errors import FlytError

LOGIT_SCALE_MIN = 2.0  # SPEC.md 2: clamp in log space to [2, ln 100]
LOGIT_SCALE_MAX = math.log(100.0)
CLIP_LOGIT_SCALE_INIT = math.log(1 / 0.07)  # = 2.65926, open_clip's init


class EmbeddingReference:
    """Projection heads on frozen image/text embeddings, run functionally on a params dict."""

    def __init__(
        self,
        image_dim: int,
        text_dim: int,
        embed_dim: int | None = None,
        init: str = "auto",
        logit_scale: float = CLIP_LOGIT_SCALE_INIT,
    ):
        self.image_dim, self.text_dim = image_dim, text_dim
        self.embed_dim = embed_dim or (image_dim if image_dim == text_dim else min(image_dim, text_dim))
        if init == "auto":
            init = "identity" if image_dim == text_dim == self.embed_dim else "random"
        if init not in ("identity", "random"):
            raise FlytError(f"reference.init must be 'auto', 'identity' or 'random', got {init!r}")
        if init == "identity" and not (image_dim == text_dim == self.embed_dim):
            raise FlytError(
                f"reference.init 'identity' needs equal dimensions (image {image_dim}, text {text_dim}, "
                f"embed {self.embed_dim})"
            )
        self.init, self.logit_scale_init = init, logit_scale

    def init_params(self, generator: torch.Generator | None = None, dtype=torch.float32) -> dict:
        e = self.embed_dim
        if self.init == "identity":
            img = torch.eye(e, dtype=dtype)
            txt = torch.eye(e, dtype=dtype)
        else:  # open_clip's projection init: std = width ** -0.5
            img = torch.randn(e, self.image_dim, generator=generator, dtype=dtype) * self.image_dim**-0.5
            txt = torch.randn(e, self.text_dim, generator=generator, dtype=dtype) * self.text_dim**-0.5
        return {
            "image_proj": img,
            "text_proj": txt,
            "logit_scale": torch.tensor(self.logit_scale_init, dtype=dtype),
        }

    @staticmethod
    def encode_image(params: dict, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x @ params["image_proj"].T, dim=-1)

    @staticmethod
    def encode_text(params: dict, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x @ params["text_proj"].T, dim=-1)

    @staticmethod
    def clamp(params: dict) -> dict:
        """The same params with the log logit scale clamped (differentiable, out of place)."""
        out = dict(params)
        out["logit_scale"] = params["logit_scale"].clamp(LOGIT_SCALE_MIN, LOGIT_SCALE_MAX)
        return out

    def config(self) -> dict:
        return {
            "kind": "embedding",
            "image_dim": self.image_dim,
            "text_dim": self.text_dim,
            "embed_dim": self.embed_dim,
            "init": self.init,
            "logit_scale": self.logit_scale_init,
        }

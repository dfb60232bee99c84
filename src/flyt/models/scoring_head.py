"""The FLYT scoring model q_phi: a SwiGLU head over frozen image and text embeddings.

    x     = [normalise(image) ; normalise(text)]            (d = d_img + d_txt)
    score = W2( silu(W1 x) * (W3 x) )                        W1, W3: d -> h,  W2: h -> 1

``depth > 1`` puts residual SwiGLU blocks (d -> h -> d, output projection zero-initialised, so the
initial score is unchanged) before the final head. ``residual=False`` chains the blocks without the
skip (x <- block(x)), the layout of the authors' released heads (``flyt.models.authors``).

Cosine init (needs d_img == d_txt = e, i.e. both embeddings in one space, as CLIP's are):
W1 = diag(+1 on image dims, -1 on text dims); W3 maps the text half onto the image half and minus the
image half onto the text half; W2 = ones. Then with silu(z) ~ z/2 + z^2/4 near 0,

    score = sum_k silu(i_k) t_k - silu(-t_k) i_k  ~  <i, t>   (+ third-order terms),

so training starts from the CLIP score, plus 0.01 noise to break symmetry.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from flyt.errors import FlytError


class SwiGLU(nn.Module):
    def __init__(self, dim_in: int, hidden: int, dim_out: int):
        super().__init__()
        self.w1 = nn.Linear(dim_in, hidden)
        self.w3 = nn.Linear(dim_in, hidden)
        self.w2 = nn.Linear(hidden, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class SwiGLUScorer(nn.Module):
    """score(image_embedding, text_embedding) -> one logit per example."""

    def __init__(
        self,
        image_dim: int,
        text_dim: int,
        hidden_dim: int | None = None,
        depth: int = 1,
        cosine_init: bool = False,
        init_noise: float = 0.01,
        residual: bool = True,
    ):
        super().__init__()
        if depth < 1:
            raise FlytError(f"scorer.depth must be >= 1, got {depth}")
        self.image_dim, self.text_dim = image_dim, text_dim
        d = image_dim + text_dim
        h = hidden_dim or d
        self.hidden_dim, self.depth, self.residual = h, depth, residual
        self.blocks = nn.ModuleList(SwiGLU(d, h, d) for _ in range(depth - 1))
        for block in self.blocks if residual else ():  # residual blocks start as the identity
            nn.init.zeros_(block.w2.weight)
            nn.init.zeros_(block.w2.bias)
        self.head = SwiGLU(d, h, 1)
        if cosine_init:
            self._cosine_init(init_noise)

    @torch.no_grad()
    def _cosine_init(self, noise: float) -> None:
        e, d, h = self.image_dim, self.image_dim + self.text_dim, self.hidden_dim
        if self.text_dim != e or h != d:
            raise FlytError(
                "scorer.cosine_init needs image and text embeddings of one dimension and hidden_dim = "
                f"image_dim + text_dim (have image {self.image_dim}, text {self.text_dim}, hidden {h})"
            )
        eye = torch.eye(e)
        w1 = torch.block_diag(eye, -eye)
        w3 = torch.zeros(d, d)
        w3[:e, e:] = eye  # text half -> image half
        w3[e:, :e] = -eye  # minus image half -> text half
        head = self.head
        head.w1.weight.copy_(w1 + noise * torch.randn(d, d))
        head.w3.weight.copy_(w3 + noise * torch.randn(d, d))
        head.w2.weight.copy_(torch.ones(1, d) + noise * torch.randn(1, d))
        for lin in (head.w1, head.w2, head.w3):
            lin.bias.zero_()

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        x = torch.cat([F.normalize(image, dim=-1), F.normalize(text, dim=-1)], dim=-1)
        for block in self.blocks:
            x = x + block(x) if self.residual else block(x)
        return self.head(x).squeeze(-1)

    def config(self) -> dict:
        out = {
            "image_dim": self.image_dim,
            "text_dim": self.text_dim,
            "hidden_dim": self.hidden_dim,
            "depth": self.depth,
        }
        if not self.residual:  # only when set, so the scorer.pt of a residual head is as before
            out["residual"] = False
        return out

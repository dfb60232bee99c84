"""A whole open_clip CLIP as the FLYT reference model theta, run functionally on raw inputs.

Same interface as :class:`flyt.models.reference.EmbeddingReference`, so the objective serves both:
``params`` is a dict of the model's trainable tensors (``logit_scale`` included), ``encode_image``
takes preprocessed pixels (n, 3, s, s), ``encode_text`` token ids (n, context); both return
L2-normalised features through ``torch.func.functional_call``. Attention runs on the plain "math"
kernel, the only one with double and forward-mode derivatives; on CUDA the towers can run under
bf16 autocast (features come back in the params' dtype).

Weights: random init or a local checkpoint file; nothing is ever downloaded.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from flyt.errors import FlytError, require
from flyt.models.reference import LOGIT_SCALE_MAX, LOGIT_SCALE_MIN

# A tiny ViT CLIP for tests and CPU runs (open_clip ships no config this small).
TINY_MODEL = "flyt-tiny-vit"
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def open_clip():
    """The open_clip module (optional extra), with the tiny config registered."""
    oc = require("open_clip", "openclip")
    if TINY_MODEL not in oc.list_models():
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / f"{TINY_MODEL}.json"
            path.write_text(json.dumps(TINY_CONFIG))
            oc.add_model_config(path)
    return oc


def create_model(name: str, weights: str | None = None):
    """(model, preprocess, tokenizer) from open_clip: random init, or weights from a local file."""
    oc = open_clip()
    if name not in oc.list_models():
        raise FlytError(f"open_clip model {name!r} is unknown (e.g. ViT-B-32, {TINY_MODEL})")
    if weights and not Path(weights).is_file():
        raise FlytError(f"open_clip weights {weights}: no such local file (weights are never downloaded)")
    try:
        model, _, preprocess = oc.create_model_and_transforms(name, pretrained=weights or None)
    except Exception as exc:  # a checkpoint that does not match the architecture, a corrupt file
        raise FlytError(f"open_clip {name} with weights {weights}: {type(exc).__name__}: {exc}") from None
    return model, preprocess, oc.get_tokenizer(name)


def math_attention():
    """Context manager selecting the math SDPA kernel (double / forward-mode differentiable)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


class OpenCLIPReference:
    """An open_clip model whose parameters live in a plain dict (see the module docstring)."""

    def __init__(self, model_name: str, weights: str | None = None, device="cpu", bf16: bool = False):
        self.model_name, self.weights = model_name, weights
        model, self.preprocess, self.tokenizer = create_model(model_name, weights)
        # train mode: no dropout in CLIP configs, and it keeps nn.MultiheadAttention off its fused
        # inference fast path, which has no forward-mode derivative (the JVP needs one).
        self.model = model.to(device).train().requires_grad_(False)
        self.device = torch.device(device)
        self.bf16 = bool(bf16) and self.device.type == "cuda"
        self.context_length = getattr(model, "context_length", None)
        self._towers = {m: _Tower(self.model, m) for m in ("encode_image", "encode_text")}

    def init_params(self, generator=None, dtype=torch.float32) -> dict:
        """The model's trainable tensors (copies), e.g. ``visual.conv1.weight``, ``logit_scale``."""
        skip = {"logit_bias"}  # SigLIP's bias: not part of the CLIP loss
        return {
            k: p.detach().to(self.device, dtype).clone()
            for k, p in self.model.named_parameters()
            if k not in skip
        }

    def _autocast(self):
        if self.bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _call(self, params: dict, method: str, x: torch.Tensor) -> torch.Tensor:
        dtype = params["logit_scale"].dtype
        tower = self._towers[method]
        with math_attention(), self._autocast():
            out = torch.func.functional_call(tower, {"model." + k: v for k, v in params.items()}, (x,))
        return F.normalize(out.to(dtype), dim=-1)

    def encode_image(self, params: dict, x: torch.Tensor) -> torch.Tensor:
        return self._call(params, "encode_image", x.to(params["logit_scale"].dtype))

    def encode_text(self, params: dict, x: torch.Tensor) -> torch.Tensor:
        return self._call(params, "encode_text", x)

    @staticmethod
    def clamp(params: dict) -> dict:
        out = dict(params)
        out["logit_scale"] = params["logit_scale"].clamp(LOGIT_SCALE_MIN, LOGIT_SCALE_MAX)
        return out

    # Inputs ---------------------------------------------------------------------------------
    def images(self, images: list, where: str = "image") -> torch.Tensor:
        """Encoded image bytes (or PIL images) -> preprocessed pixels (n, 3, s, s) float32."""
        from PIL import Image

        from flyt.io.images import decode_image

        pil = [decode_image(b, where) if isinstance(b, (bytes, bytearray)) else b for b in images]
        if not pil:  # a rank's empty chunk: keep the shape right
            return self.preprocess(Image.new("RGB", (8, 8)))[None][:0]
        return torch.stack([self.preprocess(im) for im in pil])

    def tokens(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer([str(t) for t in texts])

    def config(self) -> dict:
        return {"kind": "openclip", "model": self.model_name, "weights": self.weights}


class _Tower(torch.nn.Module):
    """``model.<method>`` as a module's forward, so torch.func.functional_call can run it."""

    def __init__(self, model: torch.nn.Module, method: str):
        super().__init__()
        self.model, self.method = model, method

    def forward(self, x):
        return getattr(self.model, self.method)(x)

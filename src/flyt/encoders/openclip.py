"""Frozen open_clip towers as an encoder pair: ``--encoder openclip:MODEL[:WEIGHTS]``.

WEIGHTS is a local checkpoint file (never downloaded); without it the model is randomly initialised
from a fixed seed (useful for tests only). Needs the ``openclip`` extra.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from flyt.encoders.base import Encoder
from flyt.errors import FlytError
from flyt.io.arrays import l2_normalise


def parse_spec(spec: str) -> tuple[str, str | None]:
    """'openclip:ViT-B-32:/w/b32.pt' -> ('ViT-B-32', '/w/b32.pt')."""
    parts = spec.split(":", 2)
    if parts[0] != "openclip" or len(parts) < 2 or not parts[1]:
        raise FlytError(f"--encoder {spec}: expected openclip:MODEL[:WEIGHTS] "
                        "(e.g. openclip:ViT-B-32:/path/to/weights.pt)")
    return parts[1], (parts[2] if len(parts) > 2 and parts[2] else None)


class OpenCLIPEncoder(Encoder):
    def __init__(self, model: str, weights: str | None = None, batch_size: int = 64, device: str = "cpu",
                 seed: int = 0):
        import torch

        from flyt.models.openclip_reference import create_model

        torch.manual_seed(seed)  # random init must be reproducible (it keys the embedding cache)
        self.model, self.preprocess, self.tokenizer = create_model(model, weights)
        self.model = self.model.to(device).eval()
        self.device, self.batch_size = device, batch_size
        self.image_dim = self.text_dim = int(self.model.text_projection.shape[1]) if hasattr(
            self.model, "text_projection") and self.model.text_projection is not None else self._probe_dim()
        if weights:
            st = Path(weights).stat()
            tag = hashlib.sha1(f"{Path(weights).resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:10]
        else:
            tag = f"random{seed}"
        self.name = f"openclip-{model}-{tag}"

    def _probe_dim(self) -> int:
        return int(self._run_texts(["x"]).shape[1])

    def _run_texts(self, texts):
        import torch

        with torch.no_grad():
            return self.model.encode_text(self.tokenizer(texts).to(self.device)).float().cpu().numpy()

    def encode_images(self, images: list) -> np.ndarray:
        import torch

        parts = []
        with torch.no_grad():
            for s in range(0, len(images), self.batch_size):
                x = torch.stack([self.preprocess(im) for im in images[s : s + self.batch_size]]).to(self.device)
                parts.append(self.model.encode_image(x).float().cpu().numpy())
        if not parts:
            return np.zeros((0, self.image_dim), np.float32)
        return l2_normalise(np.concatenate(parts))

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        parts = [self._run_texts(list(texts[s : s + self.batch_size])) for s in range(0, len(texts), self.batch_size)]
        if not parts:
            return np.zeros((0, self.text_dim), np.float32)
        return l2_normalise(np.concatenate(parts))

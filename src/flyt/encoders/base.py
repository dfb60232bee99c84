"""The one interface every frozen encoder pair implements (the registry is ``flyt.encoders.registry``)."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


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

"""Frozen towers that turn images and texts into embeddings (offline pair, open_clip towers)."""

from flyt.encoders.base import Encoder
from flyt.encoders.registry import get_encoder

__all__ = ["Encoder", "get_encoder"]

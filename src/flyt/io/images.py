"""Image bytes as the file contracts carry them (pool inputs, webdataset members, rendered assets)."""

from __future__ import annotations

import io

from flyt.errors import FlytError


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

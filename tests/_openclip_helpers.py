"""Tiny webdatasets for the open_clip tests: coloured-shape PNGs with captions, and a task."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from flyt.io.webdataset import write_shard

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 20)}


def png(colour: str, seed: int, size: int = 24) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(COLOURS[colour])[None, None, :] + rng.normal(0, 25, (size, size, 3)), 0, 255)
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def make_pool_wds(directory: Path, n: int = 24, shards: int = 2, with_json: bool = False) -> list[str]:
    """n pairs over `shards` tars; every 4th caption is wrong (another colour). Returns the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    names = list(COLOURS)
    samples = []
    for i in range(n):
        c = names[i % 4]
        caption = f"a {names[(i + 1) % 4] if i % 4 == 3 else c} square"
        s = {"__key__": f"{i:06d}", "png": png(c, i), "txt": caption}
        if with_json:
            s["json"] = '{"uid": "%032x"}' % (i + 1)
        samples.append(s)
    paths = []
    for k, part in enumerate(np.array_split(np.arange(n), shards)):
        p = directory / f"{k:05d}.tar"
        write_shard(p, [samples[i] for i in part])
        paths.append(str(p))
    return paths


def make_task_wds(directory: Path, n: int = 16) -> Path:
    """A clip_benchmark webdataset task: 4 colour classes, 2 templates, train/0.tar, test/0.tar."""
    names = list(COLOURS)
    (directory / "train").mkdir(parents=True, exist_ok=True)
    (directory / "test").mkdir(parents=True, exist_ok=True)
    (directory / "classnames.txt").write_text("\n".join(names) + "\n")
    (directory / "zeroshot_classification_templates.txt").write_text("a photo of a {c} thing.\na {c} square.\n")
    for split, offset in (("train", 1000), ("test", 2000)):
        write_shard(directory / split / "0.tar",
                    [{"__key__": f"s{i:05d}", "png": png(names[i % 4], offset + i), "cls": str(i % 4)} for i in range(n)])
    return directory

"""Generated pools for the scoring tests: flyt pool shards, DataComp-shaped directories, tasks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from flyt.io.arrays import fixed_size_list
from flyt.io.atomic import write_parquet
from flyt.io.datacomp import write_datacomp_shard
from flyt.io.uids import random_uids

CAPTIONS = ["a photo of a dog", "Привет мир", "東京 tower at night", "", "x", "the quick brown fox jumps"]


def unit(rng, n, d):
    x = rng.standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_flyt_pool(root, shards=4, rows=50, dim=16, seed=0, extra_columns=(), row_group_size=None) -> Path:
    """``shards`` flyt pool shards of ``rows`` rows each; image/text correlated so scores vary."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    for s in range(shards):
        img = unit(rng, rows, dim)
        txt = img * rng.uniform(0, 1, (rows, 1)) + unit(rng, rows, dim) * 0.5
        data = {
            "uid": pa.array(random_uids(rows, rng)),
            "image_embedding": fixed_size_list(img.astype(np.float32)),
            "text_embedding": fixed_size_list(txt.astype(np.float32)),
            "text": pa.array([CAPTIONS[i % len(CAPTIONS)] for i in range(rows)]),
        }
        for c in extra_columns:
            data[c] = pa.array(rng.standard_normal(rows))
        table = pa.table(data)
        if row_group_size:
            import pyarrow.parquet as pq

            root.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, root / f"shard{s:03d}.parquet", row_group_size=row_group_size)
        else:
            write_parquet(table, root / f"shard{s:03d}.parquet")
    return root


def datacomp_arrays(rng, rows):
    """fp16, L2-normalised pairs like DataComp's npz, with some image-text alignment."""
    out = {}
    for pair, d in (("b32", 512), ("l14", 768)):
        img = unit(rng, rows, d)
        txt = img * rng.uniform(0, 1, (rows, 1)) + unit(rng, rows, d)
        txt /= np.linalg.norm(txt, axis=1, keepdims=True)
        out[f"{pair}_img"] = img.astype(np.float16)
        out[f"{pair}_txt"] = txt.astype(np.float16)
    return out


def cosine64(a, b):
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def datacomp_table(uids, arrays, rows):
    return pa.table({
        "uid": pa.array(uids),
        "text": pa.array([CAPTIONS[i % len(CAPTIONS)] for i in range(rows)]),
        "clip_b32_similarity_score": pa.array(cosine64(arrays["b32_img"], arrays["b32_txt"]).astype(np.float32)),
        "clip_l14_similarity_score": pa.array(cosine64(arrays["l14_img"], arrays["l14_txt"]).astype(np.float32)),
    })


def make_datacomp_pool(root, shards=2, rows=40, seed=0, compress=False, arrays_fn=None) -> Path:
    """A DataComp-shaped metadata directory: ``<stem>.parquet`` + ``<stem>.npz`` per shard."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    for s in range(shards):
        arrays = datacomp_arrays(rng, rows)
        table = datacomp_table(random_uids(rows, rng), arrays, rows)
        if arrays_fn:  # a test's corruption of the npz (the parquet stays consistent)
            arrays = arrays_fn(s, dict(arrays))
        write_datacomp_shard(root, f"{s:08d}", table, arrays, compress=compress)
    return root


def make_task(root, n=30, dim=16, classes=3, seed=1, centre=None) -> Path:
    """A task directory with train.parquet (image_embedding, label)."""
    rng = np.random.default_rng(seed)
    img = unit(rng, n, dim)
    if centre is not None:
        img = img * 0.3 + centre
    write_parquet(pa.table({
        "image_embedding": fixed_size_list(img.astype(np.float32)),
        "label": pa.array(rng.integers(0, classes, n)),
    }), Path(root) / "train.parquet")
    return Path(root)

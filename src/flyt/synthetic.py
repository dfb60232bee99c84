"""Generated pools and tasks with a planted signal, for tests, benchmarks and examples.

Embeddings live in one d-dimensional space (like CLIP's). Downstream classes have random unit
centres. Pool rows are one of:
  - ``good``:       image and caption both near the same downstream class centre (aligned, relevant)
  - ``misaligned``: image near one class, caption near an unrelated centre (a swapped caption)
  - ``off_domain``: image and caption aligned, but near centres no task asks about
The ``planted`` column (1 for good) is ground truth for analysis; no scorer reads it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flyt.io.arrays import l2_normalise
from flyt.io.pool import IMAGE, TEXT, write_pool_shard
from flyt.io.tasks import write_task as write_task_dir
from flyt.io.uids import random_uids

KINDS = ("good", "misaligned", "off_domain")


def _unit(x: np.ndarray) -> np.ndarray:
    """Unit vectors along the last axis, any leading shape (float32, like every embedding)."""
    return l2_normalise(x.reshape(-1, x.shape[-1])).reshape(x.shape)


class PlantedWorld:
    def __init__(self, dim: int = 16, num_classes: int = 6, num_off_domain: int = 6, noise: float = 0.15,
                 seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.dim, self.noise = dim, noise
        self.class_centres = _unit(self.rng.standard_normal((num_classes, dim)))
        self.off_centres = _unit(self.rng.standard_normal((num_off_domain, dim)))

    def _near(self, centres: np.ndarray) -> np.ndarray:
        return _unit(centres + self.noise * self.rng.standard_normal(centres.shape) / np.sqrt(self.dim) * 4)

    def pool(self, n: int, fractions=(0.3, 0.35, 0.35)) -> dict:
        kind = self.rng.choice(len(KINDS), size=n, p=np.asarray(fractions) / np.sum(fractions))
        cls = self.rng.integers(0, len(self.class_centres), size=n)
        off = self.rng.integers(0, len(self.off_centres), size=n)
        other = self.rng.integers(0, len(self.off_centres), size=n)
        img_c = np.where((kind == 2)[:, None], self.off_centres[off], self.class_centres[cls])
        txt_c = img_c.copy()
        txt_c[kind == 1] = self.off_centres[other[kind == 1]]
        score = self.rng.standard_normal(n)
        return {
            "uid": random_uids(n, self.rng),
            "image_embedding": self._near(img_c).astype(np.float32),
            "text_embedding": self._near(txt_c).astype(np.float32),
            "kind": np.asarray(KINDS)[kind],
            "planted": (kind == 0).astype(np.int64),
            # An informative score (noisy indicator of good rows) and a pure-noise one, for M-FLYT.
            "informative_score": ((kind == 0) + 0.5 * score).astype(np.float32),
            "noise_score": self.rng.standard_normal(n).astype(np.float32),
        }

    def task(self, n_train: int, n_test: int, num_templates: int = 3) -> dict:
        C = len(self.class_centres)
        templates = [f"a photo of a {{c}}, style {i}." for i in range(num_templates)]
        prompts = self._near(np.repeat(self.class_centres[None], num_templates, axis=0))
        split = {}
        for name, size in (("train", n_train), ("test", n_test)):
            labels = self.rng.integers(0, C, size=size)
            split[name] = (self._near(self.class_centres[labels]).astype(np.float32), labels)
        return {
            "classnames": [f"class{k}" for k in range(C)],
            "templates": templates,
            "prompts": prompts.astype(np.float32),
            **split,
        }


def write_pool(pool: dict, directory, num_shards: int = 1, prefix: str = "shard") -> list[Path]:
    """Write a generated pool as flyt pool shards ``<prefix>00000.parquet``... (uid, embeddings,
    then the other fields in order); rows split into ``num_shards`` near-equal runs."""
    directory = Path(directory)
    bounds = np.linspace(0, len(pool["uid"]), num_shards + 1).astype(int)
    paths = []
    for s in range(num_shards):
        a, b = bounds[s], bounds[s + 1]
        rest = {k: v[a:b] for k, v in pool.items() if k not in ("uid", IMAGE, TEXT)}
        paths.append(write_pool_shard(directory / f"{prefix}{s:05d}.parquet", pool["uid"][a:b],
                                      pool[IMAGE][a:b], pool[TEXT][a:b], rest))
    return paths


def write_task(task: dict, directory) -> Path:
    """Write a generated task directory (classnames, templates, train/test, prompts)."""
    splits = {name: task[name] for name in ("train", "test")}
    return write_task_dir(directory, task["classnames"], task["templates"], task["prompts"], splits)


def make_planted(root, n: int = 4000, num_shards: int = 2, dim: int = 16, num_tasks: int = 1, seed: int = 0) -> dict:
    """Generate and write a planted pool and tasks under root; return their paths and the pool."""
    root = Path(root)
    world = PlantedWorld(dim=dim, seed=seed)
    pool = world.pool(n)
    write_pool(pool, root / "pool", num_shards)
    tasks = [write_task(world.task(600, 300), root / f"task{k}") for k in range(num_tasks)]
    return {"pool": root / "pool", "tasks": tasks, "data": pool}

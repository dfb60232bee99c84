"""Raw inputs for an open_clip reference: pool pairs from webdataset shards, tasks from clip_benchmark
webdataset directories, turned into the reference's pixel tensors and token ids.

The scorer keeps reading the pool's frozen embeddings (flyt pool shards); the reference reads the
same examples' raw image and caption, joined by uid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from flyt.errors import FlytError
from flyt.io.webdataset import PairIndex, read_task
from flyt.training.downstream import TaskBatch


@dataclass
class RawTask:
    name: str
    classnames: list[str]
    templates: list[str]
    images: list[bytes]  # training split, encoded
    labels: np.ndarray


def load_raw_tasks(directories) -> list[RawTask]:
    out = []
    for d in directories:
        classnames, templates, splits = read_task(d, splits=("train",))
        images, labels = splits["train"]
        out.append(RawTask(str(d).rstrip("/").rsplit("/", 1)[-1], classnames, templates, images, np.asarray(labels)))
    return out


def open_pool(patterns, uids: np.ndarray | None) -> PairIndex:
    """Index the pool webdataset and check every pool uid is in it (``uids`` None, a streamed pool: each
    batch's uids are checked as it is read, by ``PairIndex.get``)."""
    if not patterns:
        raise FlytError("config key 'reference.pool_shards' is required for reference.kind openclip "
                        "(webdataset shards of the pool's raw image-caption pairs)")
    index = PairIndex(patterns)
    if uids is None:
        return index
    missing = np.flatnonzero(index.find(uids) < 0)
    if missing.size:
        raise FlytError(f"reference.pool_shards: pool uid {uids[missing[0]]} is not in the webdataset "
                        f"({missing.size} of {len(uids)} pool uids missing)")
    return index


def upstream_inputs(reference, index: PairIndex, uids, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels and token ids of these pool uids."""
    images, texts = index.get(uids)
    return reference.images(images, "pool webdataset").to(device), reference.tokens(texts).to(device)


def task_batch(reference, task: RawTask, rng: np.random.Generator, size: int, comm, device) -> TaskBatch:
    """One task's global batch (drawn identically on every rank); this rank keeps its chunk."""
    n = len(task.labels)
    idx = rng.choice(n, size=min(size, n), replace=False)
    templates = rng.integers(0, len(task.templates), size=len(task.classnames))  # one per class
    prompts = [task.templates[t].replace("{c}", c) for t, c in zip(templates, task.classnames)]
    mine = comm.chunk(idx)
    pixels = reference.images([task.images[i] for i in mine], f"task {task.name}")
    return TaskBatch(
        images=pixels.to(device),
        labels=torch.as_tensor(task.labels[mine], device=device),
        class_prompts=reference.tokens(prompts).to(device),
        size=len(idx) if comm.world > 1 else None,
    )

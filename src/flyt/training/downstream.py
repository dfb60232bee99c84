"""The downstream loss: zero-shot cross-entropy of the (updated) reference model on the tasks' batches."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class TaskBatch:
    """One downstream task's batch: images, labels, and one prompt embedding per class."""

    images: torch.Tensor  # (n, d_img) frozen image embeddings (or the reference's raw image inputs)
    labels: torch.Tensor  # (n,) int64
    class_prompts: torch.Tensor  # (C, d_txt) frozen text embedding of one random template per class
    size: int | None = None  # data-parallel: the task's global batch size (this is one rank's chunk)


def downstream_loss(reference, params: dict, psi: torch.Tensor, tasks: list[TaskBatch]):
    """Mean over tasks k of CE( exp(psi) <I'_img, T'_class>, labels ) on the reference's params.

    Returns (loss, per-task losses). psi is the learnable downstream log logit scale.
    """
    per_task = []
    for task in tasks:
        image = reference.encode_image(params, task.images)
        classes = reference.encode_text(params, task.class_prompts)
        logits = (psi.exp() * image) @ classes.T
        if task.size is None:
            per_task.append(F.cross_entropy(logits, task.labels))
        else:  # this rank's share of the global mean; summed over ranks it is the mean
            per_task.append(F.cross_entropy(logits, task.labels, reduction="sum") / task.size)
    per_task = torch.stack(per_task)
    return per_task.mean(), per_task

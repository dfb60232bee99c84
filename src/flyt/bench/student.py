"""The student: a locked-tower CLIP trained on a selected multiset, DataComp's protocol in miniature.

Both towers are frozen (their embeddings are the inputs); the student learns a linear projection
per tower and a logit scale with the standard CLIP loss. Training always sees the same number of
samples (``samples_seen``) whatever the subset size: the multiset is repeated, reshuffled by seed
each pass, until the budget is spent, exactly as DataComp trains a fixed compute budget on any
filtered subset.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from flyt.errors import FlytError
from flyt.io.uids import UID_DTYPE, pairs_to_uids, uids_to_pairs
from flyt.training.schedule import cosine_lr


@dataclass
class StudentConfig:
    dim: int = 128  # shared embedding width
    samples_seen: int = 100_000  # the fixed training budget (seconds per student on 2 CPU cores)
    batch_size: int = 512
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup_steps: int = 20
    init_logit_scale: float = math.log(1 / 0.07)
    max_logit_scale: float = math.log(100.0)


class Student(torch.nn.Module):
    """Projection heads on frozen image/text embeddings plus a learnable temperature."""

    def __init__(self, image_dim: int, text_dim: int, config: StudentConfig = StudentConfig()):
        super().__init__()
        self.image_proj = torch.nn.Linear(image_dim, config.dim, bias=False)
        self.text_proj = torch.nn.Linear(text_dim, config.dim, bias=False)
        self.logit_scale = torch.nn.Parameter(torch.tensor(float(config.init_logit_scale)))

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_proj(x), dim=-1)

    def encode_text(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_proj(x), dim=-1)


def multiset_indices(pool_uids: np.ndarray, selection) -> np.ndarray:
    """Row indices into the pool, one per copy, for a selection given as
    - a DataComp subset array (structured ``f0``/``f1`` uint64, a uid repeated c times = c copies),
    - a mapping uid -> count, or
    - an integer array of row indices (returned as is), or
    - the path of a DataComp subset ``.npy`` file.
    """
    if isinstance(selection, (str, os.PathLike)):
        try:
            selection = np.load(selection, allow_pickle=False)
        except Exception as exc:
            raise FlytError(f"{selection}: unreadable subset file ({type(exc).__name__}: {exc})") from None
    if isinstance(selection, np.ndarray) and selection.dtype.kind in "iu" and selection.dtype.names is None:
        idx = selection.astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(pool_uids)):
            raise FlytError(f"selection: row index out of range for a pool of {len(pool_uids)} rows")
        return idx
    pool_pairs = uids_to_pairs(pool_uids, "pool")
    pool_keys = _keys(pool_pairs)
    order = np.argsort(pool_keys)
    if isinstance(selection, dict):
        uids = np.asarray(list(selection.keys()), dtype=str)
        counts = np.asarray(list(selection.values()), dtype=np.int64)
        if (counts < 0).any():
            raise FlytError(f"selection: negative count for uid {uids[int(np.argmax(counts < 0))]}")
        wanted = uids_to_pairs(uids, "selection")
    else:
        selection = np.asarray(selection)
        if selection.dtype.names is None or set(selection.dtype.names) != set(UID_DTYPE.names):
            raise FlytError("selection: expected a DataComp subset array with fields f0, f1 (uint64)")
        wanted, counts = selection, np.ones(len(selection), dtype=np.int64)
    keys = _keys(wanted)
    pos = np.searchsorted(pool_keys[order], keys)
    pos_c = np.minimum(pos, len(order) - 1)
    found = pool_keys[order][pos_c] == keys
    if not found.all():
        r = int(np.flatnonzero(~found)[0])
        raise FlytError(f"selection: row {r}: uid {pairs_to_uids(wanted[r : r + 1])[0]} is not in the pool")
    return np.repeat(order[pos_c], counts)


def _keys(pairs: np.ndarray) -> np.ndarray:
    # One sortable 128-bit key as a fixed-width byte string (big-endian high then low word).
    words = np.empty((len(pairs), 2), dtype=">u8")
    words[:, 0], words[:, 1] = pairs["f0"], pairs["f1"]
    return words.view("S16").ravel()


def batches(indices: np.ndarray, config: StudentConfig, seed: int):
    """Yield index batches for exactly ``samples_seen`` samples: passes over the multiset, each
    reshuffled, concatenated and cut into batches (the last batch may be smaller)."""
    if len(indices) == 0:
        raise FlytError("selection is empty: nothing to train the student on")
    rng = np.random.default_rng(seed)
    budget, buf = config.samples_seen, np.empty(0, dtype=np.int64)
    while budget > 0:
        while len(buf) < min(config.batch_size, budget):
            buf = np.concatenate([buf, rng.permutation(indices)])
        take = min(config.batch_size, budget)
        yield buf[:take]
        buf, budget = buf[take:], budget - take


def train_student(
    image: np.ndarray, text: np.ndarray, indices: np.ndarray, config: StudentConfig = StudentConfig(), seed: int = 0,
    progress=None,
) -> Student:
    """Train a student on rows ``indices`` (a multiset) of the pool's (image, text) embeddings."""
    return train_students(image, text, [(indices, seed)], config, progress)[0]


def train_students(image: np.ndarray, text: np.ndarray, runs: list, config: StudentConfig = StudentConfig(),
                   progress=None) -> list[Student]:
    """Train one student per ``(indices, seed)`` in ``runs``, all in lockstep. ``progress`` (a
    flyt.progress.Progress, or None) advances by the samples seen, summed over the students: each
    step, K x the batch's rows, so a whole call advances it by K x ``samples_seen``.

    The students are independent (own data order, own initialisation, own AdamW moments: AdamW is
    elementwise, so one optimizer over the stacked weights is K separate ones); stacking them turns
    K small matrix products per step into one batched product, which is what makes a grid of
    students cheap on a CPU.
    """
    image_t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    text_t = torch.from_numpy(np.ascontiguousarray(text, dtype=np.float32))
    models = []
    for _, seed in runs:
        torch.manual_seed(seed)
        models.append(Student(image_t.shape[1], text_t.shape[1], config))
    # (K, d_in, dim) stacks of the students' projection weights, and (K,) logit scales
    w_img = torch.nn.Parameter(torch.stack([m.image_proj.weight.detach().T for m in models]))
    w_txt = torch.nn.Parameter(torch.stack([m.text_proj.weight.detach().T for m in models]))
    scale = torch.nn.Parameter(torch.stack([m.logit_scale.detach() for m in models]))
    opt = torch.optim.AdamW(
        [{"params": [w_img, w_txt], "weight_decay": config.weight_decay}, {"params": [scale], "weight_decay": 0.0}],
        lr=config.lr, betas=(0.9, 0.98), eps=1e-6, foreach=True,
    )
    steps = math.ceil(config.samples_seen / config.batch_size)

    streams = [batches(np.asarray(idx, dtype=np.int64), config, seed) for idx, seed in runs]
    labels = None
    for step, rows in enumerate(zip(*streams)):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, config.lr, config.warmup_steps, steps)  # warm-up, then cosine to zero
        rows = torch.from_numpy(np.stack(rows))  # (K, B): every stream yields the same batch sizes
        img = F.normalize(torch.bmm(image_t[rows], w_img), dim=-1)
        txt = F.normalize(torch.bmm(text_t[rows], w_txt), dim=-1)
        logits = scale.exp()[:, None, None] * torch.bmm(img, txt.transpose(1, 2))  # (K, B, B)
        if labels is None or labels.shape != rows.shape:
            labels = torch.arange(rows.shape[1]).expand(rows.shape[0], -1)
        # Sum over students of each one's symmetric CLIP loss: their gradients do not mix.
        loss = (
            F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum")
            + F.cross_entropy(logits.transpose(1, 2).flatten(0, 1), labels.flatten(), reduction="sum")
        ) / (2 * rows.shape[1])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            scale.clamp_(0.0, config.max_logit_scale)
        if progress is not None:
            progress.update(rows.numel())
    with torch.no_grad():
        for k, m in enumerate(models):
            m.image_proj.weight.copy_(w_img[k].T)
            m.text_proj.weight.copy_(w_txt[k].T)
            m.logit_scale.copy_(scale[k])
    return [m.eval() for m in models]

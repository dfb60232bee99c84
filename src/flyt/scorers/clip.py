"""CLIP score and negCLIPLoss (SPEC.md 5) over a pretrained CLIP's embeddings.

    clip_score_i   = <v_i, t_i>                                     (v, t: L2-normalised)
    negclip_loss_i = clip_score_i - tau/2 * mean_k [ lse_{j in B_k(i)} <v_i, t_j>/tau
                                                   + lse_{j in B_k(i)} <v_j, t_i>/tau ]

B_k(i) is example i plus the k-th reference batch of ``batch_size - 1`` other pool examples
(Wang et al. 2024: the log-sum-exp terms of i's CLIP loss in a random batch, averaged over K batches).
At pool scale the K reference batches are one random sample of the pool drawn once (seeded, by uid
hash: ``FitContext.pool_sample``) and shared by every shard, and each row is computed on its own
(``flyt.models.rowwise``), so the score is the same bits whatever the sharding, file order, batch
size, worker count and engine.
A reference row with the same uid as i is masked out (i already counts once).
"""

from __future__ import annotations

import numpy as np

from flyt.errors import FlytError
from flyt.io.pool import Batch
from flyt.models.rowwise import BLOCK_ROWS, block_map, padded, row_dot, row_norm
from flyt.scorers.base import FitContext, Scorer


def clip_score(image: np.ndarray, text: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row's image and text embedding, float32 (accumulated in float64,
    row by row: ``row_dot``)."""
    num = row_dot(image, text)
    den = row_norm(image) * row_norm(text)
    return (num / np.maximum(den, 1e-12)).astype(np.float32)


def negclip_loss(
    image: np.ndarray,
    text: np.ndarray,
    ref_image: np.ndarray,
    ref_text: np.ndarray,
    num_batches: int,
    temperature: float = 0.01,
    uids: np.ndarray | None = None,
    ref_uids: np.ndarray | None = None,
    chunk_rows: int = BLOCK_ROWS,
) -> np.ndarray:
    """negCLIPLoss of each row against ``num_batches`` reference batches (float32).

    ``ref_image``/``ref_text`` hold the reference batches back to back: (num_batches * m, d), each
    batch contributing m = batch_size - 1 other examples. All embeddings must be L2-normalised.
    Computed in float32 with torch (matmul + logsumexp dominate); lse({a} + S) = logaddexp(a, lse S).
    Rows go through fixed blocks of ``chunk_rows`` rows, one thread each (``flyt.models.rowwise``), so
    a row's value does not depend on the other rows of the call.
    """
    import torch

    n_ref = len(ref_image)
    if num_batches < 1 or n_ref % num_batches:
        raise FlytError(f"negclip_loss: {n_ref} reference rows do not split into {num_batches} batches")
    m = n_ref // num_batches
    self_sim = clip_score(image, text)
    inv_t = np.float32(1.0 / temperature)
    ref_txt_t = torch.from_numpy(np.ascontiguousarray(ref_text, dtype=np.float32)).T
    ref_img_t = torch.from_numpy(np.ascontiguousarray(ref_image, dtype=np.float32)).T
    in_ref = np.zeros(len(image), dtype=bool)
    if uids is not None and ref_uids is not None:
        in_ref = np.isin(uids, ref_uids)  # rows that are in the sample: their own reference copy is masked

    def block(lo: int, hi: int) -> np.ndarray:
        c = chunk_rows
        # (c, K, m) scaled similarities to the reference texts (image->text) and images (text->image)
        s_it = (padded(image, lo, hi, c) @ ref_txt_t).mul_(inv_t).view(c, num_batches, m)
        s_ti = (padded(text, lo, hi, c) @ ref_img_t).mul_(inv_t).view(c, num_batches, m)
        for r in np.flatnonzero(in_ref[lo:hi]):
            same = torch.from_numpy((ref_uids == uids[lo + r]).reshape(num_batches, m))
            s_it[r][same] = -np.inf
            s_ti[r][same] = -np.inf
        diag = padded(self_sim[:, None] * inv_t, lo, hi, c)  # (c, 1): i's own pair
        row = torch.logaddexp(diag, torch.logsumexp(s_it, dim=2))  # (c, K)
        col = torch.logaddexp(diag, torch.logsumexp(s_ti, dim=2))
        return (row + col).mean(dim=1)[: hi - lo].numpy()

    parts = block_map(block, len(image), chunk_rows)
    mean_lse = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
    return (self_sim - mean_lse.astype(np.float64) * (temperature / 2)).astype(np.float32)


class ClipScore(Scorer):
    """``clip_score``: cosine of the pool's image and text embeddings (DataComp's CLIP score)."""

    name = "clip_score"
    needs_embeddings = True

    def score(self, batch: Batch) -> dict[str, np.ndarray]:
        return {self.name: clip_score(batch.image, batch.text)}


class NegClipLoss(Scorer):
    """``negclip_loss``: CLIP score minus its batch normaliser, against a fixed reference sample."""

    name = "negclip_loss"
    needs_embeddings = True

    def __init__(self, num_batches: int = 10, batch_size: int = 1024, temperature: float = 0.01):
        if num_batches < 1:
            raise FlytError(f"option --negclip-batches must be >= 1, got {num_batches}")
        if batch_size < 2:
            raise FlytError(f"option --negclip-batch-size must be >= 2, got {batch_size}")
        if not temperature > 0:
            raise FlytError(f"option --teacher-temperature must be > 0, got {temperature}")
        self.num_batches, self.batch_size, self.temperature = num_batches, batch_size, temperature
        self.ref = None  # Batch of num_batches * (batch_size - 1) reference rows, set by fit

    def fit(self, ctx: FitContext) -> None:
        want = self.num_batches * (self.batch_size - 1)
        ref = ctx.pool_sample(want, salt="negclip_loss")
        if len(ref) < want:
            raise FlytError(
                f"negclip_loss: the pool has {len(ref)} rows, fewer than --negclip-batches x "
                f"(--negclip-batch-size - 1) = {want}; lower them"
            )
        self.ref = ref

    def score(self, batch: Batch) -> dict[str, np.ndarray]:
        if self.ref is None:
            raise FlytError("negclip_loss: scorer used before fit (no reference sample)")
        values = negclip_loss(
            batch.image, batch.text, self.ref.image, self.ref.text, self.num_batches,
            self.temperature, batch.uids, self.ref.uids,
        )
        return {self.name: values}

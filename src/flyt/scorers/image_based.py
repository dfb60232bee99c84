"""``image_based``: DataComp's image-based filter as a 0/1 score column.

k-means (scikit-learn, the ``flyt-clip[scorers]`` extra) over a uniform sample of the pool's image
embeddings (drawn by uid hash, so the same for any sharding) gives centroids; every downstream
training image votes for its nearest centroid; a pool example scores 1 when its own nearest centroid
got a vote, else 0. Nearest means smallest Euclidean
distance, computed in float64 as ||c||^2 - 2 <x, c> (the ||x||^2 term is the same for all c).
"""

from __future__ import annotations

import numpy as np

from flyt.errors import FlytError, require
from flyt.io.pool import Batch
from flyt.models.rowwise import BLOCK_ROWS, block_map, padded, row_dot
from flyt.scorers.base import FitContext, Scorer


def nearest_centroid(x: np.ndarray, centroids: np.ndarray, chunk_rows: int = BLOCK_ROWS) -> np.ndarray:
    """Index of each row's nearest centroid (Euclidean; the first of equally near ones).

    ||c||^2 - 2 <x, c> in float64, on fixed blocks of ``chunk_rows`` rows, one thread each
    (``flyt.models.rowwise``), so equal rows get equal distances and so the same centroid whatever
    else is in the call.
    """
    import torch

    c = np.asarray(centroids, dtype=np.float64)
    c_sq = torch.from_numpy(row_dot(c, c))
    c_t = torch.from_numpy(np.ascontiguousarray(c)).T

    def block(lo: int, hi: int) -> np.ndarray:
        d = c_sq[None, :] - 2.0 * (padded(x, lo, hi, chunk_rows, torch.float64) @ c_t)
        return np.argmin(d.numpy(), axis=1)[: hi - lo]

    parts = block_map(block, len(x), chunk_rows)
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)


def fit_centroids(sample: np.ndarray, clusters: int, seed: int) -> np.ndarray:
    """k-means centroids of ``sample`` (scikit-learn's k-means++ and Lloyd), the same bits on every run.

    scikit-learn sums the per-thread partial centroid sums in whatever order its threads finish, so
    with 3 or more OpenMP threads two runs can differ, and the result changes with the thread count.
    The fit therefore runs with one OpenMP and one BLAS thread: a function of (sample, seed) alone.
    The price is time on many-core machines (up to the core count; 1.1-1.2x on 2 cores, measured).
    """
    cluster = require("sklearn.cluster", "scorers")
    from threadpoolctl import threadpool_limits

    if clusters < 1 or clusters > len(sample):
        raise FlytError(f"option --clusters must be between 1 and the sample size {len(sample)}, got {clusters}")
    km = cluster.KMeans(n_clusters=clusters, n_init=1, random_state=seed, max_iter=100)
    with threadpool_limits(limits=1):
        km.fit(np.asarray(sample, dtype=np.float32))
    return km.cluster_centers_.astype(np.float64)


def target_clusters(centroids: np.ndarray, task_images: np.ndarray) -> np.ndarray:
    """Sorted ids of the clusters that are nearest to at least one downstream image."""
    return np.unique(nearest_centroid(task_images, centroids))


class ImageBased(Scorer):
    """``image_based``: 1 if the example's k-means cluster is nearest to some downstream image."""

    name = "image_based"
    needs_embeddings = True

    def __init__(self, clusters: int = 1000, sample: int = 100_000):
        if sample < 1:
            raise FlytError(f"option --kmeans-sample must be >= 1, got {sample}")
        self.clusters, self.sample = clusters, sample
        self.centroids = None
        self.targets = None

    def fit(self, ctx: FitContext) -> None:
        pool = ctx.pool_sample(self.sample, salt="image_based")
        self.centroids = fit_centroids(pool.image, self.clusters, ctx.seed)
        self.targets = target_clusters(self.centroids, ctx.task_images())

    def score(self, batch: Batch) -> dict[str, np.ndarray]:
        nearest = nearest_centroid(batch.image, self.centroids)
        return {self.name: np.isin(nearest, self.targets).astype(np.float32)}

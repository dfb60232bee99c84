"""``dedup``: groups of exact and near duplicates (SemDeDup, Abbas et al. 2023), one row at a time.

The method, for a pool of embeddings e(x) (unit rows: the image embedding, or for ``image+text`` the
normalised image and text embeddings concatenated and divided by sqrt(2), whose cosine is the mean
of the two cosines):

1. k-means: K centroids fitted by scikit-learn (one thread, fixed seed) on the pool sample drawn by
   uid hash (``FitContext.pool_sample``), then normalised (spherical k-means, as SemDeDup's
   ``kmeans_with_cos_dist``). The sample, so the centroids, depend on the pool's rows alone.
2. Every row goes to the centroid of largest cosine (``nearest_centroid``: fixed-shape blocks, one
   thread, so a row's cluster is the same bits wherever it is read). Rows sharing an image hash
   (DataComp's ``sha256``) go to the cluster of the one with the smallest uid (pipeline/dedup.py).
3. Per cluster, rows in uid order (so the work is the same however the pool is sharded):
   - exact classes: rows with identical embeddings (a 64-bit digest of the float32 row) or an
     identical image hash are one class, always one group ("the threshold-1 case");
   - a cluster of more than ``max_cluster`` rows is covered by overlapping leaves of about that size
     (``split_leaves``: k-means on a uid-keyed sample; a row near a boundary joins the neighbouring
     leaf too, by a bound that keeps every linked pair together), recursively, unless a split would
     not halve the pairs to compare (a dense blob of near copies, or diffuse data): then the rows
     are solved whole. So the groups never depend on ``max_cluster``; it only trades work.
     ``split="fast"`` partitions instead (each row in its best part only, as SemDeDup splits): less
     work on diffuse data, but a linked pair across a boundary is lost (measured in docs/benchmarks.md);
   - in each leaf, pairwise cosines of one representative per embedding class, in square tiles of
     at most ``PAIR_BLOCK`` similarities (upper triangle only), float32 products, one thread, so the
     memory of a cluster is its rows plus one tile, whatever its size;
   - rows are linked when their cosine is >= ``threshold`` (or they are one exact class); a
     **group is a connected component** of these links (single linkage).

Rule chosen, and how it differs from SemDeDup: SemDeDup orders a cluster by distance to its
centroid and drops a row whose cosine to *any earlier* row exceeds 1 - eps, keeping the rest; the
kept set depends on the order, and a chain a~b~c with a, c far apart may keep one or two rows. Here
groups are components, an equivalence relation (what group-aware sampling caps need: every row is
in exactly one group), and one row per group is kept: a component may hold rows less similar than
the threshold, joined through others.

Per row it writes ``dedup_group`` (int64: the high 63 bits of the smallest uid in the group, so a
pure function of the group's members; two groups share an id only if their smallest uids share
their high 63 bits, probability ~ rows^2 / 2^64), ``dedup_group_size`` (int64), ``dedup_keep`` (bool,
the group's representative: the member of **lowest cosine to its k-means centroid**, SemDeDup's
default "keep hard" choice of the least prototypical example; ties, e.g. exact copies, to the
smaller uid), and ``dedup_nearest`` (float32: the largest cosine to another row sharing a leaf with
it, which for a row with a near duplicate is a member of its group and otherwise its cluster's
nearest row or, after a split, a lower bound of it; 1.0 for a row with an exact duplicate; -1.0 for
a row alone in its cluster). The centroid of the keep rule is the top-level one, so groups, sizes and
kept rows do not depend on the split.

Near duplicates in different k-means clusters are not compared (SemDeDup's approximation; exact
duplicates always meet): recall on planted pools is 0.98-0.99 (tests/test_dedup.py, benchmarks/dedup.py).

Precision: embeddings travel (and are compared) rounded to float16, DataComp's storage precision;
the exact-duplicate digest is taken on the float32 rows before rounding.
"""

from __future__ import annotations

import hashlib
import time
import warnings

import numpy as np

from flyt.errors import FlytError
from flyt.io.pool import Batch
from flyt.io.uids import uids_to_pairs
from flyt.models.rowwise import block_map, block_spans, one_thread, padded, row_dot
from flyt.sampling.randomness import fingerprint, mix, seed_keys
from flyt.scorers.base import FitContext, Scorer

COLUMNS = ("dedup_group", "dedup_group_size", "dedup_keep", "dedup_nearest")
EMBEDDINGS = ("image", "image+text")
SPLITS = ("exact", "fast")  # oversized clusters: overlapping leaves that lose no pair, or a plain partition
PAIR_BLOCK = 1 << 22  # similarities held at once per leaf (16 MiB of float32)
SPLIT_SAMPLE = 64  # sample classes per sub-centroid when a cluster is split
MAX_SPLIT_DEPTH = 24
NO_NEIGHBOUR = -1.0  # dedup_nearest of a row alone in its leaf cluster


# ----------------------------------------------------------------------------- per-row pieces
def dedup_embedding(image: np.ndarray, text: np.ndarray | None, modality: str) -> np.ndarray:
    """The unit rows deduplication compares: the image embedding, or [image, text] / sqrt(2)."""
    if modality == "image":
        return np.asarray(image, dtype=np.float32)
    if modality == "image+text":
        both = np.concatenate([image, text], axis=1).astype(np.float32)
        both *= np.float32(1 / np.sqrt(2))
        return both
    raise FlytError(f"option --dedup-embedding: unknown {modality!r} (choose from {', '.join(EMBEDDINGS)})")


def row_digests(x: np.ndarray) -> np.ndarray:
    """A 64-bit digest of each float32 row's bytes (equal rows, equal digests): splitmix64 chained
    over the row's 64-bit words."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, d = x.shape
    raw = x.view(np.uint8).reshape(n, 4 * d)
    if (4 * d) % 8:
        raw = np.concatenate([raw, np.zeros((n, 8 - (4 * d) % 8), np.uint8)], axis=1)
    words = np.ascontiguousarray(raw).view(np.uint64)
    h = np.full(n, (d * 0x9E3779B97F4A7C15) & ((1 << 64) - 1), dtype=np.uint64)
    for j in range(words.shape[1]):
        h ^= words[:, j]
        mix(h)
    return h


def value_digests(values) -> np.ndarray:
    """A 64-bit digest (blake2b) of each value of a hash column (strings or bytes); 0 for a null or
    empty value, which links nothing."""
    out = np.zeros(len(values), dtype=np.uint64)
    for i, v in enumerate(values):
        if v is None:
            continue
        b = v.encode() if isinstance(v, str) else bytes(v)
        if b:
            out[i] = int.from_bytes(hashlib.blake2b(b, digest_size=8).digest(), "little") or 1
    return out


def nearest_centroid(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index (int32) of each row's centroid of largest cosine (unit centroids; the first of equal ones).

    float32 products on fixed blocks of ``BLOCK_ROWS`` rows, one thread each (``flyt.models.rowwise``),
    so a row's cluster does not depend on the rows read with it, the engine or the thread count.
    """
    import torch

    c_t = torch.from_numpy(np.ascontiguousarray(centroids, dtype=np.float32)).T.contiguous()

    def block(lo: int, hi: int) -> np.ndarray:
        return np.argmax((padded(x, lo, hi) @ c_t).numpy(), axis=1)[: hi - lo]

    parts = block_map(block, len(x))
    return np.concatenate(parts).astype(np.int32) if parts else np.zeros(0, np.int32)


def fit_unit_centroids(sample: np.ndarray, k: int, seed: int, flag: str = "--dedup-clusters") -> np.ndarray:
    """k-means centroids of ``sample`` (scikit-learn, one thread: the same bits on every run), as unit
    float32 rows."""
    from flyt.scorers.image_based import fit_centroids

    if k < 1 or k > len(sample):
        raise FlytError(f"option {flag} must be between 1 and the {len(sample)} rows k-means is fitted on, got {k}")
    with warnings.catch_warnings():  # duplicate rows in a sample: fewer distinct clusters is fine
        warnings.simplefilter("ignore")
        c = fit_centroids(np.asarray(sample, dtype=np.float32), k, seed)
    norm = np.sqrt(row_dot(c, c))
    return (c / np.maximum(norm, 1e-12)[:, None]).astype(np.float32)


# ----------------------------------------------------------------------------- components
class UnionFind:
    """Disjoint sets over 0..n-1 with vectorised unions; every root is its set's smallest member."""

    def __init__(self, n: int):
        self.parent = np.arange(n, dtype=np.int64)

    def roots(self) -> np.ndarray:
        p = self.parent
        while True:  # pointer jumping: every entry ends at its root
            q = p[p]
            if np.array_equal(q, p):
                return p
            p = q

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        """Join the sets of a[i] and b[i] for every i (hooking the larger root under the smaller)."""
        a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
        while len(a):
            self.parent = self.roots()
            ra, rb = self.parent[a], self.parent[b]
            diff = ra != rb
            if not diff.any():
                return
            ra, rb = ra[diff], rb[diff]
            lo, hi = np.minimum(ra, rb), np.maximum(ra, rb)
            np.minimum.at(self.parent, hi, lo)
            a, b = lo, hi  # the pairs still to check (hooks that lost a race are retried)


def equal_runs(keys: np.ndarray, skip_zero: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i, j) linking consecutive members of every set of equal keys."""
    order = np.argsort(keys, kind="stable")
    k = keys[order]
    same = k[1:] == k[:-1]
    if skip_zero:
        same &= k[1:] != 0
    return order[:-1][same], order[1:][same]


def exact_classes(exact: np.ndarray, hashes: np.ndarray) -> np.ndarray:
    """The class root (smallest index) of each row: rows with an equal embedding digest or an equal
    non-zero hash digest are one class, transitively."""
    uf = UnionFind(len(exact))
    uf.union(*equal_runs(exact))
    uf.union(*equal_runs(hashes, skip_zero=True))
    return uf.roots()


# ----------------------------------------------------------------------------- one cluster
def split_parts(emb: np.ndarray, idx: np.ndarray, centroids: np.ndarray, threshold: float, exact: bool = True) -> list[np.ndarray]:
    """The rows of ``idx`` in each part of ``split_leaves`` (its docstring): rows are scored against the
    centroids a block at a time (float32, fixed blocks, one thread each), so memory stays at a block."""
    import torch

    c_t = torch.from_numpy(np.ascontiguousarray(centroids, dtype=np.float32)).T.contiguous()
    c64 = centroids.astype(np.float64)
    bound = reach(threshold) * np.sqrt(np.maximum(0.0, 2 - 2 * (c64 @ c64.T)))  # r |c_a - c_p|, unit centroids
    if not exact:  # "fast": every row in its own part only (a pair across a boundary is lost)
        bound[:] = -np.inf

    def block(lo: int, hi: int) -> np.ndarray:
        scores = (padded(emb[idx[lo:hi]], 0, hi - lo) @ c_t).numpy()[: hi - lo]
        best = np.argmax(scores, axis=1)
        inside = scores[np.arange(hi - lo), best][:, None] - scores <= bound[best]  # <x, c_a> - <x, c_p>
        inside[np.arange(hi - lo), best] = True
        return inside

    # (row, part) memberships only: O(rows x parts per row) memory, not rows x centroids.
    found = [np.nonzero(inside) for inside in block_map(block, len(idx))]
    starts = [lo for lo, _ in block_spans(len(idx))]
    rows = np.concatenate([r + o for (r, _), o in zip(found, starts)]) if found else np.zeros(0, np.int64)
    part = np.concatenate([p for _, p in found]) if found else np.zeros(0, np.int64)
    order = np.lexsort((rows, part))
    bounds = np.searchsorted(part[order], np.arange(len(centroids) + 1))
    return [idx[rows[order[bounds[p] : bounds[p + 1]]]] for p in range(len(centroids))]


def reach(threshold: float) -> float:
    """An upper bound on |x_i - x_j| for two stored rows with <x_i, x_j> >= threshold: float16 rows have
    norms within 2^-10 of 1, so |x_i - x_j|^2 <= 2 (1 + 2^-10)^2 - 2 threshold; plus slack for the
    float32 rounding of the scores it is compared with."""
    return float(np.sqrt(max(0.0, 2 * (1 + 2.0**-10) ** 2 - 2 * threshold))) + 1e-3


def split_leaves(emb: np.ndarray, pairs: np.ndarray, idx: np.ndarray, max_cluster: int, threshold: float,
                 seed: int, depth: int = 0, exact: bool = True) -> list[np.ndarray]:
    """Cover the rows ``idx`` (sorted) of a cluster with leaves of about ``max_cluster`` rows such that
    every pair with cosine >= ``threshold`` is together in some leaf: so the groups equal those of the
    whole cluster, however it is split.

    Sub-centroids c_1..c_k (unit) are fitted on a uid-keyed sample of the rows; part p holds the rows
    whose best sub-centroid is c_p, and also every row x with best c_a and

        <x, c_a> - <x, c_p> <= r |c_a - c_p|,     r = reach(threshold) >= |x - y| for linked x, y

    since a linked y in part p has <y, c_p - c_a> >= 0, so <x, c_a - c_p> = <y, c_a - c_p> +
    <x - y, c_a - c_p> <= r |c_a - c_p|. The same holds inside every part, so by induction a linked
    pair meets in some leaf. Rows near a boundary are in several leaves (more work, never a lost pair).
    A split that would not halve the pairs to compare (sum of squared part sizes; a dense blob, or most
    rows near a boundary) is not made: the rows are a leaf, solved whole. Identical rows take the
    same path, so exact duplicates are never apart.
    """
    if len(idx) <= max_cluster or depth >= MAX_SPLIT_DEPTH:
        return [idx]
    k = -(-2 * len(idx) // max_cluster)
    keys = mix(seed_keys(fingerprint(pairs[idx]), seed + depth))
    sample = np.sort(idx[np.argsort(keys, kind="stable")[: max(k * SPLIT_SAMPLE, 1024)]])
    if len(np.unique(emb[sample], axis=0)) < k:
        return [idx]
    centroids = fit_unit_centroids(emb[sample].astype(np.float32), k, seed + depth)
    parts = [p for p in split_parts(emb, idx, centroids, threshold, exact) if len(p)]
    if sum(len(p) ** 2 for p in parts) > len(idx) ** 2 // 2:  # the pairs to compare would not halve
        return [idx]
    leaves = []
    for part in parts:
        leaves += split_leaves(emb, pairs, part, max_cluster, threshold, seed, depth + 1, exact)
    return leaves


def leaf_similarities(x: np.ndarray, threshold: float, pair_block: int = PAIR_BLOCK) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For unit rows ``x`` (n, d; float16 or float32): each row's largest cosine to another row (-inf if
    none) and the index pairs (i < j) with cosine >= threshold.

    Square tiles of ``t`` = sqrt(pair_block) rows on and above the diagonal: memory is the rows in
    float32 (cast a tile at a time when n x d > ``PAIR_BLOCK`` x 8) and ``pair_block`` similarities,
    whatever n. float32 products with one thread, tile shapes a function of n alone: the same bits for
    the same rows on every engine."""
    import torch

    n = len(x)
    best = np.full(n, -np.inf, dtype=np.float32)
    links_i, links_j = [], []
    step = max(1, min(n, int(np.sqrt(pair_block))))
    whole = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)) if x.size <= 8 * PAIR_BLOCK else None

    def tile(a: int):
        if whole is not None:
            return whole[a : a + step]
        return torch.from_numpy(np.ascontiguousarray(x[a : a + step], dtype=np.float32))

    with one_thread(), torch.no_grad():
        for a in range(0, n, step):
            rows = tile(a)
            for c in range(a, n, step):
                s = (rows @ tile(c).T).numpy()
                if c == a:
                    k = np.arange(len(s))
                    s[k, k] = -np.inf  # a row is not its own neighbour
                row_max = s.max(axis=1)
                np.maximum(best[a : a + len(s)], row_max, out=best[a : a + len(s)])
                np.maximum(best[c : c + s.shape[1]], s.max(axis=0), out=best[c : c + s.shape[1]])
                linked = np.flatnonzero(row_max >= threshold)  # most rows link nothing: skip them
                if not len(linked):
                    continue
                i, j = np.nonzero(s[linked] >= threshold)
                i = linked[i]
                if c == a:  # each pair once: the diagonal tile holds both (i, j) and (j, i)
                    i, j = i[j > i], j[j > i]
                links_i.append(a + i)
                links_j.append(c + j)
    return best, np.concatenate(links_i or [np.zeros(0, np.int64)]), np.concatenate(links_j or [np.zeros(0, np.int64)])


def centroid_cosines(x: np.ndarray, centroid: np.ndarray) -> np.ndarray:
    """<x, c> of each row with one unit centroid (float32 products on fixed blocks, one thread each)."""
    import torch

    c = torch.from_numpy(np.asarray(centroid, dtype=np.float32).reshape(-1, 1))
    parts = block_map(lambda lo, hi: (padded(x, lo, hi) @ c).numpy()[: hi - lo, 0], len(x))
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def solve_cluster(emb: np.ndarray, pairs: np.ndarray, exact: np.ndarray, hashes: np.ndarray, centroid: np.ndarray,
                  threshold: float, max_cluster: int, seed: int, split: str = "exact") -> dict[str, np.ndarray]:
    """The four dedup columns of one k-means cluster (rows in uid order; module doc, step 3)."""
    m = len(pairs)
    roots = exact_classes(exact, hashes)
    class_size = np.bincount(roots, minlength=m)[roots]
    uf = UnionFind(m)
    uf.union(np.arange(m), roots)
    nearest = np.full(m, -np.inf, dtype=np.float32)
    for leaf in split_leaves(emb, pairs, np.arange(m), max_cluster, threshold, seed, exact=split == "exact"):
        # One representative per embedding digest: copies share every similarity.
        _, first, rep_of = np.unique(exact[leaf], return_index=True, return_inverse=True)
        reps = leaf[first]
        best, i, j = leaf_similarities(emb[reps], threshold)
        uf.union(reps[i], reps[j])
        np.maximum.at(nearest, leaf, best[rep_of.reshape(-1)])  # a row may be in several leaves
    nearest[class_size > 1] = 1.0  # an exact duplicate (same embedding or same image hash)
    nearest = np.where(np.isfinite(nearest), np.clip(nearest, -1.0, 1.0), NO_NEIGHBOUR).astype(np.float32)
    group = uf.roots()  # smallest index = smallest uid (rows are in uid order)
    size = np.bincount(group, minlength=m)[group]
    # Keep the member of lowest cosine to the centroid (SemDeDup's "hard" keep); ties to the smaller uid.
    cos = centroid_cosines(emb, centroid)
    order = np.lexsort((np.arange(m), cos, group))
    first = np.ones(m, dtype=bool)
    first[1:] = group[order][1:] != group[order][:-1]
    keep = np.zeros(m, dtype=bool)
    keep[order[first]] = True
    return {
        "dedup_group": (pairs["f0"][group] >> np.uint64(1)).astype(np.int64),
        "dedup_group_size": size.astype(np.int64),
        "dedup_keep": keep,
        "dedup_nearest": nearest,
    }


# ----------------------------------------------------------------------------- results of the pool pass
# One file per solve job (``res-<job>.npy``), rows sorted by (shard, row): the pool pass writes them,
# each shard job reads its slice of every file. Temporary files of one run, never a user contract.
RESULT = np.dtype([("shard", "<i4"), ("row", "<i8"), ("f0", "<u8"), ("f1", "<u8"), ("group", "<i8"),
                   ("size", "<i8"), ("keep", "?"), ("nearest", "<f4")])
LOOKUP = np.dtype([("fp", "<u8"), ("f0", "<u8"), ("f1", "<u8"), ("group", "<i8"), ("size", "<i8"),
                   ("keep", "?"), ("nearest", "<f4")])


def result_path(work, job: int):
    from pathlib import Path

    return Path(work) / f"res-{job:06d}.npy"


def shard_results(work, jobs: int, shard: int) -> np.ndarray:
    """Every row of pool shard ``shard`` from the ``jobs`` result files, as LOOKUP rows sorted by uid
    fingerprint (for ``Dedup.score``'s lookups by uid)."""
    parts = []
    for j in range(jobs):
        res = np.load(result_path(work, j), mmap_mode="r")
        lo, hi = np.searchsorted(res["shard"], [shard, shard + 1])
        parts.append(np.array(res[lo:hi]))
    rows = np.concatenate(parts) if parts else np.zeros(0, RESULT)
    out = np.empty(len(rows), LOOKUP)
    pairs = np.empty(len(rows), dtype=[("f0", "<u8"), ("f1", "<u8")])
    pairs["f0"], pairs["f1"] = rows["f0"], rows["f1"]
    out["fp"] = fingerprint(pairs)
    for name in LOOKUP.names[1:]:
        out[name] = rows[name]
    return out[np.argsort(out["fp"], kind="stable")]


# ----------------------------------------------------------------------------- the scorer
class Dedup(Scorer):
    """``dedup``: its values need the whole pool, so ``fit`` fits the k-means, the driver's pool pass
    (``flyt.pipeline.dedup``) computes every row's columns into ``work``, and each shard job reads
    its rows back (``begin_shard``), matched by uid."""

    name = "dedup"
    needs_embeddings = False  # the pool pass reads them; the shard jobs only look rows up by uid
    pool_wide = True

    def __init__(self, embedding: str = "image", clusters: int = 1024, threshold: float = 0.95,
                 max_cluster: int = 4096, sample: int = 50_000, hash_column: str = "auto", spill: str | None = None,
                 split: str = "exact"):
        if split not in SPLITS:
            raise FlytError(f"option --dedup-split: unknown {split!r} (choose from {', '.join(SPLITS)})")
        if embedding not in EMBEDDINGS:
            raise FlytError(f"option --dedup-embedding: unknown {embedding!r} (choose from {', '.join(EMBEDDINGS)})")
        if not (-1.0 < threshold <= 1.0):
            raise FlytError(f"option --dedup-threshold must be in (-1, 1] (a cosine), got {threshold}")
        if clusters < 1:
            raise FlytError(f"option --dedup-clusters must be >= 1, got {clusters}")
        if max_cluster < 2:
            raise FlytError(f"option --dedup-max-cluster must be >= 2, got {max_cluster}")
        if sample < 1:
            raise FlytError(f"option --dedup-sample must be >= 1, got {sample}")
        self.embedding, self.clusters, self.threshold = embedding, clusters, float(threshold)
        self.max_cluster, self.sample, self.hash_column, self.spill = max_cluster, sample, hash_column, spill
        self.split = split
        self.centroids: np.ndarray | None = None
        self.seed = 0
        self.work: str | None = None  # set by the pool pass: where every row's columns are
        self.jobs = 0
        self.shard_index: dict[str, int] = {}
        self._rows = None
        self.fitted = (0, 0.0)

    def output_columns(self) -> list[str]:
        return list(COLUMNS)

    def fit(self, ctx: FitContext) -> None:
        t0 = time.perf_counter()
        sample = ctx.pool_sample(self.sample, salt="dedup")
        x = dedup_embedding(sample.image, sample.text, self.embedding)
        self.seed = ctx.seed
        self.centroids = fit_unit_centroids(x, self.clusters, ctx.seed)
        self.fitted = (len(x), time.perf_counter() - t0)  # (sample rows, seconds): the pool pass reports it

    def begin_shard(self, source) -> None:
        """Gather this shard's rows from the pool pass's result files, sorted by uid fingerprint."""
        if self.work is None or source.stem not in self.shard_index:
            raise FlytError(f"dedup: shard {source.stem} was not part of the pool pass (internal error)")
        self._rows = shard_results(self.work, self.jobs, self.shard_index[source.stem])

    def score(self, batch: Batch) -> dict[str, np.ndarray]:
        rows = self._rows
        if rows is None:
            raise FlytError("dedup: no pool pass results for this shard (internal error)")
        pairs = uids_to_pairs(batch.uids, "dedup batch")
        fp = fingerprint(pairs)
        at = np.minimum(np.searchsorted(rows["fp"], fp), len(rows) - 1)
        hit = (rows["f0"][at] == pairs["f0"]) & (rows["f1"][at] == pairs["f1"])
        if not hit.all():
            r = int(np.flatnonzero(~hit)[0])
            raise FlytError(f"dedup: uid {batch.uids[r]} was not in the pool when it was deduplicated (shard changed during the run)")
        got = rows[at]
        return {"dedup_group": got["group"], "dedup_group_size": got["size"], "dedup_keep": got["keep"],
                "dedup_nearest": got["nearest"]}

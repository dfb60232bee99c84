"""The pool-wide pass of the ``dedup`` scorer: every row's group, in bounded memory, on any engine.

A group can hold rows of any shards, so ``dedup`` cannot score a shard by itself. After its k-means
is fitted (``Dedup.fit``), ``run_pool_pass`` computes every row's four columns into a work
directory, in stages that are each a map over shards, partitions or cluster ranges on the run's
engine (local or Ray); the shard jobs of ``flyt score`` then read their rows back by uid
(``Dedup.begin_shard``), so the score shards come out in the usual layout and uid order.

0. hashes (only when the pool has an image-hash column, ``auto``: DataComp's ``sha256``): every
   shard writes (digest, uid, place) of its rows into ``P`` partition files by digest; each
   partition finds the digests held by two or more rows and their smallest-uid row; those rows'
   clusters are computed (``PoolShard.take``), giving a map digest -> cluster, so that rows with
   the same image land in one cluster whatever their embeddings.
1. spill: every shard, in runs of at most ``RUN_ROWS`` rows: embedding -> cluster (or the hash
   map's), exact digest, float16 row; each run written sorted by (cluster, uid), with its counts
   per cluster. The driver only sums the counts.
2. plan: consecutive cluster ranges of at most ``JOB_ROWS`` rows (a larger cluster is a job alone).
3. solve: per range, its slice of every run (contiguous, so one read each), each cluster in uid
   order through ``solve_cluster``; the rows' columns written sorted by (shard, row).

Invariance: a cluster's rows, their uid order and so every operation on them depend on the pool's
rows alone (the k-means sample is keyed by uid hash; clusters are per-row computations with fixed
blocks; similarity products run on one thread): the columns are the same bits for any sharding,
file order, worker count or engine. Memory per worker: one run (``RUN_ROWS`` x (2 d + 48) bytes)
in stage 1, one range (``JOB_ROWS`` x (2 d + 56) bytes plus one cluster's working set, bounded by
``PAIR_BLOCK``) in stage 3; the driver holds per-cluster counts and the hash map (12 bytes per
duplicated hash). Disk: 2 d + 48 bytes a row (13.7 GB for 12.8M rows of 512-d), removed at the end.
"""

from __future__ import annotations

import glob
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flyt.errors import FlytError
from flyt.io.parquet import read_schema, read_table
from flyt.io.pool import PoolShard
from flyt.io.uids import uids_to_pairs
from flyt.scorers.dedup import (
    RESULT,
    Dedup,
    dedup_embedding,
    nearest_centroid,
    result_path,
    row_digests,
    solve_cluster,
    value_digests,
)

RUN_ROWS = 1 << 18  # rows a spill job holds before it writes a run
JOB_ROWS = 1 << 19  # rows a solve job reads (a larger cluster is read alone)
HASH_PART_ROWS = 1 << 22  # rows per hash partition (about 40 bytes each)
SPILL = np.dtype([("cluster", "<i4"), ("f0", "<u8"), ("f1", "<u8"), ("row", "<i8"), ("exact", "<u8"), ("hash", "<u8")])
HASHED = np.dtype([("digest", "<u8"), ("f0", "<u8"), ("f1", "<u8"), ("shard", "<i4"), ("row", "<i8")])
HASH_MAP = np.dtype([("digest", "<u8"), ("cluster", "<i4")])


@dataclass
class Stage:
    name: str
    rows: int
    seconds: float

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("inf")


@dataclass
class PassReport:
    """What the pool pass did: stage timings, clusters, leaves, groups (for logs and benchmarks)."""

    stages: list[Stage] = field(default_factory=list)
    clusters: int = 0
    largest_cluster: int = 0
    jobs: int = 0
    hash_column: str | None = None


# ----------------------------------------------------------------------------- shared per-process state
_CACHE: dict[str, np.ndarray] = {}


def _load_cached(path: Path) -> np.ndarray:
    key = str(path)
    if key not in _CACHE:
        if len(_CACHE) > 4:
            _CACHE.clear()
        _CACHE[key] = np.load(path)
    return _CACHE[key]


@dataclass(frozen=True)
class Settings:
    """What every stage's jobs need to know, small enough to travel with each job."""

    work: str
    modality: str
    dims: tuple | None
    batch_rows: int
    hash_column: str | None
    threshold: float
    max_cluster: int
    seed: int
    split: str = "exact"

    @property
    def centroids(self) -> np.ndarray:
        return _load_cached(Path(self.work) / "centroids.npy")


# ----------------------------------------------------------------------------- stage 0: image hashes
def resolve_hash_column(sources: list[PoolShard], wanted: str) -> str | None:
    """``auto``: ``sha256`` when every shard has it; ``none``: no hash; else that column, in every shard."""
    if wanted == "none":
        return None
    name = "sha256" if wanted == "auto" else wanted
    missing = [s for s in sources if name not in read_schema(s.parquet).names]
    if not missing:
        return name
    if wanted == "auto":
        return None
    raise FlytError(f"{missing[0].parquet}: missing column '{name}' (option --dedup-hash; 'none' to use embeddings only)")


@dataclass(frozen=True)
class HashJob:
    settings: Settings
    source: PoolShard
    index: int
    parts: int


def _hash_digests(source: PoolShard, column: str) -> np.ndarray:
    col = read_table(source.parquet, [column]).column(column)
    return value_digests(col.to_pylist())


def hash_shard(job: HashJob) -> int:
    """Write (digest, uid, place) of the shard's hashed rows into one file per partition."""
    src, work = job.source, Path(job.settings.work)
    digests = _hash_digests(src, job.settings.hash_column)
    pairs = uids_to_pairs(src.read_uids(), src.parquet)
    rec = np.empty(len(pairs), HASHED)
    rec["digest"], rec["f0"], rec["f1"], rec["shard"], rec["row"] = digests, pairs["f0"], pairs["f1"], job.index, np.arange(len(pairs))
    rec = rec[digests != 0]
    part = (rec["digest"] % np.uint64(job.parts)).astype(np.int64)
    for p in np.unique(part):
        np.save(work / "hash" / f"p{p:05d}-s{job.index:06d}.npy", rec[part == p])
    return len(pairs)


def hash_partition(item: tuple[str, int]) -> np.ndarray:
    """The duplicated digests of one partition with their smallest-uid row (HASHED rows)."""
    work, p = item
    files = sorted(glob.glob(str(Path(work) / "hash" / f"p{p:05d}-s*.npy")))
    if not files:
        return np.zeros(0, HASHED)
    rec = np.concatenate([np.load(f) for f in files])
    rec = rec[np.lexsort((rec["f1"], rec["f0"], rec["digest"]))]
    d = rec["digest"]
    starts = np.flatnonzero(np.r_[True, d[1:] != d[:-1]])
    lengths = np.diff(np.r_[starts, len(d)])
    return rec[starts[lengths > 1]]


@dataclass(frozen=True)
class CanonJob:
    settings: Settings
    source: PoolShard
    rows: np.ndarray


def canon_clusters(job: CanonJob) -> np.ndarray:
    """The clusters of the given rows of a shard (the smallest-uid rows of duplicated hashes)."""
    b = job.source.take(job.rows)
    x = dedup_embedding(b.image, b.text, job.settings.modality)
    return nearest_centroid(x, job.settings.centroids)


def build_hash_map(settings: Settings, sources: list[PoolShard], map_shards, workers: int, rows: int) -> int:
    """Stage 0; writes ``hash-map.npy`` (digest -> cluster, sorted by digest). Returns duplicated hashes."""
    work = Path(settings.work)
    (work / "hash").mkdir()
    parts = max(1, math.ceil(rows / HASH_PART_ROWS))
    jobs = [HashJob(settings, s, i, parts) for i, s in enumerate(sources) if s.rows]
    for _ in map_shards(hash_shard, jobs, workers):
        pass
    canon = [c for c in map_shards(hash_partition, [(str(work), p) for p in range(parts)], workers) if len(c)]
    canon = np.concatenate(canon) if canon else np.zeros(0, HASHED)
    shards = np.unique(canon["shard"])
    per_shard = [canon[canon["shard"] == i] for i in shards]
    jobs = [CanonJob(settings, sources[i], c["row"]) for i, c in zip(shards, per_shard)]
    out = np.empty(len(canon), HASH_MAP)
    at = 0
    for c, clusters in zip(per_shard, map_shards(canon_clusters, jobs, workers)):
        out[at : at + len(c)]["digest"], out[at : at + len(c)]["cluster"] = c["digest"], clusters
        at += len(c)
    np.save(work / "hash-map.npy", np.sort(out, order="digest"))
    return len(out)


# ----------------------------------------------------------------------------- stage 1: spill by cluster
@dataclass(frozen=True)
class SpillJob:
    settings: Settings
    source: PoolShard
    index: int


@dataclass
class SpillResult:
    index: int
    runs: list[str]
    counts: np.ndarray


def spill_shard(job: SpillJob) -> SpillResult:
    """Stage 1 for one shard: runs of rows sorted by (cluster, uid), each with its counts per cluster."""
    st, src = job.settings, job.source
    work = Path(st.work)
    centroids = st.centroids
    k = len(centroids)
    digests = hash_map = None
    if st.hash_column:
        hash_map = _load_cached(work / "hash-map.npy")
        if len(hash_map):
            digests = _hash_digests(src, st.hash_column)
    runs, counts = [], np.zeros(k, np.int64)
    buf_rows, buf_emb, held = [], [], 0

    def flush() -> None:
        nonlocal buf_rows, buf_emb, held
        rows, emb = np.concatenate(buf_rows), np.concatenate(buf_emb)
        order = np.lexsort((rows["f1"], rows["f0"], rows["cluster"]))
        c = np.bincount(rows["cluster"], minlength=k).astype(np.int64)
        prefix = str(work / "spill" / f"s{job.index:06d}-r{len(runs):05d}")
        np.save(prefix + "-emb.npy", emb[order])
        np.save(prefix + "-counts.npy", c)
        np.save(prefix + "-rows.npy", rows[order])  # last: a run is complete when its rows exist
        runs.append(prefix)
        counts[:] += c
        buf_rows, buf_emb, held = [], [], 0

    needs_text = st.modality != "image"
    for start, batch in src.iter_batches(st.batch_rows, embeddings=True, dims=st.dims):
        n = len(batch)
        x = dedup_embedding(batch.image, batch.text if needs_text else None, st.modality)
        pairs = uids_to_pairs(batch.uids, f"{src.parquet} [batch from row {start}]")
        rec = np.empty(n, SPILL)
        rec["cluster"] = nearest_centroid(x, centroids)
        rec["f0"], rec["f1"], rec["row"] = pairs["f0"], pairs["f1"], np.arange(start, start + n)
        rec["exact"] = row_digests(x)
        rec["hash"] = 0
        if digests is not None:
            d = digests[start : start + n]
            at = np.minimum(np.searchsorted(hash_map["digest"], d), len(hash_map) - 1)
            hit = (hash_map["digest"][at] == d) & (d != 0)
            rec["cluster"][hit] = hash_map["cluster"][at[hit]]
            rec["hash"][hit] = d[hit]
        buf_rows.append(rec)
        buf_emb.append(x.astype(np.float16))
        held += n
        if held >= RUN_ROWS:
            flush()
    if held:
        flush()
    return SpillResult(job.index, runs, counts)


# ----------------------------------------------------------------------------- stages 2-3: plan and solve
def plan_ranges(counts: np.ndarray, job_rows: int = JOB_ROWS) -> list[tuple[int, int]]:
    """Consecutive cluster ranges [c0, c1) of at most ``job_rows`` rows (one cluster may exceed it alone)."""
    ranges, c0, held = [], 0, 0
    for c, n in enumerate(counts):
        if held and held + n > job_rows:
            ranges.append((c0, c))
            c0, held = c, 0
        held += int(n)
    if held or c0 < len(counts):
        ranges.append((c0, len(counts)))
    return [r for r in ranges if counts[r[0] : r[1]].sum() > 0]


@dataclass(frozen=True)
class SolveJob:
    settings: Settings
    job: int
    c0: int
    c1: int
    runs: tuple  # (shard index, run prefix) of every run of the pool


@dataclass
class SolveResult:
    job: int
    rows: int
    clusters: int
    largest: int


def solve_range(job: SolveJob) -> SolveResult:
    """Stage 3 for clusters [c0, c1): read their rows from every run, solve each cluster, write the
    rows' columns sorted by (shard, row)."""
    st = job.settings
    centroids = st.centroids
    rows_parts, emb_parts, shard_parts = [], [], []
    for shard, prefix in job.runs:
        off = np.concatenate([[0], np.cumsum(np.load(prefix + "-counts.npy"))])
        lo, hi = int(off[job.c0]), int(off[job.c1])
        if hi > lo:
            rows_parts.append(np.array(np.load(prefix + "-rows.npy", mmap_mode="r")[lo:hi]))
            emb_parts.append(np.array(np.load(prefix + "-emb.npy", mmap_mode="r")[lo:hi]))
            shard_parts.append(np.full(hi - lo, shard, np.int32))
    rows, emb, shard = np.concatenate(rows_parts), np.concatenate(emb_parts), np.concatenate(shard_parts)
    del rows_parts, emb_parts
    order = np.lexsort((rows["f1"], rows["f0"], rows["cluster"]))
    rows, shard = rows[order], shard[order]
    out = np.empty(len(rows), RESULT)
    out["shard"], out["row"], out["f0"], out["f1"] = shard, rows["row"], rows["f0"], rows["f1"]
    same = np.flatnonzero((rows["f0"][1:] == rows["f0"][:-1]) & (rows["f1"][1:] == rows["f1"][:-1]))
    if same.size:
        r = rows[same[0]]
        raise FlytError(f"dedup: uid {int(r['f0']):016x}{int(r['f1']):016x} is in the pool twice (uids must be unique across the pool)")
    bounds = np.flatnonzero(np.r_[True, rows["cluster"][1:] != rows["cluster"][:-1], True])
    largest = 0
    for a, b in zip(bounds[:-1], bounds[1:]):
        c = int(rows["cluster"][a])
        pairs = np.empty(b - a, dtype=[("f0", "<u8"), ("f1", "<u8")])
        pairs["f0"], pairs["f1"] = rows["f0"][a:b], rows["f1"][a:b]
        cols = solve_cluster(emb[order[a:b]], pairs, rows["exact"][a:b], rows["hash"][a:b], centroids[c],
                             st.threshold, st.max_cluster, st.seed, st.split)
        out["group"][a:b], out["size"][a:b] = cols["dedup_group"], cols["dedup_group_size"]
        out["keep"][a:b], out["nearest"][a:b] = cols["dedup_keep"], cols["dedup_nearest"]
        largest = max(largest, b - a)
    np.save(result_path(st.work, job.job), out[np.lexsort((out["row"], out["shard"]))])
    return SolveResult(job.job, len(out), len(bounds) - 1, largest)


# ----------------------------------------------------------------------------- the driver
def run_pool_pass(scorer: Dedup, sources: list[PoolShard], work: Path, map_shards, workers: int,
                  dims: tuple | None, batch_rows: int = 8192) -> PassReport:
    """Stages 0-3 (module doc) for a fitted ``Dedup``; afterwards its shard jobs can read their rows."""
    if scorer.centroids is None:
        raise FlytError("dedup: the scorer must be fitted before its pool pass (internal error)")
    report = PassReport([Stage("fit (sample + k-means)", *scorer.fitted)])
    work = Path(work)
    (work / "spill").mkdir(parents=True)
    np.save(work / "centroids.npy", scorer.centroids)
    live = [(i, s) for i, s in enumerate(sources) if s.rows]
    total = sum(s.rows for _, s in live)
    hash_column = resolve_hash_column(sources, scorer.hash_column)
    settings = Settings(str(work), scorer.embedding, dims, batch_rows, hash_column, scorer.threshold,
                        scorer.max_cluster, scorer.seed, scorer.split)
    report.hash_column = hash_column

    def timed(name: str, rows: int, fn):
        t0 = time.perf_counter()
        value = fn()
        report.stages.append(Stage(name, rows, time.perf_counter() - t0))
        return value

    if hash_column:
        timed("hashes", total, lambda: build_hash_map(settings, sources, map_shards, workers, total))
    counts = np.zeros(len(scorer.centroids), np.int64)
    runs: list[tuple[int, str]] = []

    def spill() -> None:
        for r in map_shards(spill_shard, [SpillJob(settings, s, i) for i, s in live], workers):
            counts[:] += r.counts  # the driver keeps only the totals per cluster
            runs.extend((r.index, prefix) for prefix in r.runs)

    timed("assign+spill", total, spill)
    runs = tuple(runs)
    ranges = plan_ranges(counts)
    jobs = [SolveJob(settings, j, c0, c1, runs) for j, (c0, c1) in enumerate(ranges)]
    solved = timed("solve", total, lambda: list(map_shards(solve_range, jobs, workers)))
    report.clusters = int((counts > 0).sum())
    report.largest_cluster = int(counts.max()) if len(counts) else 0
    report.jobs = len(jobs)
    scorer.work, scorer.jobs = str(work), len(solved)
    scorer.shard_index = {s.stem: i for i, s in enumerate(sources)}
    for d in ("spill", "hash"):  # only the results are read from here on
        _remove_tree(work / d)
    return report


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)

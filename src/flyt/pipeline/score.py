"""``flyt score``: every pool shard -> one score shard (same stem), resumable, on any engine.

Driver (``score_pool``): list shards, skip finished ones, fit the scorers' pool-wide state once
(reference samples, probe, centroids), save it beside the output, then map ``score_shard`` over
the pending shards with the chosen engine. ``score_shard`` is pure given its job: the same job
gives the same bytes on the local engine and on Ray. A failing shard returns its error instead of
raising, so the other shards are still written; the driver reports all failures at the end.
On a Ray cluster the pool, the output directory (which holds the fitted state file during the
run) and any --scores/--tasks directories must be on storage every node can read.
"""

from __future__ import annotations

import os
import pickle
import sys
import time
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from flyt.errors import FlytError
from flyt.io.arrays import embedding_matrix, l2_normalise
from flyt.io.atomic import atomic_path
from flyt.io.parquet import read_table
from flyt.io.pool import DEFAULT_PAIR, IMAGE, Batch, PoolShard, pool_shards
from flyt.io.scores import ScoreDirs, write_score_shard
from flyt.scorers.base import Scorer
from flyt.scorers.registry import NEEDS_TASKS, ScorerOptions, make_scorers

STATE_PREFIX = ".flyt-score-state-"


# ----------------------------------------------------------------------------- pool-wide context
class PoolContext:
    """The ``FitContext`` of a pool: uniform row samples and the downstream task images."""

    def __init__(self, sources: list[PoolShard], tasks: list, seed: int, image_dim: int | None):
        self.sources, self.tasks, self.seed, self.image_dim = sources, list(tasks), seed, image_dim
        self._task_images = None

    def pool_sample(self, n: int, salt: str) -> Batch:
        unknown = [s for s in self.sources if s.rows is None]
        if unknown:
            raise FlytError(f"{unknown[0].parquet}: unreadable parquet shard (a pool sample needs every shard)")
        counts = np.array([s.rows for s in self.sources], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(counts)])
        total = int(starts[-1])
        if total == 0:
            raise FlytError("the pool has no rows (empty pool)")
        # crc32, not hash(): the salt must map to the same stream in every process
        rng = np.random.default_rng([self.seed, zlib.crc32(salt.encode())])
        picks = rng.choice(total, size=min(n, total), replace=False)  # random order
        shard_of = np.searchsorted(starts, picks, side="right") - 1
        parts: list[tuple[np.ndarray, Batch]] = []  # (positions in the sample, rows of one shard)
        for s in np.unique(shard_of):
            mine = np.flatnonzero(shard_of == s)
            parts.append((mine, self.sources[s].take(picks[mine] - starts[s])))
        first = parts[0][1]
        k = len(picks)
        uids = np.empty(k, dtype=object)
        image = np.empty((k, first.image.shape[1]), dtype=np.float32)
        text = np.empty((k, first.text.shape[1]), dtype=np.float32)
        for mine, b in parts:
            if b.image.shape[1] != image.shape[1] or b.text.shape[1] != text.shape[1]:
                raise FlytError(f"pool shards disagree on the embedding dimension ({b.image.shape[1]} vs {image.shape[1]})")
            uids[mine], image[mine], text[mine] = b.uids, b.image, b.text
        return Batch(uids=uids.astype(str), image=image, text=text)

    def task_images(self) -> np.ndarray:
        if self._task_images is None:
            if not self.tasks:
                raise FlytError("this scorer needs downstream tasks: pass --tasks DIR ...")
            parts = []
            for d in self.tasks:
                path = Path(d) / "train.parquet"
                if not path.is_file():
                    raise FlytError(f"{path}: missing file (task training images)")
                m = embedding_matrix(read_table(path, [IMAGE]), IMAGE, str(path))
                if len(m) == 0:
                    raise FlytError(f"{path}: split has no rows")
                if self.image_dim is not None and m.shape[1] != self.image_dim:
                    raise FlytError(
                        f"{path}: column '{IMAGE}' has dimension {m.shape[1]}, the pool's images have "
                        f"{self.image_dim} (embed tasks and pool with the same model)"
                    )
                parts.append(l2_normalise(m))
            self._task_images = np.concatenate(parts).astype(np.float32)
        return self._task_images


# ----------------------------------------------------------------------------- per-shard work
@dataclass(frozen=True)
class ShardJob:
    source: PoolShard
    out_dir: str
    state_path: str  # pickled fitted scorers, written once by the driver
    batch_rows: int
    score_dirs: tuple = ()
    dims: tuple | None = None  # expected (image, text) dims, so a stray shard fails clearly


@dataclass
class ShardResult:
    stem: str
    rows: int
    seconds: float
    error: str | None = None


_STATE_CACHE: dict[str, list[Scorer]] = {}


def _load_state(path: str) -> list[Scorer]:
    # One unpickle per process and run (the path is unique per run), not one per shard.
    if path not in _STATE_CACHE:
        _STATE_CACHE.clear()
        with open(path, "rb") as f:
            _STATE_CACHE[path] = pickle.load(f)
    return _STATE_CACHE[path]


def score_shard(job: ShardJob) -> ShardResult:
    """Score one pool shard and write ``<out_dir>/<stem>.parquet`` atomically. Never raises."""
    t0 = time.perf_counter()
    src = job.source
    try:
        scorers = _load_state(job.state_path)
        needs_emb = any(s.needs_embeddings for s in scorers)
        needs_cap = any(s.needs_captions for s in scorers)
        inputs = list(dict.fromkeys(c for s in scorers for c in s.input_columns))
        names = src.schema_names()
        in_shard = [c for c in inputs if c in names]
        uids = src.read_uids()
        joined = ScoreDirs(job.score_dirs).join(uids, [c for c in inputs if c not in in_shard], src.parquet, src.stem)
        parts = {col: [] for s in scorers for col in s.output_columns()}
        for start, batch in src.iter_batches(job.batch_rows, needs_emb, needs_cap, in_shard, job.dims):
            for c, v in joined.items():
                batch.columns[c] = v[start : start + len(batch)]
            for s in scorers:
                result = s.score(batch)
                for col in s.output_columns():
                    v = np.asarray(result[col], dtype=np.float32)
                    bad = np.flatnonzero(~np.isfinite(v))
                    if bad.size:
                        r = start + int(bad[0])
                        raise FlytError(f"{src.parquet}: row {r}: scorer '{s.name}' gave a non-finite '{col}' ({v[bad[0]]})")
                    parts[col].append(v)
        columns = {c: (np.concatenate(v) if v else np.zeros(0, np.float32)) for c, v in parts.items()}
        write_score_shard(job.out_dir, src.stem, uids, columns)
        return ShardResult(src.stem, len(uids), time.perf_counter() - t0)
    except FlytError as exc:
        return ShardResult(src.stem, 0, time.perf_counter() - t0, str(exc))
    except Exception as exc:  # a bug or an unexpected file problem: still only this shard fails
        return ShardResult(src.stem, 0, time.perf_counter() - t0, f"{src.parquet}: {type(exc).__name__}: {exc}")


def is_finished(out_dir: Path, src: PoolShard, columns: list[str]) -> bool:
    """A score shard counts as done when it is readable, has every column and the shard's row count."""
    path = out_dir / f"{src.stem}.parquet"
    if not path.is_file() or src.rows is None:
        return False
    try:
        meta = pq.ParquetFile(path)
        return meta.metadata.num_rows == src.rows and all(c in meta.schema_arrow.names for c in columns)
    except Exception:
        return False


# ----------------------------------------------------------------------------- driver
@dataclass
class ScoreSummary:
    shards: int
    scored: int
    skipped: int
    rows: int
    seconds: float
    columns: list[str]
    failures: list[ShardResult] = field(default_factory=list)

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("inf")

    def line(self, out_dir) -> str:
        return (
            f"scored {self.rows} rows in {self.scored} shards ({self.skipped} already done, "
            f"{len(self.failures)} failed) in {self.seconds:.1f} s: {self.rows_per_second:,.0f} rows/s; "
            f"columns {', '.join(self.columns)} -> {out_dir}"
        )


def score_pool(
    pool,
    out,
    scorers: list[str],
    options: ScorerOptions | None = None,
    tasks: list = (),
    score_dirs: list = (),
    workers: int = 1,
    engine: str = "local",
    pair: str = DEFAULT_PAIR,
    batch_rows: int = 8192,
    seed: int = 0,
    progress: bool | None = None,
    log=None,
) -> ScoreSummary:
    """Score every shard of ``pool`` into ``out`` (see module doc). Returns a summary; failed
    shards are listed in it (the CLI turns them into a non-zero exit)."""
    from flyt.engines import get_map_shards

    log = log or sys.stderr
    t0 = time.perf_counter()
    if workers < 1:
        raise FlytError(f"option --workers must be >= 1, got {workers}")
    if batch_rows < 1:
        raise FlytError(f"option --batch-rows must be >= 1, got {batch_rows}")
    map_shards = get_map_shards(engine)
    pool, out = Path(pool), Path(out)
    sources = pool_shards(pool, pair)
    if out.resolve() == pool.resolve():
        raise FlytError(f"option --out: {out} is the pool directory; score shards would overwrite pool shards")
    for d in list(tasks) + list(score_dirs):
        if not Path(d).is_dir():
            raise FlytError(f"directory {d} does not exist")
    if all(s.rows == 0 for s in sources):
        raise FlytError(f"pool directory {pool} has no rows (empty pool)")
    fitted = make_scorers(list(scorers), options)
    if not tasks:
        needing = [s for s in scorers if s in NEEDS_TASKS]
        if needing:
            raise FlytError(f"scorer '{needing[0]}' needs downstream tasks: pass --tasks DIR ...")
    columns = [c for s in fitted for c in s.output_columns()]
    pending = [s for s in sources if not is_finished(out, s, columns)]
    summary = ScoreSummary(len(sources), 0, len(sources) - len(pending), 0, 0.0, columns)
    if not pending:
        summary.seconds = time.perf_counter() - t0
        return summary

    needs_emb = any(s.needs_embeddings for s in fitted)
    dims = _pool_dims(sources) if needs_emb else None
    ctx = PoolContext(sources, tasks, seed, dims[0] if dims else None)
    for s in fitted:
        s.fit(ctx)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / f"{STATE_PREFIX}{uuid.uuid4().hex}.pkl"
    with atomic_path(state_path) as tmp:
        tmp.write_bytes(pickle.dumps(fitted, protocol=pickle.HIGHEST_PROTOCOL))
    jobs = [ShardJob(s, str(out), str(state_path), batch_rows, tuple(map(str, score_dirs)), dims) for s in pending]
    rows_of = {s.stem: s.rows or 0 for s in pending}
    try:
        from tqdm import tqdm

        disable = None if progress is None else not progress  # None: a bar on a terminal only
        with tqdm(total=sum(rows_of.values()), unit="rows", unit_scale=True, desc="flyt score", disable=disable) as bar:
            for res in map_shards(score_shard, jobs, workers):
                if res.error:
                    summary.failures.append(res)
                    bar.write(f"flyt score: shard {res.stem} failed: {res.error}", file=log)
                else:
                    summary.scored += 1
                    summary.rows += res.rows
                bar.update(rows_of[res.stem])
    finally:
        if state_path.exists():
            os.unlink(state_path)
        _STATE_CACHE.clear()
    summary.seconds = time.perf_counter() - t0
    return summary


def _pool_dims(sources: list[PoolShard]) -> tuple[int, int]:
    """Embedding dims of the pool, from its first readable shard."""
    for s in sources:
        if s.rows:
            try:
                return s.first_dims()
            except FlytError:
                continue
    raise FlytError(f"pool directory {Path(sources[0].parquet).parent} has no readable rows (empty pool)")

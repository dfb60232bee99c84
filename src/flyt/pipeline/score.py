"""``flyt score``: every pool shard -> one score shard (same stem), resumable, on any engine.

Driver (``score_pool``): list shards; refuse an output that is one of the inputs; lock the output
directory and remove what a killed run left there (its fitted-state file, temporaries); decide per
shard which scorers must run, from the fingerprint stored in the existing output shard (see
``score_fingerprint``: the pool shard's files and each column's scorer settings, never a row count);
fit those scorers' pool-wide state once (reference samples, probe, centroids), save it beside the
output, then map ``score_shard`` over the pending shards with the chosen engine.

An existing output shard is extended, never replaced: the columns this run computes are joined by uid
to the columns it already holds, a column computed again replaces its old values, and columns of
other scorers are kept as they are. Keeping them is only allowed while the pool shard is the one they
were computed from; otherwise the run is refused with one line before anything is written.

``score_shard`` is pure given its job: the same job gives the same bytes on the local engine and on
Ray. A failing shard returns its error instead of raising, so the other shards are still written; the
driver reports all failures at the end. On a Ray cluster the pool, the output directory (which holds
the fitted state file during the run) and any --scores/--tasks directories must be on storage every
node can read.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flyt.errors import FlytError
from flyt.io.atomic import atomic_path, check_parent, exclusive_lock, remove_leftovers
from flyt.io.parquet import read_schema, read_table, shard_uids
from flyt.io.pool import DEFAULT_PAIR, PoolShard, pool_shards
from flyt.io.scores import ScoreDirs, write_score_shard
from flyt.pipeline.pool_context import PoolContext
from flyt.pipeline.score_fingerprint import KEY, column_settings, pool_shard_fingerprint, read_fingerprint, shard_metadata
from flyt.progress import Progress
from flyt.scorers.base import Scorer
from flyt.scorers.registry import NEEDS_TASKS, ScorerOptions, make_scorers

STATE_PREFIX = ".flyt-score-state-"
WORK_PREFIX = ".flyt-score-work-"  # a pool-wide scorer's work directory (dedup's spill), one per run
LOCK_NAME = ".flyt-score.lock"  # held for the whole run; the kernel drops it if the run dies
# Scorers that compare image and text embeddings directly (a cosine): both must live in one space.
JOINT_SPACE = {"clip_score", "negclip_loss"}


# ----------------------------------------------------------------------------- per-shard work
@dataclass(frozen=True)
class ShardJob:
    source: PoolShard
    out_dir: str
    state_path: str  # pickled fitted scorers, written once by the driver
    batch_rows: int
    score_dirs: tuple = ()
    dims: tuple | None = None  # expected (image, text) dims, so a stray shard fails clearly
    scorers: tuple = ()  # positions in the state of the scorers this shard runs (empty: all)
    keep: tuple = ()  # columns of the existing output shard kept as they are (joined by uid)
    metadata: str = ""  # the fingerprint written with the shard (JSON, see score_fingerprint)


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
        state = _load_state(job.state_path)
        scorers = [state[i] for i in job.scorers] if job.scorers else state
        needs_emb = any(s.needs_embeddings for s in scorers)
        needs_cap = any(s.needs_captions for s in scorers)
        inputs = list(dict.fromkeys(c for s in scorers for c in s.input_columns))
        names = src.schema_names()
        in_shard = [c for c in inputs if c in names]
        uids = src.read_uids()
        joined = ScoreDirs(job.score_dirs).join(uids, [c for c in inputs if c not in in_shard], src.parquet, src.stem)
        parts = {col: [] for s in scorers for col in s.output_columns()}
        for s in scorers:
            s.begin_shard(src)
        for start, batch in src.iter_batches(job.batch_rows, needs_emb, needs_cap, in_shard, job.dims):
            for c, v in joined.items():
                batch.columns[c] = v[start : start + len(batch)]
            for s in scorers:
                result = s.score(batch)
                for col in s.output_columns():
                    v = np.asarray(result[col])
                    if v.dtype.kind in "iub":  # group ids, sizes, flags (dedup) keep their integer dtype
                        parts[col].append(v)
                        continue
                    v = v.astype(np.float32)
                    bad = np.flatnonzero(~np.isfinite(v))
                    if bad.size:
                        r = start + int(bad[0])
                        raise FlytError(f"{src.parquet}: row {r}: scorer '{s.name}' gave a non-finite '{col}' ({v[bad[0]]})")
                    parts[col].append(v)
        columns = {c: (np.concatenate(v) if v else np.zeros(0, np.float32)) for c, v in parts.items()}
        if job.keep:
            columns = extend_columns(Path(job.out_dir) / f"{src.stem}.parquet", uids, columns, job.keep)
        write_score_shard(job.out_dir, src.stem, uids, columns, {KEY: job.metadata.encode()} if job.metadata else None)
        return ShardResult(src.stem, len(uids), time.perf_counter() - t0)
    except FlytError as exc:
        return ShardResult(src.stem, 0, time.perf_counter() - t0, str(exc))
    except Exception as exc:  # a bug or an unexpected file problem: still only this shard fails
        return ShardResult(src.stem, 0, time.perf_counter() - t0, f"{src.parquet}: {type(exc).__name__}: {exc}")


def extend_columns(path: Path, uids: np.ndarray, new: dict[str, np.ndarray], keep) -> dict[str, np.ndarray]:
    """The columns of the existing score shard ``path`` in its order, ``keep`` ones joined by uid to
    ``uids`` and the others replaced by ``new``, then the columns ``new`` adds."""
    table = read_table(path, ["uid", *keep])
    old = shard_uids(table, str(path))
    if np.array_equal(old, uids):
        pos = np.arange(len(uids))
    else:
        order = np.argsort(old)
        ranked = old[order]
        at = np.minimum(np.searchsorted(ranked, uids), max(len(ranked) - 1, 0))
        hit = (ranked[at] == uids) if len(ranked) else np.zeros(len(uids), dtype=bool)
        if not hit.all():
            r = int(np.flatnonzero(~hit)[0])
            raise FlytError(f"{path}: no row for uid {uids[r]} (pool row {r}), so its column '{keep[0]}' cannot be kept")
        pos = order[at]
    out: dict[str, np.ndarray] = {}
    for c in read_schema(path).names:
        if c in new:
            out[c] = new[c]
        elif c in keep:
            out[c] = table.column(c).to_numpy(zero_copy_only=False)[pos]
    for c, v in new.items():
        out.setdefault(c, v)
    return out


@dataclass
class ShardPlan:
    """What a run does with one pool shard: the scorers to run (none: already done), the columns of
    its existing output kept beside them, and the fingerprint to write."""

    source: PoolShard
    scorers: list[int]
    keep: list[str] = field(default_factory=list)
    metadata: str = ""


def plan_shard(out_dir: Path, src: PoolShard, scorers: list[Scorer], settings: dict[str, dict]) -> ShardPlan:
    """Compare the existing output shard's fingerprint with this run's; refuse to keep columns that were
    computed from another version of the pool shard (they could not be joined, or would be stale)."""
    every = list(range(len(scorers)))
    fp = pool_shard_fingerprint(src)
    path = out_dir / f"{src.stem}.parquet"

    def metadata(run: list[int], kept: dict) -> str:
        cols = dict(kept) | {c: settings[c] for i in run for c in scorers[i].output_columns()}
        return shard_metadata(fp, cols)[KEY].decode()

    if fp is None or not path.is_file():  # an unreadable pool shard fails in its job, before any write
        return ShardPlan(src, every, [], metadata(every, {}))
    stored = read_fingerprint(path)
    try:
        existing = [c for c in read_schema(path).names if c != "uid"]
    except FlytError:  # an unreadable output holds nothing to keep
        return ShardPlan(src, every, [], metadata(every, {}))
    same_pool = stored is not None and stored.get("pool_shard") == fp
    if same_pool:
        done = stored["columns"]
        run = [i for i in every if any(c not in existing or done.get(c) != settings[c] for c in scorers[i].output_columns())]
    else:
        run = every
    if not run:
        return ShardPlan(src, [])
    written = {c for i in run for c in scorers[i].output_columns()}
    keep = [c for c in existing if c not in written]
    if keep and not same_pool:
        why = ("has no record of what it was computed from (an earlier flyt or another tool wrote it)" if stored is None
               else f"was computed from another version of pool shard {src.parquet}")
        raise FlytError(
            f"{path}: its column(s) {', '.join(keep)} {why}, so they cannot be kept beside new scores: "
            "score them again too (add their --scorer) or choose another --out"
        )
    kept = {c: stored["columns"][c] for c in keep if c in stored["columns"]} if keep else {}
    return ShardPlan(src, run, keep, metadata(run, kept))


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
    stages: list = field(default_factory=list)  # pool-wide passes (dedup): Stage(name, rows, seconds)

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
    desc: str = "flyt score",
) -> ScoreSummary:
    """Score every shard of ``pool`` into ``out`` (see module doc). Returns a summary; failed
    shards are listed in it (the CLI turns them into a non-zero exit). ``progress``: flyt.progress's
    show (None: a bar on a terminal only), over the rows to score, named ``desc``."""
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
    refuse_input_as_output(out, pool, tasks, score_dirs)
    for d in list(tasks) + list(score_dirs):
        if not Path(d).is_dir():
            raise FlytError(f"directory {d} does not exist")
    if all(s.rows == 0 for s in sources):
        raise FlytError(f"pool directory {pool} has no rows (empty pool)")
    specs = list(scorers)
    fitted = make_scorers(specs, options)
    if not tasks:
        needing = [s for s in specs if s in NEEDS_TASKS]
        if needing:
            raise FlytError(f"scorer '{needing[0]}' needs downstream tasks: pass --tasks DIR ...")
    columns = [c for s in fitted for c in s.output_columns()]
    settings = column_settings(specs, fitted, options or ScorerOptions(), seed, sources, list(tasks), list(score_dirs))
    with contextlib.ExitStack() as held:
        if out.is_dir():
            take_over(out, sources, held)
        plans = [plan_shard(out, s, fitted, settings) for s in sources]
        pending = [p for p in plans if p.scorers]
        summary = ScoreSummary(len(sources), 0, len(sources) - len(pending), 0, 0.0, columns)
        if not pending:
            summary.seconds = time.perf_counter() - t0
            return summary

        used = sorted({i for p in pending for i in p.scorers})  # fit only what some shard runs
        running = [fitted[i] for i in used]
        needs_emb = any(s.needs_embeddings or s.pool_wide for s in running)
        dims = None
        if needs_emb:
            where, dims = _pool_dims(sources)
            joint = [specs[i] for i in used if specs[i] in JOINT_SPACE]
            if joint and dims[0] != dims[1]:
                raise FlytError(
                    f"{where}: image embeddings are {dims[0]}-d and text embeddings {dims[1]}-d, but {joint[0]} "
                    "compares them in one space (embed images and texts with one CLIP model)"
                )
        ctx = PoolContext(sources, tasks, seed, dims[0] if dims else None)
        for s in running:
            s.fit(ctx)
        if not out.is_dir():
            make_output_dir(out)
            held.callback(_remove_if_empty, out)  # a run that wrote nothing leaves no directory behind
            take_over(out, sources, held)
        for s in running:
            if s.pool_wide:  # values that need the whole pool (dedup): computed now, read back per shard
                summary.stages += _pool_pass(s, sources, out, held, map_shards, workers, dims, batch_rows)
        state_path = out / f"{STATE_PREFIX}{uuid.uuid4().hex}.pkl"
        with atomic_path(state_path) as tmp:
            tmp.write_bytes(pickle.dumps(running, protocol=pickle.HIGHEST_PROTOCOL))
        position = {i: k for k, i in enumerate(used)}
        jobs = [
            ShardJob(p.source, str(out), str(state_path), batch_rows, tuple(map(str, score_dirs)), dims,
                     tuple(position[i] for i in p.scorers), tuple(p.keep), p.metadata)
            for p in pending
        ]
        rows_of = {p.source.stem: p.source.rows or 0 for p in pending}
        try:
            with Progress(sum(rows_of.values()), desc, unit="row", show=progress, scale=True) as bar:
                for res in map_shards(score_shard, jobs, workers):
                    if res.error:
                        summary.failures.append(res)
                        if len(sources) > 1:  # with one shard, the final error line is this line
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


def _pool_pass(scorer: Scorer, sources, out: Path, held: contextlib.ExitStack, map_shards, workers: int, dims,
               batch_rows: int) -> list:
    """Run a pool-wide scorer's pass in a work directory (its ``spill`` option, else inside ``out``),
    removed when the run ends."""
    from flyt.pipeline.dedup import run_pool_pass

    root = Path(getattr(scorer, "spill", None) or out)
    if not root.is_dir():
        raise FlytError(f"option --dedup-spill: {root} is not a directory")
    work = root / f"{WORK_PREFIX}{uuid.uuid4().hex}"
    held.callback(shutil.rmtree, work, ignore_errors=True)
    return run_pool_pass(scorer, sources, work, map_shards, workers, dims, batch_rows).stages


def _same_dir(a: Path, b: Path) -> bool:
    if a.resolve() == Path(b).resolve():
        return True
    try:
        return a.exists() and Path(b).exists() and os.path.samefile(a, b)
    except OSError:
        return False


def refuse_input_as_output(out: Path, pool: Path, tasks, score_dirs) -> None:
    """One line if ``out`` is the pool, a --tasks or a --scores directory (score shards would overwrite
    or mix with that input), or not a directory."""
    named = [("the pool directory", pool)] + [(f"the --tasks directory {t}", t) for t in tasks]
    named += [(f"the --scores directory {d}", d) for d in score_dirs]
    for what, d in named:
        if _same_dir(out, Path(d)):
            extra = "; score shards would overwrite pool shards" if d is pool else ""
            raise FlytError(f"option --out: {out} is also an input: it is {what}{extra}; choose another directory")
    if out.exists() and not out.is_dir():
        raise FlytError(f"option --out: {out} is a file, not a directory")


def make_output_dir(out: Path) -> None:
    """Create ``out``; under a file it is bad input (one line), otherwise an OSError is the environment's."""
    try:
        check_parent(out / "x")
    except FlytError:
        raise FlytError(f"option --out: {out} cannot be a directory: a file stands in its path") from None
    out.mkdir(parents=True, exist_ok=True)


def _remove_if_empty(out: Path) -> None:
    with contextlib.suppress(OSError):
        out.rmdir()  # fails, as it should, when the directory holds anything


def take_over(out: Path, sources: list[PoolShard], held: contextlib.ExitStack) -> None:
    """Lock ``out`` for this run (a second run into it is refused), then remove what an earlier, killed
    run left there: its fitted-state file and the temporaries of its score shards and state file."""
    held.enter_context(exclusive_lock(out / LOCK_NAME, f"score directory {out}"))
    for p in [*out.glob(f"{STATE_PREFIX}*.pkl"), *out.glob(f".{STATE_PREFIX}*.tmp")]:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    for p in out.glob(f"{WORK_PREFIX}*"):
        shutil.rmtree(p, ignore_errors=True)
    for s in sources:
        remove_leftovers(out / f"{s.stem}.parquet")


def _pool_dims(sources: list[PoolShard]) -> tuple[str, tuple[int, int]]:
    """(shard, its embedding dims): the pool's dims, from its first readable shard. If none is
    readable, the first shard's own error (e.g. the column it lacks), not "empty pool"."""
    first_error = None
    for s in sources:
        if s.rows is None or s.rows:  # None: an unreadable footer, whose own error names the file
            try:
                return s.parquet, s.first_dims()
            except FlytError as exc:
                first_error = first_error or exc
    if first_error is not None:
        raise first_error
    raise FlytError(f"pool directory {Path(sources[0].parquet).parent} has no readable rows (empty pool)")

"""The offline benchmark's protocol (DataComp's, in miniature; docs/demo.md): what each stage may read.

- Each task's train split is cut into fit (train) and validation, stratified by class; test splits are
  read only for the final table.
- The held-out tasks (``heldout_tasks/``, flyt.bench.heldout) are read only by the final evaluation,
  after every option was chosen: nothing trains or chooses on them, and they have no train split.
- FLYT/M-FLYT and the scorers that read downstream data see only fit; a strategy's option is the one
  whose student scores the highest average accuracy on validation.
- Cached work is named by ``cache_key`` of what it depends on; ``benchmark_key`` is the part shared by
  the teacher, the baseline scores and the students.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pyarrow as pa

from flyt.bench.strategies import BASELINES
from flyt.bench.student import StudentConfig
from flyt.errors import FlytError
from flyt.io.cache import cache_key
from flyt.io.parquet import list_shards, read_schema, read_table
from flyt.io.tasks import Split, Task, load_task

# The baseline scorers run over the pool (flyt.scorers.registry names; "caption" writes CAPTION_COLUMNS).
BASELINE_SCORERS = ["clip_score", "negclip_loss", "normsim_inf", "normsim_2", "classifier", "image_based", "caption"]
CAPTION_COLUMNS = ["caption_words", "caption_chars", "caption_non_latin"]
# M-FLYT's inputs: every baseline score column and FLYT's.
MIX_INPUTS = [c for c in BASELINES if c != "caption_words"] + CAPTION_COLUMNS + ["flyt"]
# Duplicate and contamination scores, on the benchmark's own pool (the frozen image tower's embeddings):
# dedup's groups feed group-aware SCS and its nearest-row cosine joins M-FLYT's inputs. contamination_max
# (vs FLYT's tasks' test images) is analysis only: as an M-FLYT input or ranking it would pull test-like
# pairs *into* the subset, the opposite of the one use of test images allowed (removing them).
DEDUP_SCORERS = ["dedup", "contamination"]
DEDUP_MIX_INPUTS = ["dedup_nearest"]
# benchmark.json fields that record how (and how fast) it was built, not what it is
_NOT_IDENTITY = ("timings", "encoded", "out", "build_wall_s")


def load_tasks(tasks_dir: Path) -> list[Task]:
    """Every task directory under ``tasks_dir``, by name."""
    return [load_task(d) for d in sorted(Path(tasks_dir).iterdir()) if d.is_dir()]


HELDOUT_DIR = "heldout_tasks"


def load_heldout_tasks(bench_dir: Path) -> list[Task]:
    """The benchmark's held-out tasks (those benchmark.json lists; none for a benchmark built before
    they existed), test split only: no train file is opened. For the final evaluation alone."""
    summary = json.loads((Path(bench_dir) / "benchmark.json").read_text())
    return [load_task(Path(bench_dir) / HELDOUT_DIR / name, test_only=True)
            for name in sorted(summary.get("heldout_tasks", {}))]


def split_validation(tasks: list[Task], fraction: float, seed: int) -> list[Task]:
    """Each task with its train split cut into train (fit) and ``validation``, stratified by class;
    ``test`` is kept as it is. Every class with two or more rows gives at least one validation row:
    a task with an empty validation split would make every validation average NaN, and the choice of
    option silently the first. Classes with a single train row (the general task, emoji_names, has one
    drawing per class to train on) are split by class instead: ``round(fraction * their number)`` of
    them, drawn by ``seed``, give their row to validation (zero-shot validation needs no fit row of the
    class); a task with no such classes is cut exactly as before."""
    out = []
    for task in tasks:
        rng = np.random.default_rng(seed)
        labels = task.train.labels
        val_idx = []
        for c in range(task.num_classes):
            rows = rng.permutation(np.flatnonzero(labels == c))
            k = int(round(len(rows) * fraction))
            val_idx.extend(rows[: max(k, 1) if len(rows) > 1 else k])
        counts = np.bincount(labels, minlength=task.num_classes)
        single = np.flatnonzero(counts == 1)
        if len(single):  # drawn after the per-class cut, so tasks without single-row classes are unchanged
            chosen = rng.choice(single, size=int(round(len(single) * fraction)), replace=False)
            val_idx.extend(np.flatnonzero(np.isin(labels, chosen)))
        is_val = np.zeros(len(labels), bool)
        is_val[val_idx] = True
        fit = Split(task.train.images[~is_val], labels[~is_val])
        out.append(replace(task, train=fit, validation=Split(task.train.images[is_val], labels[is_val])))
    return out


def benchmark_key(bench_dir: Path, teacher: StudentConfig, validation_seed: int, validation_fraction: float) -> str:
    """The key of what the teacher, the baseline scores and the students depend on: the benchmark's
    identity (benchmark.json without its timings and paths), the teacher's settings and the split."""
    summary = json.loads((Path(bench_dir) / "benchmark.json").read_text())
    identity = {k: v for k, v in summary.items() if k not in _NOT_IDENTITY}
    return cache_key(identity, asdict(teacher), [validation_seed, validation_fraction])


def pool_metadata(pool_dir: Path, uids: np.ndarray) -> pa.Table:
    """The non-embedding columns of the benchmark pool (text, source, defect, image_sha1), in pool order."""
    wanted = ["uid", "text", "source", "defect", "image_sha1"]
    parts = []
    for path in list_shards(pool_dir):
        names = read_schema(path).names
        parts.append(read_table(path, [c for c in wanted if c in names]))
    table = pa.concat_tables(parts, promote_options="default")
    if table.column("uid").to_pylist() != list(uids):
        raise FlytError(f"{pool_dir}: shards changed while reading")
    return table


def best_option(val_averages: list) -> int:
    """The choice rule: the option with the highest validation average (the first on ties); an option
    without one (a strategy with nothing to choose trains no validation student) counts as -inf."""
    return max(range(len(val_averages)), key=lambda i: -np.inf if val_averages[i] is None else val_averages[i])


def best_of_each_kind(options: list, val_averages: list, kinds=("topk", "scs")) -> dict[str, int]:
    """For each strategy kind, the index (into ``options``: (strategy, value) pairs) of that kind's
    option with the best validation average, by best_option's rule."""
    chosen = {}
    for kind in kinds:
        candidates = [i for i, (strategy, _) in enumerate(options) if strategy.kind == kind]
        chosen[kind] = candidates[best_option([val_averages[i] for i in candidates])]
    return chosen


def pipeline_key(key: str, cfg) -> str:
    """The key of the teacher and baseline scores: the benchmark key, and the pipeline seed unless 0 (so
    the demo's own caches keep their names). Students keep ``key``: a student's result does not depend
    on the teacher, only on its multiset, so pipeline seeds share the students of equal subsets."""
    return key if not cfg.pipeline_seed else cache_key(key, "pipeline_seed", int(cfg.pipeline_seed), length=16)

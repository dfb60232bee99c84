"""What a score shard was computed from: stored in its parquet key-value metadata, compared on re-runs.

``flyt score`` skips a shard only when the fingerprint stored in its output (key ``flyt.score``, JSON)
equals the current one, column by column; it never trusts a row count. The fingerprint has two parts:

``pool_shard``: the pool shard's row count and, for each of its files (the parquet; for a DataComp
shard also the npz and the embedding pair), its size, mtime_ns and a digest of its table of contents:
the parquet footer (row groups, per-column min/max statistics and sizes) or the npz's zip directory
(one CRC-32 per array). Not a checksum of the uids, because (a) it would miss a shard re-embedded under
the same uids, and (b) reading every uid of a 10^8-row pool only to decide what to skip costs minutes,
while these are a few KB per shard, read with the footer anyway. New uids or new embeddings change the
statistics and the CRCs even when a rewrite keeps the file size and lands in the same mtime tick. A
copied pool (new mtimes) is rescored: a fingerprint may cost a needless re-run, never a stale result.

``columns``: for each score column, the settings of the scorer that wrote it: its name, the options it
reads, the seed and a digest of the whole pool's fingerprints if it samples the pool (negCLIPLoss,
classifier, image-based: their values depend on every shard), the task splits if it reads tasks, the
content of a ``scorer.pt`` (kind, name, model config and weights, not the paths in its training
record) or of a saved probe, and the ``--scores`` shards an M-FLYT scorer reads its inputs from.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import asdict
from pathlib import Path

import pyarrow.parquet as pq

from flyt.io.cache import file_sha256
from flyt.io.parquet import list_shards
from flyt.io.pool import PoolShard
from flyt.scorers.base import Scorer
from flyt.scorers.registry import NEEDS_TASKS, SCORERS, ScorerOptions

KEY = b"flyt.score"
FORMAT = 1

# The ScorerOptions each baseline reads, and the baselines whose fit samples the pool. A scorer not
# listed here is taken to read every option, the seed, the pool and the tasks (never stale, maybe slow).
OPTIONS_READ = {
    "clip_score": (),
    "caption": (),
    "normsim_2": (),
    "normsim_inf": (),
    "negclip_loss": ("negclip_batches", "negclip_batch_size", "teacher_temperature"),
    "classifier": ("classifier_negatives",),
    "image_based": ("clusters", "kmeans_sample"),
    "dedup": ("dedup_embedding", "dedup_clusters", "dedup_threshold", "dedup_max_cluster", "dedup_sample", "dedup_hash",
              "dedup_split"),
    "contamination": (),
}
SAMPLES_POOL = {"negclip_loss", "classifier", "image_based", "dedup"}
TEST_SPLIT = {"contamination"}  # reads the tasks' test.parquet, not train.parquet


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _parquet_footer(path) -> str | None:
    """sha256 of a parquet file's footer (its table of contents), None if it has none."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            if size < 12:
                return None
            f.seek(size - 8)
            tail = f.read(8)
            n = int.from_bytes(tail[:4], "little")
            if tail[4:] != b"PAR1" or n > size - 12:
                return None
            f.seek(size - 8 - n)
            return hashlib.sha256(f.read(n)).hexdigest()
    except OSError:
        return None


def _npz_directory(path) -> str | None:
    """Digest of an npz's zip directory: member names, sizes and CRC-32s."""
    try:
        with zipfile.ZipFile(path) as z:
            return _digest([(i.filename, i.file_size, i.CRC) for i in z.infolist()])
    except (OSError, zipfile.BadZipFile):
        return None


def file_identity(path, contents) -> list | None:
    """[size, mtime_ns, digest of the file's table of contents] of one input file."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, contents(path)]


def pool_shard_fingerprint(src: PoolShard) -> dict | None:
    """The fingerprint of one pool shard (module doc), None if its footer cannot be read."""
    if src.rows is None:
        return None
    out = {"stem": src.stem, "rows": src.rows, "parquet": file_identity(src.parquet, _parquet_footer)}
    if src.npz is not None:
        out["npz"] = file_identity(src.npz, _npz_directory)
        out["pair"] = src.pair
    return out


def _dir_fingerprint(directory) -> list:
    """Fingerprints of every parquet shard of a directory (tasks' splits, --scores directories)."""
    return [[p.name, file_identity(p, _parquet_footer)] for p in list_shards(directory, kind="scores")]


def _task_fingerprint(task, split: str = "train") -> list:
    path = Path(task) / f"{split}.parquet"
    return [path.parent.name, file_identity(path, _parquet_footer)]


def _model_digest(scorer: Scorer) -> str:
    """A trained scorer's content: kind, name, model config and weights (``scorer.pt`` less its training record)."""
    loaded = getattr(scorer, "loaded", None)
    if loaded is None or not hasattr(loaded.model, "config"):
        return file_sha256(scorer.path)
    h = hashlib.sha256(json.dumps([loaded.kind, loaded.name, loaded.model.config()], sort_keys=True, default=str).encode())
    for key, value in sorted(loaded.model.state_dict().items()):
        t = value.detach().cpu().contiguous()
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update((t.float() if str(t.dtype) == "torch.bfloat16" else t).numpy().tobytes())  # numpy has no bfloat16
    return h.hexdigest()


def column_settings(
    specs: list[str],
    scorers: list[Scorer],
    options: ScorerOptions,
    seed: int,
    sources: list[PoolShard],
    tasks: list,
    score_dirs: list,
) -> dict[str, dict]:
    """{score column: the settings it is computed with} for one run (module doc, ``columns``)."""
    options = options or ScorerOptions()
    pool_digest: str | None = None
    task_fp = [_task_fingerprint(t) for t in tasks]
    score_fp = None
    out: dict[str, dict] = {}
    for spec, scorer in zip(specs, scorers):
        if spec in SCORERS:
            known = spec in OPTIONS_READ
            read = OPTIONS_READ[spec] if known else tuple(asdict(options))
            settings: dict = {"scorer": spec, "options": {k: getattr(options, k) for k in read}}
            if spec == "classifier" and options.classifier:
                settings = {"scorer": spec, "probe": file_sha256(options.classifier)}  # no fit: the probe is all
            else:
                if spec in SAMPLES_POOL or not known:
                    if pool_digest is None:
                        pool_digest = _digest([pool_shard_fingerprint(s) for s in sources])
                    settings.update(seed=seed, pool=pool_digest)
                if spec in TEST_SPLIT:
                    settings["tasks"] = [_task_fingerprint(t, "test") for t in tasks]
                elif spec in NEEDS_TASKS or not known:
                    settings["tasks"] = task_fp
        else:
            settings = {"scorer": "scorer.pt", "model": _model_digest(scorer)}
            if scorer.input_columns:
                if score_fp is None:
                    score_fp = [_dir_fingerprint(d) for d in score_dirs]
                settings["scores"] = score_fp
        for column in scorer.output_columns():
            out[column] = settings
    # JSON round trip: the form stored in (and read back from) a shard, so comparisons are exact.
    return json.loads(json.dumps(out, sort_keys=True, default=str))


def read_fingerprint(path) -> dict | None:
    """The fingerprint stored in a score shard, None if it has none or is unreadable."""
    try:
        meta = pq.read_schema(path).metadata or {}
        value = json.loads(meta[KEY]) if KEY in meta else None
    except Exception:  # unreadable or foreign: treated as unknown
        return None
    if not isinstance(value, dict) or value.get("format") != FORMAT:
        return None
    if not isinstance(value.get("columns"), dict):
        return None
    return value


def shard_metadata(pool_shard: dict | None, columns: dict[str, dict]) -> dict[bytes, bytes]:
    """The parquet key-value metadata of a score shard."""
    value = {"format": FORMAT, "pool_shard": pool_shard, "columns": columns}
    return {KEY: json.dumps(value, sort_keys=True).encode()}

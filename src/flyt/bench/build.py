"""Build the whole offline benchmark: prepared assets -> embedded pool + task directories.

Output layout (``out``, default ``<cache>/bench/<encoder name>``)::

    pool/part-*.parquet     flyt pool shards: uid, image_embedding, text_embedding, text, source,
                            defect, image_sha1, key
    thumbnails.parquet      image_sha1 -> PNG (96 px) for reports; outside pool/ on purpose
    tasks/<name>/           task directories (classnames, templates, train/test, prompts)
    heldout_tasks/<name>/   held-out task directories (flyt.bench.heldout): prompts and a test split
                            only; read by nothing but the demo's final evaluation
    benchmark.json          pool composition, task sizes, timings, encoder, configuration
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import pyarrow as pa

from flyt.bench.assets import HELDOUT_SOURCES, POOL_SOURCES, TASK_SOURCES, prepare, render_step
from flyt.bench.heldout import build_heldout_specs
from flyt.bench.pool import PoolConfig, build_pairs, composition
from flyt.bench.tasks import build_task_specs, describe
from flyt.encoders.base import Encoder
from flyt.encoders.cache import CachedEncoder, sha1_bytes
from flyt.encoders.embed import embed_pairs, embed_task, prompt_texts
from flyt.io.atomic import write_json, write_parquet
from flyt.io.cache import cache_dir


def default_out(cache, encoder: Encoder) -> Path:
    return cache_dir(cache) / "bench" / encoder.name


def build_benchmark(
    encoder: Encoder,
    cache=None,
    out=None,
    pool_config: PoolConfig = PoolConfig(),
    task_limit: int | None = None,
    workers: int = 2,
    progress: bool | None = False,  # flyt.progress's show: bars for preparation and embedding
    force: bool = False,
    log=print,
) -> dict:
    """Prepare assets (cached), embed pool and tasks (embeddings cached by content), write all.

    Returns the summary also written to ``benchmark.json``. If that file already describes the
    same encoder, pool configuration and task limit, nothing is rebuilt (unless ``force``).
    """
    cache = cache_dir(cache)
    out = Path(out) if out is not None else default_out(cache, encoder)
    summary = None if force else built(out, encoder.name, pool_config, task_limit)
    if summary is not None:
        log(f"benchmark already built in {out} (cached)")
        return summary
    timings = {"prepare": prepare(cache, workers=workers, log=log, progress=progress)}
    cached = CachedEncoder(encoder, cache / "embeddings", progress=progress)

    t0 = time.perf_counter()
    table, images = build_pairs(cache, pool_config)
    embed_pairs(table, images, cached, out / "pool", where=str(out / "pool"))
    timings["embed_pool_s"] = round(time.perf_counter() - t0, 2)
    pool_encoded = dict(cached.encoded)

    # One thumbnail per distinct image, keyed by its hash (duplicates share one).
    seen, sha, png = set(), [], []
    for s, b in zip(table.column("image_sha1").to_pylist(), images):
        if s not in seen:
            seen.add(s)
            sha.append(s)
            png.append(b)
    write_parquet(pa.table({"image_sha1": sha, "image": pa.array(png, pa.binary())}), out / "thumbnails.parquet")

    t0 = time.perf_counter()
    specs = build_task_specs(cache, seed=pool_config.seed, limit=task_limit)
    heldout = build_heldout_specs(cache, limit=task_limit)
    every_image = [b for spec in specs + heldout for images, _ in spec.splits.values() for b in images]
    every_prompt = [p for spec in specs + heldout for p in prompt_texts(spec.classnames, spec.templates)]
    with cached.stage("embed: tasks", every_image, every_prompt):  # one bar over every task
        for folder, group in (("tasks", specs), ("heldout_tasks", heldout)):
            for spec in group:
                extra = {k: {"image_sha1": [sha1_bytes(b) for b in v[0]]} for k, v in spec.splits.items()}
                embed_task(out / folder / spec.name, spec.classnames, spec.templates, spec.splits, cached, extra)
    timings["embed_tasks_s"] = round(time.perf_counter() - t0, 2)

    summary = {
        "encoder": encoder.name,
        "pool": composition(table),
        "pool_config": asdict(pool_config),
        "tasks": describe(specs),
        "heldout_tasks": describe(heldout),
        "task_limit": task_limit,
        "assets": _asset_steps(),
        "timings": timings,
        "encoded": {"pool": pool_encoded, "total": dict(cached.encoded)},
        "out": str(out),
    }
    write_json(summary, out / "benchmark.json")
    log(f"benchmark written to {out}: {table.num_rows} pairs, {len(specs)} tasks, {len(heldout)} held-out tasks")
    return summary


def built(out: Path, encoder_name: str, pool_config: PoolConfig = PoolConfig(), task_limit: int | None = None):
    """``out``'s benchmark.json if it describes a finished build with this encoder, pool configuration,
    task limit and rendered assets (so build_benchmark would reuse it), else None."""
    done = Path(out) / "benchmark.json"
    if not done.is_file():
        return None
    summary = json.loads(done.read_text())
    same = (summary.get("encoder") == encoder_name and summary.get("pool_config") == asdict(pool_config)
            and summary.get("task_limit") == task_limit and summary.get("assets") == _asset_steps())
    folders = [Path(out) / "tasks" / t for t in summary["tasks"]]
    folders += [Path(out) / "heldout_tasks" / t for t in summary.get("heldout_tasks", ())]
    if same and "heldout_tasks" in summary and (Path(out) / "pool").is_dir() and all(f.is_dir() for f in folders):
        return summary
    return None


def _asset_steps() -> list[str]:
    """The rendered sources' cache steps: a benchmark built from differently rendered assets is stale."""
    return [render_step(name) for name in POOL_SOURCES + TASK_SOURCES + HELDOUT_SOURCES]


def load_benchmark(out) -> dict:
    """A built benchmark in memory: ``pool`` (PoolArrays, embeddings), ``tasks`` (list of Task,
    by name; not the held-out tasks: flyt.bench.protocol.load_heldout_tasks reads those), ``truth``
    (Arrow table uid, text, source, defect, image_sha1 in pool order) and ``summary``
    (benchmark.json). Thumbnails stay on disk: ``out/thumbnails.parquet``."""
    from flyt.errors import FlytError
    from flyt.io.parquet import read_table
    from flyt.io.pool import load_pool
    from flyt.io.tasks import load_task

    out = Path(out)
    if not (out / "benchmark.json").is_file():
        raise FlytError(f"{out / 'benchmark.json'}: missing; build the benchmark first (flyt embed bench)")
    summary = json.loads((out / "benchmark.json").read_text())
    pool = load_pool(out / "pool")
    shards = sorted(p for p in (out / "pool").glob("*.parquet") if not p.name.startswith("."))
    truth = pa.concat_tables([read_table(p, ["uid", "text", "source", "defect", "image_sha1"]) for p in shards])
    tasks = [load_task(out / "tasks" / name) for name in sorted(summary["tasks"])]
    return {"pool": pool, "tasks": tasks, "truth": truth, "summary": summary}

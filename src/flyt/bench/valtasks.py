"""Validation-only tasks: zero-shot tasks that only choose options, never train and are never reported.

The demo chooses every strategy's option (top fraction, SCS penalty) on the validation splits of FLYT's
own tasks, which rewards subsets that collapse onto those tasks' looks. These tasks are a validation
objective that does not: built from registry sets that no pool source, FLYT task, held-out task, scorer
or training run uses, with a single split, ``validation`` (no train split: nothing can train on them; no
test split: ``Task.split("test")`` refuses, so no final table can hold them).

- ``logo_names``: brand and software logos drawn by SVG Logos (colour) and Simple Icons (monochrome),
  npm ``@iconify-json/logos`` and ``@iconify-json/simple-icons`` -> the brand's name ("apache kafka",
  "firefox"); MAX_LOGO_CLASSES brands, evenly spaced through the names both sets draw;
- ``object_names``: game-icons.net's black silhouettes (npm ``@iconify-json/game-icons``) -> the object
  their name ends in (``battle-axe`` -> "axe"; flyt.bench.assets.GAME_ICON_OBJECTS), at most
  MAX_OBJECT_ICONS per object.

Kinds of class the held-out tasks (places by flag, chess pieces, icon categories, animals) and FLYT's
tasks (emoji groups, clothing, digits, emoji names) do not ask, except that some of ``object_names``'
objects (crown, key, hammer ...) are also emoji that the general task ``emoji_names`` names, in
EmojiOne's drawings. They live beside the benchmark in ``<bench>/valonly_tasks/`` (the task directory
contract; the split's file is ``test.parquet``, the only split file a train-less task directory has,
read back into the ``validation`` slot), described by ``valonly.json``; benchmark.json, and so the
benchmark key of the teacher, scores and students, is not touched. Building them checks that none of
their images is a pool image or an image of FLYT's tasks (by sha1); tests/test_bench_valtasks.py also
checks the held-out tasks' images, which nothing before a final evaluation may read.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa

from flyt.bench.assets import VALONLY_SOURCES, load_rendered, prepare
from flyt.bench.protocol import _NOT_IDENTITY
from flyt.bench.tasks import TaskSpec, describe
from flyt.encoders.base import Encoder
from flyt.encoders.cache import CachedEncoder, sha1_bytes
from flyt.encoders.embed import embed_task
from flyt.errors import FlytError
from flyt.io.atomic import write_json
from flyt.io.cache import cache_dir, cache_key
from flyt.io.parquet import list_shards, read_table
from flyt.io.tasks import Task, load_task

VALONLY_DIR = "valonly_tasks"
VALONLY_TASKS = ["logo_names", "object_names"]
MAX_LOGO_CLASSES = 100
MAX_OBJECT_ICONS = 12

LOGO_TEMPLATES = [
    "the {c} logo.",
    "a logo of {c}.",
    "the icon of {c}.",
    "the brand mark of {c}.",
]
OBJECT_TEMPLATES = [
    "a silhouette of a {c}.",
    "an icon of a {c}.",
    "a black and white drawing of a {c}.",
    "a {c}.",
]


def _evenly(rows: list, most: int) -> list:
    """At most ``most`` of ``rows``, evenly spaced (the first and the last kept)."""
    if len(rows) <= most:
        return list(rows)
    return [rows[int(j)] for j in np.linspace(0, len(rows) - 1, most).round()]


def _spec(name: str, templates: list[str], images: list[bytes], names: list[str]) -> TaskSpec:
    """A validation-only TaskSpec; a drawing found under two classes is left out (no answer is right)."""
    classes_of: dict = {}
    for img, n in zip(images, names):
        classes_of.setdefault(img, set()).add(n)
    keep = [i for i, img in enumerate(images) if len(classes_of[img]) == 1]
    classnames = sorted({names[i] for i in keep})
    if len(classnames) < 2:
        raise FlytError(f"validation-only task {name}: fewer than 2 classes with images in its rendered set")
    index = {n: i for i, n in enumerate(classnames)}
    labels = np.asarray([index[names[i]] for i in keep], dtype=np.int64)
    return TaskSpec(name, classnames, templates, {"validation": ([images[i] for i in keep], labels)})


def _logos(table: pa.Table) -> TaskSpec:
    """Brands drawn by both sets (one failed to render: not a class), MAX_LOGO_CLASSES of them."""
    rows = table.select(["group", "subgroup"]).to_pylist()
    sets_of: dict = {}
    for r in rows:
        sets_of.setdefault(r["group"], set()).add(r["subgroup"])
    both = [b for b in sorted(sets_of) if len(sets_of[b]) == 2]
    brands = set(_evenly(both, MAX_LOGO_CLASSES))
    keep = [i for i, r in enumerate(rows) if r["group"] in brands]
    images = table.column("image").to_pylist()
    return _spec("logo_names", LOGO_TEMPLATES, [images[i] for i in keep],
                 [rows[i]["group"].replace("-", " ") for i in keep])


def _objects(table: pa.Table) -> TaskSpec:
    """Each object's icons in name order, at most MAX_OBJECT_ICONS, evenly spaced."""
    groups = table.column("group").to_pylist()
    keep = []
    for word in sorted(set(groups)):
        keep.extend(_evenly([i for i, g in enumerate(groups) if g == word], MAX_OBJECT_ICONS))
    keep.sort()
    images = table.column("image").to_pylist()
    return _spec("object_names", OBJECT_TEMPLATES, [images[i] for i in keep], [groups[i] for i in keep])


def build_valonly_specs(cache) -> list[TaskSpec]:
    """The validation-only tasks from their rendered sets, by name."""
    specs = [_logos(load_rendered(cache, "logos")), _objects(load_rendered(cache, "game_icons"))]
    assert [s.name for s in specs] == VALONLY_TASKS
    return specs


def _bench_identity(bench_dir: Path) -> str:
    """The key of the benchmark's identity (benchmark.json without its timings and paths)."""
    summary = json.loads((Path(bench_dir) / "benchmark.json").read_text())
    return cache_key({k: v for k, v in summary.items() if k not in _NOT_IDENTITY})


def seen_images(bench_dir: Path) -> set[str]:
    """sha1 of every image of the benchmark's pool and of FLYT's tasks (what the validation-only tasks must
    not hold). Not the held-out tasks': nothing may read them before a final evaluation (the tests check
    those)."""
    bench_dir = Path(bench_dir)
    hashes = set()
    for shard in list_shards(bench_dir / "pool"):
        hashes.update(read_table(shard, ["image_sha1"]).column("image_sha1").to_pylist())
    for split in sorted((bench_dir / "tasks").glob("*/*.parquet")):
        if split.name != "prompts.parquet":
            hashes.update(read_table(split, ["image_sha1"]).column("image_sha1").to_pylist())
    return hashes


def built_valonly(bench_dir: Path) -> dict | None:
    """``valonly.json`` if the validation-only tasks were built for this benchmark (same identity) with
    today's specs, else None."""
    path = Path(bench_dir) / VALONLY_DIR / "valonly.json"
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    folders = [Path(bench_dir) / VALONLY_DIR / t for t in summary.get("tasks", {})]
    same = (summary.get("benchmark") == _bench_identity(bench_dir) and summary.get("spec") == _spec_settings()
            and sorted(summary.get("tasks", {})) == VALONLY_TASKS and all(f.is_dir() for f in folders))
    return summary if same else None


def valonly_key(bench_dir) -> str:
    """The key of the validation-only tasks built for ``bench_dir`` (its identity, the specs, the tasks'
    sizes): students evaluated on them are cached under it."""
    summary = built_valonly(bench_dir)
    if summary is None:
        raise FlytError(f"{Path(bench_dir) / VALONLY_DIR}: validation-only tasks missing or stale")
    return cache_key({k: summary[k] for k in ("benchmark", "spec", "encoder", "tasks")})


def _spec_settings() -> dict:
    return {"max_logo_classes": MAX_LOGO_CLASSES, "max_object_icons": MAX_OBJECT_ICONS,
            "templates": [LOGO_TEMPLATES, OBJECT_TEMPLATES]}


def build_valonly_tasks(encoder: Encoder, bench_dir, cache=None, workers: int = 2, progress: bool | None = False,
                        log=print) -> dict:
    """Prepare the validation-only assets (cached), embed their tasks with ``encoder`` (the benchmark's)
    into ``<bench_dir>/valonly_tasks/`` and write ``valonly.json``; nothing else under ``bench_dir`` is
    written. A build for the same benchmark and specs is reused. Refuses (FlytError) an image that is also
    a pool image or an image of FLYT's tasks."""
    bench_dir = Path(bench_dir)
    summary = json.loads((bench_dir / "benchmark.json").read_text())
    if summary.get("encoder") != encoder.name:
        raise FlytError(f"{bench_dir}: built with encoder {summary.get('encoder')!r}, not {encoder.name!r}")
    done = built_valonly(bench_dir)
    if done is not None:
        log(f"validation-only tasks already built in {bench_dir / VALONLY_DIR} (cached)")
        return done
    cache = cache_dir(cache)
    timings = {"prepare": prepare(cache, sources=list(VALONLY_SOURCES), workers=workers, log=log, progress=progress)}
    specs = build_valonly_specs(cache)
    seen = seen_images(bench_dir)
    for spec in specs:
        images = spec.splits["validation"][0]
        clash = sum(sha1_bytes(b) in seen for b in images)
        if clash:
            raise FlytError(f"validation-only task {spec.name}: {clash} of its images are pool or FLYT-task images")
    cached = CachedEncoder(encoder, cache / "embeddings", progress=progress)
    for spec in specs:
        images, labels = spec.splits["validation"]
        # the task directory contract's evaluation split file (test.parquet); load_valonly_tasks reads it
        # back as validation
        embed_task(bench_dir / VALONLY_DIR / spec.name, spec.classnames, spec.templates, {"test": (images, labels)},
                   cached, {"test": {"image_sha1": [sha1_bytes(b) for b in images]}})
    out = {"benchmark": _bench_identity(bench_dir), "spec": _spec_settings(), "encoder": encoder.name,
           "tasks": {name: {"classes": d["classes"], "validation": d["validation"]}
                     for name, d in describe(specs).items()},
           "timings": timings}
    write_json(out, bench_dir / VALONLY_DIR / "valonly.json")
    log(f"validation-only tasks written to {bench_dir / VALONLY_DIR}: "
        + ", ".join(f"{n} ({d['classes']} classes, {d['validation']} images)" for n, d in out["tasks"].items()))
    return out


def load_valonly_tasks(bench_dir) -> list[Task]:
    """The validation-only tasks, by name: a ``validation`` split and nothing else (``train`` and ``test``
    None, so evaluating one on test is a FlytError)."""
    summary = built_valonly(bench_dir)
    if summary is None:
        raise FlytError(f"{Path(bench_dir) / VALONLY_DIR}: validation-only tasks missing or stale for this "
                        "benchmark (build them: flyt.bench.valtasks.build_valonly_tasks)")
    tasks = []
    for name in sorted(summary["tasks"]):
        task = load_task(Path(bench_dir) / VALONLY_DIR / name, test_only=True)
        tasks.append(replace(task, validation=task.test, test=None))
    return tasks

"""A tiny `flyt demo` run shared by test_demo.py and test_report_screenshot.py.

The benchmark is built by the real builder (flyt.bench.build) from generated "rendered" assets:
coloured shapes with captions in each pool source's style (so the natural-noise rules fire:
translations, boilerplate titles, file names), plus the four task sets. A deterministic fake encoder
stands in for the frozen towers. The demo then runs unchanged on it with CI-sized settings.

The held-out sets are generated too (write_tiny_heldout), in the rendered layout flyt.bench.heldout
reads: a few flags, chess pieces, icons and animals, each class drawn in its own colour and shape.
The memoised run records every task file the task reader opens and every student evaluation, in order
with the log lines (``EVENTS``), so a test can check when the held-out tasks were first read.
"""

import contextlib
import io

import numpy as np
import pyarrow as pa
from PIL import Image, ImageDraw

from _encoders_helpers import FakeEncoder
from flyt.bench import assets
from flyt.bench.build import build_benchmark
from flyt.bench.heldout import ANIMAL_SETS, ANIMALS, ICON_CATEGORIES
from flyt.bench.pool import PoolConfig
from flyt.bench.student import StudentConfig
from flyt.bench.tasks import OPENMOJI_GROUPS
from flyt.io.atomic import write_json, write_parquet
from flyt.pipeline.demo import DemoConfig, run_demo

COLOURS = {"red": (220, 30, 30), "green": (30, 160, 60), "blue": (40, 70, 220), "orange": (250, 150, 20),
           "purple": (140, 50, 170), "black": (20, 20, 20)}
SHAPES = ["circle", "square", "triangle", "cross"]
POOL_PER_SOURCE = 60  # 5 sources -> 300 pairs, plus injected duplicates
SEEDS = (0, 1)
STUDENT_SAMPLES = 1200


def shape_png(colour: str, shape: str, size: int = 32, jitter: int = 0) -> bytes:
    """A coloured shape on white, PNG bytes (what the rendered asset tables hold)."""
    img = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(img)
    c, m = COLOURS[colour], 4 + jitter % 4
    box = (m, m, size - m, size - m)
    if shape == "circle":
        d.ellipse(box, fill=c)
    elif shape == "square":
        d.rectangle(box, fill=c)
    elif shape == "triangle":
        d.polygon([(size // 2, m), (m, size - m), (size - m, size - m)], fill=c)
    else:
        w = size // 6
        d.rectangle((m, size // 2 - w, size - m, size // 2 + w), fill=c)
        d.rectangle((size // 2 - w, m, size // 2 + w, size - m), fill=c)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _write_rendered(cache, name, rows):
    cols = {k: [r.get(k, [] if k == "alt_texts" else "") for r in rows] for k in assets.RENDERED_SCHEMA.names}
    write_parquet(pa.table(cols, schema=assets.RENDERED_SCHEMA), assets.rendered_path(cache, name))


def _caption(source: str, colour: str, shape: str, i: int) -> dict:
    """Each source's caption style, including the natural noise the pool rules label."""
    if source == "tuxpaint":
        return {"text": f"A {colour} {shape}.", "alt_texts": [f"Un {shape} {colour}.", f"Ein {colour} {shape}."]}
    if source == "openclipart":
        if i % 5 == 0:
            return {"text": f"Part of the Flat Icon Collection (Wed Nov {i % 28 + 1})"}  # boilerplate
        if i % 5 == 1:
            return {"text": f"{shape}_{i}"}  # a file name
        return {"text": f"{colour} {shape} drawing"}
    if source == "papirus":
        return {"text": f"org.kde.{shape}-{i}" if i % 2 else f"{colour} {shape} icon"}
    suffix = " face" if source == "twemoji" else ""
    return {"text": f"{colour} {shape}{suffix}"}


def write_tiny_assets(cache, per_source: int = POOL_PER_SOURCE) -> None:
    """Rendered tables for every pool and task source, plus the markers prepare() checks."""
    rng = np.random.default_rng(0)
    names = list(COLOURS)
    for s in assets.POOL_SOURCES:
        rows = []
        for i in range(per_source):
            colour, shape = names[int(rng.integers(len(names)))], SHAPES[int(rng.integers(len(SHAPES)))]
            rows.append({"key": f"{s}{i}", "image": shape_png(colour, shape, jitter=i), "group": shape,
                         **_caption(s, colour, shape, i)})
        _write_rendered(cache, s, rows)
    groups = list(OPENMOJI_GROUPS)[:3]
    _write_rendered(cache, "openmoji", [
        {"key": str(i), "image": shape_png(names[i % 3], SHAPES[i % 3], jitter=i), "text": "x", "group": groups[i % 3]}
        for i in range(36)])
    _write_rendered(cache, "fluent", [
        {"key": str(i), "image": shape_png(names[3 + i % 2], SHAPES[i % 2], jitter=i), "text": "x",
         "subgroup": f"sub-{i % 2}"}
        for i in range(40)])
    _write_rendered(cache, "fashion_mnist", [
        {"key": str(i), "image": shape_png(names[i % 6], SHAPES[i % 4], jitter=i), "text": "x",
         "group": assets.FASHION_CLASSES[i % 10], "subgroup": "train" if i < 40 else "test"} for i in range(60)])
    _write_rendered(cache, "digits", [
        {"key": str(i), "image": shape_png(names[i % 6], SHAPES[i % 4], jitter=i // 10), "text": str(i % 10),
         "group": str(i % 10)} for i in range(40)])
    _write_rendered(cache, "general_emoji", [  # the general task: each class drawn once per style
        {"key": f"{style}/emoji-{c}", "image": shape_png(names[c % 6], SHAPES[c % 4], jitter=v), "text": f"emoji {c}",
         "group": f"emoji {c}", "subgroup": style} for c in range(12) for v, style in enumerate(("one", "two"))])
    write_tiny_heldout(cache)
    for step in [f"deb:{p}" for p in assets.DEBS] + list(assets.NPM_SETS) + [assets.render_step(s) for s in assets.SOURCES]:
        write_json({"seconds": 0.0}, assets._marker(cache, step))


# A few places, one of them flying another's flag (Réunion: the French tricolour), which the task drops.
TINY_FLAGS = {"fr": "France", "jp": "Japan", "br": "Brazil", "ca": "Canada", "re": "Réunion"}
TINY_ANIMALS = ["cat", "dog", "fish", "horse"]


def write_tiny_heldout(cache) -> None:
    """Rendered tables of the held-out sources (flyt.bench.assets.HELDOUT_SOURCES), CI-sized."""
    names, picture = list(COLOURS), lambda c, k: shape_png(names[c % len(names)], SHAPES[c % len(SHAPES)], jitter=k)
    _write_rendered(cache, "flags", [
        {"key": f"{variant}/{code}", "image": picture(c, v), "text": f"flag: {place}", "group": place,
         "subgroup": variant}
        for c, (code, place) in enumerate(TINY_FLAGS.items()) for v, variant in enumerate(("4x3", "circle"))])
    _write_rendered(cache, "chess", [
        {"key": f"{style}/{colour[0]}{k}", "image": picture(c, s), "text": f"{colour} {piece}", "group": piece,
         "subgroup": style}
        for s, style in enumerate(("svg/alpha", "ttf/merida")) for colour in ("white", "black")
        for c, (k, piece) in enumerate(assets.CHESS_PIECES.items())])
    categories = list(ICON_CATEGORIES)[:3] + ["Logos"]  # brand logos are not a class
    _write_rendered(cache, "remix_icons", [
        {"key": f"icon-{c}-{i}-line", "image": picture(c, i), "text": f"icon {i}", "group": category}
        for c, category in enumerate(categories) for i in range(6)])
    rows = [{"key": f"{package}/{ANIMALS[a][p][0]}", "image": picture(c, p), "text": a, "group": ANIMALS[a][p][0],
             "subgroup": package}
            for c, a in enumerate(TINY_ANIMALS) for p, package in enumerate(ANIMAL_SETS)]
    rows.append({"key": "fxemoji/rainbow", "image": picture(5, 0), "text": "rainbow", "group": "rainbow",
                 "subgroup": "fxemoji"})  # nature, but not an animal
    _write_rendered(cache, "animal_emoji", rows)


def tiny_config(out, bench_dir) -> DemoConfig:
    """CI-sized demo settings: every stage runs, each for a few optimiser steps."""
    return DemoConfig(
        out=out, bench_dir=bench_dir, seeds=SEEDS, fractions=(0.3, 0.6), penalties=(0.15, 0.5),
        random_fraction=0.5, floor_quantiles=(0.0, 0.5),
        teacher=StudentConfig(dim=16, samples_seen=2_000, batch_size=64),
        student=StudentConfig(dim=16, samples_seen=STUDENT_SAMPLES, batch_size=64),
        flyt_steps=12, mflyt_steps=12, upstream_batch=64, downstream_batch=32,
    )


def build_tiny_bench(root):
    cache, bench = root / "cache", root / "bench"
    write_tiny_assets(cache)
    build_benchmark(FakeEncoder(), cache, bench, PoolConfig(seed=0), log=lambda *_: None)
    return bench


_RUN = {}
EVENTS: list = []  # ("log", line) / ("read", path) / ("evaluate", split, task names) of the memoised run


@contextlib.contextmanager
def recording(events: list):
    """Record, in order, every file the task reader (flyt.io.tasks) reads and every student evaluation
    (split and task names) into ``events``."""
    import flyt.io.tasks
    from flyt.bench.runs import StudentRuns

    read, evaluate = flyt.io.tasks.read_table, StudentRuns.evaluate

    def recorded_read(path, *args, **kwargs):
        events.append(("read", str(path)))
        return read(path, *args, **kwargs)

    def recorded_evaluate(self, runs, tasks, split, *args, **kwargs):
        events.append(("evaluate", split, [t.name for t in tasks]))
        return evaluate(self, runs, tasks, split, *args, **kwargs)

    flyt.io.tasks.read_table, StudentRuns.evaluate = recorded_read, recorded_evaluate
    try:
        yield events
    finally:
        flyt.io.tasks.read_table, StudentRuns.evaluate = read, evaluate


def tiny_demo_run(tmp_path_factory):
    """(bench_dir, out_dir, summary, log lines) of one tiny demo run per pytest session.

    Memoised here rather than as a session fixture: a fixture imported into two test files is two
    fixtures to pytest (one per module) and would run the demo twice; without a shared conftest
    this module-level cache is what makes both files reuse one run.
    """
    if "run" not in _RUN:
        root = tmp_path_factory.mktemp("tiny_demo")
        bench = build_tiny_bench(root)
        out = root / "demo"
        lines = []

        def printer(line):
            lines.append(line)
            EVENTS.append(("log", line))

        with recording(EVENTS):
            summary = run_demo(tiny_config(out, bench), printer=printer)
        _RUN["run"] = (bench, out, summary, lines)
    return _RUN["run"]

"""The validation-only tasks (flyt.bench.valtasks) and benchmarks/demo_valtasks.py: built from sets no other
part of the benchmark uses, disjoint (by image hash) from the pool, FLYT's tasks and the held-out tasks,
a validation split only, and never in a final table."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from _demo_helpers import COLOURS, EVENTS, SHAPES, _write_rendered, recording, shape_png, tiny_config, tiny_demo_run
from _encoders_helpers import FakeEncoder
from flyt.bench import assets, build, valtasks
from flyt.bench.protocol import benchmark_key
from flyt.errors import FlytError
from flyt.io.atomic import write_json
from flyt.io.cache import cache_dir
from flyt.pipeline.demo import open_finished

ROOT = Path(__file__).resolve().parents[1]
HELDOUT = ["animal_names", "chess_pieces", "country_flags", "icon_categories"]
TINY_BRANDS = ["apache-kafka", "firefox", "git", "python"]
TINY_OBJECTS = {"axe": 4, "crown": 3, "key": 2}


def _script():
    spec = importlib.util.spec_from_file_location("demo_valtasks", ROOT / "benchmarks/demo_valtasks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _picture(c: int, k: int) -> bytes:
    """40 px (the tiny pool and tasks draw 32 px): no tiny benchmark image has these bytes."""
    names = list(COLOURS)
    return shape_png(names[c % len(names)], SHAPES[c % len(SHAPES)], size=40, jitter=k)


def write_tiny_valonly(cache) -> None:
    """Rendered tables of the validation-only sources, and the markers that make prepare() skip them."""
    rows = [{"key": f"{package}/{brand}", "image": _picture(c, p), "text": brand.replace("-", " "), "group": brand,
             "subgroup": package}
            for c, brand in enumerate(TINY_BRANDS) for p, package in enumerate(("logos", "simple-icons"))]
    rows.append({"key": "logos/gitlab", "image": _picture(3, 3), "text": "gitlab", "group": "gitlab",
                 "subgroup": "logos"})  # drawn by one set only: not a class
    _write_rendered(cache, "logos", rows)
    _write_rendered(cache, "game_icons", [
        {"key": f"icon-{i}-{word}", "image": _picture(4 + c, i), "text": f"icon {i} {word}", "group": word,
         "subgroup": f"icon-{i}-{word}"}
        for c, (word, n) in enumerate(TINY_OBJECTS.items()) for i in range(n)])
    for step in ["npm-valonly"] + [assets.render_step(s) for s in assets.VALONLY_SOURCES]:
        write_json({"seconds": 0.0}, assets._marker(cache, step))


def _hashes(paths) -> set:
    return {h for p in paths for h in pq.read_table(p, columns=["image_sha1"]).column("image_sha1").to_pylist()}


def _benchmark_hashes(bench: Path) -> dict:
    return {"pool": _hashes(sorted((bench / "pool").glob("*.parquet"))),
            "tasks": _hashes(p for p in (bench / "tasks").glob("*/*.parquet") if p.name != "prompts.parquet"),
            "heldout_tasks": _hashes((bench / "heldout_tasks").glob("*/test.parquet"))}


def test_valonly_sources_share_no_source_or_package_with_the_benchmark():
    assert not set(assets.VALONLY_SOURCES) & set(assets.ALL_SOURCES)
    assert not set(assets.VALONLY_SOURCES) & set(assets.SOURCES)  # so the demo's plan never counts them
    theirs = {n for s in assets.VALONLY_SOURCES for n in assets.NEEDS[s]}
    others = {n for s in assets.ALL_SOURCES for n in assets.NEEDS[s]}
    assert theirs == {"npm-valonly"} and not theirs & others
    package = lambda spec: spec.rsplit("@", 1)[0]  # noqa: E731  "@iconify-json/logos@1.2.19" -> its name
    used = {package(p) for name, packages in assets.NPM_SETS.items() if name != "npm-valonly" for p in packages}
    assert not {package(p) for p in assets.VALONLY_NPM} & used
    # the benchmark's identity (what its key hashes) names no validation-only source
    assert not any(s in step for step in build._asset_steps() for s in assets.VALONLY_SOURCES)


def test_valonly_specs_have_a_validation_split_only(tmp_path, monkeypatch):
    write_tiny_valonly(tmp_path)
    specs = {s.name: s for s in valtasks.build_valonly_specs(tmp_path)}
    assert list(specs) == valtasks.VALONLY_TASKS
    logos = specs["logo_names"]
    assert list(logos.splits) == ["validation"]
    assert logos.classnames == sorted(b.replace("-", " ") for b in TINY_BRANDS)  # gitlab: one drawing only
    assert np.bincount(logos.splits["validation"][1]).tolist() == [2] * len(TINY_BRANDS)
    objects = specs["object_names"]
    assert objects.classnames == sorted(TINY_OBJECTS)
    assert np.bincount(objects.splits["validation"][1]).tolist() == [TINY_OBJECTS[w] for w in sorted(TINY_OBJECTS)]
    # the caps: brands evenly spaced through the names (first and last kept), icons per object likewise
    monkeypatch.setattr(valtasks, "MAX_LOGO_CLASSES", 2)
    monkeypatch.setattr(valtasks, "MAX_OBJECT_ICONS", 2)
    specs = {s.name: s for s in valtasks.build_valonly_specs(tmp_path)}
    assert specs["logo_names"].classnames == ["apache kafka", "python"]
    assert np.bincount(specs["object_names"].splits["validation"][1]).tolist() == [2, 2, 2]
    # a drawing under two classes is left out of both
    rows = assets.load_rendered(tmp_path, "game_icons").to_pylist()
    rows[0]["image"] = rows[-1]["image"]  # an axe drawn exactly like a key
    _write_rendered(tmp_path, "game_icons", rows)
    monkeypatch.setattr(valtasks, "MAX_OBJECT_ICONS", 12)
    objects = {s.name: s for s in valtasks.build_valonly_specs(tmp_path)}["object_names"]
    assert np.bincount(objects.splits["validation"][1]).tolist() == [3, 3, 1]


def _iconify(root: Path, package: str, names: list[str]) -> None:
    base = root / "npm-valonly/node_modules/@iconify-json" / package
    base.mkdir(parents=True)
    icons = {n: {"body": f'<rect width="8" height="8" fill="#{i % 10}{i % 10}0"/>'} for i, n in enumerate(names)}
    (base / "icons.json").write_text(json.dumps({"prefix": package, "icons": icons, "width": 8, "height": 8}))


def test_valonly_sources_from_package_layouts(tmp_path):
    _iconify(tmp_path, "logos", ["apache-kafka", "apache-kafka-icon", "firefox", "slack-icon", "gitlab"])
    _iconify(tmp_path, "simple-icons", ["apachekafka", "firefox", "slack", "docker"])
    _iconify(tmp_path, "game-icons", ["battle-axe", "axe-swing", "crown", "car-key", "tank", "key"])
    recs, jobs = assets.VALONLY_SOURCES["logos"](tmp_path / "root", tmp_path)
    got = {r["key"]: (r["group"], r["text"], r["subgroup"]) for r in recs}
    assert got == {  # the -icon drawing (the mark) where SVG Logos has one; gitlab and docker: one set only
        "logos/apache-kafka-icon": ("apache-kafka", "apache kafka", "logos"),
        "simple-icons/apachekafka": ("apache-kafka", "apache kafka", "simple-icons"),
        "logos/firefox": ("firefox", "firefox", "logos"), "simple-icons/firefox": ("firefox", "firefox", "simple-icons"),
        "logos/slack-icon": ("slack", "slack", "logos"), "simple-icons/slack": ("slack", "slack", "simple-icons")}
    assert len(jobs) == len(recs) and all(kind == "svgtext" and "<svg" in svg for kind, svg in jobs)
    recs, _ = assets.VALONLY_SOURCES["game_icons"](tmp_path / "root", tmp_path)
    # the object is the name's last word: "axe-swing" is a swing, "car-key" a key; a tank is no class
    assert {r["key"]: r["group"] for r in recs} == {"battle-axe": "axe", "crown": "crown", "car-key": "key", "key": "key"}


def test_valonly_tasks_on_the_tiny_demo_choose_options_and_stay_out_of_the_final_table(tmp_path_factory):
    bench, out, _, _ = tiny_demo_run(tmp_path_factory)
    cache = bench.parent / "cache"
    write_tiny_valonly(cache)
    identity = (bench / "benchmark.json").read_bytes()
    demo = open_finished(out, cfg=tiny_config(out, bench))
    key = demo.key
    before = {h for hashes in _benchmark_hashes(bench).values() for h in hashes}

    # A validation-only image that is also a pool image is refused.
    pool_image = assets.load_rendered(cache, "noto").column("image")[0].as_py()
    rows = assets.load_rendered(cache, "logos").to_pylist()
    _write_rendered(cache, "logos", [{**rows[0], "image": pool_image}] + rows[1:])
    with pytest.raises(FlytError, match="logo_names: 1 of its images are pool or FLYT-task images"):
        valtasks.build_valonly_tasks(FakeEncoder(), bench, cache=cache, log=lambda *_: None)
    _write_rendered(cache, "logos", rows)

    built = valtasks.build_valonly_tasks(FakeEncoder(), bench, cache=cache, log=lambda *_: None)
    assert sorted(built["tasks"]) == valtasks.VALONLY_TASKS
    # The benchmark (and so the key of its teacher, scores and students) is untouched.
    assert (bench / "benchmark.json").read_bytes() == identity
    assert benchmark_key(bench, demo.cfg.teacher, demo.cfg.validation_seed, demo.cfg.validation_fraction) == key
    # Disjoint by image hash from the pool, FLYT's tasks and the held-out tasks.
    theirs = _hashes((bench / valtasks.VALONLY_DIR).glob("*/test.parquet"))
    assert len(theirs) == len(TINY_BRANDS) * 2 + sum(TINY_OBJECTS.values())
    for part, hashes in _benchmark_hashes(bench).items():
        assert hashes and not theirs & hashes, part
    assert {h for hashes in _benchmark_hashes(bench).values() for h in hashes} == before

    loaded = valtasks.load_valonly_tasks(bench)
    assert [t.name for t in loaded] == valtasks.VALONLY_TASKS
    for task in loaded:
        assert task.train is None and task.test is None and len(task.validation.labels)
        with pytest.raises(FlytError, match="has no test split"):
            task.split("test")

    script = _script()
    events, lines = [], []

    def log(line):
        lines.append(line)
        events.append(("log", line))

    start = len(EVENTS)
    with recording(events):
        data = script.run(demo, loaded, seeds=(100, 101), log=log)
    assert len(EVENTS) == start  # the tiny demo's own record is not this one
    flyt_tasks = [t.name for t in demo.tasks]
    (final,) = [i for i, e in enumerate(events) if e[0] == "log" and e[1].startswith("final evaluation")]
    # every choice was made before the held-out tasks were first read, on validation splits only
    objective_lines = [i for i, e in enumerate(events) if e[0] == "log" and e[1].startswith("objective ")]
    assert len(objective_lines) == 3 and max(objective_lines) < final
    heldout_reads = [i for i, e in enumerate(events) if e[0] == "read" and "heldout_tasks" in e[1]]
    assert heldout_reads and min(heldout_reads) > max(objective_lines)
    evaluations = [(i, e[1], e[2]) for i, e in enumerate(events) if e[0] == "evaluate"]
    assert any(split == "validation" and set(names) == set(flyt_tasks + valtasks.VALONLY_TASKS)
               for _, split, names in evaluations)
    # the final table: FLYT's tasks and the held-out tasks, never a validation-only task
    tests = [(i, names) for i, split, names in evaluations if split == "test"]
    assert tests and all(i > final and sorted(names) == sorted(flyt_tasks + HELDOUT) for i, names in tests)
    assert sorted(data["final_tasks"]) == sorted(flyt_tasks + HELDOUT)
    assert data["groups"] == {"average_flyt": flyt_tasks, "average_heldout": HELDOUT}
    for obj in data["objectives"].values():
        for res in obj["results"].values():
            for run in res["per_seed"]:
                assert not set(run) & set(valtasks.VALONLY_TASKS)
                assert run["average"] == pytest.approx(np.mean([run[t] for t in flyt_tasks + HELDOUT]))
    table = script.markdown(data)
    assert not any(t in table for t in valtasks.VALONLY_TASKS) and "FLYT + Soft Cap Sampling" in table

    # Equal weight per task: 5 FLYT tasks and 2 validation-only tasks, 1/7 each.
    objectives = data["objectives"]
    assert objectives["flyt+valonly"]["tasks"] == flyt_tasks + valtasks.VALONLY_TASKS
    for name, options in objectives["flyt"]["validation"].items():
        for j, option in enumerate(options):
            if option["val_average"] is None:
                continue
            mixed = objectives["flyt+valonly"]["validation"][name][j]["val_average"]
            only = objectives["valonly"]["validation"][name][j]["val_average"]
            assert mixed == pytest.approx((5 * option["val_average"] + 2 * only) / 7)
    # the demo's own validation students (seed 100, FLYT's tasks) are reproduced by this run's
    assert data["demo_seed_check"]["cached"] and data["demo_seed_check"]["max_abs_difference"] < 1e-6
    # each objective's choice is its best validation average
    for obj in objectives.values():
        for name, res in obj["results"].items():
            vals = [o["val_average"] for o in obj["validation"][name] if o["val_average"] is not None]
            if vals:
                assert res["chosen"]["val_average"] == max(vals)


@pytest.mark.skipif(not list(cache_dir().glob(f"bench/*/{valtasks.VALONLY_DIR}/valonly.json")),
                    reason="no built validation-only tasks in the flyt cache ($FLYT_CACHE)")
def test_real_valonly_images_are_not_benchmark_images():
    """On the real benchmark (when built in $FLYT_CACHE): no validation-only image is a pool, FLYT-task
    or held-out image."""
    for marker in cache_dir().glob(f"bench/*/{valtasks.VALONLY_DIR}/valonly.json"):
        bench = marker.parents[1]
        theirs = _hashes((bench / valtasks.VALONLY_DIR).glob("*/test.parquet"))
        assert len(theirs) > 100
        for part, hashes in _benchmark_hashes(bench).items():
            assert hashes and not theirs & hashes, part

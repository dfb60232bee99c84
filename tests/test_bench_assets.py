"""Benchmark assets, pool and tasks on tiny generated inputs (no registry access)."""

import json

import numpy as np
import pyarrow as pa
import pytest

from _demo_helpers import write_tiny_heldout
from _encoders_helpers import FakeEncoder, png
from flyt.bench import assets
from flyt.bench.assets import RENDERED_SCHEMA, _render_job, parse_emoji_test, prepare, render_source
from flyt.bench.build import build_benchmark, load_benchmark
from flyt.bench.evaluate import evaluate_selection
from flyt.bench.pool import PoolConfig, build_pairs, composition, natural_defect
from flyt.bench.student import StudentConfig
from flyt.bench.tasks import build_task_specs, stratified_split
from flyt.errors import FlytError
from flyt.io.atomic import write_json, write_parquet
from flyt.io.images import decode_image
from flyt.io.pool import load_pool
from flyt.io.tasks import load_task

SVG = '<svg xmlns="http://www.w3.org/2000/svg" width="40" height="20"><rect width="40" height="20" fill="#f00"/>' \
      "<metadata><dc:title xmlns:dc='http://purl.org/dc/elements/1.1/'>{title}</dc:title></metadata></svg>"


def test_parse_emoji_test(tmp_path):
    p = tmp_path / "emoji-test.txt"
    p.write_text(
        "# group: Animals & Nature\n# subgroup: animal-mammal\n"
        "1F431 ; fully-qualified # \U0001F431 E0.6 cat face\n"
        "263A ; unqualified # \u263a E0.6 smiling face\n"
        "1F408 200D 2B1B ; fully-qualified # x E13.0 black cat\n"
    )
    got = parse_emoji_test(p)
    assert [e["name"] for e in got] == ["cat face", "black cat"]
    assert got[0]["chars"] == "\U0001F431" and got[1]["chars"] == "\U0001F408\u200d\u2b1b"
    assert got[0]["group"] == "Animals & Nature" and got[0]["subgroup"] == "animal-mammal"


def test_render_jobs_give_square_rgb_on_white(tmp_path):
    pytest.importorskip("cairosvg")
    svg = tmp_path / "a.svg"
    svg.write_text(SVG.format(title="red box"))
    img = decode_image(_render_job(("svg", svg, 32)))
    assert img.size == (32, 32) and img.mode == "RGB"
    assert img.getpixel((16, 16))[0] > 200 and img.getpixel((16, 16))[1] < 60  # the red box
    assert img.getpixel((16, 1)) == (255, 255, 255)  # letterbox is white (2:1 aspect kept)
    p = tmp_path / "t.png"
    p.write_bytes(png((0, 0, 255, 0), size=50, mode="RGBA"))
    assert decode_image(_render_job(("file", p, 32))).getpixel((5, 5)) == (255, 255, 255)
    arr = np.zeros((8, 8), np.uint8)
    assert decode_image(_render_job(("array", arr, 32))).size == (32, 32)
    bad = tmp_path / "bad.svg"
    bad.write_text("<svg")
    assert _render_job(("svg", bad, 32)) is None


def _write_rendered(cache, name, rows):
    cols = {k: [] for k in RENDERED_SCHEMA.names}
    for r in rows:
        for k in RENDERED_SCHEMA.names:
            cols[k].append(r.get(k, [] if k == "alt_texts" else ""))
    write_parquet(pa.table(cols, schema=RENDERED_SCHEMA), assets.rendered_path(cache, name))


def _fake_cache(cache, n=40):
    """Rendered tables for every source, plus the markers prepare() checks, without fetching."""
    rng = np.random.default_rng(0)
    colours = lambda: tuple(int(v) for v in rng.integers(0, 255, 3))  # noqa: E731
    for s in assets.POOL_SOURCES:
        rows = [{"key": f"{s}{i}", "image": png(colours()), "text": f"{s} picture {i}",
                 "alt_texts": ["une image", "ein Bild"] if s == "tuxpaint" else []} for i in range(n)]
        _write_rendered(cache, s, rows)
    groups = list(__import__("flyt.bench.tasks", fromlist=["x"]).OPENMOJI_GROUPS)[:3]
    _write_rendered(cache, "openmoji", [{"key": str(i), "image": png(colours()), "text": "x", "group": groups[i % 3]} for i in range(30)])
    _write_rendered(cache, "fluent", [{"key": str(i), "image": png(colours()), "text": "x", "subgroup": f"sub-{i % 2}"}
                                      for i in range(50)])
    _write_rendered(cache, "fashion_mnist", [{"key": str(i), "image": png(colours()), "text": "x",
                                              "group": assets.FASHION_CLASSES[i % 10],
                                              "subgroup": "train" if i < 40 else "test"} for i in range(60)])
    _write_rendered(cache, "digits", [{"key": str(i), "image": png(colours()), "text": str(i % 10), "group": str(i % 10)}
                                      for i in range(40)])
    _write_rendered(cache, "general_emoji", [{"key": f"{st}/e{c}", "image": png(colours()), "text": f"emoji {c}",
                                              "group": f"emoji {c}", "subgroup": st}
                                             for c in range(6) for st in ("one", "two")])
    write_tiny_heldout(cache)
    for step in [f"deb:{p}" for p in assets.DEBS] + list(assets.NPM_SETS) + [assets.render_step(s) for s in assets.SOURCES]:
        write_json({"seconds": 0.0}, assets._marker(cache, step))


def test_pool_pairs_defects_and_determinism(tmp_path):
    _fake_cache(tmp_path, n=200)
    cfg = PoolConfig(swap_rate=0.1, duplicate_rate=0.05, foreign_rate=0.5, seed=3)
    table, images = build_pairs(tmp_path, cfg)
    comp = composition(table)
    assert comp["rows"] == 1000 + 50 and len(images) == 1050
    assert comp["by_defect"]["swapped"] == 100 and comp["by_defect"]["duplicate"] == 50
    assert 0 < comp["by_source_defect"]["tuxpaint"].get("foreign", 0) < 200
    assert len(set(table.column("uid").to_pylist())) == 1050
    rows = table.to_pylist()
    # A swapped caption is never the pair's own; a duplicate equals some original row exactly.
    own = {r["key"]: f"{r['source']} picture {r['key'].split('/')[1][len(r['source']):]}" for r in rows}
    for r in rows:
        if r["defect"] == "swapped":
            assert r["text"] != own[r["key"]]
    originals = {(r["image_sha1"], r["text"]) for r in rows if r["defect"] != "duplicate"}
    assert all((r["image_sha1"], r["text"]) in originals for r in rows if r["defect"] == "duplicate")
    again, _ = build_pairs(tmp_path, cfg)
    assert again.equals(table)


def test_natural_defect_rules():
    assert natural_defect("openclipart", "Part of the Flat Icon Collection (Wed Nov 13)") == "boilerplate"
    assert natural_defect("openclipart", "gramastar") == "filename"
    assert natural_defect("papirus", "org.kde.kate") == "filename"
    assert natural_defect("noto", "grinning face") == "none"
    assert natural_defect("tuxpaint", "A magpie.") == "none"


def test_stratified_split_is_fixed_and_disjoint():
    labels = np.repeat(np.arange(4), [2, 5, 10, 3])
    tr, te = stratified_split(labels, 0.5, seed=1)
    assert not set(tr) & set(te) and len(tr) + len(te) == len(labels)
    assert set(labels[tr]) == set(labels[te]) == {0, 1, 2, 3}
    tr2, te2 = stratified_split(labels, 0.5, seed=1)
    assert (tr == tr2).all() and (te == te2).all()


def test_build_benchmark_end_to_end_with_fake_encoder(tmp_path):
    cache = tmp_path / "cache"
    _fake_cache(cache)
    out = tmp_path / "bench"
    summary = build_benchmark(FakeEncoder(), cache, out, PoolConfig(seed=0), log=lambda *_: None)
    pool = load_pool(out / "pool")
    assert len(pool) == summary["pool"]["rows"] == 5 * 40 + 10
    loaded = load_benchmark(out)
    assert (loaded["truth"].column("uid").to_numpy(zero_copy_only=False) == loaded["pool"].uids).all()
    assert [t.name for t in loaded["tasks"]] == sorted(summary["tasks"])
    names = sorted(p.name for p in (out / "tasks").iterdir())
    assert names == ["digits", "emoji_names", "fashion_mnist", "fluent_subgroups", "openmoji_groups"]
    tasks = [load_task(out / "tasks" / n) for n in names]
    general = tasks[1]  # the general task: each class's two drawings split one to train, one to test
    assert general.num_classes == 6 and sorted(general.train.labels) == sorted(general.test.labels) == list(range(6))
    fm = tasks[2]
    assert fm.num_classes == 10 and len(fm.train.labels) == 40 and len(fm.test.labels) == 20
    assert json.loads((out / "benchmark.json").read_text())["tasks"]["digits"]["classes"] == 10
    # The held-out tasks: their own folder, prompts and a test split only; the task reader reads them
    # only as test-only tasks (a plain load wants the train split they do not have).
    held = sorted(summary["heldout_tasks"])
    assert held == sorted(p.name for p in (out / "heldout_tasks").iterdir()) == ["animal_names", "chess_pieces",
                                                                                  "country_flags", "icon_categories"]
    assert summary["heldout_tasks"]["chess_pieces"] == {"classes": 6, "test": 24}
    from flyt.bench.protocol import load_heldout_tasks

    loaded_held = load_heldout_tasks(out)
    assert [t.name for t in loaded_held] == held and all(t.train is None and len(t.test.labels) for t in loaded_held)
    with pytest.raises(FlytError, match="train.parquet"):
        load_task(out / "heldout_tasks" / "chess_pieces")
    with pytest.raises(FlytError, match="has no train split"):
        loaded_held[0].split("train")
    thumbs = pa.parquet.read_table(out / "thumbnails.parquet")
    shas = set(pa.parquet.read_table(out / "pool").column("image_sha1").to_pylist())
    assert shas <= set(thumbs.column("image_sha1").to_pylist())
    res = evaluate_selection(pool.image, pool.text, pool.uids, {u: 1 for u in pool.uids[:50]}, tasks,
                             StudentConfig(dim=8, samples_seen=500, batch_size=50), seeds=(0, 1, 2))
    assert set(res["mean"]) == set(names) | {"average"}
    # Second run: nothing rebuilt; forced rebuild: everything from the embedding cache.
    stamp = (out / "pool" / "part-00000.parquet").stat().st_mtime_ns
    assert build_benchmark(FakeEncoder(), cache, out, PoolConfig(seed=0), log=lambda *_: None) == summary
    assert (out / "pool" / "part-00000.parquet").stat().st_mtime_ns == stamp
    enc = FakeEncoder()
    again = build_benchmark(enc, cache, out, PoolConfig(seed=0), force=True, log=lambda *_: None)
    assert enc.image_calls == 0 and enc.text_calls == 0 and again["pool"] == summary["pool"]
    # Another configuration is rebuilt, not served from the stale output.
    other = build_benchmark(FakeEncoder(), cache, out, PoolConfig(seed=0, duplicate_rate=0.0), log=lambda *_: None)
    assert other["pool"]["rows"] == 200


def test_prepare_runs_each_step_once(tmp_path):
    pytest.importorskip("sklearn")
    t1 = prepare(tmp_path, sources=["digits"], log=lambda *_: None)
    marker = assets._marker(tmp_path, "render:digits")
    assert marker.is_file() and json.loads(marker.read_text())["rows"] == 1797
    stamp = marker.stat().st_mtime_ns
    t2 = prepare(tmp_path, sources=["digits"], log=lambda *_: None)
    assert marker.stat().st_mtime_ns == stamp and t1 == t2
    with pytest.raises(FlytError, match="unknown asset source 'nope'"):
        prepare(tmp_path, sources=["nope"])
    with pytest.raises(FlytError, match="missing; run the asset preparation"):
        assets.load_rendered(tmp_path, "noto")


def test_render_sources_from_package_layouts(tmp_path):
    pytest.importorskip("cairosvg")
    stamps = tmp_path / "root/usr/share/tuxpaint/stamps/animals/birds"
    stamps.mkdir(parents=True)
    (stamps / "magpie.png").write_bytes(png("black", size=40))
    (stamps / "magpie.txt").write_text("A magpie.\nfr.utf8=Une pie.\nde.utf8=Eine Elster.\n")
    (stamps / "orphan.txt").write_text("No image for this one.\n")
    clip = tmp_path / "root/usr/share/openclipart/svg/food"
    clip.mkdir(parents=True)
    (clip / "pizza.svg").write_text(SVG.format(title="Pizza Slice"))
    (clip / "blank.svg").write_text(SVG.format(title=""))
    assert render_source(tmp_path, "tuxpaint", size=32, workers=1)["rows"] == 1
    t = assets.load_rendered(tmp_path, "tuxpaint").to_pylist()[0]
    assert (t["text"], t["group"], t["subgroup"]) == ("A magpie.", "animals", "birds")
    assert t["alt_texts"] == ["Une pie.", "Eine Elster."]
    assert decode_image(t["image"]).size == (32, 32)
    assert render_source(tmp_path, "openclipart", size=32, workers=1) == {"rows": 2, "failed": 0}
    rows = {r["key"]: r for r in assets.load_rendered(tmp_path, "openclipart").to_pylist()}
    assert rows["food/pizza.svg"]["text"] == "Pizza Slice"
    assert rows["food/blank.svg"]["text"] == "blank"  # no title: the file name, as the data has it
    with pytest.raises(FlytError, match="found no images"):
        render_source(tmp_path, "papirus", workers=1)


def test_task_specs_from_rendered_sets(tmp_path):
    _fake_cache(tmp_path)
    specs = {s.name: s for s in build_task_specs(tmp_path, seed=0)}
    om = specs["openmoji_groups"]
    assert om.classnames == ["animal or plant", "person or body part", "smiley face"]  # sorted by slug
    assert all("{c}" in t for t in om.templates)
    tr, te = om.splits["train"], om.splits["test"]
    assert len(tr[0]) + len(te[0]) == 30 and set(tr[1]) == set(te[1]) == {0, 1, 2}
    assert not {a for a in tr[0]} & {b for b in te[0]}  # images never in both splits
    assert specs["fluent_subgroups"].classnames == ["sub 0", "sub 1"]
    assert specs["digits"].classnames[3] == "three"
    fm = specs["fashion_mnist"]
    assert len(fm.splits["train"][1]) == 40 and len(fm.splits["test"][1]) == 20

"""The held-out tasks (flyt.bench.heldout) and their asset sources, on tiny generated inputs."""

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from _demo_helpers import TINY_ANIMALS, TINY_FLAGS, write_tiny_heldout
from flyt.bench import assets, heldout
from flyt.bench.assets import _render_job, mask_regions, render_source
from flyt.bench.heldout import ICON_CATEGORIES, build_heldout_specs
from flyt.io.atomic import write_parquet
from flyt.io.images import decode_image

ROUND_FLAG = ('<svg xmlns="http://www.w3.org/2000/svg" width="512" height="512" viewBox="0 0 512 512">'
              '<mask id="a"><circle cx="256" cy="256" r="256" fill="#fff"/></mask>'
              '<g mask="url(#a)"><path fill="#d80027" d="M0 0h512v512H0z"/></g></svg>')


def _specs(cache):
    return {s.name: s for s in build_heldout_specs(cache)}


def _rewrite(cache, name, edit):
    """Rewrite one rendered set through ``edit(rows) -> rows``."""
    rows = assets.load_rendered(cache, name).to_pylist()
    write_parquet(pa.Table.from_pylist(edit(rows), schema=assets.RENDERED_SCHEMA), assets.rendered_path(cache, name))


def test_heldout_specs_have_a_test_split_only_and_their_classes(tmp_path):
    write_tiny_heldout(tmp_path)
    specs = _specs(tmp_path)
    assert list(specs) == heldout.HELDOUT_TASKS
    for spec in specs.values():
        assert list(spec.splits) == ["test"] and all("{c}" in t for t in spec.templates)
        images, labels = spec.splits["test"]
        assert len(images) == len(labels) and set(labels) <= set(range(len(spec.classnames)))
    flags = specs["country_flags"]  # Réunion flies the French flag: not a class of its own
    assert flags.classnames == sorted(set(TINY_FLAGS.values()) - {"Réunion"})
    assert np.bincount(flags.splits["test"][1]).tolist() == [2, 2, 2, 2]  # 4:3 and round
    chess = specs["chess_pieces"]
    assert chess.classnames == ["king", "queen", "rook", "bishop", "knight", "pawn"]
    assert np.bincount(chess.splits["test"][1]).tolist() == [4] * 6  # 2 styles x 2 colours
    icons = specs["icon_categories"]  # the brand logos are left out
    assert icons.classnames == sorted(ICON_CATEGORIES[c] for c in list(ICON_CATEGORIES)[:3])
    animals = specs["animal_names"]  # the rainbow is nature, not an animal
    assert animals.classnames == sorted(TINY_ANIMALS) and len(animals.splits["test"][1]) == 2 * len(TINY_ANIMALS)
    # Each image keeps its own label: the tiny sets draw one colour and shape per class.
    rendered = {r["image"]: r["group"] for r in assets.load_rendered(tmp_path, "flags").to_pylist()}
    images, labels = flags.splits["test"]
    assert all(rendered[img] == flags.classnames[lab] for img, lab in zip(images, labels))


def test_flags_drawn_alike_and_incomplete_chess_sets_are_left_out(tmp_path, monkeypatch):
    write_tiny_heldout(tmp_path)
    # Canada's round flag drawn exactly like Japan's: neither name can be told from that drawing.
    image = {r["key"]: r["image"] for r in assets.load_rendered(tmp_path, "flags").to_pylist()}
    _rewrite(tmp_path, "flags", lambda rows: [{**r, "image": image["circle/jp"]} if r["key"] == "circle/ca" else r
                                              for r in rows])
    # A font that drew 11 of its 12 pieces is left out whole.
    _rewrite(tmp_path, "chess", lambda rows: [r for r in rows if r["key"] != "ttf/merida/bp"])
    # An animal drawn in one style only is not a class.
    _rewrite(tmp_path, "animal_emoji", lambda rows: [r for r in rows if r["key"] != "streamline-emojis/horse"])
    monkeypatch.setattr(heldout, "MAX_ICONS_PER_CLASS", 3)
    specs = _specs(tmp_path)
    assert specs["country_flags"].classnames == ["Brazil", "France"]
    assert specs["animal_names"].classnames == ["cat", "dog", "fish"]
    assert len(specs["animal_names"].splits["test"][1]) == 6
    chess = specs["chess_pieces"]
    assert len(chess.splits["test"][1]) == 12 and np.bincount(chess.splits["test"][1]).tolist() == [2] * 6
    icons = specs["icon_categories"]  # 6 per category -> 3, the first and the last kept (evenly spaced)
    assert np.bincount(icons.splits["test"][1]).tolist() == [3, 3, 3]
    rows = assets.load_rendered(tmp_path, "remix_icons").to_pylist()
    first = [r["image"] for r in rows if r["group"] == list(ICON_CATEGORIES)[0]]
    kept = [img for img, lab in zip(*icons.splits["test"]) if icons.classnames[lab] == ICON_CATEGORIES["Arrows"]]
    assert kept == [first[0], first[2], first[5]]


def test_a_drawing_under_two_classes_is_left_out(tmp_path):
    write_tiny_heldout(tmp_path)
    image = {r["key"]: r["image"] for r in assets.load_rendered(tmp_path, "remix_icons").to_pylist()}
    _rewrite(tmp_path, "remix_icons", lambda rows: [{**r, "image": image["icon-0-0-line"]}
                                                    if r["key"] == "icon-1-0-line" else r for r in rows])
    icons = _specs(tmp_path)["icon_categories"]
    # that drawing is gone from both classes (arrows also drew it as icon-0-4: tiny drawings repeat every 4)
    assert np.bincount(icons.splits["test"][1]).tolist() == [4, 5, 6]
    assert image["icon-0-0-line"] not in icons.splits["test"][0]


def _iconify(root: Path, package: str, icons: dict, categories: dict | None = None, **size) -> None:
    base = root / "npm-icons/node_modules/@iconify-json" / package
    base.mkdir(parents=True)
    (base / "icons.json").write_text(json.dumps({"prefix": package, "icons": icons, **size}))
    if categories is not None:
        (base / "metadata.json").write_text(json.dumps({"categories": categories}))


def _regional(code: str) -> str:
    return " ".join(f"{0x1F1E6 + ord(c) - ord('A'):X}" for c in code)


def test_heldout_sources_from_package_layouts(tmp_path):
    pytest.importorskip("cairosvg")
    root = tmp_path / "root"
    emoji = root / "usr/share/unicode/emoji"
    emoji.mkdir(parents=True)
    (emoji / "emoji-test.txt").write_text(
        "# group: Flags\n# subgroup: country-flag\n"
        f"{_regional('JP')} ; fully-qualified # x E0.6 flag: Japan\n"
        f"{_regional('FR')} ; fully-qualified # x E0.6 flag: France\n"
        "# subgroup: flag\n1F3C1 ; fully-qualified # x E0.6 chequered flag\n", encoding="utf-8")
    node = tmp_path / "npm-icons/node_modules"
    for folder in ("flag-icons/flags/4x3", "circle-flags/flags"):
        (node / folder).mkdir(parents=True)
    (node / "flag-icons/flags/4x3/jp.svg").write_text(ROUND_FLAG.replace("512", "640", 2))
    (node / "circle-flags/flags/jp.svg").write_text(ROUND_FLAG)
    (node / "circle-flags/flags/fr.svg").write_text(ROUND_FLAG)  # France: no 4:3 drawing in this layout
    box = '<path d="M2 2h12v12H2z"/>'
    _iconify(tmp_path, "ri", {"home-line": {"body": box}, "home-fill": {"body": box}, "bold": {"body": box},
                              "old": {"body": box, "hidden": True}},
             {"Buildings": ["home-fill", "home-line"], "Editor": ["bold", "old"]}, width=16, height=16)
    _iconify(tmp_path, "fxemoji", {"dog": {"body": box}, "acorn": {"body": box}},
             {"Nature": ["dog", "acorn"], "Objects": []}, width=16, height=16)
    _iconify(tmp_path, "streamline-emojis", {"dog-face": {"body": box}}, {"Animals Nature": ["dog-face"]},
             width=16, height=16)
    pieces = root / "usr/share/pychess/pieces"
    for style in ("alpha", "makruk"):  # makruk: another game's pieces, left out
        (pieces / style).mkdir(parents=True)
        for stem in [c + k for c in "wb" for k in "kqrbnp"]:
            (pieces / style / f"{stem}.svg").write_text(ROUND_FLAG)
    (pieces / "celtic").mkdir()
    (pieces / "celtic/celtic.svg").write_text(ROUND_FLAG)  # every piece on one sheet: left out
    (pieces / "ttf").mkdir()
    import matplotlib

    font = Path(matplotlib.__file__).parent / "mpl-data/fonts/ttf/DejaVuSans.ttf"
    shutil.copy(font, pieces / "ttf/plain.ttf")  # a text font: its "k" etc. draw letters, not pieces

    assert render_source(tmp_path, "flags", size=32, workers=1) == {"rows": 3, "failed": 0}
    flags = {r["key"]: r for r in assets.load_rendered(tmp_path, "flags").to_pylist()}
    assert set(flags) == {"4x3/jp", "circle/jp", "circle/fr"}
    assert (flags["circle/jp"]["group"], flags["circle/jp"]["text"], flags["circle/jp"]["subgroup"]) == \
        ("Japan", "flag: Japan", "circle")
    img = decode_image(flags["circle/jp"]["image"])  # the whole round flag, not a quarter of it
    assert img.getpixel((16, 16))[0] > 150 and img.getpixel((16, 16))[1] < 60
    assert img.getpixel((1, 1)) == (255, 255, 255)

    assert render_source(tmp_path, "remix_icons", size=32, workers=1)["rows"] == 2
    icons = {r["key"]: r for r in assets.load_rendered(tmp_path, "remix_icons").to_pylist()}
    assert set(icons) == {"home-line", "bold"} and icons["home-line"]["text"] == "home"
    assert icons["bold"]["group"] == "Editor"

    assert render_source(tmp_path, "animal_emoji", size=32, workers=1)["rows"] == 3
    animals = {r["key"]: (r["group"], r["subgroup"]) for r in assets.load_rendered(tmp_path, "animal_emoji").to_pylist()}
    assert animals == {"fxemoji/dog": ("dog", "fxemoji"), "fxemoji/acorn": ("acorn", "fxemoji"),
                       "streamline-emojis/dog-face": ("dog-face", "streamline-emojis")}

    assert render_source(tmp_path, "chess", size=32, workers=1)["rows"] == 24
    chess = assets.load_rendered(tmp_path, "chess").to_pylist()
    assert {r["subgroup"] for r in chess} == {"alpha", "font plain"}
    by_key = {r["key"]: r for r in chess}
    assert (by_key["svg/alpha/bn"]["group"], by_key["svg/alpha/bn"]["text"]) == ("knight", "black knight")
    assert by_key["ttf/plain/l"]["group"] == "king" and by_key["ttf/plain/o"]["text"] == "black pawn"


def test_glyph_job_draws_a_character_and_skips_what_the_font_lacks():
    matplotlib = pytest.importorskip("matplotlib")
    font = str(Path(matplotlib.__file__).parent / "mpl-data/fonts/ttf/DejaVuSans.ttf")
    img = decode_image(_render_job(("glyph", (font, "k"), 32)))
    assert img.size == (32, 32) and min(img.getpixel((x, 16))[0] for x in range(32)) < 100  # black ink
    assert _render_job(("glyph", (font, " "), 32)) is None  # draws nothing
    assert _render_job(("glyph", (font, "."), 32)) is None  # a dot is not a picture


def test_mask_regions_give_each_mask_the_whole_drawing():
    fixed = mask_regions(ROUND_FLAG, (0, 0, 512, 512))
    assert '<mask maskUnits="userSpaceOnUse" x="0" y="0" width="512" height="512" id="a">' in fixed
    assert mask_regions(fixed, (0, 0, 1, 1)) == fixed  # a mask with its own units is left alone
    pytest.importorskip("cairosvg")
    img = decode_image(_render_job(("svgtext", fixed, 32)))
    for xy in [(16, 16), (16, 29), (29, 16), (3, 16)]:  # the centre and the disc's edges, all four quarters
        assert img.getpixel(xy)[0] > 150 and img.getpixel(xy)[1] < 60, xy
    assert img.getpixel((1, 1)) == (255, 255, 255)  # outside the disc

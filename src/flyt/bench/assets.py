"""Preparation of the offline benchmark's assets into one cache directory.

Everything comes from package registries (Debian packages via ``apt-get download`` + ``dpkg-deb``,
npm packages via ``npm install --ignore-scripts``): no root, no git-committed data. Each source is
then rendered once into ``rendered/<name>.parquet``: one row per image with the PNG bytes (RGB on
white, RENDER_SIZE px square), its caption and its labels. Every step writes a marker file
atomically when it is complete, so re-running skips finished steps and an interrupted step reruns.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import multiprocessing
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from flyt.errors import FlytError, require
from flyt.io.atomic import write_json, write_parquet
from flyt.io.cache import cache_dir
from flyt.progress import Progress, printing

RENDER_SIZE = 96

# Debian package -> the paths inside it we keep (the tuxpaint .deb is mostly sounds).
DEBS = {
    "fonts-noto-color-emoji": ["./usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"],
    "unicode-data": ["./usr/share/unicode/emoji/emoji-test.txt"],
    "tuxpaint-stamps-default": ["./usr/share/tuxpaint/stamps"],
    "openclipart-svg": ["./usr/share/openclipart/svg"],
    "papirus-icon-theme": ["./usr/share/icons/Papirus/64x64"],
    "dataset-fashion-mnist": ["./usr/share/datasets/fashion-mnist"],
    "pychess": ["./usr/share/pychess/pieces"],  # held-out: chess piece sets (SVG) and chess fonts
}
NPM = ["openmoji@17.0.0", "fluentui-emoji@1.3.0", "emoji-datasource-twitter@16.0.0"]
# Held-out tasks' icon sets (Iconify JSON: one file of SVG bodies per set), in a prefix of their own.
ICON_NPM = ["flag-icons@7.5.0", "circle-flags@2.8.3", "@iconify-json/ri@1.2.10", "@iconify-json/fxemoji@1.2.2",
            "@iconify-json/streamline-emojis@1.2.4"]
# The general FLYT task's emoji sets (two EmojiOne releases, drawn differently), in a prefix of their own.
GENERAL_NPM = ["@iconify-json/emojione@1.2.3", "@iconify-json/emojione-v1@1.2.3"]
# The validation-only tasks' sets (flyt.bench.valtasks: brand logos in two drawings, game-icons.net's
# silhouettes), in a prefix of their own; prepared only on request, never by the benchmark's build.
VALONLY_NPM = ["@iconify-json/logos@1.2.19", "@iconify-json/simple-icons@1.2.103", "@iconify-json/game-icons@1.2.4"]
# fetch step name -> the npm packages it installs into ``<cache>/<step name>``
NPM_SETS = {"npm": NPM, "npm-icons": ICON_NPM, "npm-general": GENERAL_NPM, "npm-valonly": VALONLY_NPM}

RENDERED_SCHEMA = pa.schema(
    [
        ("key", pa.string()),  # where the image came from (path or code point), unique per set
        ("image", pa.binary()),  # PNG, RGB, RENDER_SIZE x RENDER_SIZE
        ("text", pa.string()),  # the caption as the source gives it
        ("group", pa.string()),  # coarse label (emoji group, stamp category, class name...)
        ("subgroup", pa.string()),  # finer label or split name
        ("alt_texts", pa.list_(pa.string())),  # other captions (e.g. translations)
    ]
)


def _marker(cache: Path, step: str) -> Path:
    return cache / "markers" / (step.replace(":", "_") + ".json")


def _run(cmd: list[str], cwd=None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError:
        raise FlytError(f"asset preparation needs the command '{cmd[0]}' (not found on PATH)") from None


def _step(cache: Path, step: str, func, log) -> float:
    """Run ``func`` unless its marker exists; return the step's measured seconds."""
    marker = _marker(cache, step)
    if marker.is_file():
        return json.loads(marker.read_text())["seconds"]
    with printing():  # the line lands above a progress bar, not inside it
        log(f"prepare {step} ...")
    t0 = time.perf_counter()
    info = func() or {}
    seconds = round(time.perf_counter() - t0, 2)
    write_json({"step": step, "seconds": seconds, **info}, marker)
    with printing():
        log(f"prepare {step}: {seconds:.1f} s {info if info else ''}")
    return seconds


# ---------------------------------------------------------------- fetching from registries


def fetch_deb(cache: Path, package: str) -> dict:
    """``apt-get download`` one package and extract only the paths the benchmark uses."""
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    for old in debs.glob(f"{package}_*.deb"):
        old.unlink()
    got = _run(["apt-get", "download", package], cwd=debs)
    if got.returncode != 0 and "Unable to locate" in got.stderr:
        _run(["apt-get", "update"])  # empty package lists on a fresh machine
        got = _run(["apt-get", "download", package], cwd=debs)
    files = list(debs.glob(f"{package}_*.deb"))
    if got.returncode != 0 or not files:
        raise FlytError(f"apt-get download {package} failed: {got.stderr.strip().splitlines()[-1:]}")
    root = cache / "root"
    root.mkdir(parents=True, exist_ok=True)
    tar = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(files[0])], stdout=subprocess.PIPE)
    untar = subprocess.run(
        ["tar", "-x", "-C", str(root), "--exclude=*.ogg", "--exclude=*.wav", *DEBS[package]],
        stdin=tar.stdout,
        capture_output=True,
        text=True,
    )
    tar.wait()
    if tar.returncode != 0 or untar.returncode != 0:
        raise FlytError(f"extracting {files[0]} failed: {untar.stderr.strip()[:200]}")
    size = files[0].stat().st_size
    files[0].unlink()  # the extracted files are what we keep
    return {"deb_bytes": size}


def fetch_npm(cache: Path, name: str = "npm") -> dict:
    """``npm install`` one of NPM_SETS into ``<cache>/<name>`` (no install scripts run)."""
    packages = NPM_SETS[name]
    got = _run(["npm", "install", "--prefix", str(cache / name), "--ignore-scripts", "--no-audit", "--no-fund",
                *packages])
    if got.returncode != 0:
        raise FlytError(f"npm install {' '.join(packages)} failed: {got.stderr.strip()[-300:]}")
    return {}


# ---------------------------------------------------------------- rendering


def _square_on_white(img, size: int):
    """Fit an image into a size x size RGB square on white, keeping its aspect ratio."""
    from PIL import Image

    img = img.convert("RGBA")
    img.thumbnail((size, size), Image.LANCZOS)
    canvas = Image.new("RGBA", (size, size), (255, 255, 255, 255))
    canvas.alpha_composite(img, ((size - img.width) // 2, (size - img.height) // 2))
    return canvas.convert("RGB")


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


_FONT = {}
JOB_TIMEOUT_S = 20


class _JobTimeout(Exception):
    pass


def _timeout(signum, frame):
    raise _JobTimeout()


def _render_job(job) -> bytes | None:
    """One image -> PNG bytes (None if the source file cannot be rendered). Runs in a worker."""
    from PIL import Image, ImageDraw, ImageFont

    kind, arg, size = job
    # A few clip-art SVGs are pathological; give up on one after JOB_TIMEOUT_S (worker only).
    in_worker = multiprocessing.parent_process() is not None
    if in_worker:
        signal.signal(signal.SIGALRM, _timeout)
        signal.alarm(JOB_TIMEOUT_S)
    try:
        if kind == "emoji":  # arg = (font path, characters)
            font_path, chars = arg
            if font_path not in _FONT:
                _FONT[font_path] = ImageFont.truetype(font_path, 109)  # the only size this font has
            font = _FONT[font_path]
            canvas = Image.new("RGBA", (160, 160), (255, 255, 255, 0))
            ImageDraw.Draw(canvas).text((0, 0), chars, font=font, embedded_color=True)
            bbox = canvas.getbbox()
            if bbox is None:
                return None
            return _png(_square_on_white(canvas.crop(bbox), size))
        if kind == "glyph":  # arg = (font path, character): a character of a picture font, black on white
            font_path, char = arg
            if (font_path, size) not in _FONT:
                _FONT[font_path, size] = ImageFont.truetype(font_path, 2 * size)
            canvas = Image.new("RGBA", (4 * size, 4 * size), (255, 255, 255, 0))
            ImageDraw.Draw(canvas).text((size, size), char, font=_FONT[font_path, size], fill=(0, 0, 0, 255))
            bbox = canvas.getbbox()
            # a character the font lacks draws nothing, or a dot (under a quarter of the em): no image
            if bbox is None or max(bbox[2] - bbox[0], bbox[3] - bbox[1]) < size // 2:
                return None
            return _png(_square_on_white(canvas.crop(bbox), size))
        if kind == "svgtext":  # arg = the SVG document itself
            import cairosvg

            data = cairosvg.svg2png(bytestring=arg.encode("utf-8"), output_width=2 * size)
            return _png(_square_on_white(Image.open(io.BytesIO(data)), size))
        if kind == "svg":
            import cairosvg

            big = 2 * size  # render larger, then downscale: smoother and aspect-safe
            data = cairosvg.svg2png(url=str(arg), output_width=big)
            img = Image.open(io.BytesIO(data))
            return _png(_square_on_white(img, size))
        if kind == "file":
            Image.MAX_IMAGE_PIXELS = 50_000_000
            with Image.open(arg) as img:
                img.draft("RGB", (4 * size, 4 * size))
                return _png(_square_on_white(img, size))
        if kind == "array":  # a grayscale uint8 image, upscaled as is
            img = Image.fromarray(np.asarray(arg, dtype=np.uint8), mode="L").resize((size, size), Image.BICUBIC)
            return _png(img.convert("RGB"))
    except Exception:
        return None
    finally:
        if in_worker:
            signal.alarm(0)
    raise ValueError(f"unknown render job kind {kind}")


def _render_rows(records: list[dict], jobs: list, workers: int, bar: Progress | None = None) -> tuple[pa.Table, int]:
    """Render jobs in a process pool; keep records whose image rendered; count failures. ``bar``
    advances one per image."""
    require("PIL", "bench")
    images: list = [None] * len(jobs)
    ctx = multiprocessing.get_context("spawn")  # fork would copy torch/threads state of the parent
    with contextlib.ExitStack() as stack:
        if workers > 1 and len(jobs) > 64:
            rendered = stack.enter_context(ctx.Pool(workers)).imap(_render_job, jobs, chunksize=16)
        else:
            rendered = map(_render_job, jobs)
        for i, png in enumerate(rendered):
            images[i] = png
            if bar is not None:
                bar.update(1)
    keep = [i for i, png in enumerate(images) if png is not None]
    cols = {name: [] for name in RENDERED_SCHEMA.names}
    for i in keep:
        r = records[i]
        cols["key"].append(r["key"])
        cols["image"].append(images[i])
        cols["text"].append(r["text"])
        cols["group"].append(r.get("group", ""))
        cols["subgroup"].append(r.get("subgroup", ""))
        cols["alt_texts"].append(r.get("alt_texts", []))
    return pa.table(cols, schema=RENDERED_SCHEMA), len(jobs) - len(keep)


def parse_emoji_test(path: Path) -> list[dict]:
    """emoji-test.txt -> fully-qualified emoji with characters, name, group, subgroup."""
    out, group, subgroup = [], "", ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
        elif line.startswith("# subgroup:"):
            subgroup = line.split(":", 1)[1].strip()
        elif "; fully-qualified" in line:
            codes, rest = line.split(";", 1)
            name = re.sub(r"^E\d+\.\d+\s+", "", rest.split("#", 1)[1].strip().split(" ", 1)[1])
            chars = "".join(chr(int(c, 16)) for c in codes.split())
            out.append({"chars": chars, "codes": codes.strip(), "name": name, "group": group, "subgroup": subgroup})
    return out


def _source_noto(root: Path, cache: Path):
    font = str(root / "usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
    recs, jobs = [], []
    for e in parse_emoji_test(root / "usr/share/unicode/emoji/emoji-test.txt"):
        recs.append({"key": e["codes"], "text": e["name"], "group": e["group"], "subgroup": e["subgroup"]})
        jobs.append(("emoji", (font, e["chars"])))
    return recs, jobs


def _source_twemoji(root: Path, cache: Path):
    base = cache / "npm/node_modules/emoji-datasource-twitter"
    recs, jobs = [], []
    for e in json.loads((base / "emoji.json").read_text(encoding="utf-8")):
        path = base / "img/twitter/64" / e["image"]
        if not e.get("has_img_twitter") or not path.is_file():
            continue
        # Captions as the data set writes them: a title-cased name, or a short name when absent.
        text = e.get("name") or e["short_name"].replace("_", " ")
        recs.append({"key": e["unified"], "text": text, "group": e["category"], "subgroup": e["subcategory"]})
        jobs.append(("file", path))
    return recs, jobs


def _source_tuxpaint(root: Path, cache: Path):
    base = root / "usr/share/tuxpaint/stamps"
    recs, jobs = [], []
    for txt in sorted(base.rglob("*.txt")):
        lines = [ln.strip() for ln in txt.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
        image = next((txt.with_suffix(s) for s in (".png", ".svg") if txt.with_suffix(s).is_file()), None)
        if not lines or image is None:
            continue
        alts = [ln.split("=", 1)[1].strip() for ln in lines[1:] if "=" in ln and ln.split("=", 1)[1].strip()]
        rel = txt.relative_to(base)
        recs.append({"key": str(rel.with_suffix("")), "text": lines[0], "group": rel.parts[0],
                     "subgroup": "/".join(rel.parts[1:-1]), "alt_texts": alts})
        jobs.append(("file", image) if image.suffix == ".png" else ("svg", image))
    return recs, jobs


_TITLE = re.compile(r"<dc:title[^>]*>\s*([^<]*?)\s*</dc:title>", re.S)
_DESC = re.compile(r"<dc:description[^>]*>\s*([^<]*?)\s*</dc:description>", re.S)


# The largest drawings are the slowest to render: SVGs over 64 kB are 7% of OpenClipArt's files and
# 44% of its render time (measured on 300 random files), so the pool skips them.
OPENCLIPART_MAX_SVG_BYTES = 64_000


def _source_openclipart(root: Path, cache: Path):
    base = root / "usr/share/openclipart/svg"
    recs, jobs = [], []
    for svg in sorted(base.rglob("*.svg")):
        if svg.stat().st_size > OPENCLIPART_MAX_SVG_BYTES:
            continue
        head = svg.read_text(encoding="utf-8", errors="replace")[:20000]
        titles = [t for t in _TITLE.findall(head) if t]
        desc = [d for d in _DESC.findall(head) if d]
        # The work's own title comes first; agent/publisher titles follow. Keep the noise as is.
        text = titles[0] if titles else (desc[0] if desc else svg.stem)
        rel = svg.relative_to(base)
        recs.append({"key": str(rel), "text": " ".join(text.split()), "group": rel.parts[0],
                     "subgroup": "/".join(rel.parts[1:-1]), "alt_texts": desc[:1]})
        jobs.append(("svg", svg))
    return recs, jobs


def _source_papirus(root: Path, cache: Path):
    base = root / "usr/share/icons/Papirus/64x64"
    recs, jobs = [], []
    for svg in sorted(base.rglob("*.svg")):
        if svg.is_symlink():  # aliases of the same drawing
            continue
        rel = svg.relative_to(base)
        recs.append({"key": str(rel), "text": svg.stem, "group": rel.parts[0], "subgroup": ""})
        jobs.append(("svg", svg))
    return recs, jobs


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _source_openmoji(root: Path, cache: Path):
    base = cache / "npm/node_modules/openmoji"
    recs, jobs = [], []
    for e in json.loads((base / "data/openmoji.json").read_text(encoding="utf-8")):
        path = base / "color/svg" / f"{e['hexcode']}.svg"
        if e["skintone"] or e["group"] in ("extras-openmoji", "extras-unicode", "component") or not path.is_file():
            continue
        recs.append({"key": e["hexcode"], "text": e["annotation"], "group": e["group"], "subgroup": e["subgroups"]})
        jobs.append(("svg", path))
    return recs, jobs


def _source_fluent(root: Path, cache: Path):
    base = cache / "npm/node_modules/fluentui-emoji/icons/flat"
    by_slug = {_slug(e["name"]): e for e in parse_emoji_test(root / "usr/share/unicode/emoji/emoji-test.txt")}
    recs, jobs = [], []
    for svg in sorted(base.glob("*.svg")):
        # Skin-tone variants ("...-dark") have no exact emoji-test name and drop out here.
        e = by_slug.get(svg.stem)
        if not e or e["group"] == "Component":
            continue
        recs.append({"key": svg.stem, "text": e["name"], "group": e["group"], "subgroup": e["subgroup"]})
        jobs.append(("svg", svg))
    return recs, jobs


FASHION_CLASSES = ["T-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _source_fashion_mnist(root: Path, cache: Path, per_class=(200, 100), seed: int = 0):
    """A class-balanced subset (per_class train, test) of Fashion-MNIST, picked by seed."""
    base = root / "usr/share/datasets/fashion-mnist"
    rng = np.random.default_rng(seed)
    recs, jobs = [], []
    for split, stem, n in (("train", "train", per_class[0]), ("test", "t10k", per_class[1])):
        images = _read_idx(base / f"{stem}-images-idx3-ubyte.gz")
        labels = _read_idx(base / f"{stem}-labels-idx1-ubyte.gz")
        for c, name in enumerate(FASHION_CLASSES):
            for i in np.sort(rng.choice(np.flatnonzero(labels == c), size=n, replace=False)):
                recs.append({"key": f"{split}/{i}", "text": name, "group": name, "subgroup": split})
                jobs.append(("array", images[i]))
    return recs, jobs


def _source_digits(root: Path, cache: Path):
    """scikit-learn's 8x8 handwritten digits (1,797), drawn dark on white."""
    datasets = require("sklearn.datasets", "bench")
    d = datasets.load_digits()
    recs, jobs = [], []
    for i, (img, label) in enumerate(zip(d.images, d.target)):
        recs.append({"key": str(i), "text": str(int(label)), "group": str(int(label)), "subgroup": ""})
        jobs.append(("array", 255 - np.round(img * (255 / 16))))
    return recs, jobs


# ---------------------------------------------------------------- held-out tasks' sources
# Sets no pool source, FLYT task or option choice uses (flyt.bench.heldout builds their tasks).


def mask_regions(svg: str, box: tuple) -> str:
    """Give every mask of an SVG document without its own units the whole drawing (``box`` =
    x, y, width, height of the viewBox) as its region: cairosvg misplaces a mask whose region is
    left to SVG's default when it scales the drawing (circle-flags' round mask came out as a
    quarter disc)."""
    x, y, w, h = box
    return re.sub(r"<mask(?![^>]*maskUnits)",
                  f'<mask maskUnits="userSpaceOnUse" x="{x}" y="{y}" width="{w}" height="{h}"', svg)


def iconify_svgs(cache: Path, package: str, prefix: str = "npm-icons") -> tuple[dict, dict]:
    """An Iconify JSON set (``@iconify-json/<package>``, installed by the NPM_SETS step ``prefix``) ->
    ({icon name: SVG document}, its metadata (categories, if the set has them)). Hidden icons (kept by
    the set for old names) are left out; ``currentColor`` (monochrome sets) renders black."""
    base = cache / prefix / "node_modules/@iconify-json" / package
    data = json.loads((base / "icons.json").read_text(encoding="utf-8"))
    meta_path = base / "metadata.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
    out = {}
    for name, icon in data["icons"].items():
        if icon.get("hidden"):
            continue
        left, top = icon.get("left", data.get("left", 0)), icon.get("top", data.get("top", 0))
        width, height = icon.get("width", data.get("width", 16)), icon.get("height", data.get("height", 16))
        body = mask_regions(icon["body"], (left, top, width, height))
        out[name] = (f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
                     f'width="{width}" height="{height}" viewBox="{left} {top} {width} {height}" color="#000">'
                     f'{body}</svg>')
    return out, meta


_VIEWBOX = re.compile(r'viewBox="([-\d.]+)[ ,]+([-\d.]+)[ ,]+([\d.]+)[ ,]+([\d.]+)"')


def _flag_svg(path: Path) -> str | None:
    if not path.is_file():
        return None
    svg = path.read_text(encoding="utf-8")
    box = _VIEWBOX.search(svg)
    return mask_regions(svg, box.groups()) if box else svg


def _source_flags(root: Path, cache: Path):
    """Country and region flags in two drawings (flag-icons' 4:3 flags and circle-flags' round ones),
    named as Unicode names their flag emoji (``flag: Japan``). group = the place's name."""
    base = cache / "npm-icons/node_modules"
    sets = {"4x3": base / "flag-icons/flags/4x3", "circle": base / "circle-flags/flags"}
    recs, jobs = [], []
    for e in parse_emoji_test(root / "usr/share/unicode/emoji/emoji-test.txt"):
        if e["subgroup"] != "country-flag":
            continue
        # two regional indicator symbols (U+1F1E6 = "A") spell the region code
        code = "".join(chr(ord(c) - 0x1F1E6 + ord("a")) for c in e["chars"])
        for variant, folder in sets.items():
            svg = _flag_svg(folder / f"{code}.svg")
            if svg is not None:
                place = e["name"].split(":", 1)[1].strip()
                recs.append({"key": f"{variant}/{code}", "text": e["name"], "group": place, "subgroup": variant})
                jobs.append(("svgtext", svg))
    return recs, jobs


CHESS_PIECES = {"k": "king", "q": "queen", "r": "rook", "b": "bishop", "n": "knight", "p": "pawn"}
# pychess's Thai and Burmese sets (and "ada", drawn in the Thai style) draw other games' pieces
# under the same file names
CHESS_OTHER_GAMES = ("ada", "makruk", "sittuyin")
# Chess fonts map white pieces to these letters and black pieces to the second row (the Marroquin
# convention pychess's fonts follow; a glyph a font lacks renders no image, and flyt.bench.heldout
# keeps only the sets and fonts that drew every piece).
CHESS_FONT_KEYS = {"white": "kqrbnp", "black": "lwtvmo"}


def _source_chess(root: Path, cache: Path):
    """Chess pieces: pychess's SVG piece sets (``wk.svg`` = white king) and its chess fonts.
    group = the piece (king ... pawn), subgroup = the set or font."""
    base = root / "usr/share/pychess/pieces"
    recs, jobs = [], []
    for d in sorted(p for p in base.iterdir() if p.is_dir() and p.name not in CHESS_OTHER_GAMES + ("ttf",)):
        files = {f"{c}{k}": d / f"{c}{k}.svg" for c in "wb" for k in CHESS_PIECES}
        if not all(f.is_file() for f in files.values()):  # single-sheet sets draw every piece in one file
            continue
        for stem, f in files.items():
            colour, piece = ("white" if stem[0] == "w" else "black"), CHESS_PIECES[stem[1]]
            recs.append({"key": f"svg/{d.name}/{stem}", "text": f"{colour} {piece}", "group": piece,
                         "subgroup": d.name})
            jobs.append(("svg", f))
    for font in sorted((base / "ttf").glob("*.ttf")):
        for colour, chars in CHESS_FONT_KEYS.items():
            for char, piece in zip(chars, CHESS_PIECES.values()):
                recs.append({"key": f"ttf/{font.stem}/{char}", "text": f"{colour} {piece}", "group": piece,
                             "subgroup": f"font {font.stem}"})
                jobs.append(("glyph", (str(font), char)))
    return recs, jobs


def _source_remix(root: Path, cache: Path):
    """Remix Icon's icons with the set's own category as group; of an icon drawn as lines and filled
    (``home-line``, ``home-fill``) only the line drawing."""
    icons, meta = iconify_svgs(cache, "ri")
    recs, jobs = [], []
    for category, names in sorted(meta.get("categories", {}).items()):
        twin = lambda n: n.endswith("-fill") and f"{n[: -len('-fill')]}-line" in icons  # noqa: E731
        for name in sorted(n for n in names if n in icons and not twin(n)):
            text = re.sub(r"-(line|fill)$", "", name).replace("-", " ")
            recs.append({"key": name, "text": text, "group": category})
            jobs.append(("svgtext", icons[name]))
    return recs, jobs


# Each emoji set's category of animals and plants.
ANIMAL_EMOJI_SETS = {"fxemoji": "Nature", "streamline-emojis": "Animals Nature"}


def _source_animal_emoji(root: Path, cache: Path):
    """Two emoji art styles absent from the pool and the FLYT tasks (Firefox OS emoji, Streamline
    emoji): their nature category, group = the icon's name in its set, subgroup = the set."""
    recs, jobs = [], []
    for package, category in ANIMAL_EMOJI_SETS.items():
        icons, meta = iconify_svgs(cache, package)
        for name in sorted(n for n in meta.get("categories", {}).get(category, []) if n in icons):
            recs.append({"key": f"{package}/{name}", "text": name.replace("-", " "), "group": name,
                         "subgroup": package})
            jobs.append(("svgtext", icons[name]))
    return recs, jobs


# ---------------------------------------------------------------- the general FLYT task's source

GENERAL_EMOJI_SETS = ("emojione", "emojione-v1")


def emoji_slug(name: str) -> str:
    """A Unicode emoji name as Iconify's emoji sets spell their icon names ("grinning face" ->
    "grinning-face", "T-Rex" -> "t-rex")."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _source_general_emoji(root: Path, cache: Path):
    """EmojiOne's two drawings (npm ``@iconify-json/emojione`` 2.x and ``emojione-v1``, absent from the
    pool, FLYT's other tasks and the held-out tasks) of every emoji both draw, named by Unicode
    (group = the Unicode name, subgroup = the set). Left out: names with a colon (skin-tone variants,
    country flags ``flag: Japan``, families), Unicode's Flags group and its ``animal-*`` subgroups
    and the Component group: flags and animals are what two held-out tasks ask, in other drawings,
    and a general task that trained FLYT on them would let those tasks' classes leak into training."""
    unicode = {emoji_slug(e["name"]): e for e in parse_emoji_test(root / "usr/share/unicode/emoji/emoji-test.txt")
               if ":" not in e["name"] and e["group"] not in ("Flags", "Component")
               and not e["subgroup"].startswith("animal-")}
    sets = {package: iconify_svgs(cache, package, "npm-general")[0] for package in GENERAL_EMOJI_SETS}
    recs, jobs = [], []
    for slug in sorted(set(unicode).intersection(*sets.values())):
        e = unicode[slug]
        for package, icons in sets.items():
            recs.append({"key": f"{package}/{slug}", "text": e["name"], "group": e["name"], "subgroup": package})
            jobs.append(("svgtext", icons[slug]))
    return recs, jobs


# ---------------------------------------------------------------- the validation-only tasks' sources
# Sets no pool source, FLYT task, held-out task, scorer or training run uses (flyt.bench.valtasks builds
# their tasks, which only choose options on validation).


def _source_logos(root: Path, cache: Path):
    """Brand and software logos in two drawings: SVG Logos (colour; its ``-icon`` drawing, the mark
    without the wordmark, where it has one) and Simple Icons (monochrome), for every name both sets
    give (SVG Logos' ``apache-kafka`` is Simple Icons' ``apachekafka``). group = SVG Logos' name
    without ``-icon``, subgroup = the set."""
    logos = iconify_svgs(cache, "logos", "npm-valonly")[0]
    simple = iconify_svgs(cache, "simple-icons", "npm-valonly")[0]
    drawing = {}
    for name in sorted(logos):  # "x-icon" sorts after "x": the mark wins over the full logo
        drawing[name[: -len("-icon")] if name.endswith("-icon") else name] = name
    recs, jobs = [], []
    for brand in sorted(b for b in drawing if b.replace("-", "") in simple):
        for package, icons, icon in (("logos", logos, drawing[brand]), ("simple-icons", simple, brand.replace("-", ""))):
            recs.append({"key": f"{package}/{icon}", "text": brand.replace("-", " "), "group": brand,
                         "subgroup": package})
            jobs.append(("svgtext", icons[icon]))
    return recs, jobs


# game-icons.net silhouettes whose name ends in one of these words ("battle-axe", "wine-bottle") are an
# object task's images. Written before any student looked at them: everyday and fantasy objects that the
# set draws at least 5 times, none an animal, a chess piece, a flag or a Fashion-MNIST class ("boot" and
# "bag" are left out); a word the set uses for two unlike things is left out too ("tank": a vehicle or a
# container; "chest"). Some icons stay loosely named ("boxing-ring" is a ring).
GAME_ICON_OBJECTS = ("axe", "ball", "bomb", "book", "bottle", "crown", "dagger", "door", "flower", "gun", "hammer",
                     "hat", "helmet", "house", "jar", "key", "knife", "lantern", "mask", "mushroom", "pot", "ring",
                     "shield", "spear", "sword", "tree")


def _source_game_icons(root: Path, cache: Path):
    """game-icons.net's icons (npm ``@iconify-json/game-icons``, black silhouettes) whose name's last word
    is one of GAME_ICON_OBJECTS. group = that word, subgroup = the icon's name."""
    icons = iconify_svgs(cache, "game-icons", "npm-valonly")[0]
    recs, jobs = [], []
    for name in sorted(icons):
        word = name.rsplit("-", 1)[-1]
        if word in GAME_ICON_OBJECTS:
            recs.append({"key": name, "text": name.replace("-", " "), "group": word, "subgroup": name})
            jobs.append(("svgtext", icons[name]))
    return recs, jobs


# name -> (what it builds from, the function listing its records and render jobs)
SOURCES = {
    "noto": _source_noto,
    "twemoji": _source_twemoji,
    "tuxpaint": _source_tuxpaint,
    "openclipart": _source_openclipart,
    "papirus": _source_papirus,
    "openmoji": _source_openmoji,
    "fluent": _source_fluent,
    "fashion_mnist": _source_fashion_mnist,
    "digits": _source_digits,
    "general_emoji": _source_general_emoji,
    "flags": _source_flags,
    "chess": _source_chess,
    "remix_icons": _source_remix,
    "animal_emoji": _source_animal_emoji,
}
# What each source needs fetched first (Debian packages; NPM_SETS' names for npm packages).
NEEDS = {
    "noto": ["fonts-noto-color-emoji", "unicode-data"],
    "twemoji": ["npm"],
    "tuxpaint": ["tuxpaint-stamps-default"],
    "openclipart": ["openclipart-svg"],
    "papirus": ["papirus-icon-theme"],
    "openmoji": ["npm"],
    "fluent": ["npm", "unicode-data"],
    "fashion_mnist": ["dataset-fashion-mnist"],
    "digits": [],
    "general_emoji": ["npm-general", "unicode-data"],
    "flags": ["npm-icons", "unicode-data"],
    "chess": ["pychess"],
    "remix_icons": ["npm-icons"],
    "animal_emoji": ["npm-icons"],
    "logos": ["npm-valonly"],
    "game_icons": ["npm-valonly"],
}
POOL_SOURCES = ["noto", "twemoji", "tuxpaint", "openclipart", "papirus"]
TASK_SOURCES = ["openmoji", "fluent", "fashion_mnist", "digits", "general_emoji"]
HELDOUT_SOURCES = ["flags", "chess", "remix_icons", "animal_emoji"]  # read only by the final evaluation
ALL_SOURCES = POOL_SOURCES + TASK_SOURCES + HELDOUT_SOURCES
# The validation-only tasks' sources (flyt.bench.valtasks): not in ALL_SOURCES, so neither the benchmark's
# build, its identity (benchmark.json) nor the demo's plan and caches change; prepared on request.
VALONLY_SOURCES = {"logos": _source_logos, "game_icons": _source_game_icons}


def render_source(cache: Path, name: str, size: int = RENDER_SIZE, workers: int = 2, limit: int | None = None,
                  listed: tuple | None = None, bar: Progress | None = None) -> dict:
    """Render one source into ``rendered/<name>.parquet`` (atomically). ``listed``: its (records, jobs)
    if already listed; ``bar`` advances one per image."""
    recs, jobs = listed if listed is not None else {**SOURCES, **VALONLY_SOURCES}[name](cache / "root", cache)
    if limit is not None:
        recs, jobs = recs[:limit], jobs[:limit]
    if not recs:
        raise FlytError(f"asset source '{name}': found no images under {cache} (was it fetched?)")
    table, failed = _render_rows(recs, [(k, a, size) for k, a in jobs], workers, bar)
    write_parquet(table, rendered_path(cache, name))
    return {"rows": table.num_rows, "failed": failed}


def render_step(name: str) -> str:
    """The cache step (marker) of one rendered source; it names the settings that change its rows."""
    if name == "openclipart":
        return f"render:{name}-max{OPENCLIPART_MAX_SVG_BYTES // 1000}kB"
    return f"render:{name}"


def rendered_path(cache: Path, name: str) -> Path:
    return cache / "rendered" / f"{name}.parquet"


def fetch(cache, needed, log=print, progress: bool | None = False) -> dict:
    """Fetch (cached) the Debian packages named in ``needed``, and the NPM_SETS named in it.
    ``progress`` (flyt.progress's show): a bar over the packages not fetched yet."""
    cache = cache_dir(cache)
    unknown = sorted(set(needed) - set(DEBS) - set(NPM_SETS))
    if unknown:
        raise FlytError(f"unknown asset package '{unknown[0]}' (choose from: {', '.join([*DEBS, *NPM_SETS])})")
    steps = {f"deb:{p}": lambda p=p: fetch_deb(cache, p) for p in DEBS if p in needed}
    steps.update({name: lambda n=name: fetch_npm(cache, n) for name in NPM_SETS if name in needed})
    timings = {}
    todo = sum(not _marker(cache, step).is_file() for step in steps)
    with Progress(todo, "assets: fetch", unit="package", show=progress) as bar:
        for step, func in steps.items():
            done = _marker(cache, step).is_file()
            timings[step] = _step(cache, step, func, log)
            if not done:
                bar.update(1)
    return timings


def pending_steps(cache=None, sources=None) -> list[str]:
    """The preparation steps (``deb:<package>``, an NPM_SETS name, ``render:<source>``) not done yet in ``cache``."""
    cache = cache_dir(cache)
    sources = list(sources or ALL_SOURCES)
    needed = {n for s in sources if s in NEEDS for n in NEEDS[s]}
    steps = [f"deb:{p}" for p in DEBS if p in needed] + [n for n in NPM_SETS if n in needed]
    steps += [render_step(s) for s in sources]
    return [s for s in steps if not _marker(cache, s).is_file()]


def prepare(cache=None, sources=None, workers: int = 2, log=print, progress: bool | None = False) -> dict:
    """Fetch and render every asset the benchmark needs (cached). Returns seconds per step.
    ``progress`` (flyt.progress's show): a bar over the packages to fetch, then one over the images
    to render (every source not rendered yet, listed first so the bar has its total)."""
    cache = cache_dir(cache)
    cache.mkdir(parents=True, exist_ok=True)
    sources = list(sources or ALL_SOURCES)
    known = {**SOURCES, **VALONLY_SOURCES}
    unknown = [s for s in sources if s not in known]
    if unknown:
        raise FlytError(f"unknown asset source '{unknown[0]}' (choose from: {', '.join(known)})")
    timings = fetch(cache, {n for s in sources for n in NEEDS[s]}, log, progress)
    listed = {name: known[name](cache / "root", cache) for name in sources
              if not _marker(cache, render_step(name)).is_file()}
    with Progress(sum(len(jobs) for _, jobs in listed.values()), "assets: render", unit="image", show=progress) as bar:
        for name in sources:
            timings[f"render:{name}"] = _step(
                cache, render_step(name),
                lambda n=name: render_source(cache, n, workers=workers, listed=listed.get(n), bar=bar), log)
    return timings


def load_rendered(cache, name: str) -> pa.Table:
    """The rendered table of one source (prepare() must have run)."""
    path = rendered_path(cache_dir(cache), name)
    if not path.is_file():
        raise FlytError(f"{path}: missing; run the asset preparation first (flyt embed bench)")
    import pyarrow.parquet as pq

    return pq.read_table(path)


def clear(cache) -> None:
    """Remove everything (used by tests on temporary caches)."""
    shutil.rmtree(cache_dir(cache), ignore_errors=True)

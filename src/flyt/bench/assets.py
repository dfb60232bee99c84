"""Preparation of the offline benchmark's assets into one cache directory.

Everything comes from package registries (Debian packages via ``apt-get download`` + ``dpkg-deb``,
npm packages via ``npm install --ignore-scripts``): no root, no git-committed data. Each source is
then rendered once into ``rendered/<name>.parquet``: one row per image with the PNG bytes (RGB on
white, RENDER_SIZE px square), its caption and its labels. Every step writes a marker file
atomically when it is complete, so re-running skips finished steps and an interrupted step reruns.
"""

from __future__ import annotations

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

RENDER_SIZE = 96

# Debian package -> the paths inside it we keep (the tuxpaint .deb is mostly sounds).
DEBS = {
    "fonts-noto-color-emoji": ["./usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"],
    "unicode-data": ["./usr/share/unicode/emoji/emoji-test.txt"],
    "tuxpaint-stamps-default": ["./usr/share/tuxpaint/stamps"],
    "openclipart-svg": ["./usr/share/openclipart/svg"],
    "papirus-icon-theme": ["./usr/share/icons/Papirus/64x64"],
    "dataset-fashion-mnist": ["./usr/share/datasets/fashion-mnist"],
}
NPM = ["openmoji@17.0.0", "fluentui-emoji@1.3.0", "emoji-datasource-twitter@16.0.0"]

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
    log(f"prepare {step} ...")
    t0 = time.perf_counter()
    info = func() or {}
    seconds = round(time.perf_counter() - t0, 2)
    write_json({"step": step, "seconds": seconds, **info}, marker)
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


def fetch_npm(cache: Path) -> dict:
    """``npm install`` the emoji art sets (no install scripts run)."""
    got = _run(["npm", "install", "--prefix", str(cache / "npm"), "--ignore-scripts", "--no-audit", "--no-fund", *NPM])
    if got.returncode != 0:
        raise FlytError(f"npm install {' '.join(NPM)} failed: {got.stderr.strip()[-300:]}")
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


def _render_rows(records: list[dict], jobs: list, workers: int) -> tuple[pa.Table, int]:
    """Render jobs in a process pool; keep records whose image rendered; count failures."""
    require("PIL", "bench")
    images: list = [None] * len(jobs)
    ctx = multiprocessing.get_context("spawn")  # fork would copy torch/threads state of the parent
    if workers > 1 and len(jobs) > 64:
        with ctx.Pool(workers) as pool:
            for i, png in enumerate(pool.imap(_render_job, jobs, chunksize=16)):
                images[i] = png
    else:
        images = [_render_job(j) for j in jobs]
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
}
# What each source needs fetched first (Debian packages; "npm" for the npm emoji sets).
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
}
POOL_SOURCES = ["noto", "twemoji", "tuxpaint", "openclipart", "papirus"]
TASK_SOURCES = ["openmoji", "fluent", "fashion_mnist", "digits"]


def render_source(cache: Path, name: str, size: int = RENDER_SIZE, workers: int = 2, limit: int | None = None) -> dict:
    """Render one source into ``rendered/<name>.parquet`` (atomically)."""
    recs, jobs = SOURCES[name](cache / "root", cache)
    if limit is not None:
        recs, jobs = recs[:limit], jobs[:limit]
    if not recs:
        raise FlytError(f"asset source '{name}': found no images under {cache} (was it fetched?)")
    table, failed = _render_rows(recs, [(k, a, size) for k, a in jobs], workers)
    write_parquet(table, rendered_path(cache, name))
    return {"rows": table.num_rows, "failed": failed}


def render_step(name: str) -> str:
    """The cache step (marker) of one rendered source; it names the settings that change its rows."""
    if name == "openclipart":
        return f"render:{name}-max{OPENCLIPART_MAX_SVG_BYTES // 1000}kB"
    return f"render:{name}"


def rendered_path(cache: Path, name: str) -> Path:
    return cache / "rendered" / f"{name}.parquet"


def fetch(cache, needed, log=print) -> dict:
    """Fetch (cached) the Debian packages named in ``needed``, and the npm sets if "npm" is in it."""
    cache = cache_dir(cache)
    unknown = sorted(set(needed) - set(DEBS) - {"npm"})
    if unknown:
        raise FlytError(f"unknown asset package '{unknown[0]}' (choose from: {', '.join(DEBS)}, npm)")
    timings = {}
    for package in DEBS:
        if package in needed:
            timings[f"deb:{package}"] = _step(cache, f"deb:{package}", lambda p=package: fetch_deb(cache, p), log)
    if "npm" in needed:
        timings["npm"] = _step(cache, "npm", lambda: fetch_npm(cache), log)
    return timings


def prepare(cache=None, sources=None, workers: int = 2, log=print) -> dict:
    """Fetch and render every asset the benchmark needs (cached). Returns seconds per step."""
    cache = cache_dir(cache)
    cache.mkdir(parents=True, exist_ok=True)
    sources = list(sources or POOL_SOURCES + TASK_SOURCES)
    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        raise FlytError(f"unknown asset source '{unknown[0]}' (choose from: {', '.join(SOURCES)})")
    timings = fetch(cache, {n for s in sources for n in NEEDS[s]}, log)
    for name in sources:
        timings[f"render:{name}"] = _step(cache, render_step(name),
                                          lambda n=name: render_source(cache, n, workers=workers), log)
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

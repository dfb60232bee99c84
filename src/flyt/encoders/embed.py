"""Images + captions -> flyt pool shards; labelled images + class names -> task directories.

Inputs (what ``flyt embed`` reads):
- pairs: a parquet file (or a directory of them) with ``text`` and either ``image`` (encoded image
  bytes) or ``image_path`` (relative to the file), optional ``uid`` and any other columns, which
  are carried over; or a folder of images each with a same-stem ``.txt`` caption (first line).
- a task input directory: ``classnames.txt``, ``zeroshot_classification_templates.txt`` and
  ``train.parquet`` / ``test.parquet`` with ``label`` and ``image`` or ``image_path``.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa

from flyt.encoders.cache import CachedEncoder
from flyt.errors import FlytError
from flyt.io.arrays import fixed_size_list
from flyt.io.atomic import write_parquet, write_text
from flyt.io.pool import check_unique, read_table
from flyt.io.tasks import CLASSNAMES, PROMPTS, TEMPLATES
from flyt.io.uids import uids_to_pairs

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"}
SHARD_ROWS = 10_000


def content_uid(*parts) -> str:
    """A deterministic 32-hex uid from content (sha1 of the parts, truncated to 128 bits)."""
    h = hashlib.sha1()
    for p in parts:
        h.update(p if isinstance(p, bytes) else str(p).encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()[:32]


@contextlib.contextmanager
def atomic_dir(out_dir):
    """Yield a temporary directory beside ``out_dir``; on success it replaces ``out_dir`` whole,
    so an interrupted run leaves the previous output (or none), never a partial one."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        yield tmp
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{tmp.name}")
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old)
        else:
            tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _images_of(table: pa.Table, base: Path, where: str) -> list[bytes]:
    if "image" in table.column_names:
        images = table.column("image").to_pylist()
        for i, b in enumerate(images):
            if not b:
                raise FlytError(f"{where}: row {i}: column 'image' is empty")
        return images
    if "image_path" in table.column_names:
        out = []
        for i, p in enumerate(table.column("image_path").to_pylist()):
            path = base / str(p)
            if not path.is_file():
                raise FlytError(f"{where}: row {i}: image_path {path} does not exist")
            out.append(path.read_bytes())
        return out
    raise FlytError(f"{where}: needs a column 'image' (bytes) or 'image_path' (have: {', '.join(table.column_names)})")


def read_pairs(path) -> tuple[pa.Table, list[bytes]]:
    """Read a pairs input (parquet file/directory or image folder) -> (table with text, image bytes)."""
    path = Path(path)
    if path.is_file():
        table = read_table(path)
        images = _images_of(table, path.parent, str(path))
    elif path.is_dir() and any(path.glob("*.parquet")):
        parts = [read_table(p) for p in sorted(path.glob("*.parquet")) if not p.name.startswith(".")]
        images = [b for p, t in zip(sorted(path.glob("*.parquet")), parts) for b in _images_of(t, path, str(p))]
        table = pa.concat_tables(parts, promote_options="default")
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        texts = []
        for f in files:
            cap = f.with_suffix(".txt")
            if not cap.is_file():
                raise FlytError(f"{f}: no caption file {cap.name} beside the image")
            lines = cap.read_text(encoding="utf-8", errors="replace").strip().splitlines()
            texts.append(lines[0].strip() if lines else "")
        table = pa.table({"text": texts, "image_path": [str(f.relative_to(path)) for f in files]})
        images = [f.read_bytes() for f in files]
    else:
        raise FlytError(f"--input {path}: no such file or directory")
    if table.num_rows == 0:
        raise FlytError(f"--input {path}: no image-text pairs found (empty pool)")
    if "text" not in table.column_names:
        raise FlytError(f"{path}: missing column 'text' (have: {', '.join(table.column_names)})")
    if table.column("text").null_count:
        r = int(np.flatnonzero(table.column("text").is_null().to_numpy(zero_copy_only=False))[0])
        raise FlytError(f"{path}: column 'text' row {r} is null")
    return table, images


def embed_pairs(table: pa.Table, images: list[bytes], encoder: CachedEncoder, out_dir, shard_rows: int = SHARD_ROWS, where: str = "pairs") -> int:
    """Embed pairs and write flyt pool shards ``part-00000.parquet``... into ``out_dir``.

    Keeps every input column except the raw image bytes; adds ``uid`` (content-derived unless
    given), ``image_embedding``, ``text_embedding`` as fixed-size float32 lists. Returns the rows.
    """
    texts = [str(t) for t in table.column("text").to_pylist()]
    if "uid" in table.column_names:
        uids = np.asarray(table.column("uid").to_pylist(), dtype=object)
    else:
        uids = np.asarray([content_uid(hashlib.sha1(b).digest(), t) for b, t in zip(images, texts)], dtype=object)
    check_unique(uids_to_pairs(uids.astype(str), where), uids.astype(str), where)
    keep = [c for c in table.column_names if c not in ("image", "uid", "image_embedding", "text_embedding")]
    n = table.num_rows
    with atomic_dir(out_dir) as tmp:  # the pool directory holds exactly this one shard set
        for k, start in enumerate(range(0, n, shard_rows)):
            stop = min(n, start + shard_rows)
            img = encoder.images(images[start:stop], where)
            txt = encoder.texts(texts[start:stop])
            cols = {"uid": pa.array(uids[start:stop].astype(str), pa.string()),
                    "image_embedding": fixed_size_list(img), "text_embedding": fixed_size_list(txt)}
            for c in keep:
                cols[c] = table.column(c).slice(start, stop - start)
            write_parquet(pa.table(cols), tmp / f"part-{k:05d}.parquet")
    return n


def prompt_texts(classnames: list[str], templates: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Every filled template: texts, template_index, class_index (template-major order)."""
    texts, t_idx, c_idx = [], [], []
    for t, template in enumerate(templates):
        for c, name in enumerate(classnames):
            texts.append(template.replace("{c}", name))
            t_idx.append(t)
            c_idx.append(c)
    return texts, np.asarray(t_idx, np.int32), np.asarray(c_idx, np.int32)


def write_task(out_dir, classnames: list[str], templates: list[str], splits: dict, encoder: CachedEncoder, extra: dict | None = None) -> dict:
    """Write a task directory. ``splits``: name -> (image bytes list, labels); ``extra``: name ->
    {column: values} carried into that split's parquet (e.g. an image hash for thumbnails)."""
    out_dir = Path(out_dir)
    for i, t in enumerate(templates):
        if "{c}" not in t:
            raise FlytError(f"{out_dir / TEMPLATES}: line {i + 1}: template {t!r} has no '{{c}}' for the class name")
    if len(set(classnames)) != len(classnames):
        raise FlytError(f"{out_dir / CLASSNAMES}: duplicate class name")
    for name, (images, labels) in splits.items():
        labels = np.asarray(labels, dtype=np.int64)
        bad = np.flatnonzero((labels < 0) | (labels >= len(classnames)))
        if bad.size:
            raise FlytError(f"task split {name}: row {int(bad[0])}: label {labels[bad[0]]} out of range for {len(classnames)} classes")
    sizes = {}
    with atomic_dir(out_dir) as tmp:
        for name, (images, labels) in splits.items():
            emb = encoder.images(list(images), f"task split {name}")
            cols = {"image_embedding": fixed_size_list(emb), "label": pa.array(np.asarray(labels, dtype=np.int64))}
            cols.update((extra or {}).get(name, {}))
            write_parquet(pa.table(cols), tmp / f"{name}.parquet")
            sizes[name] = len(labels)
        texts, t_idx, c_idx = prompt_texts(classnames, templates)
        emb = encoder.texts(texts)
        prompts = pa.table({"template_index": t_idx, "class_index": c_idx, "text_embedding": fixed_size_list(emb)})
        write_parquet(prompts, tmp / PROMPTS)
        write_text("\n".join(templates) + "\n", tmp / TEMPLATES)
        write_text("\n".join(classnames) + "\n", tmp / CLASSNAMES)
    return sizes


def read_task_input(directory) -> tuple[list[str], list[str], dict]:
    """A task input directory -> (classnames, templates, {split: (image bytes, labels)})."""
    root = Path(directory)
    if not root.is_dir():
        raise FlytError(f"--input {root}: task input directory does not exist")
    lines = {}
    for fname in (CLASSNAMES, TEMPLATES):
        p = root / fname
        if not p.is_file():
            raise FlytError(f"{p}: missing file")
        lines[fname] = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
        if not lines[fname]:
            raise FlytError(f"{p}: file is empty")
    splits = {}
    for name in ("train", "test"):
        p = root / f"{name}.parquet"
        if p.is_file():
            t = read_table(p, ["label"])  # validates the column first
            t = read_table(p)
            splits[name] = (_images_of(t, root, str(p)), t.column("label").to_numpy())
    if "train" not in splits:
        raise FlytError(f"{root / 'train.parquet'}: missing file")
    return lines[CLASSNAMES], lines[TEMPLATES], splits

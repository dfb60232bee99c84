"""What users hand ``flyt embed``: image-caption pairs and labelled image sets, in the layouts they have.

- pairs: a parquet file (or a directory of them) with ``text`` and ``image`` (bytes) or
  ``image_path`` (relative to the file), optional ``uid`` and other columns (carried over); or a
  folder of images, each with a same-stem ``.txt`` caption (first line);
- a task input: ``classnames.txt``, ``zeroshot_classification_templates.txt`` and
  ``train.parquet`` / ``test.parquet`` with ``label`` and ``image`` or ``image_path``.
(Webdataset tars, DataComp's and clip_benchmark's layouts, are read by ``flyt.io.webdataset``.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from flyt.errors import FlytError
from flyt.io.parquet import read_table
from flyt.io.tasks import CLASSNAMES, TEMPLATES

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"}


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

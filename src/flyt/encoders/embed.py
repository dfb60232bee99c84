"""Images + captions -> flyt pool shards; labelled images + class names -> task directories.

Inputs (what ``flyt embed`` reads):
- pairs: a parquet file (or a directory of them) with ``text`` and either ``image`` (encoded image
  bytes) or ``image_path`` (relative to the file), optional ``uid`` and any other columns, which
  are carried over; or a folder of images each with a same-stem ``.txt`` caption (first line).
- a task input directory: ``classnames.txt``, ``zeroshot_classification_templates.txt`` and
  ``train.parquet`` / ``test.parquet`` with ``label`` and ``image`` or ``image_path``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from flyt.encoders.cache import CachedEncoder
from flyt.errors import FlytError
from flyt.io.atomic import atomic_dir
from flyt.io.parquet import check_unique
from flyt.io.pool import write_pool_shard
from flyt.io.tasks import CLASSNAMES, TEMPLATES, write_task
from flyt.io.uids import pair_uid, uids_to_pairs

SHARD_ROWS = 10_000


def embed_pairs(table: pa.Table, images: list[bytes], encoder: CachedEncoder, out_dir, shard_rows: int = SHARD_ROWS,
                where: str = "pairs") -> int:
    """Embed pairs and write flyt pool shards ``part-00000.parquet``... into ``out_dir``.

    Keeps every input column except the raw image bytes; adds ``uid`` (:func:`flyt.io.uids.pair_uid`
    unless given), ``image_embedding``, ``text_embedding`` as fixed-size float32 lists. Returns the rows.
    """
    texts = [str(t) for t in table.column("text").to_pylist()]
    if "uid" in table.column_names:
        uids = np.asarray(table.column("uid").to_pylist(), dtype=object)
    else:
        uids = np.asarray([pair_uid(b, t) for b, t in zip(images, texts)], dtype=object)
    check_unique(uids_to_pairs(uids.astype(str), where), uids.astype(str), where)
    keep = [c for c in table.column_names if c not in ("image", "uid", "image_embedding", "text_embedding")]
    n = table.num_rows
    with encoder.stage("embed: pool", images, texts), atomic_dir(out_dir) as tmp:  # exactly this one shard set
        for k, start in enumerate(range(0, n, shard_rows)):
            stop = min(n, start + shard_rows)
            img = encoder.images(images[start:stop], where)
            txt = encoder.texts(texts[start:stop])
            write_pool_shard(tmp / f"part-{k:05d}.parquet", uids[start:stop], img, txt,
                             {c: table.column(c).slice(start, stop - start) for c in keep})
    return n


def prompt_texts(classnames: list[str], templates: list[str]) -> list[str]:
    """Every filled template, template-major: row ``t * len(classnames) + c`` is template t, class c."""
    return [template.replace("{c}", name) for template in templates for name in classnames]


def embed_task(out_dir, classnames: list[str], templates: list[str], splits: dict, encoder: CachedEncoder,
               extra: dict | None = None) -> dict:
    """Embed a labelled image set and its filled templates, then write the task directory with
    :func:`flyt.io.tasks.write_task` (``out_dir`` is replaced whole on success).

    ``splits``: name -> (image bytes list, labels); ``extra``: name -> {column: values} appended to
    that split's parquet after ``image_embedding`` and ``label`` (e.g. an image hash for thumbnails).
    Returns the rows per split.
    """
    out_dir = Path(out_dir)
    for i, t in enumerate(templates):
        if "{c}" not in t:
            raise FlytError(f"{out_dir / TEMPLATES}: line {i + 1}: template {t!r} has no '{{c}}' for the class name")
    if len(set(classnames)) != len(classnames):
        raise FlytError(f"{out_dir / CLASSNAMES}: duplicate class name")
    for name, (_images, labels) in splits.items():
        labels = np.asarray(labels, dtype=np.int64)
        bad = np.flatnonzero((labels < 0) | (labels >= len(classnames)))
        if bad.size:
            raise FlytError(f"task split {name}: row {int(bad[0])}: label {labels[bad[0]]} out of range "
                            f"for {len(classnames)} classes")
    prompts = prompt_texts(classnames, templates)
    with encoder.stage(f"embed: task {out_dir.name}", [b for images, _ in splits.values() for b in images], prompts):
        embedded = {name: (encoder.images(list(images), f"task split {name}"), np.asarray(labels, dtype=np.int64))
                    for name, (images, labels) in splits.items()}
        emb = encoder.texts(prompts)
    prompts = emb.reshape(len(templates), len(classnames), emb.shape[1])
    with atomic_dir(out_dir) as tmp:
        write_task(tmp, classnames, templates, prompts, embedded, extra)
    return {name: len(labels) for name, (_, labels) in embedded.items()}

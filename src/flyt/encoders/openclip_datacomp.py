"""Embeddings written DataComp-style: ``part-XXXXX.parquet`` (uid, text, ...) beside ``part-XXXXX.npz``
holding ``<pair>_img`` and ``<pair>_txt`` (float16, L2-normalised, same row order), e.g. b32_img."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa

from flyt.encoders.embed import SHARD_ROWS, atomic_dir, content_uid
from flyt.io.datacomp import write_datacomp_shard
from flyt.io.pool import check_unique
from flyt.io.uids import uids_to_pairs


def embed_pairs_datacomp(table: pa.Table, images: list[bytes], encoder, out_dir, pair: str = "b32",
                         shard_rows: int = SHARD_ROWS, where: str = "pairs") -> int:
    """Like :func:`flyt.encoders.embed.embed_pairs`, but the output directory is a DataComp metadata
    directory (uids content-derived unless ``table`` has ``uid``). Returns the number of rows."""
    if "uid" not in table.column_names:
        uids = [content_uid(hashlib.sha1(b).digest(), str(t)) for b, t in zip(images, table.column("text").to_pylist())]
        table = table.append_column("uid", pa.array(uids, pa.string()))
    uids = np.asarray(table.column("uid").to_pylist(), dtype=str)
    check_unique(uids_to_pairs(uids, where), uids, where)
    texts = [str(t) for t in table.column("text").to_pylist()]
    keep = [c for c in table.column_names if c not in ("image", "image_embedding", "text_embedding")]
    n = table.num_rows
    with atomic_dir(out_dir) as tmp:
        for k, start in enumerate(range(0, n, shard_rows)):
            stop = min(n, start + shard_rows)
            arrays = {f"{pair}_img": encoder.images(images[start:stop], where).astype(np.float16),
                      f"{pair}_txt": encoder.texts(texts[start:stop]).astype(np.float16)}
            write_datacomp_shard(tmp, f"part-{k:05d}", table.select(keep).slice(start, stop - start), arrays)
    return n

"""Embedding output shards for open_clip-style pools: flyt pool shards or DataComp metadata shards
(``part-XXXXX.parquet`` with uid, text, ... beside ``part-XXXXX.npz`` holding ``<pair>_img`` and
``<pair>_txt``, float16, L2-normalised, same row order), and the streaming path for webdatasets:
one output shard per input ``.tar``, so memory holds one shard's images at a time."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from flyt.encoders.embed import SHARD_ROWS
from flyt.errors import FlytError
from flyt.io.atomic import atomic_dir
from flyt.io.datacomp import write_datacomp_shard
from flyt.io.parquet import check_unique
from flyt.io.pool import write_pool_shard
from flyt.io.uids import pair_uid, pairs_to_uids, uids_to_pairs
from flyt.io.webdataset import iter_pairs, list_tars

FORMATS = ("flyt", "datacomp")


def write_shard(directory, stem: str, table: pa.Table, images: list[bytes], encoder, fmt: str = "flyt",
                pair: str = "b32", where: str = "pairs") -> None:
    """Embed one shard's pairs and write it (``table``: uid, text and carried-over columns)."""
    texts = [str(t) for t in table.column("text").to_pylist()]
    img, txt = encoder.images(images, where), encoder.texts(texts)
    if fmt == "datacomp":
        write_datacomp_shard(directory, stem, table, {f"{pair}_img": img.astype(np.float16),
                                                      f"{pair}_txt": txt.astype(np.float16)})
    else:
        write_pool_shard(directory / f"{stem}.parquet", table.column("uid").to_numpy(zero_copy_only=False), img, txt,
                         {c: table.column(c) for c in table.column_names if c != "uid"})


def embed_pairs_datacomp(table: pa.Table, images: list[bytes], encoder, out_dir, pair: str = "b32",
                         shard_rows: int = SHARD_ROWS, where: str = "pairs") -> int:
    """Like :func:`flyt.encoders.embed.embed_pairs`, but the output directory is a DataComp metadata
    directory (uids content-derived unless ``table`` has ``uid``). Returns the number of rows."""
    if "uid" not in table.column_names:
        uids = [pair_uid(b, t) for b, t in zip(images, table.column("text").to_pylist())]
        table = table.append_column("uid", pa.array(uids, pa.string()))
    uids = np.asarray(table.column("uid").to_pylist(), dtype=str)
    check_unique(uids_to_pairs(uids, where), uids, where)
    keep = [c for c in table.column_names if c not in ("image", "image_path", "image_embedding", "text_embedding")]
    n = table.num_rows
    with atomic_dir(out_dir) as tmp:
        for k, start in enumerate(range(0, n, shard_rows)):
            stop = min(n, start + shard_rows)
            write_shard(tmp, f"part-{k:05d}", table.select(keep).slice(start, stop - start), images[start:stop],
                        encoder, "datacomp", pair, where)
    return n


def embed_webdataset(patterns, encoder, out_dir, fmt: str = "flyt", pair: str = "b32") -> int:
    """Embed webdataset pool shards into ``out_dir`` (replaced whole on success), shard by shard.

    Output shard k comes from input tar k. uids: DataComp's from ``.json``, else content-derived
    (the same as :func:`flyt.encoders.embed.embed_pairs` gives). Returns the number of rows.
    """
    if fmt not in FORMATS:
        raise FlytError(f"--format {fmt}: choose from {', '.join(FORMATS)}")
    paths = list_tars(patterns, "pool webdataset")
    seen, n = [], 0  # uid pairs (16 bytes a row) for the cross-shard duplicate check
    with atomic_dir(out_dir) as tmp:
        for k, path in enumerate(paths):
            rows = list(iter_pairs(path))
            if not rows:
                continue
            uids = np.asarray([r[0] for r in rows], dtype=str)
            pairs = uids_to_pairs(uids, path)
            check_unique(pairs, uids, path)
            table = pa.table({"uid": pa.array(uids.tolist(), pa.string()),
                              "text": pa.array([r[1] for r in rows], pa.string())})
            write_shard(tmp, f"part-{k:05d}", table, [r[2] for r in rows], encoder, fmt, pair, path)
            seen.append(pairs)
            n += len(rows)
        if n == 0:
            raise FlytError(f"pool webdataset {patterns}: no samples (empty pool)")
        everything = np.concatenate(seen)
        check_unique(everything, pairs_to_uids(everything), f"pool webdataset {patterns}")
    return n

"""The benchmark pool: image-caption pairs from several rendered sources, with their natural
caption noise and web-like defects injected at known rates.

Ground truth (``source``, ``defect``) is written into the pool shards for analysis plots only; no
scorer reads it. ``defect`` is one of:
- ``none``: the caption the source gives, kept as is;
- ``foreign``: a Tux Paint stamp captioned with one of its translations instead of English;
- ``filename``: a caption that is an identifier rather than words (``gramastar``, ``org.kde.foo``);
- ``boilerplate``: an OpenClipArt title that is a collection/publisher line, not a description;
- ``swapped``: caption moved here from another, random pair (injected at ``swap_rate``);
- ``duplicate``: an exact copy (same image bytes and caption) of another pair (``duplicate_rate``).
The natural labels are heuristics on the caption text (documented rules below); the injected ones
are exact.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from flyt.bench.assets import POOL_SOURCES, load_rendered
from flyt.encoders.cache import sha1_bytes
from flyt.io.uids import content_uid

DEFECTS = ["none", "foreign", "filename", "boilerplate", "swapped", "duplicate"]

_BOILERPLATE = re.compile(
    r"(part of the .*collection|open clip ?art|openclipart|clip ?art library|untitled"
    r"|^image\s*\d*$|^drawing\s*\d*$|^layer\s*\d*$|^svg\s*\d*$)",
    re.I,
)
_WORDLESS = re.compile(r"^[\w.+@#-]*$")  # no spaces: an identifier or file name


@dataclass
class PoolConfig:
    swap_rate: float = 0.10  # fraction of pairs whose caption is swapped with another pair's
    duplicate_rate: float = 0.05  # extra rows that are exact copies, as a fraction of the pool
    foreign_rate: float = 0.30  # Tux Paint stamps captioned by a random translation
    seed: int = 0
    limit_per_source: int | None = None  # small pools for tests


def natural_defect(source: str, text: str) -> str:
    """Heuristic label of a caption as the source gives it."""
    if source == "openclipart" and _BOILERPLATE.search(text):
        return "boilerplate"
    if _WORDLESS.match(text.strip()) and (re.search(r"[\d_.\-]", text) or source in ("papirus", "openclipart")):
        return "filename"
    return "none"


def build_pairs(cache, config: PoolConfig = PoolConfig(), sources=POOL_SOURCES) -> tuple[pa.Table, list[bytes]]:
    """Assemble the pool's pairs (before embedding) from the rendered sources.

    Returns a table (uid, text, source, defect, image_sha1, key) and the PNG bytes per row.
    Deterministic for a given seed and rendered assets.
    """
    rng = np.random.default_rng(config.seed)
    texts, images, srcs, defects, keys = [], [], [], [], []
    for source in sources:
        t = load_rendered(cache, source)
        if config.limit_per_source is not None:
            t = t.slice(0, config.limit_per_source)
        for key, png, text, alts in zip(
            t.column("key").to_pylist(), t.column("image").to_pylist(),
            t.column("text").to_pylist(), t.column("alt_texts").to_pylist(),
        ):
            defect = natural_defect(source, text)
            if source == "tuxpaint" and alts and rng.random() < config.foreign_rate:
                text, defect = alts[int(rng.integers(len(alts)))], "foreign"
            texts.append(text)
            images.append(png)
            srcs.append(source)
            defects.append(defect)
            keys.append(f"{source}/{key}")
    n = len(texts)
    # Swapped captions: a random subset passes its captions around a random cycle, so no pair
    # keeps its own caption.
    swap = rng.choice(n, size=int(round(config.swap_rate * n)), replace=False)
    if len(swap) > 1:
        moved = [texts[i] for i in np.roll(swap, 1)]
        for i, t in zip(swap, moved):
            texts[i] = t
            defects[i] = "swapped"
    # Exact duplicates: copies of random rows (image and caption), appended.
    dups = rng.choice(n, size=int(round(config.duplicate_rate * n)), replace=True)
    copies = {}
    uids = []
    for i in range(n):
        uids.append(content_uid(keys[i], texts[i]))
    for i in dups:
        copies[i] = copies.get(i, 0) + 1
        texts.append(texts[i])
        images.append(images[i])
        srcs.append(srcs[i])
        defects.append("duplicate")
        keys.append(keys[i])
        uids.append(content_uid(keys[i], texts[i], "copy", copies[i]))
    # Shuffle rows so shards mix sources (as a web crawl would).
    order = rng.permutation(len(texts))
    table = pa.table(
        {
            "uid": [uids[i] for i in order],
            "text": [texts[i] for i in order],
            "source": [srcs[i] for i in order],
            "defect": [defects[i] for i in order],
            "image_sha1": [sha1_bytes(images[i]) for i in order],
            "key": [keys[i] for i in order],
        }
    )
    return table, [images[i] for i in order]


def composition(table: pa.Table) -> dict:
    """Counts per source and defect (for the report and docs)."""
    src = np.asarray(table.column("source").to_pylist())
    dfc = np.asarray(table.column("defect").to_pylist())
    out = {"rows": len(src), "by_source": {}, "by_defect": {}, "by_source_defect": {}}
    for s in sorted(set(src.tolist())):
        out["by_source"][s] = int((src == s).sum())
        counts = {d: int(((src == s) & (dfc == d)).sum()) for d in DEFECTS}
        out["by_source_defect"][s] = {d: c for d, c in counts.items() if c}
    for d in DEFECTS:
        out["by_defect"][d] = int((dfc == d).sum())
    return out

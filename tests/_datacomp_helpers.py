"""A generated DataComp-layout directory: ``shards/*.tar`` (webdataset, as DataComp's downloader
writes it) and ``metadata/*.parquet`` + ``*.npz`` (uid, text, CLIP scores, b32/l14 embeddings).

Like a real download: tar samples are renumbered (keys are running numbers ``SSSSSIIII``, not uids;
the uid is in each ``.json``), images are real JPEG bytes, the metadata rows come in another order
than the tar samples, and some metadata uids have no sample in any tar (failed downloads).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from _score_helpers import CAPTIONS, cosine64, datacomp_arrays
from flyt.io.datacomp import write_datacomp_shard
from flyt.io.subsets import write_subset
from flyt.io.uids import random_uids, uids_to_pairs
from flyt.io.webdataset import write_shard


@dataclass
class DataCompDir:
    root: Path
    uids: np.ndarray  # every metadata uid (hex strings)
    in_tars: np.ndarray  # the uids with a sample in some tar
    absent: np.ndarray  # metadata uids with no sample (failed downloads)
    tars: list[Path]

    @property
    def shards(self) -> Path:
        return self.root / "shards"

    @property
    def metadata(self) -> Path:
        return self.root / "metadata"


def jpegs(n: int, rng: np.random.Generator, size: int | tuple[int, int] = 16, quality: int = 85) -> list[bytes]:
    """n distinct real JPEGs: a smooth random colour field plus noise (noise sets the file size).

    ``size``: side in pixels, or a (low, high) range to draw each side from (128..224: about 10-30 KB).
    """
    from PIL import Image

    out = []
    for _ in range(n):
        side = size if isinstance(size, int) else int(rng.integers(size[0], size[1] + 1))
        base = rng.uniform(0, 255, (4, 4, 3))
        img = np.kron(base, np.ones((side // 4 + 1, side // 4 + 1, 1)))[:side, :side]
        img = np.clip(img + rng.normal(0, 40, img.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=quality)
        out.append(buf.getvalue())
    return out


def make_datacomp_dir(root, pairs: int = 300, tars: int = 4, metadata_shards: int = 2, absent: int = 20, seed: int = 0,
                      image_size: int | tuple[int, int] = 16, distinct_images: int | None = None,
                      with_metadata: bool = True) -> DataCompDir:
    """A DataComp-layout directory of ``pairs`` metadata rows, ``pairs - absent`` of them downloaded.

    ``distinct_images``: reuse that many JPEGs (benchmarks: realistic sizes without encoding each one).
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    uids = random_uids(pairs, rng)
    captions = np.array([f"{CAPTIONS[i % len(CAPTIONS)]} #{i}" for i in range(pairs)])
    gone = rng.choice(pairs, size=absent, replace=False)
    present = np.setdiff1d(np.arange(pairs), gone)
    images = jpegs(distinct_images or len(present), rng, image_size)
    order = rng.permutation(present)  # tar order differs from metadata order
    paths = []
    for s, chunk in enumerate(np.array_split(order, tars)):
        samples = []
        for j, i in enumerate(chunk):
            key = f"{s:05d}{j:04d}"
            meta = {"uid": str(uids[i]), "key": key, "caption": str(captions[i]), "url": f"http://example.com/{i}.jpg",
                    "status": "success", "error_message": None}
            samples.append({"__key__": key, "jpg": images[j % len(images)] if distinct_images else images[int(np.searchsorted(present, i))],
                            "txt": str(captions[i]), "json": json.dumps(meta)})
        path = root / "shards" / f"{s:08d}.tar"
        write_shard(path, samples)
        paths.append(path)
    if with_metadata:
        rows = rng.permutation(pairs)
        for m, chunk in enumerate(np.array_split(rows, metadata_shards)):
            arrays = datacomp_arrays(rng, len(chunk))
            table = pa.table({
                "uid": pa.array(uids[chunk]),
                "text": pa.array(captions[chunk]),
                "clip_b32_similarity_score": pa.array(cosine64(arrays["b32_img"], arrays["b32_txt"]).astype(np.float32)),
                "clip_l14_similarity_score": pa.array(cosine64(arrays["l14_img"], arrays["l14_txt"]).astype(np.float32)),
            })
            write_datacomp_shard(root / "metadata", f"{m:08d}", table, arrays)
    return DataCompDir(root, uids, uids[present], uids[gone], paths)


def write_counts_subset(path, uids, counts) -> Path:
    """A DataComp subset .npy with uid i repeated counts[i] times (sorted, as flyt sample writes it)."""
    pairs = uids_to_pairs(np.asarray(uids))
    counts = np.asarray(counts, dtype=np.int64)
    order = np.argsort(pairs, order=("f0", "f1"))
    keep = counts[order] > 0
    write_subset(path, pairs[order][keep], counts[order][keep], {"generated": True})
    return Path(path)


def read_members(tars) -> dict[str, dict[str, bytes]]:
    """uid -> {extension: bytes} of every sample in the given tars (what a reshard must reproduce)."""
    import json

    from flyt.io.tars import scan_tar

    found = {}
    for tar in tars:
        with open(tar, "rb") as f:
            for s in scan_tar(tar):
                members = {}
                for e, o, z in zip(s.exts, s.offsets, s.sizes):
                    f.seek(o)
                    members[e] = f.read(z)
                found[json.loads(members["json"])["uid"]] = members
    return found

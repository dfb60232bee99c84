"""WebDataset shards (plain ``.tar`` files), read with the standard library.

A sample is the group of tar members sharing one key (the name up to its first dot):
``KEY.jpg|png|webp`` (the image), ``KEY.txt`` (caption), ``KEY.cls`` (integer label), ``KEY.json``
(DataComp puts the ``uid`` there). Pools follow DataComp's layout; task directories follow
clip_benchmark's: ``classnames.txt``, ``zeroshot_classification_templates.txt`` and ``train/*.tar``
(optionally ``test/*.tar``).

Shard patterns are globs or WebDataset brace ranges (``shards/{00000..00127}.tar``).
"""

from __future__ import annotations

import glob
import json
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from flyt.errors import FlytError
from flyt.io.tars import scan_tar
from flyt.io.uids import pair_uid

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
_BRACE = re.compile(r"\{(\d+)\.\.(\d+)\}")


def expand_pattern(pattern: str) -> list[str]:
    """``a/{000..002}.tar`` -> [a/000.tar, a/001.tar, a/002.tar]; globs and directories too."""
    m = _BRACE.search(pattern)
    if m:
        lo, hi = m.group(1), m.group(2)
        out = []
        for i in range(int(lo), int(hi) + 1):
            out += expand_pattern(pattern[: m.start()] + str(i).zfill(len(lo)) + pattern[m.end() :])
        return out
    p = Path(pattern)
    if p.is_dir():
        return sorted(str(x) for x in p.glob("*.tar"))
    if any(ch in pattern for ch in "*?["):
        return sorted(glob.glob(pattern))
    return [pattern]


def list_tars(patterns, what: str = "webdataset") -> list[str]:
    """All shard paths of one or several patterns, each checked to exist."""
    if isinstance(patterns, (str, Path)):
        patterns = [str(patterns)]
    paths = []
    for pat in patterns:
        found = expand_pattern(str(pat))
        if not found:
            raise FlytError(f"{what} pattern {pat}: matches no .tar shards")
        for f in found:
            if not Path(f).is_file():
                raise FlytError(f"{what} shard {f} does not exist")
        paths += found
    if not paths:
        raise FlytError(f"{what}: no shards given")
    return paths


@dataclass
class Member:
    """Where one member's bytes are inside its tar (for random access by seek)."""

    path: str
    offset: int
    size: int

    def read(self) -> bytes:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            return f.read(self.size)


def iter_samples(path: str) -> Iterator[dict[str, Member]]:
    """Samples of one shard as {extension: Member}, plus '__key__' (a str), in file order.

    Read with the strict header scanner (``flyt.io.tars.scan_tar``): a damaged header or a truncated
    member fails naming the file and byte offset, where ``tarfile`` would stop without a word and the
    rest of the shard would be lost.
    """
    if not Path(path).is_file():
        raise FlytError(f"{path}: unreadable webdataset shard (no such file)")
    try:
        scanned = scan_tar(path)
    except FlytError as exc:
        why = str(exc).removeprefix(f"{path}: ")
        raise FlytError(f"{path}: unreadable webdataset shard ({why})") from None
    for s in scanned:
        sample: dict = {"__key__": s.key}
        for ext, offset, size in zip(s.exts, s.offsets, s.sizes):
            sample[ext.lower()] = Member(path, offset, size)
        yield sample


def image_member(sample: dict, where: str) -> Member:
    for ext in IMAGE_EXTS:
        if ext in sample:
            return sample[ext]
    raise FlytError(f"{where}: sample {sample['__key__']!r} has no image (.jpg/.png/.webp)")


def read_text(sample: dict, ext: str, where: str) -> str:
    if ext not in sample:
        raise FlytError(f"{where}: sample {sample['__key__']!r} has no .{ext}")
    return sample[ext].read().decode("utf-8", errors="replace").strip()


def sample_uid(sample: dict, image: Member, text: str) -> str:
    """DataComp's uid from ``.json`` when present, else the pair's content uid (:func:`pair_uid`)."""
    if "json" in sample:
        try:
            meta = json.loads(sample["json"].read())
        except ValueError:
            meta = {}
        if isinstance(meta, dict) and meta.get("uid"):
            return str(meta["uid"])
    return pair_uid(image.read(), text)


class PairIndex:
    """uid -> where a pair's image and caption bytes are; built by one pass over the shards.

    Holds no image bytes, only sorted numpy columns (about 56 bytes a pair: uid as two uint64,
    shard number, byte offsets and sizes); images and captions are read by seek when a batch needs them.
    """

    def __init__(self, patterns):
        from flyt.io.parquet import check_unique
        from flyt.io.uids import uids_to_pairs

        self.paths = list_tars(patterns, "pool webdataset")
        uids, rows = [], []
        for shard, path in enumerate(self.paths):
            for sample in iter_samples(path):
                img = image_member(sample, path)
                if "txt" not in sample:
                    raise FlytError(f"{path}: sample {sample['__key__']!r} has no .txt")
                text = sample["txt"]
                uids.append(sample_uid(sample, img, text.read().decode("utf-8", errors="replace").strip()))
                rows.append((shard, img.offset, img.size, text.offset, text.size))
        if not uids:
            raise FlytError(f"pool webdataset {patterns}: no samples (empty pool)")
        keys = uids_to_pairs(np.asarray(uids), "pool webdataset")
        check_unique(keys, np.asarray(uids), "pool webdataset")
        order = np.argsort(keys, order=("f0", "f1"))
        self.keys = keys[order]
        self.where = np.asarray(rows, dtype=np.int64)[order]  # shard, image offset/size, text offset/size

    def __len__(self) -> int:
        return len(self.keys)

    def find(self, uids) -> np.ndarray:
        """Row of each uid in the index; -1 where absent."""
        from flyt.io.uids import uids_to_pairs

        q = uids_to_pairs(np.asarray(uids, dtype=str), "uids")
        pos = np.searchsorted(self.keys, q)
        pos_c = np.minimum(pos, len(self.keys) - 1)
        return np.where(self.keys[pos_c] == q, pos_c, -1)

    def get(self, uids) -> tuple[list[bytes], list[str]]:
        rows = self.find(uids)
        if (rows < 0).any():
            u = np.asarray(uids)[rows < 0][0]
            raise FlytError(f"pool webdataset: no sample with uid {u} (the pool shards and the webdataset differ)")
        images, texts = [], []
        for shard, i_off, i_size, t_off, t_size in self.where[rows]:
            path = self.paths[shard]
            images.append(Member(path, int(i_off), int(i_size)).read())
            texts.append(Member(path, int(t_off), int(t_size)).read().decode("utf-8", errors="replace").strip())
        return images, texts


def iter_pairs(path: str) -> Iterator[tuple[str, str, bytes]]:
    """(uid, caption, image bytes) of one pool shard, in file order."""
    for sample in iter_samples(path):
        img = image_member(sample, path)
        text = read_text(sample, "txt", path)
        yield sample_uid(sample, img, text), text, img.read()


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        raise FlytError(f"{path}: missing file")
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not lines:
        raise FlytError(f"{path}: file is empty")
    return lines


def is_task_webdataset(directory) -> bool:
    root = Path(directory)
    return (root / "train").is_dir() and any((root / "train").glob("*.tar"))


def read_task(directory, splits=("train", "test")) -> tuple[list[str], list[str], dict]:
    """A clip_benchmark webdataset task -> (classnames, templates, {split: (image bytes, labels)})."""
    root = Path(directory)
    if not root.is_dir():
        raise FlytError(f"task directory {root} does not exist")
    classnames = _lines(root / "classnames.txt")
    templates = _lines(root / "zeroshot_classification_templates.txt")
    for i, t in enumerate(templates):
        if "{c}" not in t:
            raise FlytError(f"{root / 'zeroshot_classification_templates.txt'}: line {i + 1}: template {t!r} has no '{{c}}'")
    out = {}
    for split in splits:
        if not (root / split).is_dir():
            continue
        images, labels = [], []
        for path in list_tars(str(root / split), f"task {split}"):
            for sample in iter_samples(path):
                raw = read_text(sample, "cls", path)
                try:
                    label = int(raw)
                except ValueError:
                    raise FlytError(f"{path}: sample {sample['__key__']!r}: .cls {raw!r} is not an integer") from None
                if not 0 <= label < len(classnames):
                    raise FlytError(f"{path}: sample {sample['__key__']!r}: label {label} out of range for {len(classnames)} classes")
                images.append(image_member(sample, path).read())
                labels.append(label)
        if images:
            out[split] = (images, labels)
    if "train" not in out:
        raise FlytError(f"{root / 'train'}: no webdataset shards with samples (need train/*.tar)")
    return classnames, templates, out


def write_shard(path, samples: list[dict]) -> None:
    """Write one uncompressed shard from dicts {'__key__': k, ext: bytes|str} (tests, tools)."""
    import io

    from flyt.io.atomic import atomic_path

    with atomic_path(path) as tmp, tarfile.open(tmp, "w") as tar:
        for s in samples:
            for ext, value in s.items():
                if ext == "__key__":
                    continue
                data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
                info = tarfile.TarInfo(f"{s['__key__']}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))

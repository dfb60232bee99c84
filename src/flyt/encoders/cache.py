"""Embedding cache keyed by content: sha1 of the image bytes or of the caption's UTF-8 text.

One directory per encoder (its ``name``) and modality, holding parquet parts with ``key`` (40-hex
sha1) and ``embedding``. New vectors are appended as a new part after every chunk, so an
interrupted run keeps what it computed and a re-run only encodes what is missing.

Progress: by default each call that encodes shows its own bar (``progress``: flyt.progress's ``show``);
inside ``with encoder.stage(desc, images, texts)`` one bar covers every vector those inputs still
need (counted up front: the distinct keys not cached), so a stage made of many calls has one ETA.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from flyt.encoders.base import Encoder
from flyt.io.arrays import fixed_size_list
from flyt.io.atomic import write_parquet
from flyt.io.images import decode_image
from flyt.progress import Progress

CHUNK = 1024  # vectors per cache part
# vectors per encoder call (progress moves this often); a multiple of the encoders' own batch sizes
# (16 images, 64 texts), so their batches are the same as when a whole chunk was one call
STEP = 256


def sha1_bytes(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def sha1_text(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


class _Store:
    """The parts of one (encoder, modality) directory, loaded lazily into one dict."""

    def __init__(self, directory: Path | None, dim: int):
        self.directory = directory
        self.dim = dim
        self.rows: dict[str, np.ndarray] = {}
        if directory is not None and directory.is_dir():
            for part in sorted(directory.glob("part-*.parquet")):
                t = pq.read_table(part)
                keys = t.column("key").to_pylist()
                emb = t.column("embedding").combine_chunks().flatten().to_numpy().reshape(len(keys), -1)
                if emb.shape[1] != dim:
                    continue  # a stale part from another configuration; ignore it
                self.rows.update(zip(keys, emb.astype(np.float32)))

    def add(self, keys: list[str], emb: np.ndarray) -> None:
        self.rows.update(zip(keys, emb))
        if self.directory is not None and keys:
            n = len(list(self.directory.glob("part-*.parquet"))) if self.directory.is_dir() else 0
            table = pa.table({"key": pa.array(keys, pa.string()), "embedding": fixed_size_list(emb)})
            write_parquet(table, self.directory / f"part-{n:05d}-{keys[0][:8]}.parquet")


class CachedEncoder:
    """Wraps an :class:`Encoder`; returns cached rows and encodes only what is new.

    ``directory=None`` keeps the cache in memory only.
    """

    def __init__(self, encoder: Encoder, directory=None, progress: bool | None = False):
        self.encoder = encoder
        root = Path(directory) / encoder.name if directory is not None else None
        self._images = _Store(root / "image" if root else None, encoder.image_dim)
        self._texts = _Store(root / "text" if root else None, encoder.text_dim)
        self.progress = progress
        self.encoded = {"image": 0, "text": 0}  # how many vectors were computed (not cached)
        self._stage: Progress | None = None

    def pending(self, images=(), texts=()) -> tuple[int, int]:
        """(images, texts) among these inputs that are not cached: what encoding them would compute."""
        image_keys = {sha1_bytes(b) for b in images} - self._images.rows.keys()
        text_keys = {sha1_text(str(t)) for t in texts} - self._texts.rows.keys()
        return len(image_keys), len(text_keys)

    @contextlib.contextmanager
    def stage(self, desc: str, images=(), texts=()):
        """One bar over every vector ``images`` and ``texts`` still need, while the block encodes them
        (inside another stage: that stage's bar, which already counted them)."""
        if self._stage is not None:
            yield self._stage
            return
        n_images, n_texts = self.pending(images, texts)
        unit = "image" if not n_texts else "text" if not n_images else "vector"
        with Progress(n_images + n_texts, desc, unit=unit, show=self.progress) as bar:
            self._stage = bar
            try:
                yield bar
            finally:
                self._stage = None

    def _lookup(self, store: _Store, keys: list[str], items: list, encode, kind: str) -> np.ndarray:
        todo: dict[str, int] = {}
        for i, k in enumerate(keys):
            if k not in store.rows and k not in todo:
                todo[k] = i
        todo_keys = list(todo)
        own = self._stage is None
        bar = Progress(len(todo_keys), f"embed {kind}s", unit=kind, show=self.progress) if own else self._stage
        for start in range(0, len(todo_keys), CHUNK):
            chunk = todo_keys[start : start + CHUNK]
            parts = []
            for s in range(0, len(chunk), STEP):
                parts.append(encode([items[todo[k]] for k in chunk[s : s + STEP]]))
                bar.update(len(chunk[s : s + STEP]))
            store.add(chunk, np.concatenate(parts))
            self.encoded[kind] += len(chunk)
        if own:
            bar.close()
        out = np.empty((len(keys), store.dim), dtype=np.float32)
        for i, k in enumerate(keys):
            out[i] = store.rows[k]
        return out

    def images(self, images: list[bytes], where: str = "image") -> np.ndarray:
        """Encoded image files (PNG/JPEG bytes) -> (n, image_dim) float32, L2-normalised."""
        keys = [sha1_bytes(b) for b in images]

        def encode(batch):
            return self.encoder.encode_images([decode_image(b, where) for b in batch])

        return self._lookup(self._images, keys, list(images), encode, "image")

    def texts(self, texts: list[str]) -> np.ndarray:
        """Captions -> (n, text_dim) float32, L2-normalised."""
        texts = [str(t) for t in texts]
        return self._lookup(self._texts, [sha1_text(t) for t in texts], texts, self.encoder.encode_texts, "text")

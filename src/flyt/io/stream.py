"""Apply a subset without rewriting the pool: iterate the ORIGINAL webdataset tars and yield each
sample of the subset as many times as the subset holds its uid, in shuffled order.

    stream = subset_stream("subset.npy", "shards/{00000000..00001287}.tar", seed=0, buffer=10_000)
    for sample in stream:  # {'__key__': '<uid>_<k>', '__url__': tar, 'jpg': bytes, 'txt': bytes, 'json': bytes}
        ...

Order. The tars are sorted by path and, with ``shard_shuffle``, permuted by the seed (and epoch);
each reader takes every n-th tar of that list (see workers below). A tar's samples are scanned from
its headers (``flyt.io.tars.scan_tar``; images of samples outside the subset are never read), the
kept ones are read with one seek each, and copy k of uid u is pushed into a shuffle buffer of
``buffer`` samples: once full, each new sample replaces a uniformly chosen one, which is yielded; at
the end the rest comes out in random order. Everything is deterministic for (seed, epoch, reader).

Memory. At most ``buffer`` samples are held (``stats['peak_buffer']`` records the most held; the
copies of one sample share their bytes), plus one tar's headers. The subset, a ``.npy`` or the parts
form of ``flyt sample --part-rows`` (its directory or manifest.json), is memory-mapped part by part and
searched by binary search, never loaded (``flyt.io.subsets.open_subset``); the constructor reads it once,
block by block, to check its order.

Workers. Inside a torch ``DataLoader`` worker the stream notices it (``get_worker_info``, only
when torch is already imported) and takes every ``num_workers``-th tar from position ``id``; for
several processes (distributed training) pass ``rank`` and ``world_size`` too (the tars are split
by rank first, then by DataLoader worker). Each reader has its own buffer and random stream::

    import torch
    import flyt

    class Pairs(torch.utils.data.IterableDataset):
        def __init__(self, stream):
            self.stream = stream
        def __iter__(self):  # runs in each DataLoader worker; the stream splits the tars itself
            for s in self.stream:
                yield decode_image(s["jpg"]), s["txt"].decode()

    stream = flyt.subset_stream("subset.npy", "shards/{00000000..00001287}.tar", seed=0, buffer=10_000)
    loader = torch.utils.data.DataLoader(Pairs(stream), batch_size=256, num_workers=8)
    for epoch in range(epochs):
        stream.set_epoch(epoch)  # a new tar permutation and buffer stream per epoch
        for images, captions in loader:
            ...

Values are the members' raw bytes, keyed by extension as written in the tar (webdataset's raw
samples). ``'__key__'`` is ``<uid>_<k>``, as in ``flyt reshard``'s output. A uid found in several tars
is yielded from each (DataComp's downloader writes each uid once); uids of the subset found in no
tar are simply never yielded (``flyt reshard`` reports them).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import numpy as np

from flyt.errors import FlytError
from flyt.io.subsets import open_subset
from flyt.io.tars import read_at, sample_uids, scan_tar
from flyt.io.webdataset import list_tars

_SALT_TARS = 0x7A45_5EED


def _torch_worker() -> tuple[int, int]:
    torch = sys.modules.get("torch")
    if torch is None:
        return 0, 1
    info = torch.utils.data.get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


class SubsetStream:
    """An iterable over the subset's samples in the original tars (module doc). Picklable."""

    def __init__(self, subset, shards, seed: int = 0, buffer: int = 10_000, shard_shuffle: bool = True,
                 rank: int = 0, world_size: int = 1, epoch: int = 0):
        for name, value, low in (("buffer", buffer, 1), ("seed", seed, 0), ("world_size", world_size, 1), ("epoch", epoch, 0)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
                raise FlytError(f"subset_stream: {name} must be an integer >= {low}, got {value!r}")
        if not 0 <= rank < world_size:
            raise FlytError(f"subset_stream: rank must lie in [0, {world_size}), got {rank!r}")
        self.subset = Path(subset).resolve()
        open_subset(self.subset, check=True)  # dtype and order checked once, here
        self.tars = sorted({str(Path(p).resolve()) for p in list_tars(shards, "subset_stream shards")})
        self.seed, self.buffer, self.shard_shuffle = int(seed), int(buffer), bool(shard_shuffle)
        self.rank, self.world_size, self.epoch = int(rank), int(world_size), int(epoch)
        self.stats = {"peak_buffer": 0, "yielded": 0, "tars": 0}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def reader(self) -> tuple[int, int]:
        """(position, count) of this reader among all readers: rank x DataLoader worker."""
        wid, nw = _torch_worker()
        return self.rank * nw + wid, self.world_size * nw

    def tar_order(self, position: int = 0, count: int = 1) -> list[str]:
        """The tars one reader visits, in order."""
        order = list(self.tars)
        if self.shard_shuffle:
            rng = np.random.default_rng([self.seed, self.epoch, _SALT_TARS])
            order = [order[i] for i in rng.permutation(len(order))]
        return order[position::count]

    def _copies(self, tars: list[str]) -> Iterator[dict]:
        sub = open_subset(self.subset, check=False)
        for path in tars:
            samples = scan_tar(path)
            with open(path, "rb", buffering=0) as f:
                pairs, has_uid = sample_uids(samples, f, path)
                _, count = sub.locate(pairs)
                self.stats["tars"] += 1
                for i in np.flatnonzero(has_uid & (count > 0)).tolist():
                    s = samples[i]
                    start, end = s.span
                    data = read_at(f, start, end - start, path)
                    members = {e: data[o - start : o - start + z] for e, o, z in zip(s.exts, s.offsets, s.sizes)}
                    uid = f"{int(pairs['f0'][i]):016x}{int(pairs['f1'][i]):016x}"
                    for k in range(int(count[i])):
                        yield {"__key__": f"{uid}_{k}", "__url__": path, **members}

    def __iter__(self) -> Iterator[dict]:
        position, count = self.reader()
        rng = np.random.default_rng([self.seed, self.epoch, position, count])
        self.stats = {"peak_buffer": 0, "yielded": 0, "tars": 0}
        buf: list[dict] = []
        for item in self._copies(self.tar_order(position, count)):
            if len(buf) < self.buffer:
                buf.append(item)
                self.stats["peak_buffer"] = max(self.stats["peak_buffer"], len(buf))
                continue
            j = int(rng.integers(len(buf)))
            out, buf[j] = buf[j], item
            self.stats["yielded"] += 1
            yield out
        for j in rng.permutation(len(buf)).tolist():
            self.stats["yielded"] += 1
            yield buf[j]


def subset_stream(subset, shards, seed: int = 0, buffer: int = 10_000, shard_shuffle: bool = True,
                  rank: int = 0, world_size: int = 1) -> SubsetStream:
    """The subset's samples from the original tars, each its number of times, shuffled (module doc)."""
    return SubsetStream(subset, shards, seed=seed, buffer=buffer, shard_shuffle=shard_shuffle, rank=rank, world_size=world_size)

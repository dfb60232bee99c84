"""The local engine: run a per-shard function over shards, in-process or in a process pool.

Steps are plain functions ``fn(item) -> result``; the engine only decides where they run.
Results come back in input order whatever the number of workers.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def map_shards(fn: Callable[[T], R], items: Iterable[T], workers: int = 1) -> Iterator[R]:
    """Yield fn(item) for each item, in order. workers > 1 uses separate processes."""
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        for item in items:
            yield fn(item)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(fn, items)

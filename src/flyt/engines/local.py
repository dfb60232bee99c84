"""The local engine: run a per-shard function over shards, in-process or in a process pool.

Steps are plain functions ``fn(item) -> result``; the engine only decides where they run.
Results come back in input order whatever the number of workers.

Workers are started with ``forkserver`` (``spawn`` where it does not exist), never ``fork``: a forked
child inherits the parent's OpenMP thread pool in whatever state it was (the parent may have fitted
a scorer with torch just before), and its first parallel region then waits forever at a barrier.
So ``fn`` and the items must pickle by reference (module-level functions, plain data); large state
travels through a file, as ``flyt score`` does with its fitted scorers.

Workers die with the run, however it ends (even by SIGKILL): each watches the pipe its starting
process keeps open for it (``multiprocessing.parent_process().sentinel``: it reads end-of-file the
moment that process is gone, zombie or not) and exits then. The fork server cannot be relied on for
this: every worker holds the server's keep-alive pipe, so the server outlives a killed run as long
as its workers do. On Linux each worker also asks the kernel for SIGKILL when its parent process
exits (``PR_SET_PDEATHSIG``), and where neither exists it polls its parent pid once a second.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PARENT_POLL_SECONDS = 1.0


def start_method() -> str:
    """``forkserver`` where the platform has it, else ``spawn``: never ``fork`` (see module doc)."""
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def _die_with_parent() -> None:
    """Worker initializer: make this worker exit when the process that started it goes away."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # no prctl: the watch below still works
            pass
    run = multiprocessing.parent_process()
    sentinel = run.sentinel if run is not None else None
    threading.Thread(target=_watch, args=(sentinel, os.getppid()), name="flyt-run-watch", daemon=True).start()


def _watch(sentinel: int | None, parent: int) -> None:
    from multiprocessing.connection import wait

    while True:
        if sentinel is not None:
            gone = bool(wait([sentinel], timeout=PARENT_POLL_SECONDS))
        else:
            time.sleep(PARENT_POLL_SECONDS)
            gone = False
        if gone or os.getppid() != parent:  # the run is gone, or this worker was re-parented
            os._exit(1)


def map_shards(fn: Callable[[T], R], items: Iterable[T], workers: int = 1) -> Iterator[R]:
    """Yield fn(item) for each item, in order. workers > 1 uses separate processes."""
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        for item in items:
            yield fn(item)
        return
    context = multiprocessing.get_context(start_method())
    if context.get_start_method() == "forkserver":
        # Imported once in the fork server (when it starts: once per process), not in every worker.
        # torch only when this run already uses it; importing it starts no threads.
        heavy = ["torch"] if "torch" in sys.modules else []
        context.set_forkserver_preload(["__main__", getattr(fn, "__module__", None) or "__main__", *heavy])
    with ProcessPoolExecutor(max_workers=min(workers, len(items)), mp_context=context,
                             initializer=_die_with_parent) as pool:
        yield from pool.map(fn, items)

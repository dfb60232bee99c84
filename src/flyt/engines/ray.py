"""The Ray engine (``pip install 'flyt-clip[ray]'``): the same per-shard functions as Ray tasks.

``map_shards(fn, items, workers)`` has the local engine's contract: results in input order. At most
``2 * workers`` tasks are in flight, so results (and their object-store memory) do not pile up on
huge pools. If Ray is not initialised yet, this starts it: connecting to the cluster named by
``RAY_ADDRESS`` when set, else a local Ray with ``num_cpus=workers``; ``FLYT_RAY_LOCAL_MODE=1``
uses Ray's serial local mode (debugging). A Ray started here is shut down when the iteration ends,
or, inside ``session()``, when the session ends: a command of several stages (dedup's fit, hash, spill
and solve passes, then the score shards; reshard's index and write) starts Ray once, not per stage.
``fn`` may be any picklable callable (a module-level function, a builtin, a functools.partial).

On a cluster, tasks are spread over the nodes (Ray's ``SPREAD`` strategy: per-shard work is I/O and
memory as much as CPU), and every path a task reads or writes must be on storage every node reaches.
``tasks_per_node`` counts the tasks each node ran (node id -> tasks, since import), so a caller can
see where the work went.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter, deque
from typing import Callable, Iterable, Iterator, TypeVar

from flyt.errors import require

T = TypeVar("T")
R = TypeVar("R")

tasks_per_node: Counter = Counter()
_sessions = 0  # open session() contexts (nested: the outermost one shuts down)
_started_in_session = False  # a map_shards inside a session started Ray: the session shuts it down


@contextlib.contextmanager
def session():
    """Keep a Ray that a map_shards call starts inside this context running until the context ends.
    Starts nothing itself (a run with nothing to do never starts Ray), and leaves a Ray it did not
    start (RAY_ADDRESS's cluster joined by the caller, or ``ray.init`` called by the user) alone."""
    global _sessions, _started_in_session
    _sessions += 1
    try:
        yield
    finally:
        _sessions -= 1
        if not _sessions and _started_in_session:
            _started_in_session = False
            import ray

            ray.shutdown()


def _init(ray, workers: int) -> bool:
    """Initialise Ray if needed; True if this call started it (and must shut it down)."""
    if ray.is_initialized():
        return False
    kwargs = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(**kwargs)  # joins the running cluster named by RAY_ADDRESS
    elif os.environ.get("FLYT_RAY_LOCAL_MODE") == "1":
        ray.init(local_mode=True, **kwargs)
    else:
        ray.init(num_cpus=max(1, workers), **kwargs)
    return True


def _call(fn, item):
    # One generic remote function: ray.remote rejects builtins and partials, pickle does not.
    import ray

    return ray.get_runtime_context().get_node_id(), fn(item)


def map_shards(fn: Callable[[T], R], items: Iterable[T], workers: int = 1) -> Iterator[R]:
    """Yield fn(item) for each item, in order, computed by Ray tasks (``workers`` at a time x2)."""
    global _started_in_session
    ray = require("ray", "ray")
    items = list(items)
    if not items:
        return
    started = _init(ray, workers)
    try:
        remote = ray.remote(num_cpus=1, max_retries=0, scheduling_strategy="SPREAD")(_call)
        pending = deque()
        it = iter(items)

        def submit_next() -> None:
            for item in it:
                pending.append(remote.remote(fn, item))
                return

        for _ in range(max(1, 2 * workers)):
            submit_next()
        while pending:
            ref = pending.popleft()
            submit_next()  # keep the window full while we wait
            try:
                node, result = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:
                raise exc.as_instanceof_cause() from None  # the task's own exception type, like local
            tasks_per_node[node] += 1
            yield result
    finally:
        if started and _sessions:
            _started_in_session = True
        elif started:
            ray.shutdown()

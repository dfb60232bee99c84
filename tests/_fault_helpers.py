"""Faults for the SIGKILL tests: stall a chosen step in every process of a run, then kill its parent.

``fault_env(tmp, stall)`` gives the environment of a ``python -m flyt ...`` child whose every Python
process (the parent, the forkserver, each worker) first imports a ``sitecustomize`` that calls
``install()``. The stall then parks the process at a known point of the run, so the test kills the
parent mid-run without guessing at timings:

- ``write:GLOB``: inside ``flyt.io.atomic.atomic_path`` for a final name matching GLOB, after the
  temporary file was written and before it is renamed (what a SIGKILL mid-write leaves);
- ``sample-worker``: at the start of every per-shard step of ``flyt sample``'s workers.

A stalled process writes ``<marks>/<pid>`` and sleeps until it is killed. Processes are found through
/proc (no psutil needed), so these helpers are Linux-only.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SITECUSTOMIZE = """\
import os
if os.environ.get("FLYT_FAULT_STALL"):
    import tests._fault_helpers
    tests._fault_helpers.install()
"""


def fault_env(tmp: Path, stall: str | None) -> dict:
    """Environment for a child run: the repository on the path, the stall (or none) armed."""
    site = tmp / "fault-site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    marks = tmp / "fault-marks"
    marks.mkdir(exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("FLYT_FAULT_STALL", None)
    if stall:
        env["FLYT_FAULT_STALL"] = stall
        env["FLYT_FAULT_MARKS"] = str(marks)
    return env


def _stall() -> None:
    Path(os.environ["FLYT_FAULT_MARKS"], str(os.getpid())).touch()
    while True:
        time.sleep(0.05)


def install() -> None:
    stall = os.environ["FLYT_FAULT_STALL"]
    if stall.startswith("write:"):
        import flyt.io.atomic as atomic

        pattern, original = stall[len("write:"):], atomic.atomic_path

        @contextlib.contextmanager
        def stalling(path, *args, **kwargs):
            with original(path, *args, **kwargs) as tmp:
                yield tmp
                if fnmatch.fnmatch(Path(path).name, pattern):
                    _stall()

        atomic.atomic_path = stalling  # before any flyt module binds the name
    elif stall == "sample-worker":
        import flyt.sampling.select as select

        original = select._apply

        @functools.wraps(original)  # same module and name: pickled by reference, found again in workers
        def stalling(*args, **kwargs):
            _stall()

        select._apply = stalling
    else:
        raise SystemExit(f"unknown FLYT_FAULT_STALL {stall!r}")


# ----------------------------------------------------------------------------- processes
def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a live process, None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[1])


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (children, grandchildren, ...)."""
    parent_of = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st is not None:
                parent_of[int(entry.name)] = st[1]
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parent_of.items() if pp in frontier and p not in found}
        found |= frontier
    return found


def alive(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def wait_until(condition, what: str, limit: float = 120.0) -> None:
    """Poll ``condition`` until true; fail (not hang) after ``limit`` seconds, a bound, not a timing."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for: {what}")
        time.sleep(0.05)


def kill_all(pids) -> None:
    """Clean up after a failing test: SIGKILL the given pids (processes this test started)."""
    import signal

    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def flyt_command(*args) -> list[str]:
    return [sys.executable, "-m", "flyt", *map(str, args)]

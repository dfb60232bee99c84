"""The run directory ``out``: checked before any work, and removed again if a fresh run leaves nothing
a later ``--resume`` could use.

Layout: config.yaml, metrics.jsonl, checkpoints/latest.pt (+ step_XXXXXXX.pt kept ones), scorer.pt.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from flyt.errors import FlytError
from flyt.io.atomic import remove_leftovers

RUN_FILES = ("config.yaml", "metrics.jsonl", "scorer.pt")
LOCK_NAME = ".train.lock"  # held by the run writing the directory (flyt.io.atomic.exclusive_lock)
# the temporaries of checkpoints/latest.pt and step_XXXXXXX.pt writes (flyt.io.atomic.atomic_path's names)
_CHECKPOINT_TMP = re.compile(r"\.(latest|step_\d+)\.pt\.[^./]+\.tmp")


def check_out(run_dir: Path) -> None:
    """``out`` must be a directory, or creatable: not a file, not under a file, on a writable parent."""
    if run_dir.exists() and not run_dir.is_dir():
        raise FlytError(f"config key 'out': {run_dir} is a file, not a run directory")
    existing = run_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise FlytError(f"config key 'out': {existing} is a file, so {run_dir} cannot be created under it")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise FlytError(f"config key 'out': {existing} is not writable, so {run_dir} cannot be written there")
    checkpoints = run_dir / "checkpoints"
    if checkpoints.exists() and not (checkpoints.is_dir() and os.access(checkpoints, os.W_OK | os.X_OK)):
        raise FlytError(f"config key 'out': {checkpoints} is not a writable directory")


def first_missing(run_dir: Path) -> Path | None:
    """The topmost directory a run in ``run_dir`` creates (``run_dir`` or an ancestor); None if it exists."""
    top = None
    while not run_dir.exists() and run_dir != run_dir.parent:
        top, run_dir = run_dir, run_dir.parent
    return top


def discard(run_dir: Path, created: Path | None, written: list[Path]) -> None:
    """Remove what a fresh run wrote: its files, then each directory it created (``created`` is
    ``first_missing`` before the run) that is empty now. Nothing else is touched, so a directory that
    held other files, or one another run writes into too, stays."""
    for path in [*(run_dir / name for name in RUN_FILES), *written]:
        path.unlink(missing_ok=True)
    dirs = [run_dir / "checkpoints"]
    if created is not None:
        d = run_dir
        while True:
            dirs.append(d)
            if d == created or d == d.parent:
                break
            d = d.parent
    for d in dirs:
        try:
            d.rmdir()  # only if empty
        except FileNotFoundError:
            continue
        except OSError:
            break


def remove_run_leftovers(run_dir: Path) -> int:
    """Remove the hidden temporaries a killed run left half-written (``.latest.pt.*.tmp`` in checkpoints/,
    ``.config.yaml.*.tmp``, ...); returns how many. Only while holding the run's lock (LOCK_NAME)."""
    removed = sum(remove_leftovers(run_dir / name) for name in RUN_FILES)
    checkpoints = run_dir / "checkpoints"
    if checkpoints.is_dir():
        names = {p.name[1:].split(".pt.", 1)[0] + ".pt" for p in checkpoints.glob(".*.tmp") if _CHECKPOINT_TMP.fullmatch(p.name)}
        removed += sum(remove_leftovers(checkpoints / name) for name in sorted(names))
    return removed

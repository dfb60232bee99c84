"""Atomic file writes: a file appears complete under its final name, or not at all.

Everything is written to a hidden temporary ``.<name>.<random>.tmp`` in the destination directory
(same filesystem, so the final ``os.replace`` is atomic) and renamed only on success. Temporaries
get the mode a plain ``open`` would give (0o666, directories 0o777, less the umask), not mkstemp's
0o600, so other accounts (and Ray workers running as another user) read outputs like any file.

A run killed mid-write (SIGKILL) cannot remove its temporaries. A command that owns an output takes
``exclusive_lock`` on it (the kernel drops the lock when its holder dies, so a killed run never blocks
the next) and, holding it, calls ``remove_leftovers`` for each final name: whatever temporaries are
left then are an earlier, dead run's.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Iterator

from flyt.errors import FlytError

_UMASK_LOCK = threading.Lock()
_UMASK_FALLBACK: int | None = None


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux: /proc/self/status);
    elsewhere set-and-restored once (under a lock) and remembered."""
    global _UMASK_FALLBACK
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        if _UMASK_FALLBACK is None:
            _UMASK_FALLBACK = os.umask(0o022)
            os.umask(_UMASK_FALLBACK)
        return _UMASK_FALLBACK


def check_parent(path: str | os.PathLike) -> None:
    """Bad input, one line: ``path`` cannot be created because a file stands where a directory must be.
    (Permissions, a full disk, a lost mount are the environment's: their OSError propagates.)"""
    path = Path(path)
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise FlytError(f"{path}: {parent} is a file, not a directory")
            return


def check_writable_dir(path: str | os.PathLike, flag: str, shown=None) -> None:
    """Bad input, one line naming ``flag``: ``path`` is not, and cannot become, a writable directory
    (its nearest existing ancestor, itself included, is a file or not writable)."""
    path = Path(path)
    shown = path if shown is None else shown
    for p in [path, *path.parents]:
        if p.exists():
            if not p.is_dir():
                raise FlytError(f"{flag} {shown}: {p} is not a directory")
            if not os.access(p, os.W_OK | os.X_OK):
                raise FlytError(f"{flag} {shown}: directory {p} is not writable")
            return


def _prepare_dir(path: Path) -> None:
    check_parent(path)
    path.parent.mkdir(parents=True, exist_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` if the block succeeds."""
    path = Path(path)
    _prepare_dir(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        os.chmod(tmp, 0o666 & ~current_umask())
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside ``out_dir``; on success it replaces ``out_dir`` whole,
    so an interrupted run leaves the previous output (or none), never a partial one."""
    out_dir = Path(out_dir)
    _prepare_dir(out_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())
        yield tmp
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{tmp.name}")
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old)
        else:
            tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def leftovers(path: str | os.PathLike) -> list[Path]:
    """The temporaries that interrupted ``atomic_path`` / ``atomic_dir`` writes of ``path`` left beside it."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    pattern = re.compile(rf"\.{re.escape(path.name)}\.[^./]+\.tmp")  # mkstemp's random part has no dot
    return sorted(p for p in path.parent.glob(".*.tmp") if pattern.fullmatch(p.name))


def remove_leftovers(path: str | os.PathLike) -> int:
    """Remove ``leftovers(path)``; returns how many. Call it only while no other run can be writing
    ``path`` (under ``exclusive_lock``)."""
    found = leftovers(path)
    for p in found:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
    return len(found)


@contextlib.contextmanager
def exclusive_lock(lock: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold an exclusive lock on the file ``lock`` (created, and removed on release) for the block.

    A second run asking for the same lock is refused with one line naming ``what``. The lock is the
    kernel's (``flock``): it dies with its holder, so a lock file a killed run left is simply taken
    over. Where ``flock`` does not exist or the filesystem refuses it, the block runs unlocked.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX
        fcntl = None
    if fcntl is None:
        yield
        return
    lock = Path(lock)
    fd: int | None = None
    while fd is None:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)  # an unwritable directory: the OSError propagates
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FlytError(f"{what} is being written by another run (it holds {lock}); wait for it or choose another output") from None
        except OSError:  # a filesystem without locks: run unlocked
            os.close(fd)
            fd = -1
            break
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # its previous holder removed it between our open and flock: take the new one
            os.close(fd)
            fd = None
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        if fd >= 0:
            os.close(fd)


def write_parquet(table, path) -> None:
    import pyarrow.parquet as pq

    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def write_json(obj, path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_text(text: str, path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_npy(array, path) -> None:
    import numpy as np

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)


def torch_save(obj, path) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)

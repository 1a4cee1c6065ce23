"""One batch driver per runs folder: an advisory lock (``flock``) on a file that names its holder.

Two drivers on one folder would each execute every run that is not done: twice the work, and two
processes writing one run folder. The lock lives in ``<runs-dir>/<profile>/``. A driver of the
whole grid holds ``.batch.lock`` exclusively. A driver of a shard (``--shard i/n``: one node of a
SLURM array on a shared filesystem, say) holds ``.batch.lock`` shared and its share's own
``.batch-shard-<i>-of-<n>.lock`` exclusively: shards run side by side, but never beside a driver of
the whole grid or a second driver of the same shard.

The operating system releases a lock when its holder ends, however it ends: a lock file left by a
dead driver names a process that no longer holds it, and the next driver simply takes it over.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = ".batch.lock"


class LockHeld(RuntimeError):
    """Another driver holds the runs folder."""


def shard_lock_name(shard: str) -> str:
    index, count = shard.split("/")
    return f".batch-shard-{index}-of-{count}.lock"


@contextmanager
def driver_lock(folder: str | Path, shard: str | None = None, wait: bool = False) -> Iterator[None]:
    """Hold ``folder`` for this driver; refuse at once (``LockHeld``, naming the holder) or, with
    ``wait``, block until the holder is done."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"runs folder {folder} cannot be created: {err.strerror or err}") from None
    wanted = [(folder / LOCK_FILE, fcntl.LOCK_SH if shard else fcntl.LOCK_EX)]
    if shard:
        wanted.append((folder / shard_lock_name(shard), fcntl.LOCK_EX))
    held: list[int] = []
    locked = False
    try:
        for path, mode in wanted:
            fd = _open(path)
            held.append(fd)
            _take(fd, mode, path, wait)
        locked = True
        for fd in {held[0], held[-1]}:  # what the folder's lock file says now is stale: no one holds it alone
            os.ftruncate(fd, 0)
        os.pwrite(held[-1], f"{_me()}{f' (shard {shard})' if shard else ''}\n".encode(), 0)
        yield
    finally:
        if locked:  # a released lock file names nobody: only a driver that died leaves its name behind
            os.ftruncate(held[-1], 0)
        for fd in held:
            os.close(fd)


def _open(path: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise ValueError(f"lock file {path} cannot be written: {err.strerror or err}") from None


def _take(fd: int, mode: int, path: Path, wait: bool) -> None:
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        pass
    holders = _holders(path, exclusive=mode == fcntl.LOCK_EX)
    if not wait:
        raise LockHeld(f"{path.parent} is in use by another batch driver ({holders}): let it finish, "
                       "or pass --wait to start when it does")
    print(f"waiting for the batch driver holding {path.parent} ({holders}) to finish", file=sys.stderr, flush=True)
    fcntl.flock(fd, mode)


def _holders(path: Path, exclusive: bool) -> str:
    """Who holds ``path``: its own record and, when the whole folder was asked for, the shards' records."""
    files = [path] + (sorted(path.parent.glob(".batch-shard-*.lock")) if exclusive and path.name == LOCK_FILE else [])
    records = []
    for file in files:
        try:
            records += [line.strip() for line in file.read_text().splitlines() if line.strip()]
        except OSError:
            continue
    return "; ".join(records) or "a process that has not written its name yet"


def _me() -> str:
    return f"pid {os.getpid()} on {socket.gethostname()}"

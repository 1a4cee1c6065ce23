"""Child processes that end with their parent, even when the parent is killed with SIGKILL.

A batch driver that is stopped must not leave its workers training, nor their Jupyter kernels:
a rerun would find them still writing into the folders it writes. Linux sends a chosen signal to
a process when the thread that started it ends (``prctl(PR_SET_PDEATHSIG)``); nothing the parent
does, or fails to do, is needed, so SIGKILL is covered too. Children must therefore be started
from a thread that lives as long as the parent process (its main thread). Elsewhere (macOS) nothing
is arranged, and only ipykernel's own polling of its parent ends an orphaned kernel.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def _prctl() -> Callable[..., int] | None:
    return ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def die_with_parent(sig: signal.Signals, parent_pid: int) -> None:
    """Receive ``sig`` when the parent ``parent_pid`` ends; if it has already ended, receive it now."""
    prctl = _prctl()
    if prctl is not None and prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")
    if os.getppid() != parent_pid:  # the parent ended before the request took effect
        os.kill(os.getpid(), sig)


def dying_with_parent(sig: signal.Signals) -> Callable[[], None] | None:
    """A ``preexec_fn`` for ``subprocess.Popen``: the child receives ``sig`` when its parent ends.

    The C function is looked up here, in the parent: the child runs between fork and exec, where
    loading a library is unsafe.
    """
    prctl = _prctl()
    if prctl is None:
        return None

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)

    return preexec

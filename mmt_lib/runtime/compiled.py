"""numba, set up once to live beside torch: its compiled loops are the CPU paths of ranking and Jaccard.

Import numba through this module, so that the threading layer is chosen before any parallel loop
runs (numba ignores the choice once a parallel loop has run), and wrap each parallel call in
``torch_threads()``, which gives numba torch's thread count and lets one thread of the process at a
time in: the work queue aborts the process when two threads enter it at once.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numba
import torch

if "NUMBA_THREADING_LAYER" not in os.environ:
    # numba's default OpenMP layer starts a second OpenMP runtime beside torch's, whose idle threads
    # then slow every torch operation of the process about tenfold; numba's own work queue does not.
    numba.config.THREADING_LAYER = "workqueue"

_ONE_CALLER = threading.Lock()


@contextmanager
def torch_threads() -> Iterator[None]:
    """Run numba's parallel loops on ``torch.get_num_threads()`` threads, one calling thread at a time."""
    with _ONE_CALLER:
        threads = numba.get_num_threads()
        numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
        try:
            yield
        finally:
            numba.set_num_threads(threads)

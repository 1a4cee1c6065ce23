"""Reproducible mode: the same commit and seed give the same metrics on any x86-64 CPU with AVX2.

Within one machine every run is bit-identical. Across machines the numbers move because several
libraries pick their kernels, and with them the order of floating-point sums, from the CPU they
find and from the number of threads they run on:

* PyTorch dispatches its own vectorised kernels by CPU capability (``ATEN_CPU_CAPABILITY``);
* oneDNN (convolutions) JIT-compiles for the widest instruction set it finds (``ONEDNN_MAX_CPU_ISA``);
* MKL (torch's matrix products) and OpenBLAS (numpy's) choose a code path per CPU
  (``MKL_CBWR``, ``MKL_ENABLE_INSTRUCTIONS``, ``OPENBLAS_CORETYPE``);
* faiss loads a generic, AVX2 or AVX-512 build of itself (``FAISS_OPT_LEVEL``);
* numba compiles for the host CPU (``NUMBA_CPU_NAME``);
* reductions split across threads sum in another order for another thread count.

Reproducible mode pins each of these to AVX2 (which every x86-64 CPU of the last decade has) and
to one thread per run. The settings are environment variables read when each library loads, so
they must be set before the process imports torch: the batch driver sets them for every notebook
kernel it starts, and records them in each run's ``run.json``.
"""

from __future__ import annotations

import platform
from typing import Any

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")
"""The thread counts of OpenMP (torch, faiss), MKL, OpenBLAS and numba."""

PINNED_ENV: dict[str, str] = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_CBWR": "AVX2,STRICT",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "OPENBLAS_CORETYPE": "Haswell",
    "FAISS_OPT_LEVEL": "avx2",
    "NUMBA_CPU_NAME": "haswell",
    **{name: "1" for name in THREAD_VARIABLES},
}
"""What reproducible mode sets in every run's process before any library loads."""


def numerics(reproducible: bool, threads: int) -> dict[str, Any]:
    """How a run's process computes, as the batch driver sets it and ``run.json`` records it.

    Reproducible mode sets every pin; fast mode (``--fast``) sets only the thread count (the
    driver's cores shared between its parallel runs) and lets each library pick its fastest kernels.
    """
    env = dict(PINNED_ENV) if reproducible else {name: str(threads) for name in THREAD_VARIABLES}
    return {"mode": "reproducible" if reproducible else "fast", "env": env,
            "machine": platform.machine(), "cpu": cpu_model()}


def cpu_model() -> str:
    """The CPU's model name (Linux), else what ``platform`` says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"

"""Executing one notebook with papermill, from the project folder, in a kernel that dies with its worker.

papermill, pyzmq and jupyter_client are imported only here, and only when a notebook executes.
"""

from __future__ import annotations

import functools
import signal
from pathlib import Path
from typing import Any

from mmt_lib.experiments.plan import NOTEBOOKS
from mmt_lib.runtime import lifeline
from mmt_lib.runtime.paths import PROJECT_ROOT

STARTED_KERNELS: list[Any] = []
"""The kernel managers this worker process started, so that a stop can take their kernels along."""


@functools.cache
def _kernel_manager_class() -> type:
    """jupyter_client's async kernel manager, with an encrypted link and a kernel that dies with its worker.

    CurveZMQ encrypts the kernel's local TCP link where pyzmq and jupyter_client can: recent
    ipykernel prints a plain-TCP warning at every kernel start, once per run in a batch log. The
    kernel leads its own process group (jupyter_client starts it in a new session, out of reach of
    the terminal's Ctrl-C) and receives SIGKILL when the worker that started it ends.
    """
    import zmq
    from jupyter_client.manager import AsyncKernelManager

    class KernelManager(AsyncKernelManager):
        def __init__(self, **kwargs: Any) -> None:
            if zmq.has("curve") and "transport_encryption" in AsyncKernelManager.class_trait_names():
                kwargs.setdefault("transport_encryption", "auto")
            super().__init__(**kwargs)

        async def _async_launch_kernel(self, kernel_cmd: list[str], **kw: Any) -> None:
            kw["preexec_fn"] = lifeline.dying_with_parent(signal.SIGKILL)
            await super()._async_launch_kernel(kernel_cmd, **kw)
            STARTED_KERNELS.append(self)

    return KernelManager


def execute_notebook(notebook: str, output: Path, parameters: dict[str, Any]) -> None:
    """Run ``notebooks/<notebook>.ipynb`` with papermill into `output`, from the project root.

    Each cell's text output is stored as the terminal would show it: a progress bar's redraws
    (carriage returns) collapse to its last state, one line per bar.
    """
    import papermill

    papermill.execute_notebook(str(NOTEBOOKS / f"{notebook}.ipynb"), str(output), parameters=parameters,
                               kernel_name="python3", progress_bar=False, cwd=str(PROJECT_ROOT),
                               kernel_manager_class=_kernel_manager_class(), coalesce_streams=True)



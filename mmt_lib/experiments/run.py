"""Executing a plan: worker processes, at most ``jobs`` at a time, each running one notebook.

``run_grid`` skips done runs, resumes interrupted ones from their checkpoint and starts changed ones
afresh. SIGINT or SIGTERM start no new run, stop the running ones and their kernels, and end the
driver within seconds; its workers and their kernels also end when the driver is killed
(``mmt_lib.runtime.lifeline``).
"""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmt_lib.experiments.notebook import STARTED_KERNELS, execute_notebook
from mmt_lib.experiments.plan import RUN_RECORD, Run, is_done, run_hashes
from mmt_lib.experiments.schedule import RUN_SECONDS, expected_seconds, start_order
from mmt_lib.runtime import lifeline, reproducible
from mmt_lib.runtime.checkpoints import METRICS_FILE, read_metrics, write_json_atomic
from mmt_lib.runtime.paths import project_path
from mmt_lib.runtime.progress import tqdm


def execute(run: Run, run_hash: str, force: bool, numerics: dict[str, Any], gpu: str | None) -> dict[str, Any] | None:
    """Execute one run with papermill; returns a failure record or None. Runs in a worker process.

    ``numerics`` (``reproducible.describe``) holds the environment the notebook's kernel starts with:
    its pins are read when the kernel's libraries load. It is recorded in ``run.json`` and ``metrics.json``.
    """
    from papermill.exceptions import PapermillExecutionError

    out_dir = project_path(run.parameters["out_dir"])
    record = out_dir / RUN_RECORD
    previous = json.loads(record.read_text()).get("run_hash") if record.exists() else None
    if force or previous != run_hash:
        shutil.rmtree(out_dir, ignore_errors=True)
    for partial in out_dir.rglob(".*.tmp"):  # files a killed run was writing (the lock says no one else is)
        partial.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(record, {"run_hash": run_hash, "notebook": run.notebook, "started": time.time(),
                               "numerics": numerics})
    os.environ.update(numerics["env"])
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    params = {k: v for k, v in run.parameters.items() if k != "group"}
    output = out_dir / f"{run.notebook}.ipynb"
    tic = time.perf_counter()
    try:
        execute_notebook(run.notebook, output, params)
    except PapermillExecutionError as err:
        return {"run": run.run_id, "notebook": str(output), "cell": err.exec_count,
                "error": f"{err.ename}: {err.evalue}"}
    except Exception as err:
        return {"run": run.run_id, "notebook": str(output), "cell": None, "error": f"{type(err).__name__}: {err}"}
    metrics_path = out_dir / METRICS_FILE
    if not metrics_path.exists():
        return {"run": run.run_id, "notebook": str(output), "cell": None,
                "error": "the notebook finished without writing metrics.json"}
    try:
        metrics = read_metrics(metrics_path)
    except ValueError as err:
        return {"run": run.run_id, "notebook": str(output), "cell": None, "error": str(err)}
    metrics["run_hash"] = run_hash
    metrics["numerics"] = numerics
    metrics[RUN_SECONDS] = time.perf_counter() - tic
    write_json_atomic(metrics_path, metrics)
    return None


def _work(run: Run, run_hash: str, force: bool, numerics: dict[str, Any], gpu: str | None, driver: int,
          results: multiprocessing.connection.Connection) -> None:
    """A worker process: one run, its failure record (or None) sent back, then exit.

    It ends when the driver ends, however the driver ends, and takes its kernel along; SIGINT
    (the terminal's Ctrl-C reaches the whole process group) is the driver's to handle, so it is
    ignored here.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # a Ctrl-C pending since the start is dropped
    lifeline.die_with_parent(signal.SIGTERM, driver)
    signal.signal(signal.SIGTERM, _end_worker)
    results.send(execute(run, run_hash, force, numerics, gpu))
    results.close()


def _end_worker(signum: int, frame: Any) -> None:
    """Stop this worker's kernel (its whole process group) and leave at once, without a traceback."""
    for manager in STARTED_KERNELS:
        process = manager.provisioner.process if manager.provisioner else None
        try:
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            if manager.connection_file:
                Path(manager.connection_file).unlink(missing_ok=True)
        except OSError:
            continue
    os._exit(128 + signum)


@dataclass
class _Worker:
    process: multiprocessing.process.BaseProcess
    results: multiprocessing.connection.Connection
    slot: int
    started: float = field(default_factory=time.monotonic)

    def outcome(self, run: Run) -> dict[str, Any] | None:
        if self.results.poll():
            return self.results.recv()
        return {"run": run.run_id, "notebook": None, "cell": None,
                "error": f"the worker process ended without a result (exit code {self.process.exitcode})"}


class _StopRequest:
    """SIGINT and SIGTERM become a request to stop, read between steps (``signum``); handlers restored after."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._request)
        return self

    def _request(self, signum: int, frame: Any) -> None:
        self.signum = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@dataclass
class Outcome:
    """What ``run_grid`` did: failure records, the runs it finished, the runs of the plan still not
    done, and the signal that stopped it (None: it ran to the end)."""

    failures: list[dict[str, Any]]
    finished: list[str]
    unfinished: list[str]
    stopped_by: int | None = None
    busy_seconds: float = 0.0
    """The workers' time, start to end, summed over every run this call executed."""
    wall_seconds: float = 0.0
    jobs: int = 1

    def utilisation(self) -> float | None:
        """The share of the ``jobs`` workers' wall time that ran a notebook; None when nothing ran."""
        return self.busy_seconds / (self.jobs * self.wall_seconds) if self.busy_seconds and self.wall_seconds else None


def run_grid(
    runs: list[Run], force: bool = False, jobs: int = 1, progress: bool = True, fast: bool = False
) -> Outcome:
    """Execute what is not done, up to ``jobs`` at a time; a run starts once its upstream runs are done, and
    among the ready runs, the one with the most work left along its chain of downstream runs starts first
    (``mmt_lib.experiments.schedule``).

    Every notebook runs in reproducible mode (``mmt_lib.runtime.reproducible``: the same metrics on any
    x86-64 CPU) unless ``fast``, which lets the libraries pick their fastest kernels for this CPU.

    On SIGINT or SIGTERM no further run starts and the running ones are stopped, their kernels with
    them; what they checkpointed stays, so the same command resumes them.
    """
    tic = time.monotonic()
    busy = 0.0
    with _StopRequest() as stop:
        hashes = run_hashes(runs)
        todo = [r for r in runs if force or not is_done(r, hashes[r.run_id])]
        done = {r.run_id for r in runs} - {r.run_id for r in todo}
        failures: list[dict[str, Any]] = []
        failed: set[str] = set()
        finished: list[str] = []
        jobs = max(1, jobs)
        numerics = reproducible.numerics(not fast, threads=max(1, (os.cpu_count() or 1) // jobs))
        gpus = _visible_gpus() if todo else []
        bar = tqdm(total=len(runs), initial=len(runs) - len(todo), desc="runs", unit="run", disable=not progress)
        context = multiprocessing.get_context("spawn")
        pending = start_order(todo, expected_seconds(runs))
        running: dict[str, _Worker] = {}
        by_id = {r.run_id: r for r in runs}
        while (pending or running) and stop.signum is None:
            for run in list(pending):
                if any(u in failed for u in run.upstream):
                    pending.remove(run)
                    failed.add(run.run_id)
                    failures.append({"run": run.run_id, "notebook": None, "cell": None,
                                     "error": "skipped: an upstream run failed"})
                    bar.update(1)
                elif len(running) < jobs and all(u in done for u in run.upstream):
                    pending.remove(run)
                    slot = min(set(range(jobs)) - {w.slot for w in running.values()})
                    gpu = gpus[slot % len(gpus)] if gpus else None
                    running[run.run_id] = _start_worker(context, run, hashes[run.run_id], force, numerics, gpu, slot)
            if not running:
                continue
            multiprocessing.connection.wait([w.process.sentinel for w in running.values()], timeout=0.5)
            for run_id, worker in list(running.items()):
                if worker.process.exitcode is None:
                    continue
                del running[run_id]
                busy += time.monotonic() - worker.started
                failure = worker.outcome(by_id[run_id])
                if failure:
                    failed.add(run_id)
                    failures.append(failure)
                else:
                    done.add(run_id)
                    finished.append(run_id)
                bar.update(1)
        if stop.signum is not None:
            _stop_workers(list(running.values()))
        bar.close()
    return Outcome(failures, finished, [r.run_id for r in runs if r.run_id not in done], stop.signum,
                   busy, time.monotonic() - tic, jobs)


def _start_worker(context: Any, run: Run, run_hash: str, force: bool, numerics: dict[str, Any], gpu: str | None,
                  slot: int) -> _Worker:
    """Start a worker from this (main) thread, which the worker's parent-death signal is tied to.

    SIGINT is blocked meanwhile: the worker inherits it blocked until it ignores it (Ctrl-C reaches
    the driver alone from the worker's first instant), and a Ctrl-C of this moment reaches the
    driver once it is unblocked, instead of being lost.
    """
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_work, args=(run, run_hash, force, numerics, gpu, os.getpid(), send),
                              name=f"run {run.run_id}")
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        process.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    send.close()
    return _Worker(process, receive, slot)


def _stop_workers(workers: list[_Worker], grace_s: float = 10.0) -> None:
    """SIGTERM to each worker (it kills its kernel and leaves), SIGKILL to any still there after ``grace_s``."""
    for worker in workers:
        worker.process.terminate()
    deadline = time.monotonic() + grace_s
    for worker in workers:
        worker.process.join(max(0.0, deadline - time.monotonic()))
        if worker.process.exitcode is None:
            worker.process.kill()
            worker.process.join()


def _visible_gpus() -> list[str]:
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []



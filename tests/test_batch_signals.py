"""The batch driver stopped by a signal, in real processes on the smoke profile: it starts no new run,
leaves no worker or kernel behind, says in one line what to rerun, and the rerun ends with the metrics
of an uninterrupted run. Time bounds are generous: the machine's cores are shared and may be loaded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from mmt_lib.config import resolve
from mmt_lib.experiments.schedule import RUN_SECONDS
from mmt_lib.method.engine import load_task_datasets
from mmt_lib.runtime import reproducible
from mmt_lib.runtime.checkpoints import load_checkpoint
from mmt_lib.runtime.paths import PROJECT_ROOT
from mmt_lib.runtime.runlock import LOCK_FILE

BOUND_S = 60
"""How long a stopped driver and its processes may take to end (they take a few seconds)."""
TIMING = ("seconds_extract", "seconds_cluster", "seconds_train", "seconds_eval")
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """The tiny synthetic Duke and Market, generated once so that no run generates them while stopped."""
    root = tmp_path_factory.mktemp("data")
    load_task_datasets(resolve(stage="pretrain", profile="smoke", data_root=str(root), device="cpu").data)
    return root


def driver_command(runs: Path, data_root: Path, only: list[str]) -> list[str]:
    return [sys.executable, "-m", "mmt_lib.batch", "run", "--profile", "smoke", "--runs-dir", str(runs), "--jobs", "1",
            "--only", *only, "--param", f"data_root={data_root}", "device=cpu"]


def start_driver(tmp: Path, data_root: Path, only: list[str]) -> subprocess.Popen:
    """A driver in its own session and process group, as a terminal starts a command."""
    return subprocess.Popen(driver_command(tmp / "runs", data_root, only), cwd=PROJECT_ROOT, env=ENV,
                            stdout=open(tmp / "stdout.txt", "w"), stderr=open(tmp / "stderr.txt", "w"),
                            start_new_session=True)


def wait_for(condition: Callable[[], bool], what: str, driver: subprocess.Popen, tmp: Path) -> None:
    deadline = time.monotonic() + 900
    while not condition():
        if driver.poll() is not None:
            pytest.fail(f"the driver ended (exit {driver.returncode}) before {what}:\n"
                        f"{(tmp / 'stderr.txt').read_text()[-3000:]}")
        if time.monotonic() > deadline:
            driver.kill()
            pytest.fail(f"no {what} after 900 s")
        time.sleep(0.05)


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def command_line(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""


def kernel_running(driver: subprocess.Popen) -> Callable[[], bool]:
    return lambda: any("ipykernel" in command_line(p) for p in descendants(driver.pid))


def still_running(processes: list[psutil.Process], timeout: float = BOUND_S) -> list[str]:
    """Those of ``processes`` still running after ``timeout`` (zombies count as ended)."""
    def running(p: psutil.Process) -> bool:
        try:
            return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.monotonic() + timeout
    while any(running(p) for p in processes) and time.monotonic() < deadline:
        time.sleep(0.2)
    return [f"{p.pid}: {command_line(p)}" for p in processes if running(p)]


def stop(driver: subprocess.Popen, sig: signal.Signals, group: bool = False) -> list[psutil.Process]:
    """Send ``sig`` (to the whole process group: a terminal's Ctrl-C) and wait for the driver to end.

    ``BOUND_S`` only tells a hung driver from a stopping one (``TimeoutExpired``); how fast it stops is
    not asserted: that depends on the machine's load."""
    processes = descendants(driver.pid)
    assert any("ipykernel" in command_line(p) for p in processes), "no kernel was running"
    (os.killpg if group else os.kill)(driver.pid, sig)
    driver.wait(BOUND_S)
    return processes


def messages(tmp: Path) -> list[str]:
    """What the driver wrote to stderr, less its progress bar."""
    text = (tmp / "stderr.txt").read_text()
    return [line for line in text.replace("\r", "\n").splitlines() if line.strip() and not line.startswith("runs:")]


def numbers(metrics: dict[str, Any]) -> dict[str, Any]:
    """Metrics without what may differ between two runs of one configuration: timings, the run's hash and
    the driver's record of how it ran."""
    out = {k: v for k, v in metrics.items() if k not in ("run_hash", "numerics", RUN_SECONDS)}
    out["history"] = [{k: v for k, v in record.items() if k not in TIMING} for record in metrics["history"]]
    return out


def reference(tmp: Path, *args: str) -> dict[str, Any]:
    """The same run, uninterrupted, through the command line, in the reproducible mode the driver gives its runs."""
    env = {**ENV, **reproducible.PINNED_ENV}
    done = subprocess.run([sys.executable, "-m", "mmt_lib.train", *args, "--profile", "smoke", "--task", "duke2market",
                           "--device", "cpu", "--out", str(tmp)], cwd=PROJECT_ROOT, env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((tmp / "metrics.json").read_text())


def test_sigint_in_stage_two_starts_nothing_new_and_the_rerun_matches_an_uninterrupted_run(data_root, tmp_path):
    runs = tmp_path / "runs" / "smoke" / "duke2market"
    driver = start_driver(tmp_path, data_root, ["duke2market/mmt-kmeans/*", "duke2market/mmt-dbscan/*"])
    wait_for((runs / "mmt-kmeans/seed1/checkpoint.pt").exists, "Stage II checkpoint", driver, tmp_path)
    processes = stop(driver, signal.SIGINT)

    assert driver.returncode == 128 + signal.SIGINT
    assert still_running(processes) == []
    [line] = messages(tmp_path)
    assert line.startswith("stopped by SIGINT")
    assert "finished now: duke2market/pretrain/seed1, duke2market/pretrain/seed2;" in line
    assert line.endswith("to rerun (the same command resumes them from their checkpoints): "
                         "duke2market/mmt-kmeans/seed1, duke2market/mmt-dbscan/seed1")
    assert not (runs / "mmt-kmeans/seed1/metrics.json").exists()
    assert not (runs / "mmt-dbscan").exists()  # queued, never started
    first_epoch = load_checkpoint(runs / "mmt-kmeans/seed1/checkpoint.pt")["history"][0]

    rerun = subprocess.run(driver_command(tmp_path / "runs", data_root, ["duke2market/mmt-kmeans/*"]),
                           cwd=PROJECT_ROOT, env=ENV, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    resumed = json.loads((runs / "mmt-kmeans/seed1/metrics.json").read_text())
    assert resumed["history"][0] == first_epoch  # resumed from the checkpoint, not started again
    uninterrupted = reference(tmp_path / "reference", "mmt", "--variant", "mmt-kmeans", "--data-root", str(data_root),
                              "--pretrained", str(runs / "pretrain/seed1"), str(runs / "pretrain/seed2"))
    assert numbers(resumed) == numbers(uninterrupted)


@pytest.mark.parametrize("sig, group", [(signal.SIGTERM, False), (signal.SIGINT, True)],
                         ids=["SIGTERM to the driver", "Ctrl-C to the process group"])
def test_a_stopped_driver_says_one_line_and_leaves_nothing_running(data_root, tmp_path, sig, group):
    driver = start_driver(tmp_path, data_root, ["duke2market/pretrain/*"])
    wait_for(kernel_running(driver), "kernel", driver, tmp_path)
    processes = stop(driver, sig, group)

    assert driver.returncode == 128 + sig
    assert still_running(processes) == []
    [line] = messages(tmp_path)  # no traceback from the driver, its workers or their kernels
    assert line.startswith(f"stopped by {sig.name}") and line.endswith(
        "duke2market/pretrain/seed1, duke2market/pretrain/seed2")
    assert not (tmp_path / "runs/smoke/duke2market/pretrain/seed2").exists()


def test_a_killed_driver_takes_its_workers_and_kernels_along_and_the_rerun_matches(data_root, tmp_path):
    run_dir = tmp_path / "runs/smoke/duke2market/pretrain/seed1"
    driver = start_driver(tmp_path, data_root, ["duke2market/pretrain/seed1"])
    wait_for((run_dir / "checkpoint.pt").exists, "Stage I checkpoint", driver, tmp_path)
    processes = stop(driver, signal.SIGKILL)

    assert still_running(processes) == []
    assert (tmp_path / f"runs/smoke/{LOCK_FILE}").read_text().startswith(f"pid {driver.pid} on ")
    assert not (run_dir / "metrics.json").exists()

    rerun = subprocess.run(driver_command(tmp_path / "runs", data_root, ["duke2market/pretrain/seed1"]),
                           cwd=PROJECT_ROOT, env=ENV, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]  # the dead driver's lock was taken over
    uninterrupted = reference(tmp_path / "reference", "pretrain", "--seed", "1", "--data-root", str(data_root))
    assert numbers(json.loads((run_dir / "metrics.json").read_text())) == numbers(uninterrupted)

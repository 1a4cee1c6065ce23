"""The order in which the batch driver starts runs: the longest remaining chain of work first.

With ``jobs`` workers and runs that wait for their upstream runs, a core sits idle when the runs that
are ready are not the ones others wait for. Critical-path scheduling (the classic list-scheduling rule)
starts, among the ready runs, the one with the most work left along its longest chain of downstream
runs. Stage 0 and every task's Stage I pair go first, whatever the estimates say (each Stage II run of
a task waits on them), then the longest Stage II runs, and the short analysis runs last, where they
fill the gaps.

What a run costs is its measured wall time when an earlier execution of the same run recorded one
(``RUN_SECONDS`` in its ``metrics.json``, under any hash), else an estimate from its resolved settings in
units of one student's training iteration, scaled to seconds by the runs that have both.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

from mmt_lib.config import RunConfig
from mmt_lib.data.synthetic import DOMAINS, SIZES
from mmt_lib.experiments.plan import Run, run_config
from mmt_lib.runtime.checkpoints import METRICS_FILE, read_metrics
from mmt_lib.runtime.paths import project_path

RUN_SECONDS = "run_seconds"
"""The key of ``metrics.json`` where the driver records how long the run's notebook took, in seconds."""

MEAN_NET_FORWARD = 1 / 3
"""A forward pass without backward costs about a third of a training step (forward + backward)."""

STUDENTS = 2
"""Stage II trains two students in every variant, the baseline included (``method.mmt.build_networks``)."""

SMALL_RUN = 1.0
"""The estimate, in iterations, of a notebook that neither trains nor extracts (data tour, noise analysis)."""


def recorded_seconds(run: Run) -> float | None:
    """The wall time an earlier execution of ``run`` recorded, whatever its hash; None if there is none."""
    path = project_path(run.parameters["out_dir"]) / METRICS_FILE
    try:
        value = read_metrics(path).get(RUN_SECONDS) if path.exists() else None
    except ValueError:
        return None
    return float(value) if isinstance(value, (int, float)) and value > 0 else None


def target_train_images(cfg: RunConfig) -> float:
    """About how many training images the target has: exact enough to rank runs, without reading them.

    Known for the synthetic domains from their size; 0 for other data, whose size only a read would tell.
    """
    domain, size = DOMAINS.get(cfg.data.target), SIZES.get(cfg.data.synthetic_size)
    if domain is None or size is None:
        return 0.0
    identities = max(size.min_ids, round(domain.real_train_ids * size.id_scale))
    return identities * sum(size.train_images) / 2 * domain.train_images_scale


def estimated_iterations(run: Run, extra: dict[str, Any] | None = None) -> float:
    """A run's work in training iterations of one network, from its resolved settings."""
    if run.notebook == "01_pretrain":
        cfg = run_config(run, extra)
        return float(cfg.pretrain.epochs * cfg.pretrain.iters)
    if run.notebook != "02_mmt":
        return SMALL_RUN  # Stage 0 too: every Stage I run waits on it, so it starts first whatever its cost
    cfg = run_config(run, extra)
    if cfg.variant == "direct":
        return SMALL_RUN + MEAN_NET_FORWARD * target_train_images(cfg) / cfg.data.batch_size
    m = cfg.mmt
    per_iteration = STUDENTS * (1 + (MEAN_NET_FORWARD if m.mean_teacher else 0.0))
    extraction = STUDENTS * MEAN_NET_FORWARD * target_train_images(cfg) / cfg.data.batch_size
    return float(m.epochs * (m.iters * per_iteration + extraction))


def expected_seconds(runs: list[Run], extra: dict[str, Any] | None = None,
                     recorded: Callable[[Run], float | None] = recorded_seconds) -> dict[str, float]:
    """Each run's expected wall time: recorded where an earlier execution measured it, else estimated.

    Estimates are in iterations; the median ratio of recorded seconds to estimated iterations over the
    runs that have both turns them into seconds (1 when no run has been measured: then only the order counts).
    """
    measured = {r.run_id: recorded(r) for r in runs}
    estimated = {r.run_id: estimated_iterations(r, extra) for r in runs}
    ratios = [measured[rid] / estimated[rid] for rid in estimated if measured[rid] and estimated[rid] > 0]
    scale = statistics.median(ratios) if ratios else 1.0
    return {rid: measured[rid] or estimated[rid] * scale for rid in estimated}


def remaining_work(runs: list[Run], cost: dict[str, float]) -> dict[str, float]:
    """Each run's cost plus the costliest chain of runs that wait on it (its critical path to the end)."""
    downstream: dict[str, list[str]] = {r.run_id: [] for r in runs}
    for run in runs:
        for up in run.upstream:
            if up in downstream:
                downstream[up].append(run.run_id)
    path: dict[str, float] = {}

    def chain(run_id: str) -> float:
        if run_id not in path:
            path[run_id] = cost[run_id] + max((chain(d) for d in downstream[run_id]), default=0.0)
        return path[run_id]

    return {r.run_id: chain(r.run_id) for r in runs}


FIRST_NOTEBOOKS = ("00_stage0", "01_pretrain")
"""Stage 0 and Stage I: every Stage II run waits on them, so they all start before any other run."""


def start_order(runs: list[Run], cost: dict[str, float]) -> list[Run]:
    """Stage 0 and the Stage I runs, then the rest, each part with the most remaining work first; ties keep
    the plan's order. A run still starts only once its upstream runs are done: the driver takes the first
    ready run of this list."""
    work = remaining_work(runs, cost)
    return sorted(runs, key=lambda r: (r.notebook not in FIRST_NOTEBOOKS, -work[r.run_id]))

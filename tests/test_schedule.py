"""The batch driver's start order: Stage 0 and every Stage I pair before any Stage II run, then the longest
Stage II runs first; measured times replace the estimates where an earlier run recorded them."""

from __future__ import annotations

import json

import pytest

from mmt_lib.experiments import plan as batch_plan
from mmt_lib.experiments import schedule
from mmt_lib.experiments.plan import Run

STAGES = ("00_stage0", "00_data_tour", "01_pretrain", "02_mmt", "03_pseudo_label_noise")


def toy_plan() -> list[Run]:
    """Two tasks: a shared Stage 0, each task's Stage I pair, three Stage II runs and an analysis run."""
    runs = [Run("00_stage0", "stage0", "start", 0, {"out_dir": "x"})]
    for task in ("a", "b"):
        pair = [f"{task}/pretrain/seed{s}" for s in (1, 2)]
        runs += [Run("01_pretrain", task, "pretrain", s, {"out_dir": "x"}, ("stage0/start/seed0",)) for s in (1, 2)]
        runs += [Run("02_mmt", task, v, 1, {"out_dir": "x"}, tuple(pair)) for v in ("direct", "baseline", "mmt")]
        runs.append(Run("03_pseudo_label_noise", task, "noise", 1, {"out_dir": "x"},
                        (f"{task}/baseline/seed1", f"{task}/mmt/seed1")))
    return runs


COST = {"start": 2.0, "pretrain": 4.0, "direct": 0.3, "baseline": 3.0, "mmt": 4.0, "noise": 0.5}


def costs(runs: list[Run], longer_task: str = "b") -> dict[str, float]:
    return {r.run_id: COST[r.variant] * (1.2 if r.task == longer_task and r.notebook == "02_mmt" else 1.0)
            for r in runs}


def test_stage0_and_every_stage1_start_before_any_stage2_and_the_longest_stage2_first():
    runs = toy_plan()
    order = [r.run_id for r in schedule.start_order(runs, costs(runs))]
    assert order[0] == "stage0/start/seed0"
    stage1 = [i for i, rid in enumerate(order) if "/pretrain/" in rid]
    stage2 = [i for i, rid in enumerate(order) if rid.split("/")[1] in ("direct", "baseline", "mmt")]
    assert max(stage1) < min(stage2)
    assert [order[i] for i in stage2] == ["b/mmt/seed1", "a/mmt/seed1", "b/baseline/seed1", "a/baseline/seed1",
                                          "b/direct/seed1", "a/direct/seed1"]
    assert order.index("b/noise/seed1") > order.index("b/mmt/seed1")


def test_remaining_work_is_the_costliest_chain_to_the_end():
    runs = toy_plan()
    work = schedule.remaining_work(runs, costs(runs, longer_task=""))
    assert work["a/mmt/seed1"] == pytest.approx(4.0 + 0.5)
    assert work["a/pretrain/seed1"] == pytest.approx(4.0 + 4.0 + 0.5)
    assert work["stage0/start/seed0"] == pytest.approx(2.0 + 8.5)


def test_recorded_times_replace_the_estimates_and_scale_the_rest(tmp_path):
    runs = batch_plan.plan("smoke", tmp_path / "runs", tasks=["duke2market"])
    estimated = {r.run_id: schedule.estimated_iterations(r) for r in runs}
    recorded = {"duke2market/mmt-kmeans/seed1": 10.0 * estimated["duke2market/mmt-kmeans/seed1"],
                "duke2market/baseline/seed1": 30.0 * estimated["duke2market/baseline/seed1"]}
    seconds = schedule.expected_seconds(runs, recorded=lambda r: recorded.get(r.run_id))
    for run_id, value in recorded.items():
        assert seconds[run_id] == value
    assert seconds["duke2market/pretrain/seed1"] == pytest.approx(20.0 * estimated["duke2market/pretrain/seed1"])
    unmeasured = schedule.expected_seconds(runs, recorded=lambda r: None)
    assert unmeasured == estimated


def test_a_recorded_time_comes_from_the_runs_metrics_under_any_hash(tmp_path):
    run = Run("02_mmt", "a", "mmt", 1, {"out_dir": str(tmp_path / "run")})
    assert schedule.recorded_seconds(run) is None
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text(json.dumps({"run_hash": "old", schedule.RUN_SECONDS: 123.5}))
    assert schedule.recorded_seconds(run) == 123.5
    (tmp_path / "run" / "metrics.json").write_text("{broken")
    assert schedule.recorded_seconds(run) is None


def test_the_profile_estimate_ranks_the_smoke_grid_as_measured(tmp_path):
    """Stage I first; then MMT variants (two students and two mean nets) over the baseline over direct transfer."""
    runs = batch_plan.with_stage0(batch_plan.plan("smoke", tmp_path / "runs"))
    seconds = schedule.expected_seconds(runs)
    by_variant = {}
    for r in runs:
        by_variant.setdefault((r.task, r.variant), seconds[r.run_id])
    task = "duke2market"
    assert by_variant[(task, "mmt-kmeans")] > by_variant[(task, "baseline")] > by_variant[(task, "direct")]
    order = schedule.start_order(runs, seconds)
    first_stage2 = next(i for i, r in enumerate(order) if r.notebook == "02_mmt")
    assert all(r.notebook != "01_pretrain" for r in order[first_stage2:])
    assert {r.notebook for r in order[:first_stage2]} <= {"00_stage0", "01_pretrain", "00_data_tour"}

"""The benchmark scripts still run end to end at their smoke sizes (their timings are not checked here)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_script(*args: str) -> str:
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def table_row(out: str, first_cells: str) -> list[str]:
    line = next(line for line in out.splitlines() if line.startswith(f"| {first_cells} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def is_measurement(cell: str) -> bool:
    """A printed speed or time: a finite number, zero included (a fast step on an idle machine rounds to 0)."""
    try:
        value = float(cell)
    except ValueError:
        return False
    return value >= 0 and value != float("inf")


def test_is_measurement_takes_zero_and_refuses_what_is_not_a_number():
    assert is_measurement("0.0") and is_measurement("12.5")
    assert not is_measurement("") and not is_measurement("nan") and not is_measurement("-1") and not is_measurement("inf")


def test_eval_cluster_benchmark_agrees_with_its_references():
    out = run_script("benchmarks/bench_eval_cluster.py", "--tiny")
    for step in ("eval", "jaccard"):
        row = table_row(out, f"{step} | tiny")
        assert row[7] == row[8] and row[7], f"{step}: ours {row[7]!r} vs reference {row[8]!r}"
        assert "of which" in row[2] and "+ load" in row[2]
    ours, ref = (float(re.search(r"inertia ([\d.]+)", cell).group(1)) for cell in table_row(out, "kmeans | tiny")[7:9])
    assert abs(ours - ref) / ref < 0.05
    assert "mAP" in table_row(out, "rerank | tiny")[7]


def test_throughput_benchmark_prints_speeds_and_loss_curves():
    out = run_script("benchmarks/train_throughput.py", "--tiny", "--iters", "1", "--curves", "3")
    for setting in ("fp32 reference", "ours"):
        row = table_row(out, setting)
        assert all(is_measurement(row[i]) for i in (1, 2, 5, 6)), row  # speeds and times: printed, not judged
    for term in ("loss_hard_ce", "loss_hard_triplet", "loss_soft_ce", "loss_soft_triplet"):
        cells = table_row(out, term)[1:]
        assert all(float(c) == float(c) for c in cells[:5]), cells  # finite, not NaN


def test_stage2_time_split_covers_every_step_and_adds_up(tmp_path):
    out = run_script("benchmarks/stage2_time.py", "--profile", "smoke", "--repeats", "1", "--data-root", str(tmp_path))
    rows = {step: table_row(out, step) for step in ("extract (both nets)", "cluster (kmeans)",
                                                    "train (3 iterations)", "evaluate (both nets)")}
    for cells in rows.values():
        per_epoch, epochs, per_run = float(cells[1]), int(cells[3]), float(cells[4])
        assert is_measurement(cells[1]) and is_measurement(cells[2]) and epochs >= 1 and per_run == pytest.approx(per_epoch * epochs, abs=0.11)
    total = float(table_row(out, "whole run (projected)")[4])
    assert total == pytest.approx(sum(float(c[4]) for c in rows.values()), abs=0.3)


def test_transforms_benchmark_times_both_and_finds_them_identical():
    out = run_script("benchmarks/bench_transforms.py", "--images", "20", "--rounds", "1")
    for case in ("train, random erasing (Stage II)", "train (Stage I)", "test (extraction, evaluation)"):
        row = table_row(out, case)
        assert row[4] == "yes" and is_measurement(row[1]) and is_measurement(row[2])

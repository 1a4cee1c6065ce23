"""Calibration of the synthetic domains: the cells it runs, the numbers it reports, the bands it checks."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest

from mmt_lib.data import synthetic
from mmt_lib.experiments import calibrate
from mmt_lib.runtime.paths import PROJECT_ROOT


def test_cells_are_a_stage1_pair_and_a_baseline_per_task_and_one_supervised_run_per_target():
    cells = calibrate.calibration_cells("smoke", ["duke2market", "market2msmt"], seed=3)
    names = [c.name for c in cells]
    assert names == ["direct/duke2market", "peer/duke2market", "baseline/duke2market",
                     "direct/market2msmt", "peer/market2msmt", "baseline/market2msmt",
                     "supervised/synth-market", "supervised/synth-msmt"]
    by_name = {c.name: c for c in cells}
    assert [by_name[n].cfg.seed for n in ("direct/duke2market", "peer/duke2market")] == [3, 4]
    baseline = by_name["baseline/duke2market"]
    assert (baseline.cfg.stage, baseline.cfg.variant, baseline.cfg.seed) == ("mmt", "baseline", 2)
    assert baseline.needs == ("direct/duke2market", "peer/duke2market")
    for cell in cells:
        assert cell.cfg.stage == ("mmt" if cell.kind == "baseline" else "pretrain")
        if cell.kind == "supervised":
            assert cell.cfg.data.source == cell.cfg.data.target and cell.cfg.seed == 3
    direct = by_name["direct/market2msmt"].cfg
    assert (direct.data.source, direct.data.target) == ("synth-market", "synth-msmt")


def test_overrides_change_every_cell_and_keep_runs_quiet():
    overrides = {"pretrain": {"epochs": 5}, "runtime": {"device": "cpu"}}
    cells = calibrate.calibration_cells("smoke", ["duke2market"], overrides=overrides)
    assert [c.cfg.pretrain.epochs for c in cells] == [5, 5, 5, 5]
    assert all(c.cfg.runtime.device == "cpu" and not c.cfg.runtime.progress for c in cells)
    assert overrides == {"pretrain": {"epochs": 5}, "runtime": {"device": "cpu"}}  # the caller's dict untouched


@pytest.mark.parametrize("bad", ["{not json", "[1, 2]", '{"pretrain": 3}'])
def test_main_refuses_malformed_overrides_by_name(bad, capsys):
    with pytest.raises(SystemExit) as err:
        calibrate.main(["--profile", "smoke", "--overrides", bad])
    assert err.value.code == 2 and "--overrides" in capsys.readouterr().err


def test_unknown_task_is_refused_by_name():
    with pytest.raises(ValueError, match="market2viper"):
        calibrate.calibration_cells("smoke", ["market2viper"])


def test_a_repeated_task_is_refused():
    with pytest.raises(ValueError, match="distinct"):
        calibrate.calibration_cells("smoke", ["duke2market", "duke2market"])


def summary(cell, target, mAP, nmi=None, task="duke2market"):
    s = {"cell": cell, "task": task, "source": "s", "target": target, "mAP": mAP, "top1": mAP}
    if nmi is not None:
        s["kmeans"] = {"nmi": nmi, "num_clusters": 10}
    return s


def baseline(task, mAP, cosine=0.9, gain=0.0):
    return {**summary(f"baseline/{task}", "t", mAP, task=task), "pair_cosine": cosine, "late_gain": gain}


def test_table_checks_every_band_at_its_edges():
    """Bands are ``low <= x < high``, as the issue words them: "at least 80", "below 0.85"."""
    summaries = [
        summary("direct/a", "t1", 0.449, 0.849, task="a"),
        summary("direct/b", "t2", 0.45, 0.5, task="b"),
        summary("direct/c", "t1", 0.15, 0.85, task="c"),
        summary("direct/d", "t1", 0.149, 0.2, task="d"),
        summary("supervised/t1", "t1", 0.80),
        summary("supervised/t2", "t2", 0.799),
        baseline("a", 0.449 + 0.3501 * (0.80 - 0.449), cosine=0.70, gain=0.0099),
        baseline("b", 0.45 + 0.65 * (0.799 - 0.45), cosine=0.699, gain=0.01),
        baseline("c", 0.5, gain=float("nan")),
        baseline("d", 0.5),
    ]
    table = calibrate.calibration_table(summaries)
    assert list(table["task"]) == ["a", "b", "c", "d"]
    assert list(table["supervised_mAP"]) == [0.80, 0.799, 0.80, 0.80]
    assert list(table["supervised_mAP_ok"]) == [True, False, True, True]
    assert list(table["direct_mAP_ok"]) == [True, False, True, False]
    assert list(table["kmeans_nmi_ok"]) == [True, True, False, True]
    assert list(table["pair_cosine_ok"]) == [True, False, True, True]
    assert table["baseline_gap_share"].tolist() == pytest.approx([0.3501, 0.65, 0.35 / 0.65, 0.351 / 0.651])
    assert list(table["baseline_gap_share_ok"]) == [True, False, True, True]
    assert list(table["baseline_late_gain_ok"]) == [True, False, False, True]
    assert list(table["calibrated"]) == [True, False, False, False]
    md = calibrate.to_markdown(table)
    assert "supervised_mAP (≥ 80)" in md and "direct_mAP (15 ≤ x < 45)" in md and "kmeans_nmi (< 0.85)" in md
    assert "pair_cosine (≥ 0.7)" in md and "baseline_gap_share (0.35 ≤ x < 0.65)" in md
    assert "baseline_late_gain (< 1)" in md and "1.0 ✗" in md and "nan ✗" in md
    assert "79.9 ✗" in md and "0.849 ✓" in md and "0.850 ✗" in md and "45.0 ✗" in md


def test_gap_share_is_the_share_of_the_gap_closed_and_nan_without_a_gap():
    assert calibrate.gap_share(0.6, 0.4, 0.8) == pytest.approx(0.5)
    assert calibrate.gap_share(0.3, 0.4, 0.8) == pytest.approx(-0.25)  # below direct transfer: a negative share
    assert np.isnan(calibrate.gap_share(0.6, 0.5, 0.5)) and np.isnan(calibrate.gap_share(0.6, 0.5, 0.4))


def recorded_history(curve, every=3):
    """A Stage II history as ``train_mmt`` records it: net 1's mAP after each evaluated epoch (from 0)."""
    return [{"epoch": e, **({"net1": {"mAP": curve[e]}} if (e + 1) % every == 0 or e + 1 == len(curve) else {})}
            for e in range(len(curve))]


def test_late_gain_reads_the_last_fifth_of_a_recorded_history():
    climbing = [0.3 + 0.01 * e for e in range(30)]  # +1 mAP an epoch to the end
    plateau = [min(0.6, 0.3 + 0.02 * e) for e in range(30)]  # flat from epoch 15
    assert calibrate.late_gain(recorded_history(climbing), 30) == pytest.approx(0.06)  # after 24 to after 30
    assert calibrate.late_gain(recorded_history(plateau), 30) == 0.0
    assert calibrate.late_gain(recorded_history(climbing, every=7), 30) == pytest.approx(0.09)  # after 21, not 28
    assert np.isnan(calibrate.late_gain(recorded_history(climbing, every=30), 30))  # no evaluation before the fifth
    table = calibrate.calibration_table([
        summary("direct/a", "t", 0.3, 0.5, task="a"), summary("supervised/t", "t", 0.9),
        baseline("a", 0.6, gain=calibrate.late_gain(recorded_history(climbing), 30))])
    assert not table.loc[0, "baseline_late_gain_ok"] and not table.loc[0, "calibrated"]


def test_main_exits_with_its_own_status_when_a_number_is_out_of_band(monkeypatch, tmp_path, capsys):
    calls = []

    def fake_calibrate(profile, tasks, seed, out, jobs, data_root, overrides, fresh):
        calls.append((out, overrides, fresh))
        nmi = 0.9 if tasks == ["duke2market"] else 0.5
        return calibrate.calibration_table([summary("direct/a", "t", 0.3, nmi, task="a"),
                                            summary("supervised/t", "t", 0.9), baseline("a", 0.6)])

    monkeypatch.setattr(calibrate, "calibrate", fake_calibrate)
    assert calibrate.main(["--profile", "smoke", "--tasks", "duke2market"]) == calibrate.EXIT_OUT_OF_BAND
    assert calibrate.main(["--profile", "smoke", "--tasks", "market2duke", "--out", str(tmp_path),
                           "--overrides", '{"pretrain": {"epochs": 60}}', "--fresh"]) == 0
    assert calls == [(calibrate.default_out_dir("smoke"), {}, False), (tmp_path, {"pretrain": {"epochs": 60}}, True)]
    assert "0.900 ✗" in capsys.readouterr().out


def test_a_failing_cell_leaves_no_folder_and_sweeps_dead_temps(monkeypatch, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftover = tmp_path / "direct" / f".duke2market.tmp-{dead.pid}-0badc0de"
    leftover.mkdir(parents=True)
    (leftover / "model.pt").write_bytes(b"half")

    def failing_pretrain(cfg, out_dir, resume):
        Path(out_dir).mkdir(parents=True)
        (Path(out_dir) / "stage1.pt").write_bytes(b"partial")
        raise RuntimeError("killed mid-run")

    monkeypatch.setattr(calibrate, "pretrain", failing_pretrain)
    cell = calibrate.calibration_cells("smoke", ["duke2market"], data_root=str(tmp_path / "data"))[0]
    with pytest.raises(RuntimeError, match="killed mid-run"):
        calibrate.run_cell(cell, tmp_path)
    assert list((tmp_path / "direct").iterdir()) == []


def test_a_finished_cell_is_kept_while_its_config_its_domains_and_its_pair_are_unchanged(monkeypatch, tmp_path):
    cells = calibrate.calibration_cells("smoke", ["duke2market"], data_root=str(tmp_path / "data"))
    keys = calibrate.cell_keys(cells)
    for cell in cells:
        (tmp_path / cell.name).mkdir(parents=True)
        (tmp_path / cell.name / "metrics.json").write_text(json.dumps({"calibration": {"cell": cell.name,
                                                                                       "key": keys[cell.name]}}))
    names = [cell.name for cell in cells]
    assert list(calibrate.finished_cells(cells, tmp_path)) == names

    # A cell written without a key, or under another, is trained again; so is the baseline of its pair.
    (tmp_path / "peer/duke2market/metrics.json").write_text(json.dumps({"calibration": {"cell": "peer/duke2market"}}))
    assert list(calibrate.finished_cells(cells, tmp_path)) == ["direct/duke2market", "supervised/synth-market"]
    (tmp_path / "peer/duke2market/metrics.json").write_text(
        json.dumps({"calibration": {"cell": "peer/duke2market", "key": keys["peer/duke2market"]}}))

    # A record that cannot be read counts as no record.
    (tmp_path / "direct/duke2market/metrics.json").write_text('{"calibration": {"key": ')
    assert list(calibrate.finished_cells(cells, tmp_path)) == ["peer/duke2market", "supervised/synth-market"]
    (tmp_path / "direct/duke2market/metrics.json").write_text(
        json.dumps({"calibration": {"cell": "direct/duke2market", "key": keys["direct/duke2market"]}}))

    # Another Stage I changes the pair's configs, so the pair, the baseline and the supervised run go again.
    longer = calibrate.calibration_cells("smoke", ["duke2market"], data_root=str(tmp_path / "data"),
                                         overrides={"pretrain": {"epochs": 3}})
    assert calibrate.finished_cells(longer, tmp_path) == {}

    # A changed knob of the source domain retrains every cell that reads it; the target's own run is kept.
    duke = synthetic.DOMAINS["synth-duke"]
    monkeypatch.setitem(synthetic.DOMAINS, "synth-duke", dataclasses.replace(duke, family_size=duke.family_size + 1))
    assert list(calibrate.finished_cells(cells, tmp_path)) == ["supervised/synth-market"]


def test_table_refuses_a_target_without_its_supervised_run_or_a_task_without_its_baseline():
    with pytest.raises(ValueError, match="no supervised calibration run for t9"):
        calibrate.calibration_table([summary("direct/a", "t9", 0.3, 0.5)])
    with pytest.raises(ValueError, match="no baseline calibration run for a"):
        calibrate.calibration_table([summary("direct/a", "t9", 0.3, 0.5, task="a"), summary("supervised/t9", "t9", 0.9)])


def test_calibrate_on_the_smoke_profile_writes_consistent_tables(tmp_path):
    out = tmp_path / "cal"
    table = calibrate.calibrate("smoke", ["duke2market"], seed=1, out_dir=out, jobs=1,
                                data_root=str(tmp_path / "data"), progress=False,
                                overrides={"pretrain": {"epochs": 1}})
    assert len(table) == 1
    row = table.iloc[0]
    for name in ("supervised_mAP", "direct_mAP", "kmeans_nmi", "baseline_mAP"):
        assert 0.0 <= row[name] <= 1.0
    assert -1.0 <= row["pair_cosine"] <= 1.0
    assert row["kmeans_clusters"] >= 1
    on_disk = pd.read_csv(out / "calibration.csv")
    assert on_disk.loc[0, "direct_mAP"] == pytest.approx(row["direct_mAP"], abs=1e-4)
    assert "duke2market" in (out / "calibration.md").read_text()
    assert not list(out.rglob(".*tmp*"))
    record = json.loads((out / "calibration.json").read_text())
    assert (record["profile"], record["seed"], record["overrides"]) == ("smoke", 1, {"pretrain": {"epochs": 1}})
    assert '{"pretrain": {"epochs": 1}}' in (out / "calibration.md").read_text()
    assert [r["cell"] for r in record["runs"]] == ["direct/duke2market", "peer/duke2market", "baseline/duke2market",
                                                   "supervised/synth-market"]

    # Each number is what the run folders say: the direct run's target mAP, the supervised run's
    # mAP on its own test split, and the NMI recomputed from the direct run's stored k-means summary.
    direct = json.loads((out / "direct/duke2market/metrics.json").read_text())
    supervised = json.loads((out / "supervised/synth-market/metrics.json").read_text())
    assert row["direct_mAP"] == pytest.approx(direct["target"]["mAP"])
    assert row["supervised_mAP"] == pytest.approx(supervised["source"]["mAP"])
    assert row["kmeans_nmi"] == pytest.approx(direct["calibration"]["kmeans"]["nmi"])
    cell = calibrate.calibration_cells("smoke", ["duke2market"], data_root=str(tmp_path / "data"))[0]
    recomputed = calibrate.first_label_noise(cell.cfg, out / cell.name)
    assert recomputed["nmi"] == pytest.approx(row["kmeans_nmi"])
    assert recomputed["num_clusters"] == row["kmeans_clusters"] == cell.cfg.mmt.num_clusters

    # The baseline's number is its run folder's, from the pair's two folders, and its share is computed from the row.
    base = json.loads((out / "baseline/duke2market/metrics.json").read_text())
    assert base["variant"] == "baseline" and row["baseline_mAP"] == pytest.approx(base["mAP"])
    assert row["baseline_gap_share"] == pytest.approx(
        calibrate.gap_share(row["baseline_mAP"], row["direct_mAP"], row["supervised_mAP"]), nan_ok=True)

    # What the results notebook shows: the table read back, and one convergence panel per task.
    reread, curves = calibrate.read_calibration(out)
    pd.testing.assert_frame_equal(reread, table)
    assert [point["epoch"] for point in curves["duke2market"]] == list(range(1, base["config"]["mmt"]["epochs"] + 1))
    md, figure = calibrate.calibration_summary(out)
    assert "duke2market" in md and "baseline_gap_share" in md
    assert [ax.get_title() for ax in figure.axes] == [f"duke2market: {row['baseline_gap_share']:.0%} of the gap"]
    note, nothing = calibrate.calibration_summary(tmp_path / "never-calibrated")
    assert nothing is None and "make calibrate" in note and "never-calibrated" in note

    # Calibrating again into the same folder keeps every finished cell: nothing is trained or written.
    written = {path: path.stat().st_mtime_ns for path in out.rglob("metrics.json")}
    kept = calibrate.calibrate("smoke", ["duke2market"], seed=1, out_dir=out, jobs=1, data_root=str(tmp_path / "data"),
                               progress=False, overrides={"pretrain": {"epochs": 1}})
    pd.testing.assert_frame_equal(kept, table)
    assert {path: path.stat().st_mtime_ns for path in out.rglob("metrics.json")} == written

    # The same seed gives the same numbers, also with two worker processes.
    again = calibrate.calibrate("smoke", ["duke2market"], seed=1, out_dir=tmp_path / "cal2", jobs=2,
                                data_root=str(tmp_path / "data"), progress=False,
                                overrides={"pretrain": {"epochs": 1}})
    cols = ["supervised_mAP", "direct_mAP", "kmeans_nmi", "pair_cosine", "baseline_mAP"]
    np.testing.assert_allclose(again[cols].to_numpy(float), table[cols].to_numpy(float), atol=1e-6)


def test_a_killed_calibration_driver_leaves_no_cell_running():
    """A driver killed outright (SIGKILL: no handler runs) takes its pool's workers along."""
    driver_code = ("import os, time\nfrom mmt_lib.experiments import calibrate\npool = calibrate.cell_pool(1)\n"
                   "print(pool.submit(os.getpid).result(), flush=True)\npool.submit(time.sleep, 600)\ntime.sleep(600)\n")
    driver = subprocess.Popen([sys.executable, "-c", driver_code], cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True)
    worker = psutil.Process(int(driver.stdout.readline()))
    try:
        assert worker.ppid() == driver.pid
        driver.kill()
        driver.wait()
        deadline = time.monotonic() + 60
        while worker.is_running() and worker.status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not worker.is_running() or worker.status() == psutil.STATUS_ZOMBIE, "the cell outlived its driver"
    finally:
        if worker.is_running():
            worker.send_signal(signal.SIGKILL)

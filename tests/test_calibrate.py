"""Calibration of the synthetic domains: the cells it runs, the numbers it reports, the bands it checks."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mmt_lib import calibrate


def test_cells_are_one_direct_run_per_task_and_one_supervised_run_per_target():
    cells = calibrate.calibration_cells("smoke", ["duke2market", "market2msmt", "duke2msmt"], seed=3)
    names = [c.name for c in cells]
    assert names == ["direct/duke2market", "direct/market2msmt", "direct/duke2msmt",
                     "supervised/synth-market", "supervised/synth-msmt"]
    for cell in cells:
        assert cell.cfg.stage == "pretrain" and cell.cfg.seed == 3
        if cell.name.startswith("supervised/"):
            assert cell.cfg.data.source == cell.cfg.data.target
    direct = cells[1].cfg
    assert (direct.data.source, direct.data.target) == ("synth-market", "synth-msmt")


def test_unknown_task_is_refused_by_name():
    with pytest.raises(ValueError, match="market2viper"):
        calibrate.calibration_cells("smoke", ["market2viper"])


def summary(cell, target, mAP, nmi=None, task="duke2market"):
    s = {"cell": cell, "task": task, "source": "s", "target": target, "mAP": mAP, "top1": mAP}
    if nmi is not None:
        s["kmeans"] = {"nmi": nmi, "num_clusters": 10}
    return s


def test_table_checks_every_band_at_its_edges():
    summaries = [
        summary("direct/a", "t1", 0.45, 0.849, task="a"),
        summary("direct/b", "t2", 0.46, 0.5, task="b"),
        summary("direct/c", "t1", 0.15, 0.85, task="c"),
        summary("direct/d", "t1", 0.149, 0.2, task="d"),
        summary("supervised/t1", "t1", 0.80),
        summary("supervised/t2", "t2", 0.799),
    ]
    table = calibrate.calibration_table(summaries)
    assert list(table["task"]) == ["a", "b", "c", "d"]
    assert list(table["supervised_mAP"]) == [0.80, 0.799, 0.80, 0.80]
    assert list(table["supervised_mAP_ok"]) == [True, False, True, True]
    assert list(table["direct_mAP_ok"]) == [True, False, True, False]
    assert list(table["kmeans_nmi_ok"]) == [True, True, True, True]
    assert list(table["calibrated"]) == [True, False, True, False]
    md = calibrate.to_markdown(table)
    assert "supervised_mAP (>= 80)" in md and "direct_mAP (15–45)" in md and "kmeans_nmi (< 0.85)" in md
    assert "79.9 ✗" in md and "0.849 ✓" in md


def test_table_refuses_a_target_without_its_supervised_run():
    with pytest.raises(ValueError, match="no supervised calibration run for t9"):
        calibrate.calibration_table([summary("direct/a", "t9", 0.3, 0.5)])


def test_calibrate_on_the_smoke_profile_writes_consistent_tables(tmp_path):
    out = tmp_path / "cal"
    table = calibrate.calibrate("smoke", ["duke2market"], seed=1, out_dir=out, jobs=1,
                                data_root=str(tmp_path / "data"), progress=False)
    assert len(table) == 1
    row = table.iloc[0]
    for name in ("supervised_mAP", "direct_mAP", "kmeans_nmi"):
        assert 0.0 <= row[name] <= 1.0
    assert row["kmeans_clusters"] >= 1
    on_disk = pd.read_csv(out / "calibration.csv")
    assert on_disk.loc[0, "direct_mAP"] == pytest.approx(row["direct_mAP"], abs=1e-4)
    assert "duke2market" in (out / "calibration.md").read_text()
    assert not list(out.rglob(".*tmp*"))

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

    # The same seed gives the same numbers, also with two worker processes.
    again = calibrate.calibrate("smoke", ["duke2market"], seed=1, out_dir=tmp_path / "cal2", jobs=2,
                                data_root=str(tmp_path / "data"), progress=False)
    cols = ["supervised_mAP", "direct_mAP", "kmeans_nmi"]
    np.testing.assert_allclose(again[cols].to_numpy(float), table[cols].to_numpy(float), atol=1e-6)


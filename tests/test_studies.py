"""Named studies: the runs a study plans, the levels its folders name, and its table and figure."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from mmt_lib import batch
from mmt_lib.experiments import plan as batch_plan
from mmt_lib.experiments import results
from mmt_lib.experiments.studies import STUDIES, get_study, levels_of, merge_overrides, stage_two_settings

NEEDS = "what-mmt-needs"


def test_what_mmt_needs_plans_every_setting_for_mmt_and_every_stage1_setting_for_the_baseline(tmp_path):
    runs = batch_plan.study_plan("synthetic", tmp_path, NEEDS)
    ids = {r.run_id for r in runs}
    for k in (1, 2, 3):
        for domains in ("persistent-noise", "transient-noise"):
            for start in ("shared-start", "fractal-start", "random-start"):
                stage1 = f"{domains}.{start}"
                assert {f"duke2market/pretrain.{stage1}/seed{s}" for s in (2 * k - 1, 2 * k)} <= ids
                assert f"duke2market/direct.{stage1}/seed{k}" in ids
                assert f"duke2market/baseline.{stage1}/seed{k}" in ids
                for window in ("paper-window", "whole-run-window"):
                    assert f"duke2market/mmt-kmeans.{stage1}.{window}/seed{k}" in ids
    assert len(runs) == 3 * (12 + 6 + 6 + 12)  # per seed: 6 Stage I pairs, 6 direct, 6 baselines, 12 MMT
    assert not any("baseline" in i and "whole-run" in i for i in ids)  # no mean teacher: no window to vary


def test_study_runs_carry_their_levels_overrides_and_their_own_stage_one_pair(tmp_path):
    runs = {r.run_id: r for r in batch_plan.study_plan("synthetic", tmp_path, NEEDS, seeds=[2])}
    mmt = runs["duke2market/mmt-kmeans.transient-noise.random-start.whole-run-window/seed2"]
    assert mmt.parameters["overrides"] == {
        "data": {"source": "synth-transient-duke", "target": "synth-transient-market"},
        "model": {"pretrained": None}, "pretrain": {"lr": 3e-3}, "mmt": {"lr": 3e-3, "ema_window_share": 1.0}}
    assert mmt.parameters["variant"] == "mmt-kmeans"
    assert mmt.upstream == ("duke2market/pretrain.transient-noise.random-start/seed3",
                            "duke2market/pretrain.transient-noise.random-start/seed4")
    assert mmt.parameters["pretrained_dirs"] == [str(tmp_path / "synthetic" / u) for u in mmt.upstream]
    shared = runs["duke2market/pretrain.persistent-noise.shared-start/seed3"]
    assert shared.parameters["overrides"] == {} and shared.notebook == "01_pretrain"
    fractal = runs["duke2market/pretrain.persistent-noise.fractal-start/seed3"]
    assert fractal.parameters["overrides"] == {"model": {"stage0_family": "fractal"}}
    batch_plan.check_configs(list(runs.values()))  # every run's settings resolve


def test_the_window_levels_set_the_mean_teachers_alpha_from_the_share():
    from mmt_lib import config

    by_label = {label: o for label, _, o in stage_two_settings(get_study(NEEDS), "mmt-kmeans")}
    for label, share in (("persistent-noise.shared-start.paper-window", 1 / 16),
                         ("persistent-noise.shared-start.whole-run-window", 1.0)):
        cfg = config.resolve("mmt", profile="synthetic", task="duke2market", overrides=by_label[label])
        total = cfg.mmt.epochs * cfg.mmt.iters
        assert cfg.mmt.max_alpha() == pytest.approx(1 - 1 / (share * total))


def test_levels_of_names_each_factor_and_marks_what_a_run_cannot_tell_apart():
    study = get_study(NEEDS)
    assert levels_of("mmt-kmeans.transient-noise.random-start.whole-run-window", study) == {
        "variant": "mmt-kmeans", "domains": "transient-noise", "start": "random-start", "window": "whole-run-window"}
    assert levels_of("direct.persistent-noise.shared-start", study) == {
        "variant": "direct", "domains": "persistent-noise", "start": "shared-start", "window": "n/a"}
    assert levels_of("baseline.persistent-noise.fractal-start", study) == {
        "variant": "baseline", "domains": "persistent-noise", "start": "fractal-start", "window": "n/a"}
    with pytest.raises(ValueError, match="should name those of"):
        levels_of("mmt-kmeans.persistent-noise.random-start", study)


def test_merge_overrides_merges_sections_and_a_later_part_wins():
    assert merge_overrides({"mmt": {"a": 1, "b": 2}}, {"mmt": {"b": 3}, "model": {"c": 4}}) == {
        "mmt": {"a": 1, "b": 3}, "model": {"c": 4}}


def test_an_unknown_study_and_a_study_with_grid_options_are_refused(capsys):
    with pytest.raises(ValueError, match="unknown study 'nope'; known: \\['what-mmt-needs'\\]"):
        get_study("nope")
    capsys.readouterr()
    assert batch.main(["plan", "--study", NEEDS, "--tasks", "market2duke"]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "drop --tasks" in line
    assert set(STUDIES) == {NEEDS}


def _fake_run(profile_dir, run_id, mAP, top1):
    folder = profile_dir / run_id
    folder.mkdir(parents=True)
    stage = {"direct": "direct", "pretrain": "pretrain"}.get(run_id.split("/")[1].split(".")[0], "mmt")
    (folder / "metrics.json").write_text(json.dumps({"stage": stage, "mAP": mAP, "top1": top1, "top5": 0.9,
                                                     "top10": 0.95}))
    return run_id


def test_study_table_and_figure_from_finished_runs(tmp_path):
    ids = [_fake_run(tmp_path, f"duke2market/{label}/seed{k}", mAP, 0.5)
           for label, values in (("direct.persistent-noise.shared-start", (0.30, 0.32)),
                                 ("baseline.persistent-noise.shared-start", (0.50, 0.54)),
                                 ("mmt-kmeans.persistent-noise.shared-start.paper-window", (0.60, 0.64)),
                                 ("mmt-kmeans.persistent-noise.random-start.whole-run-window", (0.40, 0.41)))
           for k, mAP in zip((1, 2), values)]
    ids.append(_fake_run(tmp_path, "duke2market/pretrain.persistent-noise.shared-start/seed1", 0.2, 0.3))  # not in it
    table = results.collect_study(tmp_path, NEEDS, ids)
    row = table[(table["variant"] == "mmt-kmeans") & (table["start"] == "shared-start")].iloc[0]
    assert row["mAP_mean"] == pytest.approx(62.0) and row["mAP_per_seed"] == "60.0, 64.0" and row["seeds"] == "1, 2"
    baseline = table[table["variant"] == "baseline"].iloc[0]
    assert baseline["window"] == "n/a"  # the baseline has no mean teacher
    assert "62.0 ± 2.8" in (tmp_path / "study.md").read_text()
    assert len(pd.read_csv(tmp_path / "study_runs.csv")) == 8
    assert (tmp_path / "figures" / "study_mAP.png").stat().st_size > 0


@pytest.mark.notebook
def test_a_smoke_study_runs_and_collects(tmp_path, capfd):
    args = ["--study", NEEDS, "--profile", "smoke", "--seeds", "1", "--runs-dir", str(tmp_path)]
    only = ["--only", "duke2market/pretrain.persistent-noise.*/*", "duke2market/direct.persistent-noise.*/*",
            "duke2market/baseline.persistent-noise.*/*", "duke2market/*.persistent-noise.*.paper-window/*"]
    assert batch.main(["run", *args, *only, "--jobs", "2", "--param", "device=cpu"]) == 0
    capfd.readouterr()
    assert batch.main(["collect", *args, *only, "--param", "device=cpu"]) == 0
    out = capfd.readouterr().out
    assert re.search(r"\| mmt-kmeans +\| persistent-noise +\| random-start +\| paper-window +\|", out), out
    table = pd.read_csv(tmp_path / "smoke" / "study.csv")
    assert set(table["variant"]) == {"direct", "baseline", "mmt-kmeans"} and set(table["start"]) == {
        "shared-start", "fractal-start", "random-start"}

"""Configuration: profiles, tasks, variants, validation and the hash that identifies a run."""

from __future__ import annotations

import pytest

from mmt_lib.config import ABLATION_VARIANTS, TASKS, VARIANTS, resolve


def test_tasks_map_to_synthetic_or_real_datasets():
    cfg = resolve(profile="smoke", task="market2msmt")
    assert (cfg.data.source, cfg.data.target) == ("synth-market", "synth-msmt")
    real = resolve(profile="paper", task="duke2market")
    assert (real.data.source, real.data.target) == ("dukemtmc", "market1501")
    assert real.model.arch == "resnet50" and real.data.height == 256 and real.data.width == 128


def test_paper_profile_keeps_the_published_schedule_and_cluster_counts():
    cfg = resolve(profile="paper", task="duke2msmt")
    assert (cfg.mmt.epochs, cfg.mmt.iters, cfg.mmt.num_clusters) == (40, 400, 1500)
    assert (cfg.pretrain.epochs, cfg.pretrain.iters, cfg.pretrain.milestones) == (80, 100, (40, 70))
    assert resolve(profile="paper", task="market2duke").mmt.num_clusters == 500
    assert cfg.mmt.term_weights() == {"hard_ce": 0.5, "hard_triplet": pytest.approx(0.2),
                                      "soft_ce": 0.5, "soft_triplet": 0.8}


def test_the_synthetic_profile_fine_tunes_its_start_at_the_papers_rates():
    """Both stages at the paper's 3.5e-4 from one shared pretrained start (Section 4.2), on every task;
    the mean teacher's window at the paper's share of Stage II (1,000 of 16,000 iterations)."""
    paper = resolve(profile="paper")
    assert paper.pretrain.lr == paper.mmt.lr == 3.5e-4
    for task in TASKS:
        for stage in ("pretrain", "mmt"):
            cfg = resolve(stage, profile="synthetic", task=task)
            assert cfg.pretrain.lr == cfg.mmt.lr == paper.pretrain.lr
            assert cfg.model.pretrained == "stage0" and cfg.model.stage0_family == "people"
            assert cfg.mmt.ema_window_share == pytest.approx(1000 / 16000)


def test_custom_task_from_any_two_datasets():
    cfg = resolve(profile="synthetic", source="market1501", target="folder", data_root="/data", variant="mmt-dbscan")
    assert (cfg.data.source, cfg.data.target, cfg.task) == ("market1501", "folder", "market15012folder")


def test_variant_names_are_the_papers_rows():
    assert set(ABLATION_VARIANTS) <= set(VARIANTS)
    assert {"direct", "baseline", "mmt-kmeans", "mmt-dbscan"} <= set(VARIANTS)
    assert resolve(variant="mmt-dbscan").mmt.clustering == "dbscan"
    base = resolve(variant="baseline").mmt
    assert not base.mean_teacher and base.term_weights()["soft_ce"] == 0 == base.term_weights()["soft_triplet"]


@pytest.mark.parametrize("kwargs, message", [
    ({"profile": "huge"}, "unknown profile 'huge'"),
    ({"task": "duke2mars"}, "unknown task 'duke2mars'"),
    ({"variant": "mmt-magic"}, "unknown variant 'mmt-magic'"),
    ({"overrides": {"mmt": {"lr_typo": 1}}}, r"unknown mmt setting\(s\) \['lr_typo'\]"),
    ({"overrides": {"optim": {}}}, "unknown override section 'optim'"),
    ({"overrides": {"mmt": {"clustering": "spectral"}}}, "mmt.clustering"),
    ({"overrides": {"data": {"batch_size": 30}}}, "multiple of data.num_instances"),
    ({"variant": "mmt-only-soft", "overrides": {"mmt": {"soft_ce_weight": 0.0, "soft_tri_weight": 0.0}}},
     "every Stage II loss term has weight 0"),
    ({"variant": "baseline", "overrides": {"mmt": {"soft_ce_weight": 0.5}}}, "soft_teacher is 'none'"),
])
def test_bad_settings_are_refused_with_the_parameter_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        resolve(**kwargs)


def test_hash_changes_with_any_setting_and_only_then():
    a = resolve(profile="smoke", seed=1)
    assert a.config_hash() == resolve(profile="smoke", seed=1).config_hash()
    assert a.config_hash() != resolve(profile="smoke", seed=2).config_hash()
    assert a.config_hash() != resolve(profile="smoke", seed=1, overrides={"mmt": {"lr": 1e-4}}).config_hash()
    assert set(TASKS) == {"market2duke", "duke2market", "market2msmt", "duke2msmt"}


@pytest.mark.parametrize("overrides, message", [
    ({"pretrain": {"epochs": 0}}, r"pretrain\.epochs must be an integer >= 1, got 0"),
    ({"data": {"num_instances": 0}}, r"data\.num_instances must be an integer >= 1, got 0"),
    ({"data": {"batch_size": 0}}, r"data\.batch_size must be an integer >= 1, got 0"),
    ({"pretrain": {"epochs": "2"}}, r"pretrain\.epochs must be an integer, got '2' \(str\)"),
    ({"mmt": {"epochs": 2.0}}, r"mmt\.epochs must be an integer, got 2\.0 \(float\)"),
    ({"mmt": {"iters": True}}, r"mmt\.iters must be an integer, got True \(bool\)"),
    ({"data": {"test_batch_size": -8}}, r"data\.test_batch_size must be an integer >= 1, got -8"),
    ({"mmt": {"lr": 0.0}}, r"mmt\.lr must be a number > 0, got 0\.0"),
    ({"pretrain": {"lr": float("nan")}}, r"pretrain\.lr must be a number > 0, got nan"),
    ({"pretrain": {"weight_decay": -1e-4}}, r"pretrain\.weight_decay must be a number >= 0, got -0\.0001"),
    ({"pretrain": {"milestones": [5, 2]}}, r"pretrain\.milestones must be increasing epochs, got \[5, 2\]"),
    ({"pretrain": {"milestones": [1.5]}}, r"pretrain\.milestones must be a list of integers, got \[1\.5\]"),
    ({"pretrain": {"eval_every": 0}}, r"pretrain\.eval_every must be an integer >= 1, got 0"),
    ({"mmt": {"num_clusters": 1}}, r"mmt\.num_clusters must be an integer >= 2 \(or None\), got 1"),
    ({"mmt": {"ema_alpha": 1.0}}, r"mmt\.ema_alpha must be a number in \[0, 1\) \(or None\), got 1\.0"),
    ({"mmt": {"rho": 0}}, r"mmt\.rho must be a number in \(0, 1\), got 0"),
    ({"mmt": {"ema_window_share": 0}}, r"mmt\.ema_window_share must be a number in \(0, 1\], got 0"),
    ({"mmt": {"ema_window_share": 0.1}}, r"mmt\.ema_window_share \(0\.1\) of 2 x 3 Stage II iterations is a "
                                         r"mean-teacher window shorter than one iteration"),
    ({"mmt": {"eval_every": 0}}, r"mmt\.eval_every must be an integer >= 1, got 0"),
    ({"mmt": {"k2": 10}}, r"mmt\.k2 must be in \[1, mmt\.k1 \+ 1\] = \[1, 7\], got 10"),
    ({"mmt": {"label_smoothing": 1}}, r"mmt\.label_smoothing must be a number in \[0, 1\), got 1"),
    ({"data": {"bn_group_size": 0}}, r"data\.bn_group_size must be an integer >= 1 \(or None\), got 0"),
    ({"model": {"dropout": 1.5}}, r"model\.dropout must be a number in \[0, 1\), got 1\.5"),
    ({"model": {"arch": "resnet9000"}}, r"model\.arch must be one of \[.*'cpu_tiny'.*\], got 'resnet9000'"),
    ({"data": {"synthetic_size": "huge"}}, r"data\.synthetic_size must be one of \['tiny', .*\], got 'huge'"),
    ({"runtime": {"compile": "no"}}, r"runtime\.compile must be true or false, got 'no' \(str\)"),
    ({"mmt": {"allow_same_pretrained": 1}}, r"mmt\.allow_same_pretrained must be true or false, got 1 \(int\)"),
])
def test_every_value_is_checked_when_the_config_resolves(overrides, message):
    with pytest.raises(ValueError, match=message):
        resolve(profile="smoke", overrides=overrides)


@pytest.mark.parametrize("seed", ["2", -1, 1.0, True])
def test_the_seed_must_be_a_non_negative_integer(seed):
    with pytest.raises(ValueError, match=rf"seed must be an integer >= 0, got {seed!r}"):
        resolve(profile="smoke", seed=seed)


def test_values_of_the_right_kind_pass():
    cfg = resolve(profile="smoke", seed=3, overrides={"mmt": {"lr": 1, "num_clusters": 2},
                                                       "pretrain": {"milestones": [1, 2], "warmup_epochs": 0},
                                                       "data": {"bn_group_size": 8}, "runtime": {"bf16": None}})
    assert (cfg.seed, cfg.mmt.lr, cfg.pretrain.milestones, cfg.data.bn_group_size) == (3, 1, [1, 2], 8)


def test_the_mean_teachers_window_keeps_the_papers_share_of_stage_two():
    paper = resolve(profile="paper")
    assert paper.mmt.epochs * paper.mmt.iters == 16_000 and paper.mmt.max_alpha() == 0.999  # exactly the paper's
    synthetic = resolve(profile="synthetic").mmt
    assert synthetic.max_alpha() == 1 - 1 / (synthetic.epochs * synthetic.iters / 16)
    assert resolve(profile="synthetic", overrides={"mmt": {"ema_alpha": 0.97}}).mmt.max_alpha() == 0.97  # wins
    whole = resolve(profile="synthetic", overrides={"mmt": {"ema_window_share": 1.0}}).mmt
    assert whole.max_alpha() == 1 - 1 / (whole.epochs * whole.iters)  # the ramp never reaches it: a plain average

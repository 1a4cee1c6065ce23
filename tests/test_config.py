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

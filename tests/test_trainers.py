"""Stage I and Stage II end to end on the smoke profile: finite metrics, presets, resume, guards."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmt_lib.config import VARIANTS, resolve
from mmt_lib.method import mmt, pretrain, trainer
from mmt_lib.runtime.checkpoints import load_checkpoint, save_checkpoint
from mmt_lib.runtime.paths import PROJECT_ROOT
from mmt_lib.runtime.seeding import CLUSTERING_STREAM, derive_seed

TIMING = ("seconds_extract", "seconds_cluster", "seconds_train", "seconds_eval")


def smoke_cfg(stage: str, data_root, variant: str = "mmt-kmeans", seed: int = 1, **mmt_overrides):
    overrides = {"runtime": {"progress": False}}
    if mmt_overrides:
        overrides["mmt"] = mmt_overrides
    return resolve(stage=stage, profile="smoke", task="duke2market", variant=variant, seed=seed,
                   data_root=str(data_root), device="cpu", overrides=overrides)


def without_timing(history):
    return [{k: v for k, v in record.items() if k not in TIMING} for record in history]


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    """The Stage I pair (seeds 1 and 2) on the tiny synthetic Duke -> Market task."""
    root = tmp_path_factory.mktemp("smoke")
    data_root = root / "data"
    results = {}
    for seed in (1, 2):
        results[seed] = pretrain.pretrain(smoke_cfg("pretrain", data_root, seed=seed), root / f"pretrain{seed}")
    return data_root, [root / "pretrain1" / "checkpoint.pt", root / "pretrain2" / "checkpoint.pt"], results


def test_pretrain_gives_finite_metrics_and_a_checkpoint(stage1):
    _, checkpoints, results = stage1
    for metrics in results.values():
        assert 0.0 <= metrics["mAP"] <= 1.0
        assert 0.0 <= metrics["source"]["top1"] <= 1.0
        assert len(metrics["history"]) == 2
        assert all(torch.isfinite(torch.tensor(r["loss_ce"])) for r in metrics["history"])
    state = load_checkpoint(checkpoints[0])
    assert state["stage"] == "pretrain" and state["epoch"] == 1
    # The two networks differ only by seed, so their weights differ.
    other = load_checkpoint(checkpoints[1])
    assert not torch.equal(state["model"]["classifier.weight"], other["model"]["classifier.weight"])


def test_warmup_multistep_learning_rate():
    p = resolve(stage="pretrain", profile="paper").pretrain
    assert pretrain.learning_rate(p, 0) == pytest.approx(3.5e-4 * 0.01)
    assert pretrain.learning_rate(p, 5) == pytest.approx(3.5e-4 * (0.01 * 0.5 + 0.5))
    assert pretrain.learning_rate(p, 10) == pytest.approx(3.5e-4)
    assert pretrain.learning_rate(p, 40) == pytest.approx(3.5e-5)
    assert pretrain.learning_rate(p, 79) == pytest.approx(3.5e-6)


def test_mmt_smoke_run_records_every_diagnostic(stage1, tmp_path):
    data_root, checkpoints, _ = stage1
    metrics = mmt.train_mmt(smoke_cfg("mmt", data_root), tmp_path / "mmt", tuple(checkpoints))
    assert 0.0 <= metrics["mAP"] <= 1.0 and 0.0 <= metrics["top1"] <= 1.0
    assert metrics["selection"].startswith("label-free")
    assert "target labels" in metrics["oracle"]["note"]
    assert metrics["oracle"]["mAP"] >= max(r["net1"]["mAP"] for r in metrics["history"])
    first = metrics["history"][0]
    assert set(first["pseudo_labels"]) >= {"num_clusters", "nmi", "ari", "pairwise_precision",
                                           "pairwise_recall", "wrong_majority_fraction"}
    assert first["pseudo_labels"]["num_clusters"] <= 8
    assert {"loss_hard_ce", "loss_hard_triplet", "loss_soft_ce", "loss_soft_triplet"} <= set(first)
    assert {"net1", "net2"} <= set(first) and set(TIMING) <= set(first)
    assert len(list((tmp_path / "mmt" / "embeddings").glob("epoch*.npz"))) == 2


def test_stage2_evaluates_every_few_epochs_and_after_the_last(stage1, tmp_path):
    data_root, checkpoints, _ = stage1
    cfg = smoke_cfg("mmt", data_root, epochs=3, eval_every=2)
    history = mmt.train_mmt(cfg, tmp_path / "mmt", tuple(checkpoints))["history"]
    assert ["net1" in r for r in history] == [False, True, True]
    assert ["seconds_eval" in r for r in history] == [False, True, True]


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "direct"])
def test_each_variant_switches_exactly_its_terms(variant):
    cfg = resolve(profile="smoke", variant=variant)
    expected = {
        "baseline": {"hard_ce", "hard_triplet"},
        "mmt-only-soft": {"soft_ce", "soft_triplet"},
        "mmt-no-hard-ce": {"hard_triplet", "soft_ce", "soft_triplet"},
        "mmt-no-hard-triplet": {"hard_ce", "soft_ce", "soft_triplet"},
        "mmt-no-soft-ce": {"hard_ce", "hard_triplet", "soft_triplet"},
        "mmt-no-soft-triplet": {"hard_ce", "hard_triplet", "soft_ce"},
    }.get(variant, {"hard_ce", "hard_triplet", "soft_ce", "soft_triplet"})
    torch.manual_seed(0)
    outputs = [(torch.randn(8, 4), torch.randn(8, 3)) for _ in range(2)]
    peers = [(torch.randn(8, 4), torch.randn(8, 3)) for _ in range(2)]
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])
    weights = cfg.mmt.term_weights()
    targets = mmt.soft_targets(outputs, peers, cfg.mmt.soft_teacher) if cfg.mmt.soft_teacher != "none" else None
    terms = mmt.mmt_loss_terms(outputs, targets, labels, weights, 0.1)
    assert set(terms) == expected
    assert {k for k, w in weights.items() if w > 0} == expected


def test_soft_labels_come_from_the_intended_network():
    own = [("f1", "z1"), ("f2", "z2")]
    means = [("e1", "y1"), ("e2", "y2")]
    as_tensors = lambda pairs: [(torch.tensor([float(i)]), torch.tensor([float(i) + 0.5])) for i, _ in enumerate(pairs)]
    outputs, mean_outputs = as_tensors(own), [(t + 10, z + 10) for t, z in as_tensors(means)]
    peer = mmt.soft_targets(outputs, mean_outputs, "peer-mean")
    assert peer[0][0].item() == 11.0 and peer[1][0].item() == 10.0
    own_mean = mmt.soft_targets(outputs, mean_outputs, "own-mean")
    assert own_mean[0][0].item() == 10.0 and own_mean[1][0].item() == 11.0
    current = mmt.soft_targets(outputs, mean_outputs, "peer-current")
    assert current[0][0].item() == 1.0 and current[1][0].item() == 0.0


def test_baseline_has_no_mean_nets(stage1):
    data_root, checkpoints, _ = stage1
    cfg = smoke_cfg("mmt", data_root, variant="baseline")
    networks = mmt.build_networks(cfg, tuple(checkpoints), torch.device("cpu"))
    assert networks.means == [] and networks.labelling_nets() == networks.students
    full = mmt.build_networks(smoke_cfg("mmt", data_root), tuple(checkpoints), torch.device("cpu"))
    assert len(full.means) == 2
    assert not any(p.requires_grad for net in full.means for p in net.parameters())


def test_resumed_run_ends_with_the_same_metrics(stage1, tmp_path, monkeypatch):
    data_root, checkpoints, _ = stage1
    cfg = smoke_cfg("mmt", data_root)
    straight = mmt.train_mmt(cfg, tmp_path / "straight", tuple(checkpoints))

    real_save = trainer.save_checkpoint

    def save_then_die(path, state):
        real_save(path, state)
        raise KeyboardInterrupt("killed after the first epoch")

    monkeypatch.setattr(trainer, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        mmt.train_mmt(cfg, tmp_path / "resumed", tuple(checkpoints))
    monkeypatch.setattr(trainer, "save_checkpoint", real_save)
    assert load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")["epoch"] == 0
    resumed = mmt.train_mmt(cfg, tmp_path / "resumed", tuple(checkpoints))
    assert without_timing(resumed["history"]) == without_timing(straight["history"])
    assert resumed["mAP"] == straight["mAP"]


def test_resumed_pretrain_ends_with_the_same_metrics(stage1, tmp_path, monkeypatch):
    data_root, _, results = stage1
    cfg = smoke_cfg("pretrain", data_root, seed=1)
    real_save = trainer.save_checkpoint

    def save_then_die(path, state):
        real_save(path, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        pretrain.pretrain(cfg, tmp_path / "pre")
    monkeypatch.setattr(trainer, "save_checkpoint", real_save)
    resumed = pretrain.pretrain(cfg, tmp_path / "pre")
    assert without_timing(resumed["history"]) == without_timing(results[1]["history"])


def test_checkpoint_of_another_configuration_is_refused_naming_both_hashes(stage1, tmp_path):
    data_root, checkpoints, _ = stage1
    first, second = smoke_cfg("mmt", data_root), smoke_cfg("mmt", data_root, variant="baseline")
    mmt.train_mmt(first, tmp_path / "run", tuple(checkpoints))
    with pytest.raises(ValueError, match=f"another run .*{first.config_hash()}.*{second.config_hash()}"):
        mmt.train_mmt(second, tmp_path / "run", tuple(checkpoints))


def test_stage2_refuses_to_resume_from_a_stage1_checkpoint(stage1):
    data_root, checkpoints, _ = stage1
    with pytest.raises(ValueError, match="stage 'pretrain'.*this run is stage 'mmt'"):
        mmt.train_mmt(smoke_cfg("mmt", data_root), checkpoints[0].parent, tuple(checkpoints))


def test_each_epoch_clusters_with_a_derived_seed(stage1, tmp_path, monkeypatch):
    """Clustering seeds are mixed from (seed, epoch) by ``derive_seed``, never ``seed * 1000 + epoch``."""
    data_root, checkpoints, _ = stage1
    seeds = []
    real_kmeans = mmt.kmeans

    def spy(features, k, seed):
        seeds.append(seed)
        return real_kmeans(features, k, seed=seed)

    monkeypatch.setattr(mmt, "kmeans", spy)
    mmt.train_mmt(smoke_cfg("mmt", data_root, seed=3), tmp_path / "run", tuple(checkpoints))
    assert seeds == [derive_seed(3, epoch, CLUSTERING_STREAM) for epoch in range(2)]


def test_stage2_does_not_import_stage1():
    code = "import sys, mmt_lib.method.mmt; print('mmt_lib.method.pretrain' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_command_line_paths_are_relative_to_the_current_directory(tmp_path):
    """Run from a folder outside the repository: ``--out`` and ``--data-root`` land there, not in the project."""
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    overrides = '{"runtime": {"progress": false}}'
    subprocess.run([sys.executable, "-m", "mmt_lib.train", "pretrain", "--profile", "smoke", "--device", "cpu",
                    "--data-root", "mydata", "--overrides", overrides, "--out", "pre1"],
                   cwd=cwd, check=True, capture_output=True, timeout=300)
    assert (cwd / "pre1" / "metrics.json").is_file() and (cwd / "pre1" / trainer.CHECKPOINT).is_file()
    assert (cwd / "mydata").is_dir()
    assert not (PROJECT_ROOT / "pre1").exists() and not (PROJECT_ROOT / "mydata").exists()


def test_nan_loss_stops_the_run_naming_term_and_iteration(stage1, tmp_path, monkeypatch):
    data_root, checkpoints, _ = stage1
    monkeypatch.setattr(mmt, "softmax_triplet", lambda f, y: torch.tensor(float("nan")))
    with pytest.raises(FloatingPointError, match=r"'hard_triplet'.*epoch 0, iteration 0"):
        mmt.train_mmt(smoke_cfg("mmt", data_root), tmp_path / "nan", tuple(checkpoints))


def test_direct_transfer_evaluates_the_stage1_network(stage1):
    data_root, checkpoints, results = stage1
    metrics = mmt.evaluate_direct(smoke_cfg("mmt", data_root, variant="direct"), checkpoints[0])
    assert metrics["mAP"] == pytest.approx(results[1]["target"]["mAP"])
    json.dumps(metrics)


def test_direct_transfer_reads_its_one_stage1_checkpoint_once(stage1, tmp_path, monkeypatch):
    data_root, checkpoints, results = stage1
    reads = counting_stage1_reads(monkeypatch)
    metrics = mmt.run_variant(smoke_cfg("mmt", data_root, variant="direct"), tmp_path / "direct",
                              [str(c.parent) for c in checkpoints])
    assert reads == [checkpoints[0]]
    assert metrics["mAP"] == pytest.approx(results[1]["target"]["mAP"])


class Payload:
    """An arbitrary Python object: loading it would mean unpickling code."""


def test_checkpoint_loading_refuses_pickled_objects(tmp_path):
    torch.save({"epoch": 0, "obj": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="weights_only"):
        load_checkpoint(tmp_path / "evil.pt")
    save_checkpoint(tmp_path / "ok.pt", {"epoch": 3, "w": torch.ones(2)})
    assert load_checkpoint(tmp_path / "ok.pt")["epoch"] == 3
    assert not list(tmp_path.glob(".*.tmp"))


def counting_stage1_reads(monkeypatch) -> list[Path]:
    """Every Stage I checkpoint read from disk from now on, in order."""
    from mmt_lib.method import provenance

    reads: list[Path] = []
    real = provenance.load_checkpoint
    monkeypatch.setattr(provenance, "load_checkpoint", lambda path: reads.append(Path(path)) or real(path))
    return reads


def test_command_line_trains_and_writes_metrics(stage1, tmp_path, monkeypatch):
    from mmt_lib import train

    data_root, checkpoints, _ = stage1
    common = ["--profile", "smoke", "--task", "duke2market", "--data-root", str(data_root), "--device", "cpu",
              "--overrides", '{"runtime": {"progress": false}}']
    pre_dirs = [str(c.parent) for c in checkpoints]
    reads = counting_stage1_reads(monkeypatch)
    assert train.main(["mmt", *common, "--variant", "baseline", "--pretrained", *pre_dirs,
                       "--out", str(tmp_path / "cli")]) == 0
    assert sorted(reads) == sorted(checkpoints)  # each read once: checked, then built from the same state
    metrics = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert metrics["variant"] == "baseline" and 0.0 <= metrics["mAP"] <= 1.0
    with pytest.raises(SystemExit):
        train.main(["mmt", *common, "--out", str(tmp_path / "missing")])


def test_stage1_networks_of_both_seeds_start_from_one_backbone(tmp_path, monkeypatch):
    """The paper's Stage I: the pair differs only by seed; without ImageNet weights they share one draw."""

    class Started(Exception):
        pass

    starts = []

    def capture(net, *args, **kwargs):
        starts.append({k: v.clone() for k, v in net.state_dict().items()})
        raise Started

    monkeypatch.setattr(pretrain, "prepare_model", capture)
    for seed in (1, 2):
        with pytest.raises(Started):
            pretrain.pretrain(smoke_cfg("pretrain", tmp_path / "data", seed=seed), tmp_path / f"pre{seed}")
    backbone = [k for k in starts[0] if k.startswith("backbone.")]
    assert backbone and all(torch.equal(starts[0][k], starts[1][k]) for k in backbone)
    assert not torch.equal(starts[0]["classifier.weight"], starts[1]["classifier.weight"])


def test_atomic_writes_give_files_the_mode_open_gives(tmp_path):
    from mmt_lib.runtime.checkpoints import write_text_atomic

    (tmp_path / "plain.txt").write_text("x")
    write_text_atomic(tmp_path / "atomic.md", "≤ ✓\n")
    assert (tmp_path / "atomic.md").stat().st_mode == (tmp_path / "plain.txt").stat().st_mode
    assert (tmp_path / "atomic.md").read_text(encoding="utf-8") == "≤ ✓\n"


def cli_args(data_root, *args: str) -> list[str]:
    return [*args, "--profile", "smoke", "--data-root", str(data_root), "--device", "cpu",
            "--overrides", '{"runtime": {"progress": false}}']


def test_stage1_records_what_it_was_trained_for(stage1):
    data_root, checkpoints, results = stage1
    expected = {"task": "duke2market", "source": "synth-duke", "target": "synth-market", "data": "synthetic",
                "seed": 1, "config_hash": smoke_cfg("pretrain", data_root, seed=1).config_hash()}
    assert load_checkpoint(checkpoints[0])["provenance"] == expected
    assert results[1]["provenance"] == expected


def test_stage2_refuses_stage1_of_another_task_naming_both(stage1, tmp_path, capsys):
    from mmt_lib import train

    data_root, checkpoints, _ = stage1
    other = tmp_path / "market2duke"
    assert train.main(cli_args(data_root, "pretrain", "--task", "market2duke", "--out", str(other))) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:
        train.main(cli_args(data_root, "mmt", "--task", "duke2market", "--pretrained", str(other),
                            str(checkpoints[1].parent), "--out", str(tmp_path / "mmt")))
    assert refused.value.code == 2
    err = capsys.readouterr().err
    assert "market2duke (synth-market -> synth-duke, seed 1)" in err
    assert "this Stage II run is duke2market (synth-duke -> synth-market)" in err
    assert not (tmp_path / "mmt").exists()  # refused before --out was created
    for variant in ("direct", "mmt-kmeans"):  # the library entry the notebooks call refuses too
        with pytest.raises(ValueError, match="give the Stage I runs of duke2market"):
            mmt.run_variant(smoke_cfg("mmt", data_root, variant=variant), tmp_path / variant,
                            [str(other), str(checkpoints[1].parent)])


def test_one_stage1_run_for_both_students_only_when_asked(stage1, tmp_path, capsys):
    from mmt_lib import train
    from mmt_lib.method import provenance

    data_root, checkpoints, _ = stage1
    with pytest.raises(SystemExit) as refused:
        train.main(cli_args(data_root, "mmt", "--task", "duke2market", "--pretrained", str(checkpoints[0].parent),
                            str(checkpoints[0].parent), "--out", str(tmp_path / "mmt")))
    assert refused.value.code == 2
    assert "both Stage I checkpoints are one run" in capsys.readouterr().err
    copy = tmp_path / "copy" / "checkpoint.pt"
    copy.parent.mkdir()
    copy.write_bytes(checkpoints[0].read_bytes())
    with pytest.raises(ValueError, match="mmt.allow_same_pretrained=True"):
        provenance.check_pretrained(smoke_cfg("mmt", data_root), [checkpoints[0], copy])
    study = smoke_cfg("mmt", data_root, allow_same_pretrained=True)
    provenance.check_pretrained(study, [checkpoints[0], copy])
    provenance.check_pretrained(smoke_cfg("mmt", data_root, variant="direct"), [checkpoints[0], checkpoints[0]])
    students = mmt.build_networks(study, (checkpoints[0], copy), torch.device("cpu")).students
    assert all(torch.equal(a, b) for a, b in zip(students[0].state_dict().values(), students[1].state_dict().values()))


def test_command_line_refuses_bad_settings_before_any_data_loads(tmp_path, capsys):
    from mmt_lib import train

    for overrides, message in (('{"pretrain": {"epochs": 0}}', "pretrain.epochs must be an integer >= 1, got 0"),
                               ('{"data": {"num_instances": 0}}', "data.num_instances must be an integer >= 1"),
                               ('{"pretrain": {"epochs": "2"}}', "pretrain.epochs must be an integer, got '2'")):
        with pytest.raises(SystemExit) as refused:
            train.main(["pretrain", "--profile", "smoke", "--data-root", str(tmp_path / "data"), "--device", "cpu",
                        "--overrides", overrides, "--out", str(tmp_path / "out")])
        assert refused.value.code == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


def test_command_line_refuses_an_output_folder_it_cannot_write_before_training(tmp_path, capsys):
    from mmt_lib import train

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(SystemExit) as refused:
        train.main(["pretrain", "--profile", "smoke", "--data-root", str(tmp_path / "data"), "--device", "cpu",
                    "--out", str(blocker / "out")])
    assert refused.value.code == 2
    assert f"output folder {blocker / 'out'} cannot be written" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()

"""Stage 0, the formula-driven start: deterministic files, the cache, loading as ImageNet weights, the
Stage I runs that share it, the batch step that builds it, and refusals of bad input."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from mmt_lib.config import PROFILES, STAGE0, resolve
from mmt_lib.data.decoded import CACHE_ENV
from mmt_lib.experiments import plan as batch_plan
from mmt_lib.figures import analysis
from mmt_lib.method import pretrain, stage0
from mmt_lib.models import build_backbone, build_model, load_imagenet_weights

SMOKE = stage0.Stage0Config(**PROFILES["smoke"]["stage0"], arch="cpu_tiny", height=32, width=16)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The smoke start, built once for the module."""
    root = tmp_path_factory.mktemp("stage0")
    return stage0.ensure_start(SMOKE, root, progress=False)


def test_the_same_config_gives_the_same_file_bytes(built, tmp_path):
    again = stage0.ensure_start(SMOKE, tmp_path, progress=False)
    assert again.name == built.name
    assert again.read_bytes() == built.read_bytes()
    other = stage0.ensure_start(dataclasses.replace(SMOKE, seed=2), tmp_path, progress=False)
    assert other.name != built.name and other.read_bytes() != built.read_bytes()


def test_a_second_call_reuses_the_file(built, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("trained again although the file was there")

    monkeypatch.setattr(stage0, "train_start", refuse)
    mtime = built.stat().st_mtime_ns
    assert stage0.ensure_start(SMOKE, built.parent, progress=False) == built
    assert built.stat().st_mtime_ns == mtime


def test_the_file_loads_as_imagenet_weights_and_has_a_report(built):
    backbone = build_backbone("cpu_tiny")
    load_imagenet_weights(backbone, built)
    saved = torch.load(built, weights_only=True)
    assert not any(name.startswith("backbone.") for name in saved)
    assert all(torch.equal(backbone.state_dict()[k], v) for k, v in saved.items())
    assert not torch.equal(build_backbone("cpu_tiny").state_dict()["conv1.0.weight"], saved["conv1.0.weight"])
    report = stage0.read_report(built)
    assert report["config"] == dataclasses.asdict(SMOKE)
    assert len(report["history"]) == SMOKE.epochs and 0.0 <= report["held_out_accuracy"] <= 1.0
    with pytest.raises(ValueError, match="does not match"):
        load_imagenet_weights(build_backbone("cpu_small"), built)


def test_classes_render_differently_and_a_seed_renders_the_same():
    ifs = stage0.sample_ifs(np.random.default_rng(3))
    assert 2 <= len(ifs) <= 8 and ifs.shape[1] == 6
    first = stage0.render(ifs, 32, 16, np.random.default_rng(7))
    assert first.shape == (32, 16, 3) and first.dtype == np.uint8 and first.max() > 0
    assert np.array_equal(first, stage0.render(ifs, 32, 16, np.random.default_rng(7)))
    images = stage0.make_images(SMOKE, progress=False)
    assert images["train"].shape == (SMOKE.classes * SMOKE.images_per_class, 32, 16, 3)
    assert images["test"].shape[0] == SMOKE.classes * stage0.HELD_OUT_PER_CLASS
    by_class = images["train"].reshape(SMOKE.classes, SMOKE.images_per_class, -1).astype(float)
    assert np.abs(by_class[0].mean(0) - by_class[1].mean(0)).max() > 0
    assert np.array_equal(stage0.class_images(SMOKE, 1)[:SMOKE.images_per_class],
                          images["train"][SMOKE.images_per_class:2 * SMOKE.images_per_class])
    assert stage0.filling_rate(stage0._chaos_game(ifs[None], 4096, np.random.default_rng(0))[0]) >= stage0.FILLING_RATE


def test_the_spectrum_family_renders_noise_of_its_class():
    noise = dataclasses.replace(SMOKE, family="spectrum")
    spectrum = stage0.sample_spectrum(np.random.default_rng(4))
    first = stage0.render_spectrum(spectrum, 32, 16, np.random.default_rng(1))
    assert first.shape == (32, 16, 3) and first.dtype == np.uint8 and first.std() > 0
    assert np.array_equal(first, stage0.render_spectrum(spectrum, 32, 16, np.random.default_rng(1)))
    a, b = stage0.class_images(noise, 0), stage0.class_images(noise, 1)
    assert np.array_equal(a, stage0.class_images(noise, 0)) and not np.array_equal(a, b)
    assert stage0.weights_path(noise, "x").name.startswith("stage0-spectrum-cpu_tiny-32x16-")
    assert stage0.weights_path(noise, "x") != stage0.weights_path(SMOKE, "x")


def test_the_people_family_renders_one_fresh_person_per_class_deterministically():
    people = dataclasses.replace(SMOKE, family="people", height=64, width=32)
    a, b = stage0.class_images(people, 0), stage0.class_images(people, 1)
    assert a.shape == (SMOKE.images_per_class + stage0.HELD_OUT_PER_CLASS, 64, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, stage0.class_images(people, 0)) and not np.array_equal(a, b)
    small = dataclasses.replace(SMOKE, family="people")
    assert stage0.class_images(small, 0).shape[1:] == (32, 16, 3)  # rendered at 64 x 32, resized to the input
    looks = [stage0.random_style(np.random.default_rng(k)) for k in range(20)]
    assert len({look.temperature for look in looks}) == 20 and all(look.camera_haze == 0 for look in looks)
    assert stage0.weights_path(people, "x").name.startswith("stage0-people-cpu_tiny-64x32-")


def test_a_run_takes_the_family_of_its_config_and_the_synthetic_profile_starts_from_people():
    from mmt_lib.config import resolve

    cfg = resolve("pretrain", profile="synthetic", task="duke2market")
    assert cfg.model.pretrained == "stage0" and stage0.stage0_config(cfg).family == "people"
    fractal = resolve("pretrain", profile="synthetic", task="duke2market",
                      overrides={"model": {"stage0_family": "fractal"}})
    assert stage0.stage0_config(fractal).family == "fractal"
    assert stage0.stage0_config(fractal).classes == stage0.stage0_config(cfg).classes
    with pytest.raises(ValueError, match="model.stage0_family"):
        resolve("pretrain", profile="synthetic", overrides={"model": {"stage0_family": "imagenet"}})


def test_two_stage1_runs_start_from_the_same_stage0_backbone(tmp_path, monkeypatch):
    monkeypatch.delenv(CACHE_ENV, raising=False)
    starts = []
    original = pretrain.build_model

    class Started(Exception):
        """Stops a run once its network is built: the start is what this test is about."""

    def recording(*args, **kwargs):
        net = original(*args, **kwargs)
        starts.append({k: v.clone() for k, v in net.backbone.state_dict().items()})
        raise Started

    monkeypatch.setattr(pretrain, "build_model", recording)
    data_root = tmp_path / "data"
    for seed in (1, 2):
        cfg = resolve(stage="pretrain", profile="smoke", task="duke2market", seed=seed, data_root=str(data_root),
                      device="cpu", overrides={"model": {"pretrained": STAGE0}, "runtime": {"progress": False}})
        with pytest.raises(Started):
            pretrain.pretrain(cfg, tmp_path / f"pre{seed}")
    assert len(starts) == 2
    files = list((data_root / ".mmt-cache" / "stage0").glob("stage0-*.pt"))
    assert len(files) == 1 and files[0] == stage0.weights_path(stage0.stage0_config(cfg), stage0.cache_root(data_root))
    saved = torch.load(files[0], weights_only=True)
    for start in starts:
        assert all(torch.equal(start[k], v) for k, v in saved.items())


def test_feature_agreement_is_one_for_a_network_with_itself_and_less_for_another(tmp_path):
    cfg = resolve(stage="mmt", profile="smoke", data_root=str(tmp_path), device="cpu",
                  overrides={"runtime": {"progress": False}})
    from mmt_lib.method.engine import load_named_dataset

    target = load_named_dataset(cfg.data, cfg.data.target)
    torch.manual_seed(0)
    net_a, net_b = build_model("cpu_tiny", 4), build_model("cpu_tiny", 4)
    assert analysis.feature_agreement(net_a, net_a, target, cfg, torch.device("cpu")) == pytest.approx(1.0)
    assert analysis.feature_agreement(net_a, net_b, target, cfg, torch.device("cpu")) < 0.99
    assert analysis.mean_cosine([[1.0, 0.0], [0.0, 2.0]], [[3.0, 0.0], [2.0, 0.0]]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="same images"):
        analysis.mean_cosine(np.ones((3, 2)), np.ones((2, 2)))


def test_the_batch_plan_builds_the_start_before_stage1_only_when_asked():
    runs = batch_plan.select(batch_plan.plan("smoke"), ["duke2market/direct/*"], None)
    assert batch_plan.with_stage0(runs) == runs
    assert batch_plan.with_stage0(runs, {"overrides": {"mmt": {"epochs": 1}}}) == runs
    staged = batch_plan.with_stage0(runs, {"overrides": {"model": {"pretrained": STAGE0}}})
    assert staged[0].run_id == batch_plan.STAGE0_RUN and staged[0].notebook == "00_stage0"
    assert staged[0].parameters["out_dir"] == "runs/smoke/stage0/start/seed0"
    stage1 = [r for r in staged if r.notebook == "01_pretrain"]
    assert len(stage1) == 2 and all(r.upstream == (batch_plan.STAGE0_RUN,) for r in stage1)
    assert [r for r in staged if r.notebook not in ("00_stage0", "01_pretrain")] == \
        [r for r in runs if r.notebook != "01_pretrain"]
    params = {"overrides": {"model": {"pretrained": STAGE0}}, "classes_shown": 2}
    final = batch_plan.with_parameters(staged, params)
    batch_plan.check_parameters(final)
    assert final[0].parameters["overrides"] == params["overrides"] and final[0].parameters["classes_shown"] == 2


def test_bad_inputs_are_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="family"):
        stage0.Stage0Config(family="noise")
    with pytest.raises(ValueError, match="classes"):
        stage0.Stage0Config(classes=1)
    with pytest.raises(ValueError, match="arch"):
        stage0.Stage0Config(arch="vgg")
    with pytest.raises(ValueError, match="lr"):
        stage0.Stage0Config(lr=0)
    with pytest.raises(ValueError, match="class index"):
        stage0.class_images(SMOKE, SMOKE.classes)
    with pytest.raises(ValueError, match="model.pretrained must be 'stage0'"):
        resolve(stage="pretrain", profile="smoke", overrides={"model": {"pretrained": str(tmp_path / "none.pt")}})
    with pytest.raises(FileNotFoundError, match="no Stage 0 report"):
        stage0.read_report(tmp_path / "missing.pt")
    with pytest.raises(SystemExit):
        stage0.main(["--profile", "nope"])
    with pytest.raises(SystemExit):
        stage0.main(["--profile", "smoke", "--seed", "-1"])


def test_the_command_line_prints_the_path(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(CACHE_ENV, raising=False)
    assert stage0.main(["--profile", "smoke", "--data-root", str(tmp_path), "--quiet"]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed.startswith(str(tmp_path / ".mmt-cache" / "stage0" / "stage0-fractal-cpu_tiny-32x16-"))
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "elsewhere"))
    assert stage0.cache_root(tmp_path) == tmp_path / "elsewhere"
    monkeypatch.setenv(CACHE_ENV, "off")
    assert stage0.cache_root(tmp_path) == tmp_path / ".mmt-cache" / "stage0"

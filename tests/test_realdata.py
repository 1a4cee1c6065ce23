"""Real data on a laptop: k-means' K follows the data, images are decoded once, a batch runs on your own folders.

The fixtures are folders of real JPEG files in the Market-1501 and `folder` layouts, written by the tests.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from mmt_lib import batch
from mmt_lib.config import EXPLICIT_NUM_CLUSTERS, TASKS, num_clusters_origin, resolve
from mmt_lib.data import decoded, load_dataset
from mmt_lib.data.decoded import CACHE_ENV, decode_once
from mmt_lib.data.loaders import ImageDataset, TwoViewDataset
from mmt_lib.data.transforms import build_test_transform, build_train_transform
from mmt_lib.experiments import plan as batch_plan
from mmt_lib.experiments import reporting
from mmt_lib.method import engine, mmt

ROOT = Path(__file__).resolve().parents[1]
MARKET = "Market-1501-v15.09.15"


def jpeg(path: Path, seed: int, size: tuple[int, int] = (128, 64)) -> None:
    """A real JPEG file: smooth colours (seeded) plus noise, at Market's crop size by default."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (4, 2, 3), dtype=np.uint8)).resize(size[::-1], Image.BICUBIC)
    noisy = np.asarray(coarse, dtype=np.int16) + rng.integers(-10, 11, (*size, 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(path, "JPEG", quality=90)


def write_market(root: Path, ids: int = 8, per_id: int = 4) -> Path:
    """A Market-1501-layout dataset of real JPEGs: ``ids`` train identities over 2 cameras, a small test split."""
    folder = root / MARKET
    for pid in range(1, ids + 1):
        for n in range(per_id):
            jpeg(folder / "bounding_box_train" / f"{pid:04d}_c{1 + n % 2}s1_{n:06d}_00.jpg", seed=pid * 10 + n)
    for pid in range(101, 105):
        jpeg(folder / "query" / f"{pid:04d}_c1s1_000000_00.jpg", seed=pid)
        for n in range(3):
            jpeg(folder / "bounding_box_test" / f"{pid:04d}_c2s1_{n:06d}_00.jpg", seed=pid * 10 + n)
    return folder


def write_folder(root: Path, name: str = "mycams", ids: int = 8, per_id: int = 4) -> Path:
    """A `folder`-layout dataset of real JPEGs of another size (96x48), so resizing differs from Market's."""
    folder = root / name
    for pid in range(ids):
        for n in range(per_id):
            jpeg(folder / "train" / f"{pid}_c{1 + n % 3}_{n}.jpg", seed=1000 + pid * 10 + n, size=(96, 48))
    for pid in range(50, 54):
        jpeg(folder / "query" / f"{pid}_c1_q.jpg", seed=2000 + pid, size=(96, 48))
        for n in range(2):
            jpeg(folder / "gallery" / f"{pid}_c2_{n}.jpg", seed=3000 + pid * 10 + n, size=(96, 48))
    return folder


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("realdata")
    write_market(root)
    write_folder(root)
    return root


# ---------------------------------------------------------------- K follows the data


@pytest.mark.parametrize("profile", ["smoke", "synthetic", "paper"])
def test_real_named_targets_get_the_papers_k_whatever_the_profile(profile):
    for task, (_, target) in TASKS.items():
        cfg = resolve(profile=profile, data="real", task=task)
        assert cfg.mmt.num_clusters == (1500 if target == "msmt" else 500), (profile, task)
        assert num_clusters_origin(cfg).startswith(f"the paper's K for {cfg.data.target}")
    custom = resolve(profile="synthetic", source="synth-duke", target="market1501")
    assert custom.mmt.num_clusters == 500


def test_synthetic_targets_keep_their_k_scaled_by_the_generators_identities():
    expected = {"market2duke": 75, "duke2market": 75, "market2msmt": 225, "duke2msmt": 225}
    for task, k in expected.items():
        cfg = resolve(profile="synthetic", task=task)
        assert cfg.mmt.num_clusters == k, task
        assert resolve(profile="synthetic", task=task, variant="baseline").mmt.num_clusters == k
        assert resolve(stage="pretrain", profile="synthetic", task=task).mmt.num_clusters == k
    # The scale is the generator's size, not the profile: the paper profile on the same domains gets the same K,
    # and a smaller generator size (60 of Market's 751 identities, 83 of MSMT17's 1041) fewer clusters.
    assert resolve(profile="paper", data="synthetic", task="duke2market").mmt.num_clusters == 125
    compact = {"data": {"synthetic_size": "compact"}}
    assert resolve(profile="paper", data="synthetic", task="duke2market", overrides=compact).mmt.num_clusters == 75
    small = {"data": {"synthetic_size": "small"}}
    assert resolve(profile="synthetic", task="duke2market", overrides=small).mmt.num_clusters == 40
    assert resolve(profile="synthetic", task="duke2msmt", overrides=small).mmt.num_clusters == 120
    origin = num_clusters_origin(resolve(profile="synthetic", task="duke2market"))
    assert "113/751" in origin and "synth-market" in origin and "compact" in origin


def test_smoke_profile_keeps_its_k_on_its_tiny_domains():
    for task in TASKS:
        cfg = resolve(profile="smoke", task=task)
        assert cfg.mmt.num_clusters == 8
        assert "smoke profile" in num_clusters_origin(cfg)


def test_custom_target_needs_an_explicit_k_for_kmeans_only(data_root):
    with pytest.raises(ValueError, match=r"mmt\.num_clusters") as error:
        resolve(profile="synthetic", source="market1501", target="mycams", data_root=str(data_root))
    assert "mmt-dbscan" in str(error.value) and "'mycams'" in str(error.value)
    with pytest.raises(ValueError, match=r"mmt\.num_clusters"):
        resolve(profile="smoke", variant="baseline", source="market1501", target="mycams")
    for ok in (dict(variant="mmt-dbscan"), dict(variant="direct"), dict(stage="pretrain")):
        cfg = resolve(**{"profile": "synthetic", "source": "market1501", "target": "mycams", **ok})
        assert cfg.mmt.num_clusters is None
        assert mmt.cluster_count(cfg)["num_clusters"] is None
    cfg = resolve(profile="synthetic", source="market1501", target="mycams", overrides={"mmt": {"num_clusters": 7}})
    assert cfg.mmt.num_clusters == 7 and num_clusters_origin(cfg) == EXPLICIT_NUM_CLUSTERS
    with pytest.raises(ValueError, match=r"mmt\.num_clusters must be an integer >= 2 \(or None\), got 0"):
        resolve(source="market1501", target="mycams", overrides={"mmt": {"num_clusters": 0}})


def test_an_explicit_k_wins_and_is_recorded_as_such():
    cfg = resolve(profile="synthetic", data="real", task="duke2market", overrides={"mmt": {"num_clusters": 700}})
    assert cfg.mmt.num_clusters == 700
    assert mmt.cluster_count(cfg) == {"num_clusters": 700, "num_clusters_from": EXPLICIT_NUM_CLUSTERS}
    line = reporting.describe_variant(cfg)
    assert "K=700 (mmt.num_clusters, set explicitly)" in line
    paper = resolve(profile="synthetic", data="real", task="market2msmt")
    assert "K=1500 (the paper's K for msmt17" in reporting.describe_variant(paper)
    dbscan = mmt.cluster_count(resolve(variant="mmt-dbscan"))
    assert dbscan["num_clusters"] is None and "DBSCAN" in dbscan["num_clusters_from"]


def test_too_few_clusters_name_the_setting_to_change():
    dbscan = resolve(profile="smoke", variant="mmt-dbscan")  # a batch holds 16 / 4 = 4 identities
    with pytest.raises(ValueError, match=r"2 clusters, fewer than the 4 .* lower mmt\.rho"):
        mmt.check_enough_clusters(np.array([0, 0, 1, 1, -1]), dbscan, eps=0.5)
    with pytest.raises(ValueError, match=r"outliers .* raise mmt\.rho or lower mmt\.min_samples"):
        mmt.check_enough_clusters(np.array([0, 0, -1, -1, -1]), dbscan, eps=0.5)
    with pytest.raises(ValueError, match=r"raise mmt\.num_clusters"):
        mmt.check_enough_clusters(np.array([0, 1, 1]), resolve(profile="smoke"), eps=None)
    mmt.check_enough_clusters(np.array([0, 1, 2, 3, -1]), dbscan, eps=0.5)
    with pytest.raises(ValueError, match=r"mmt\.num_clusters \(500\) exceeds the 10 target training images"):
        mmt.assign_pseudo_labels(torch.randn(10, 8), resolve(profile="paper").mmt, seed=0, eps=None)


# ---------------------------------------------------------------- images decoded once


def train_paths(root: Path) -> list[str]:
    return [p for p, _, _ in load_dataset("market1501", root).train]


def test_cache_is_built_once_then_hit(data_root, tmp_path, monkeypatch):
    paths = train_paths(data_root)
    first = decode_once(paths, 64, 32, tmp_path, progress=False)
    assert first.array.shape == (len(paths), 64, 32, 3) and first.array.dtype == np.uint8
    assert [p.name for p in tmp_path.glob("*.npy")] == [first.file.name]
    stamp = first.file.stat().st_mtime_ns

    def no_decoding(*args):
        raise AssertionError("a cache hit decoded an image")

    monkeypatch.setattr(decoded, "decode_resized", no_decoding)
    again = decode_once(paths, 64, 32, tmp_path, progress=False)
    assert again.file == first.file and again.file.stat().st_mtime_ns == stamp
    assert np.array_equal(np.asarray(again.image(paths[3])), np.asarray(first.array[3]))
    monkeypatch.undo()
    other_size = decode_once(paths, 32, 16, tmp_path, progress=False)
    assert other_size.file != first.file and first.file.exists()  # another size is another file


def test_a_changed_or_added_image_invalidates_the_cache(tmp_path):
    root = tmp_path / "data"
    write_market(root, ids=4, per_id=2)
    cache = tmp_path / "cache"
    paths = train_paths(root)
    before = decode_once(paths, 64, 32, cache, progress=False)
    old_rows = np.array(before.array)

    jpeg(Path(paths[0]), seed=999)  # same name and size class, new pixels and mtime
    os.utime(paths[0], ns=(before.file.stat().st_mtime_ns + 10**9,) * 2)
    changed = decode_once(paths, 64, 32, cache, progress=False)
    assert changed.file != before.file and not before.file.exists()  # the stale file is removed
    assert not np.array_equal(np.array(changed.array[0]), old_rows[0])
    assert np.array_equal(np.array(changed.array[0]), decoded.decode_resized(paths[0], 64, 32))
    assert np.array_equal(np.array(changed.array[1:]), old_rows[1:])

    jpeg(root / MARKET / "bounding_box_train" / "0009_c1s1_000000_00.jpg", seed=77)
    grown = train_paths(root)
    added = decode_once(grown, 64, 32, cache, progress=False)
    assert len(added) == len(paths) + 1 and added.file != changed.file
    assert np.array_equal(np.asarray(added.image(grown[-1])), decoded.decode_resized(grown[-1], 64, 32))
    assert sorted(p.name for p in cache.glob("*.npy")) == [added.file.name]


def test_cached_items_are_bit_identical_to_decoding_every_draw(data_root, tmp_path):
    market = load_dataset("market1501", data_root)
    mine = load_dataset("mycams", data_root)
    for samples in (market.train, mine.train, market.query + market.gallery):
        images = decode_once([p for p, _, _ in samples], 32, 16, tmp_path, progress=False)
        for transform in (build_train_transform(32, 16, random_erasing=True, erasing_prob=0.5),
                          build_test_transform(32, 16)):
            for dataset_type in (ImageDataset, TwoViewDataset):
                plain, cached = dataset_type(samples, transform), dataset_type(samples, transform, images)
                for index in range(len(samples)):
                    torch.manual_seed(index)
                    expected = plain[index]
                    torch.manual_seed(index)
                    got = cached[index]
                    assert all(torch.equal(a, b) if torch.is_tensor(a) else a == b for a, b in zip(expected, got))


def test_decoded_images_travel_to_workers_without_their_rows(data_root, tmp_path):
    paths = train_paths(data_root)
    images = decode_once(paths, 64, 32, tmp_path, progress=False)
    _ = images.array
    state = pickle.dumps(images)
    assert len(state) < images.array.nbytes  # the rows stay in the file
    copy = pickle.loads(state)
    assert np.array_equal(np.asarray(copy.image(paths[2])), np.asarray(images.image(paths[2])))
    with pytest.raises(KeyError, match="not among"):
        images.image("/nowhere.jpg")
    with pytest.raises(ValueError, match="not in the decoded cache"):
        ImageDataset([("/nowhere.jpg", 0, 0)], build_test_transform(64, 32), images)


def test_cache_folder_follows_the_environment(data_root, tmp_path, monkeypatch):
    cfg = resolve(profile="smoke", data="real", task="duke2market", data_root=str(data_root))
    samples = load_dataset("market1501", data_root).train
    monkeypatch.delenv(CACHE_ENV, raising=False)
    assert engine.decoded_images(cfg, samples).file.parent == data_root / ".mmt-cache" / "decoded"
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "elsewhere"))
    assert engine.decoded_images(cfg, samples).file.parent == tmp_path / "elsewhere"
    monkeypatch.setenv(CACHE_ENV, "off")
    assert engine.decoded_images(cfg, samples) is None
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(OSError, match=CACHE_ENV):
        decode_once([samples[0][0]], 8, 4, blocker / "cache", progress=False)


def test_a_folder_under_the_root_is_a_dataset_by_its_name(data_root):
    ds = load_dataset("mycams", data_root)
    assert ds.name == "mycams" and ds.num_train_pids == 8 and ds.root == data_root / "mycams"
    with pytest.raises(ValueError, match="not a folder in the folder layout"):
        load_dataset("theirs", data_root)


# ---------------------------------------------------------------- one command for your own data


def test_tasks_name_any_two_datasets(data_root, tmp_path):
    specs = batch_plan.task_specs(["duke2market", "market2mycams", ("mycams", "synth-duke")], "real", data_root)
    assert specs == {"duke2market": ("dukemtmc", "market1501"), "market15012mycams": ("market1501", "mycams"),
                     "mycams2synth-duke": ("mycams", "synth-duke")}
    assert batch_plan.task_specs(["market2duke"], "synthetic", data_root) == {"market2duke": ("synth-market", "synth-duke")}
    with pytest.raises(ValueError, match="names no two datasets"):
        batch_plan.task_specs(["mycams2mars"], "real", data_root)
    for name in ("a", "a2b", "b2market"):
        (tmp_path / name).mkdir()
    with pytest.raises(ValueError, match=r"ambiguous \(a -> b2market or a2b -> market1501\)"):
        batch_plan.task_specs(["a2b2market"], "real", tmp_path)


def test_a_custom_kmeans_grid_without_k_is_refused_before_anything_runs(data_root, tmp_path, capsys):
    runs_dir = tmp_path / "runs"
    assert batch.main(["run", "--profile", "smoke", "--data-root", str(data_root), "--runs-dir", str(runs_dir),
                       "--source", "market1501", "--target", "mycams"]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "mmt.num_clusters" in line
    assert not runs_dir.exists()
    dbscan_only = batch_plan.select(batch_plan.plan("smoke", runs_dir, tasks=[("market1501", "mycams")],
                                          data_root=str(data_root)), ["*/mmt-dbscan/*"], None)
    batch_plan.check_configs(dbscan_only)
    assert [r.variant for r in dbscan_only] == ["pretrain", "pretrain", "mmt-dbscan"]


def test_real_data_on_another_profile_gets_its_own_runs_folder():
    assert batch_plan.default_runs_dir("synthetic", None) == "runs"
    assert batch_plan.default_runs_dir("synthetic", "synthetic") == "runs"
    assert batch_plan.default_runs_dir("synthetic", "real") == "runs/real"
    assert batch_plan.default_runs_dir("paper", "real") == "runs"


@pytest.mark.notebook
def test_smoke_batch_over_a_custom_folder_task(data_root, tmp_path, capfd):
    runs_dir = tmp_path / "runs"
    task = "market15012mycams"
    args = ["--profile", "smoke", "--data", "real", "--runs-dir", str(runs_dir)]
    plan = ["--data-root", str(data_root), "--tasks", "market2mycams", "--only", "data/tour/*", f"{task}/direct/*",
            f"{task}/mmt-kmeans/*", "--param", 'overrides={"mmt": {"num_clusters": 6}}', "device=cpu"]
    code = batch.main(["run", *args, *plan])
    assert code == 0
    profile_dir = runs_dir / "smoke"
    kmeans = json.loads((profile_dir / task / "mmt-kmeans" / "seed1" / "metrics.json").read_text())
    assert kmeans["task"] == task and kmeans["config"]["data"]["target"] == "mycams"
    assert kmeans["num_clusters"] == 6 and kmeans["num_clusters_from"] == EXPLICIT_NUM_CLUSTERS
    assert all(r["pseudo_labels"]["num_clusters"] <= 6 for r in kmeans["history"])
    tour = json.loads((profile_dir / "data" / "tour" / "seed0" / "metrics.json").read_text())
    assert [row["dataset"] for row in tour["datasets"]] == ["market1501", "mycams"]
    pretrained = json.loads((profile_dir / task / "pretrain" / "seed1" / "metrics.json").read_text())
    assert pretrained["config"]["data"]["source"] == "market1501"
    assert list((data_root / ".mmt-cache" / "decoded").glob("*32x16*.npy"))  # decoded once, at the input size
    capfd.readouterr()
    assert batch.main(["collect", *args, *plan]) == 0
    assert f"| {task}" in capfd.readouterr().out
    table = pd.read_csv(profile_dir / "results.csv")
    assert set(table["variant"]) == {"direct", "mmt-kmeans"} and set(table["task"]) == {task}
    assert (profile_dir / "figures" / "results_mAP.png").stat().st_size > 0


def test_loading_benchmark_runs_end_to_end(tmp_path):
    proc = subprocess.run(
        [sys.executable, "benchmarks/bench_data_loading.py", "--root", str(tmp_path), "--images", "80",
         "--iters", "1", "--epochs", "1", "--workers", "0", "--skip-synthetic", "--draws", "20"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in proc.stdout.splitlines()
            if line.startswith("| real")]
    cases = ["real, decoded every draw", "real, decoded once, 0 workers"]
    assert [r[0] for r in rows] == cases + cases  # whole epochs, then the one-thread split
    assert all(float(r[1]) > 0 for r in rows)  # seconds per epoch, then microseconds per image
    assert "160 images decoded" in proc.stdout and "Fastest with the cache on this machine: 0" in proc.stdout

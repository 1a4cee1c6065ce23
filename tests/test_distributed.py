"""One process per device: sharded batches, BatchNorm groups, and torchrun runs on the CPU (gloo, 2 processes)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.utils.data import BatchSampler, Dataset

from mmt_lib.data.loaders import build_shuffled_loader, build_train_loader
from mmt_lib.data.sampler import IdentitySampler, ShardedBatchSampler
from mmt_lib.runtime import distributed
from mmt_lib.runtime.paths import PROJECT_ROOT

SMOKE_BATCH = 16


def make_samples(num_ids: int = 12, per_id: int = 5) -> list:
    return [(f"img{pid}_{i}.jpg", pid, i % 3) for pid in range(num_ids) for i in range(per_id)]


class IndexDataset(Dataset):
    """Items ``(index, pid)``: batches show which samples a rank drew."""

    def __init__(self, samples: list) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[int, int]:
        return index, self.samples[index][1]


@pytest.mark.parametrize("world", [2, 4])
def test_rank_shards_are_disjoint_and_together_the_single_process_batch(world):
    samples = make_samples()
    sampler = IdentitySampler(samples, num_instances=4, seed=3)
    single = list(BatchSampler(sampler, batch_size=16, drop_last=True))
    shards = []
    for rank in range(world):
        sampler.set_epoch(0)
        shards.append(list(ShardedBatchSampler(sampler, 16, rank, world)))
    for b, batch in enumerate(single):
        parts = [s[b] for s in shards]
        assert all(len(p) == 16 // world for p in parts)
        assert sum(parts, []) == batch
        for part in parts:  # whole identities on each rank: runs of 4 share one pid
            pids = [samples[i][1] for i in part]
            assert all(len(set(pids[k:k + 4])) == 1 for k in range(0, len(pids), 4))
        assert all(set(parts[i]).isdisjoint(parts[j]) for i in range(world) for j in range(i + 1, world))


def test_sharded_train_loaders_rebuild_the_single_process_batches():
    samples = make_samples()
    args = dict(batch_size=16, num_instances=4, num_workers=0, seed=5, epoch=2)
    single = [idx.tolist() for idx, _ in build_train_loader(IndexDataset(samples), samples, **args)]
    per_rank = [[idx.tolist() for idx, _ in build_train_loader(IndexDataset(samples), samples, rank=r,
                                                                world_size=2, **args)] for r in range(2)]
    assert [a + b for a, b in zip(*per_rank)] == single
    shuffled = [list(build_shuffled_loader(IndexDataset(samples), 16, 0, seed=7, rank=r, world_size=2))
                for r in range(2)]
    whole = list(build_shuffled_loader(IndexDataset(samples), 16, 0, seed=7))
    assert [torch.cat([a[0], b[0]]).tolist() for a, b in zip(*shuffled)] == [idx.tolist() for idx, _ in whole]


def test_sharding_refuses_split_identities():
    samples = make_samples()
    with pytest.raises(ValueError, match="whole identities"):
        build_train_loader(IndexDataset(samples), samples, batch_size=16, num_instances=4, num_workers=0,
                           seed=0, epoch=0, rank=0, world_size=8)
    with pytest.raises(ValueError, match="rank"):
        ShardedBatchSampler(IdentitySampler(samples), 16, rank=2, world_size=2)


def test_feature_shards_cover_every_row_once(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    rows = [i for r in range(3) for i in range(10)[distributed.shard(10, r)]]
    assert rows == list(range(10))


def test_a_target_smaller_than_the_job_is_refused_on_every_rank(monkeypatch):
    from types import SimpleNamespace

    from mmt_lib.method.mmt import embed_target

    monkeypatch.setattr(distributed, "world_size", lambda: 4)
    with pytest.raises(ValueError, match="3 images, fewer than the 4 processes"):
        embed_target([], SimpleNamespace(train=make_samples(1, 3)), None, torch.device("cpu"))


def test_batchnorm_group_spans_the_ranks_that_hold_its_images(monkeypatch):
    assert distributed.bn_ranks(64, 4, None) == 1
    with pytest.raises(ValueError, match="data.bn_group_size"):
        distributed.bn_ranks(64, 4, 16)  # one process cannot split its batch into BN groups
    monkeypatch.setattr(distributed, "world_size", lambda: 4)
    assert distributed.bn_ranks(64, 4, None) == 4
    assert distributed.bn_ranks(64, 4, 16) == 1
    assert distributed.bn_ranks(64, 4, 32) == 2
    with pytest.raises(ValueError, match="data.bn_group_size"):
        distributed.bn_ranks(64, 4, 48)
    with pytest.raises(ValueError, match="data.bn_group_size"):
        distributed.sync_batchnorm(torch.nn.BatchNorm1d(4), 2, torch.device("cpu"))


def test_single_process_helpers_are_the_identity():
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert distributed.on_main(lambda x: x + 1, 1) == 2
    part = torch.ones(3, 2)
    assert distributed.gather_rows(part, 3) is part
    values = {"a": 1.5}
    assert distributed.mean_over_ranks(values) is values


# ---------------------------------------------------------------- torchrun on the CPU


def train(args: list[str], processes: int) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "mmt_lib.train"]
    if processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc_per_node={processes}", "-m", "mmt_lib.train"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(launcher + args, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def common(data_root, processes: int) -> list[str]:
    runtime = {"runtime": {"progress": False}}
    if processes > 1:  # SyncBatchNorm needs CUDA: on the CPU each process normalises its own share
        runtime["data"] = {"bn_group_size": SMOKE_BATCH // processes}
    return ["--profile", "smoke", "--task", "duke2market", "--data-root", str(data_root), "--device", "cpu",
            "--overrides", json.dumps(runtime)]


def files(folder) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Stage I (seeds 1, 2) in one process; Stage II from those networks in one and in two processes."""
    root = tmp_path_factory.mktemp("ddp")
    data = root / "data"
    for seed in (1, 2):
        train(["pretrain", *common(data, 1), "--seed", str(seed), "--out", str(root / f"pre{seed}")], 1)
    pretrained = ["--pretrained", str(root / "pre1"), str(root / "pre2")]
    out = {}
    for processes in (1, 2):
        result = train(["mmt", *common(data, processes), *pretrained, "--out", str(root / f"mmt{processes}")],
                       processes)
        out[processes] = (root / f"mmt{processes}", result.stdout)
    pre = train(["pretrain", *common(data, 2), "--seed", "1", "--out", str(root / "pre_ddp")], 2)
    out["pretrain"] = (root / "pre_ddp", pre.stdout)
    return out


def test_two_process_stage_one_finishes_and_rank_zero_alone_writes(runs):
    folder, stdout = runs["pretrain"]
    metrics = json.loads((folder / "metrics.json").read_text())
    assert math.isfinite(metrics["mAP"]) and 0.0 <= metrics["mAP"] <= 1.0
    assert all(math.isfinite(r["loss_ce"]) for r in metrics["history"])
    assert files(folder) == {"checkpoint.pt", "metrics.json"}
    assert stdout.count("metrics.json") == 1


def test_two_process_stage_two_matches_one_process_in_clusters_and_first_features(runs):
    (one, _), (two, stdout) = runs[1], runs[2]
    m1, m2 = (json.loads((f / "metrics.json").read_text()) for f in (one, two))
    assert math.isfinite(m2["mAP"]) and 0.0 <= m2["mAP"] <= 1.0
    assert [r["pseudo_labels"]["num_clusters"] for r in m2["history"]] == \
        [r["pseudo_labels"]["num_clusters"] for r in m1["history"]]
    assert files(two) == files(one)
    assert stdout.count("metrics.json") == 1
    # Epoch 0 embeds with the same Stage I networks: the gathered shards are the single-process features.
    with np.load(one / "embeddings" / "epoch000.npz") as a, np.load(two / "embeddings" / "epoch000.npz") as b:
        np.testing.assert_allclose(a["features"], b["features"], atol=1e-5)
        np.testing.assert_array_equal(a["pseudo_labels"], b["pseudo_labels"])

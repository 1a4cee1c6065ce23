"""Datasets and loaders: one view per image for Stage I and evaluation, two views for MMT (Stage II).

Determinism. A training loader for (seed, epoch) always yields the same batches:

* the identity sampler's order is a pure function of (seed, epoch, pass), see ``IdentitySampler``;
  under ``torchrun`` every rank draws that same order and keeps its own slice of each batch;
* with ``num_workers > 0`` augmentations run in worker processes that torch seeds from the
  loader's generator, here seeded from (seed, epoch); workers of ranks other than 0 then reseed
  from that seed and their rank, so that ranks do not augment in lockstep;
* with ``num_workers = 0`` augmentations draw from torch's global RNG in the main process: the
  trainer calls ``mmt_lib.runtime.seeding.seed_everything(seed, epoch)`` at the start of each epoch.

The two settings give different (each repeatable) augmentations, so runs compare like with like
only at the same ``num_workers``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, RandomSampler

from mmt_lib.data.base import Sample
from mmt_lib.data.decoded import DecodedImages, load_image
from mmt_lib.data.sampler import IdentitySampler, ShardedBatchSampler
from mmt_lib.data.transforms import Transform
from mmt_lib.runtime.distributed import per_rank_batch
from mmt_lib.runtime.seeding import WORKER_STREAM, derive_seed


class ImageDataset(Dataset):
    """Items ``(image, pid, camid, index)``: ``index`` ties a feature back to its sample.

    With ``images`` (``decoded.decode_once``), images come from the decoded cache instead of being
    decoded from their files on every draw; the transform, and so every random draw, is the same.
    """

    def __init__(self, samples: list[Sample], transform: Transform, images: DecodedImages | None = None) -> None:
        if not callable(transform):
            raise TypeError(f"transform must be callable, got {type(transform).__name__}")
        self.samples = list(samples)
        self.transform = transform
        self.images = images
        if images is not None:
            missing = [path for path, _, _ in self.samples if path not in images]
            if missing:
                raise ValueError(f"{len(missing)} of {len(self.samples)} images are not in the decoded cache "
                                 f"{images.file}, e.g. {missing[0]}")

    def __len__(self) -> int:
        return len(self.samples)

    def image(self, index: int) -> Image.Image:
        """The RGB image of sample ``index``, before any transform."""
        path = self.samples[index][0]
        return load_image(path) if self.images is None else self.images.image(path)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int, int]:
        _, pid, camid = self.samples[index]
        return self.transform(self.image(index)), pid, camid, index


class TwoViewDataset(ImageDataset):
    """Items ``(view1, view2, pid, camid, index)``: two independent augmentations of one image.

    MMT feeds view 1 to network 1 and its mean net, view 2 to network 2 and its mean net, so the
    two peers see the same identity under different augmentations.
    """

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int, int, int]:
        _, pid, camid = self.samples[index]
        image = self.image(index)
        return self.transform(image), self.transform(image), pid, camid, index


def build_train_loader(
    dataset: Dataset,
    samples: list[Sample],
    batch_size: int,
    num_instances: int,
    num_workers: int,
    seed: int,
    epoch: int,
    pin_memory: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """Batches of ``batch_size // num_instances`` identities x ``num_instances`` images for epoch ``epoch``.

    ``samples`` are the (pseudo-)labels the sampler groups by, aligned with ``dataset``; outliers
    (pid -1) must already be filtered out. Incomplete last batches are dropped. With
    ``world_size > 1`` this rank gets its ``batch_size // world_size`` images (whole identities)
    of each global batch.
    """
    if len(dataset) != len(samples):
        raise ValueError(f"dataset has {len(dataset)} items but samples has {len(samples)}; they must be aligned")
    if batch_size < 1 or num_instances < 1 or batch_size % num_instances:
        raise ValueError(
            f"batch_size ({batch_size}) must be a positive multiple of num_instances ({num_instances})"
        )
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    sampler = IdentitySampler(samples, num_instances=num_instances, seed=seed)
    per_batch = batch_size // num_instances
    if len(sampler.pids) < per_batch:
        raise ValueError(
            f"samples hold {len(sampler.pids)} identities but a batch needs {per_batch} "
            f"(batch_size {batch_size} / num_instances {num_instances}); lower batch_size"
        )
    per_rank_batch(batch_size, num_instances, world_size)
    sampler.set_epoch(epoch)
    return DataLoader(
        dataset,
        batch_sampler=ShardedBatchSampler(sampler, batch_size, rank, world_size),
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(derive_seed(seed, epoch, WORKER_STREAM)),
        worker_init_fn=_rank_worker_init(rank),
    )


def build_shuffled_loader(
    dataset: Dataset, batch_size: int, num_workers: int, seed: int, on_cuda: bool = False,
    rank: int = 0, world_size: int = 1,
) -> DataLoader:
    """Random global batches of ``batch_size`` (no identity structure), this rank's slice of each.

    One generator, seeded by ``seed``, draws the order and the workers' seeds, identically on every
    rank (workers of other ranks then reseed by rank). On CUDA, batches are pinned and workers
    persist across the passes of a training epoch.
    """
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_sampler=ShardedBatchSampler(RandomSampler(dataset, generator=generator), batch_size, rank, world_size),
        num_workers=num_workers,
        pin_memory=on_cuda,
        persistent_workers=num_workers > 0 and on_cuda,
        generator=generator,
        worker_init_fn=_rank_worker_init(rank),
    )


def _rank_worker_init(rank: int) -> Callable[[int], None] | None:
    """Rank 0's workers keep torch's seeds (the single-process stream); other ranks' reseed by rank."""
    return None if rank == 0 else partial(_reseed_worker, rank)


def _reseed_worker(rank: int, worker_id: int) -> None:
    seed = derive_seed(torch.initial_seed() % 2**63, WORKER_STREAM, rank)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_test_loader(dataset: Dataset, batch_size: int, num_workers: int, pin_memory: bool = False) -> DataLoader:
    """Every item once, in order, last batch kept: for feature extraction.

    Workers persist across passes (MMT embeds the same set with two networks per epoch).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, drop_last=False,
                      num_workers=num_workers, pin_memory=pin_memory, persistent_workers=num_workers > 0)


class IterLoader:
    """Exactly ``iters`` batches per iteration: a training "epoch" is a fixed number of iterations.

    When the loader runs dry it is iterated again; an ``IdentitySampler`` starts its next pass
    (a new, still seeded, order) on each new iteration, so the restarted passes differ.
    """

    def __init__(self, loader: DataLoader, iters: int) -> None:
        if iters < 1:
            raise ValueError(f"iters must be >= 1, got {iters}")
        self.loader = loader
        self.iters = iters

    def __len__(self) -> int:
        return self.iters

    def __iter__(self) -> Iterator[Any]:
        produced = 0
        while True:
            empty = True
            for batch in self.loader:
                empty = False
                yield batch
                produced += 1
                if produced == self.iters:
                    return
            if empty:
                raise ValueError("the loader yields no batch: too few samples for one batch")

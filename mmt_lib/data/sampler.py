"""Identity-balanced P x K sampling that prefers cross-camera positives (MMT's RandomMultipleGallerySampler).

A triplet loss needs positives in every mini-batch; positives from *other* cameras are the hard,
useful ones, so each identity's group is an anchor image plus K-1 images chosen from other cameras
first. Consecutive runs of K indices share one identity; a DataLoader with ``batch_size = P * K``
and ``drop_last=True`` turns them into batches of P identities x K images.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler

from mmt_lib.data.base import Sample


class IdentitySampler(Sampler[int]):
    """Yields dataset indices, K per identity, every identity once per pass, in shuffled identity order.

    For each identity: a random anchor, then K-1 more images chosen

    1. without replacement from the identity's images in *other* cameras than the anchor's, if
       there are at least K-1 of them; else
    2. all the other-camera images, topped up without replacement from the anchor's camera; else
       (fewer than K images in all)
    3. every image of the identity once, the rest drawn with replacement (other cameras first,
       then the anchor's camera, and the anchor itself for a one-image identity).

    Randomness: pass ``p`` after ``set_epoch(e)`` draws from ``np.random.default_rng([seed, e, p])``,
    so the order is a pure function of (seed, epoch, pass): a resumed run sees exactly what an
    uninterrupted one saw. Each ``iter()`` starts the next pass, so a loader restarted within one
    training epoch (fixed iteration count longer than a pass) gets a fresh order.
    """

    def __init__(self, samples: list[Sample], num_instances: int = 4, seed: int = 0) -> None:
        if num_instances < 1:
            raise ValueError(f"num_instances must be >= 1, got {num_instances}")
        if seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed}")
        if not samples:
            raise ValueError("IdentitySampler needs at least one sample, got an empty list")
        outliers = sum(1 for _, pid, _ in samples if pid < 0)
        if outliers:
            raise ValueError(
                f"{outliers} of {len(samples)} samples have a negative identity (e.g. DBSCAN outliers, pid -1); "
                f"filter them out before building the sampler"
            )
        self.num_instances = num_instances
        self.seed = seed
        self.epoch = 0
        self._passes = 0
        by_pid: dict[int, list[int]] = defaultdict(list)
        for index, (_, pid, _) in enumerate(samples):
            by_pid[pid].append(index)
        self.pids = sorted(by_pid)
        self._indices = {pid: np.array(idx) for pid, idx in by_pid.items()}
        self._cams = {pid: np.array([samples[i][2] for i in idx]) for pid, idx in by_pid.items()}

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch``: its first pass is a pure function of (seed, epoch)."""
        if epoch < 0:
            raise ValueError(f"epoch must be a non-negative integer, got {epoch}")
        self.epoch = epoch
        self._passes = 0

    def __len__(self) -> int:
        return len(self.pids) * self.num_instances

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch, self._passes])
        self._passes += 1
        order: list[int] = []
        for pid in rng.permutation(self.pids):
            order.extend(self._group(int(pid), rng))
        return iter(order)

    def _group(self, pid: int, rng: np.random.Generator) -> list[int]:
        """Dataset indices of one identity's K images: the anchor first."""
        indices, cams = self._indices[pid], self._cams[pid]
        a = int(rng.integers(len(indices)))
        others = np.arange(len(indices)) != a
        other_cam = np.flatnonzero(others & (cams != cams[a]))
        same_cam = np.flatnonzero(others & (cams == cams[a]))
        need = self.num_instances - 1
        if len(other_cam) >= need:
            chosen = rng.choice(other_cam, size=need, replace=False)
        elif len(other_cam) + len(same_cam) >= need:
            chosen = np.concatenate([other_cam, rng.choice(same_cam, size=need - len(other_cam), replace=False)])
        else:
            pool = other_cam if len(other_cam) else same_cam if len(same_cam) else np.array([a])
            extra = rng.choice(pool, size=need - len(other_cam) - len(same_cam), replace=True)
            chosen = np.concatenate([other_cam, same_cam, extra])
        return [int(indices[a]), *(int(indices[c]) for c in chosen)]


class ShardedBatchSampler(Sampler[list[int]]):
    """Rank ``rank``'s slice of each global batch of ``sampler``'s order, for one process per device.

    Every rank runs the same seeded ``sampler`` (so all see the same global order), cuts it into
    global batches of ``batch_size`` (an incomplete last batch is dropped) and keeps the
    ``rank``-th of ``world_size`` equal, contiguous slices. With ``IdentitySampler`` and a slice
    that is a multiple of its ``num_instances``, each rank gets whole identities; the slices are
    disjoint and together are exactly the single-process batch.
    """

    def __init__(self, sampler: Sampler[int], batch_size: int, rank: int = 0, world_size: int = 1) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if batch_size < 1 or batch_size % world_size:
            raise ValueError(f"batch_size ({batch_size}) must be a positive multiple of world_size ({world_size})")
        self.sampler = sampler
        self.batch_size = batch_size
        self.local = batch_size // world_size
        self.rank = rank

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size

    def __iter__(self) -> Iterator[list[int]]:
        batch: list[int] = []
        for index in self.sampler:
            batch.append(index)
            if len(batch) == self.batch_size:
                yield batch[self.rank * self.local:(self.rank + 1) * self.local]
                batch = []

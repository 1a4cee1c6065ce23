"""One place that turns (seed, epoch, ...) into random-number-generator seeds.

Every epoch of a trainer reseeds from (seed, epoch) rather than continuing one long stream, so a
run resumed at epoch e draws exactly what an uninterrupted run draws from epoch e on.
"""

from __future__ import annotations

import random

import numpy as np
import torch


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed that is a pure function of ``(seed, *keys)``, well mixed by numpy's SeedSequence.

    Mixing (rather than e.g. ``seed * 1000 + epoch``) keeps streams of nearby seeds and epochs apart.
    """
    values = (seed, *keys)
    if any(not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0 for v in values):
        raise ValueError(f"seeds and seed keys must be non-negative integers, got {values}")
    low, high = np.random.SeedSequence([int(v) for v in values]).generate_state(2, dtype=np.uint32)
    return ((int(high) << 32) | int(low)) & ((1 << 63) - 1)


WORKER_STREAM = 1
"""Seed key of the loaders' worker processes, apart from the global stream ``seed_everything`` seeds."""
RANK_STREAM = 2
"""Seed key for the streams of ranks other than 0 under ``torchrun``."""
CLUSTERING_STREAM = 3
"""Seed key of each epoch's pseudo-label clustering (Stage II)."""
TARGET_ORDER_STREAM = 4
"""Seed key of the order in which Stage I forwards target batches for BatchNorm statistics."""


def seed_everything(seed: int, epoch: int = 0, rank: int = 0) -> None:
    """Seed Python's ``random``, numpy's global RNG and torch (CPU and every GPU) from ``(seed, epoch)``.

    Trainers call this at the start of each epoch. With ``num_workers=0`` the data augmentations
    draw from torch's global RNG in the main process, so this call is what makes them repeatable.
    Rank 0 of a multi-process run draws what a single process draws; other ranks augment their
    own images with their own stream, ``(seed, epoch, rank)``.
    """
    derived = derive_seed(seed, epoch) if rank == 0 else derive_seed(seed, epoch, RANK_STREAM, rank)
    random.seed(derived)
    np.random.seed(derived % 2**32)
    torch.manual_seed(derived)

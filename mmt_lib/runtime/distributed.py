"""One process per device under ``torchrun``: process group, rank helpers, and the few collectives MMT needs.

Without ``torchrun`` (``WORLD_SIZE`` unset or 1) nothing here touches torch.distributed and every
helper is the identity, so a single-process run is exactly the plain code path.

Launch (one node, 4 GPUs; several nodes take torchrun's usual ``--nnodes --node_rank --rdzv_*``)::

    torchrun --nproc_per_node=4 -m mmt_lib.train mmt --profile paper ... --out runs/x/mmt

What is shared, and how:

* the global batch (``data.batch_size``) is split evenly between ranks, whole identities per rank
  (``mmt_lib.data.sampler.ShardedBatchSampler``), so the global batch matches the single-process one;
* BatchNorm normalises over ``data.bn_group_size`` images: a rank's batch, or SyncBatchNorm over a
  group of consecutive ranks (default: every rank, i.e. the whole global batch, as in one process);
* target features are extracted in shards and all-gathered; pseudo labels are computed once, on
  rank 0, and broadcast; checkpoints, metrics and embeddings are written by rank 0 only.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

T = TypeVar("T")

TIMEOUT = timedelta(hours=2)
"""Collective timeout: other ranks wait at a broadcast while rank 0 clusters (DBSCAN at MSMT17 scale is slow)."""

_bn_groups: dict[int, Any] = {}


def launched() -> bool:
    """True when started by ``torchrun`` with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: torch.device) -> torch.device:
    """Join the process group named by torchrun's environment; returns this rank's device.

    nccl on CUDA (one GPU per local rank), gloo on the CPU. A no-op without ``torchrun``.
    """
    if not launched() or dist.is_initialized():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
    return device


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0: the one process that writes checkpoints, metrics and embeddings and shows progress."""
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block before the others, e.g. to generate files that they then only read.

    Rank 0 releases the others even when its block raises, so that they fail rather than wait.
    """
    if not is_main():
        barrier()
    try:
        yield
    finally:
        if is_main():
            barrier()


def cleanup() -> None:
    """Leave the process group (at the end of a ``torchrun`` process)."""
    global _bn_groups
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _bn_groups = {}


def on_main(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn`` on rank 0 only and hand its (picklable) result to every rank.

    For results that must be identical everywhere and are costly or random to compute, such as
    the pseudo labels of an epoch.
    """
    if not active():
        return fn(*args, **kwargs)
    box = [fn(*args, **kwargs) if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shard(n: int, of_rank: int | None = None) -> slice:
    """A rank's (default: this rank's) contiguous part of ``range(n)``; sizes differ by at most one."""
    r = rank() if of_rank is None else of_rank
    size, extra = divmod(n, world_size())
    start = r * size + min(r, extra)
    return slice(start, start + size + (r < extra))


def _collective_device() -> torch.device:
    """Where tensors must live for a collective: this rank's GPU under nccl, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_rows(part: torch.Tensor, n: int) -> torch.Tensor:
    """Concatenate every rank's ``shard(n)`` rows of a matrix, in rank order, on every rank (on the CPU)."""
    if not active():
        return part
    width = -(-n // world_size())
    padded = torch.zeros((width, *part.shape[1:]), dtype=part.dtype, device=_collective_device())
    padded[: part.shape[0]] = part
    pieces = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(pieces, padded)
    sizes = [len(range(n)[shard(n, r)]) for r in range(world_size())]
    return torch.cat([p[:s] for p, s in zip(pieces, sizes)]).cpu()


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Each value averaged over the processes (for logging losses that each rank computed on its share)."""
    if not active() or not values:
        return values
    t = torch.tensor(list(values.values()), dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t)
    return {k: float(v) / world_size() for k, v in zip(values, t.tolist())}


def per_rank_batch(batch_size: int, num_instances: int, world: int | None = None) -> int:
    """Each rank's share of the global batch over ``world`` ranks (default: this job's), in whole identities."""
    world = world_size() if world is None else world
    if batch_size % (num_instances * world):
        raise ValueError(
            f"data.batch_size ({batch_size}) must split into whole identities of data.num_instances "
            f"({num_instances}) images over {world} processes: use a batch size that is a multiple of "
            f"{num_instances * world}"
        )
    return batch_size // world


def bn_ranks(batch_size: int, num_instances: int, bn_group_size: int | None) -> int:
    """How many consecutive ranks one BatchNorm group spans, so that it sees ``bn_group_size`` images.

    ``None`` means the whole global batch (every rank), which is what a single process does.
    """
    local = per_rank_batch(batch_size, num_instances)
    group = batch_size if bn_group_size is None else bn_group_size
    ranks, rest = divmod(group, local)
    if rest or ranks < 1 or world_size() % ranks:
        raise ValueError(
            f"data.bn_group_size ({group}) must be a multiple of the per-process batch ({local} = "
            f"{batch_size} / {world_size()} processes) and span a divisor of the {world_size()} processes"
        )
    return ranks


def sync_batchnorm(model: nn.Module, ranks: int, device: torch.device) -> nn.Module:
    """Convert BatchNorm layers to SyncBatchNorm over groups of ``ranks`` consecutive ranks (1: unchanged)."""
    if ranks == 1:
        return model
    if device.type != "cuda":
        raise ValueError(
            f"data.bn_group_size spans {ranks} processes, which needs SyncBatchNorm and CUDA; on the CPU "
            f"set data.bn_group_size to the per-process batch"
        )
    if ranks not in _bn_groups:
        _bn_groups[ranks] = None if ranks == world_size() else dist.new_subgroups(group_size=ranks)[0]
    return nn.SyncBatchNorm.convert_sync_batchnorm(model, process_group=_bn_groups[ranks])


def data_parallel(model: nn.Module, device: torch.device) -> nn.Module:
    """The model as trained: wrapped in DistributedDataParallel under torchrun, else itself.

    Wrapping broadcasts rank 0's parameters and buffers, so ranks start every epoch identical.
    """
    if not active():
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)

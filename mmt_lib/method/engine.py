"""What both training stages need around the method itself: devices, data, evaluation, guards."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable

import torch
from torch import nn

from mmt_lib.config import DataConfig, RunConfig, RuntimeConfig
from mmt_lib.data import ReidDataset, Sample, load_dataset
from mmt_lib.data.decoded import DecodedImages, cache_dir, decode_once
from mmt_lib.data.loaders import ImageDataset, build_test_loader
from mmt_lib.data.transforms import build_test_transform
from mmt_lib.evaluation.evaluate import evaluate_features, extract_features
from mmt_lib.runtime import distributed
from mmt_lib.runtime.paths import project_path


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks the GPU when there is one; anything else is passed to ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"runtime.device={name!r} but no CUDA device is available")
    return device


def show_progress(runtime: RuntimeConfig) -> bool:
    """Progress bars on rank 0 only, so that several processes do not garble one terminal."""
    return runtime.progress and distributed.is_main()


def native_cpu_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX) and ATen may use it.

    Decided by capability, not by the CPU's name: on a CPU without it (AVX2) bf16 products are
    emulated and slower than fp32. Reproducible mode pins ATen to AVX2 (``mmt_lib.runtime.reproducible``),
    which turns it off there, so reproducible numbers stay the same on every CPU.
    """
    return (torch.backends.cpu.get_cpu_capability() not in ("DEFAULT", "AVX2")
            and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def uses_bf16(runtime: RuntimeConfig, device: torch.device) -> bool:
    """bf16 autocast is on by default on CUDA and on CPUs with native bf16 (``native_cpu_bf16``)."""
    if runtime.bf16 is not None:
        return runtime.bf16
    return device.type == "cuda" or (device.type == "cpu" and native_cpu_bf16())


def uses_channels_last(runtime: RuntimeConfig, device: torch.device) -> bool:
    """channels_last is on by default: tensor cores want it on CUDA, and on the CPU oneDNN's NHWC
    convolutions took a CPU Stage II iteration from 427 to 326 ms (benchmarks/README.md)."""
    return True if runtime.channels_last is None else runtime.channels_last


def autocast(runtime: RuntimeConfig, device: torch.device) -> contextlib.AbstractContextManager:
    if uses_bf16(runtime, device):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def uses_fused_adam(runtime: RuntimeConfig, device: torch.device) -> bool:
    return device.type == "cuda" if runtime.fused_adam is None else runtime.fused_adam


def prepare_model(
    model: nn.Module, runtime: RuntimeConfig, device: torch.device, data: DataConfig | None = None
) -> nn.Module:
    """The model on ``device`` in the runtime's memory format.

    ``data`` is given for a model that will train: under ``torchrun`` its BatchNorm layers then
    normalise over ``data.bn_group_size`` images (SyncBatchNorm when that spans several processes).
    """
    if data is not None:
        ranks = distributed.bn_ranks(data.batch_size, data.num_instances, data.bn_group_size)
        model = distributed.sync_batchnorm(model, ranks, device)
    model = model.to(device)
    if uses_channels_last(runtime, device):
        model = model.to(memory_format=torch.channels_last)
    return model


def training_module(
    model: nn.Module, runtime: RuntimeConfig, device: torch.device, replicate: bool = True
) -> nn.Module:
    """What the training loop calls: DistributedDataParallel under torchrun (``replicate``), compiled if asked.

    Parameters stay shared with ``model``, which checkpoints, evaluation and the optimizer keep using.
    """
    if replicate:
        model = distributed.data_parallel(model, device)
    return torch.compile(model) if runtime.compile else model


def build_adam(
    params: Iterable[torch.Tensor], lr: float, weight_decay: float, runtime: RuntimeConfig, device: torch.device
) -> torch.optim.Adam:
    """Adam; the fused kernel (one launch for every parameter) on CUDA unless ``runtime.fused_adam`` says no."""
    if uses_fused_adam(runtime, device):
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def load_task_datasets(data: DataConfig) -> tuple[ReidDataset, ReidDataset]:
    """The (source, target) pair of a task; synthetic domains are generated on first use."""
    return load_named_dataset(data, data.source), load_named_dataset(data, data.target)


def load_named_dataset(data: DataConfig, name: str) -> ReidDataset:
    """One dataset under ``data.data_root``; synthetic names carry the profile's size and seed.

    Synthetic domains are generated on first use, by rank 0 alone under ``torchrun``.
    """
    if name.startswith("synth-"):
        with distributed.main_first():
            return load_dataset(name, project_path(data.data_root), size=data.synthetic_size,
                                seed=data.synthetic_seed)
    return load_dataset(name, project_path(data.data_root))


def decoded_images(cfg: RunConfig, samples: list[Sample]) -> DecodedImages | None:
    """``samples``' images decoded and resized to the input size once, for every epoch and run to reuse
    (``mmt_lib.data.decoded``); ``None`` (decode on every draw) when ``MMT_CACHE_DIR=off``.

    Concurrent processes (``torchrun`` ranks, batch jobs) wait on a file lock while one decodes.
    """
    folder = cache_dir(project_path(cfg.data.data_root))
    if folder is None:
        return None
    return decode_once([path for path, _, _ in samples], cfg.data.height, cfg.data.width, folder,
                       progress=show_progress(cfg.runtime))


def evaluate_model(
    model: nn.Module, dataset: ReidDataset, cfg: RunConfig, device: torch.device, desc: str = "evaluate"
) -> dict[str, float]:
    """mAP, mINP and CMC of ``model`` on the query/gallery split of ``dataset`` (the paper's protocol, docs/method.md)."""
    samples = dataset.query + dataset.gallery
    loader = build_test_loader(
        ImageDataset(samples, build_test_transform(cfg.data.height, cfg.data.width), decoded_images(cfg, samples)),
        batch_size=cfg.data.test_batch_size, num_workers=cfg.data.num_workers,
        pin_memory=device.type == "cuda",
    )
    feats, pids, cams = extract_features(
        model, loader, device=device, amp_dtype=torch.bfloat16 if uses_bf16(cfg.runtime, device) else None,
        progress=show_progress(cfg.runtime), desc=desc,
    )
    nq = len(dataset.query)
    result = evaluate_features(feats[:nq], feats[nq:], pids[:nq], pids[nq:], cams[:nq], cams[nq:])
    metrics = {"mAP": float(result["mAP"]), "mINP": float(result["mINP"])}
    metrics.update({f"top{k}": float(v) for k, v in result["cmc"].items()})
    return metrics


def check_finite(terms: dict[str, torch.Tensor], iteration: int, epoch: int) -> None:
    """Stop a run the moment a loss term turns NaN or infinite, naming the term and the iteration."""
    for name, value in terms.items():
        v = float(value.detach())
        if not math.isfinite(v):
            raise FloatingPointError(
                f"loss term {name!r} is {v} at epoch {epoch}, iteration {iteration}; "
                f"lower the learning rate or check the input data"
            )

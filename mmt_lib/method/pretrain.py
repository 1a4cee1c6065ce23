"""Stage I: supervised pre-training on the labelled source domain (the paper's Section 3.1; docs/method.md).

Run twice, with seeds 1 and 2, to get the two networks that MMT trains together; both backbones
start from the same weights (ImageNet's, the formula-driven Stage 0 start of ``mmt_lib.method.stage0``, or
without either the random draw of ``model.backbone_seed``).
Each iteration also forwards a target batch without a loss, so BatchNorm running statistics absorb
the target domain.
"""

from __future__ import annotations

import time
from bisect import bisect_right
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from mmt_lib.config import PretrainConfig, RunConfig
from mmt_lib.data.loaders import ImageDataset, IterLoader, build_shuffled_loader, build_train_loader
from mmt_lib.data.transforms import build_train_transform
from mmt_lib.method import provenance
from mmt_lib.method.engine import (autocast, build_adam, check_finite, decoded_images, evaluate_model,
                                   load_task_datasets, prepare_model, resolve_device, show_progress, training_module)
from mmt_lib.method.losses import label_smooth_cross_entropy, softmax_triplet
from mmt_lib.method.stage0 import resolve_pretrained
from mmt_lib.method.trainer import evaluates_after, run_epochs
from mmt_lib.models import build_model, share_initial_backbone
from mmt_lib.runtime import distributed
from mmt_lib.runtime.paths import project_path
from mmt_lib.runtime.seeding import TARGET_ORDER_STREAM, derive_seed, seed_everything


def learning_rate(p: PretrainConfig, epoch: int) -> float:
    """Linear warm-up from ``warmup_factor`` x lr over ``warmup_epochs``, then x``gamma`` at each milestone."""
    warmup = 1.0
    if epoch < p.warmup_epochs:
        progress = epoch / p.warmup_epochs
        warmup = p.warmup_factor * (1.0 - progress) + progress
    return p.lr * warmup * p.gamma ** bisect_right(list(p.milestones), epoch)


def pretrain(cfg: RunConfig, out_dir: str | Path, resume: bool = True) -> dict[str, Any]:
    """Train one source network, checkpointing every epoch; returns the run's metrics.

    A run stopped at any point resumes from its last finished epoch and ends with the same
    metrics as an uninterrupted run (``trainer.run_epochs``). Under ``torchrun`` each process
    trains on its share of every batch and rank 0 alone writes.
    """
    out_dir = project_path(out_dir)
    p = cfg.pretrain
    device = distributed.init(resolve_device(cfg.runtime.device))
    source, target = load_task_datasets(cfg.data)
    with distributed.main_first():  # one process builds a Stage 0 start, the others then read it
        start = resolve_pretrained(cfg, show_progress(cfg.runtime))
    seed_everything(cfg.seed)
    net = build_model(cfg.model.arch, source.num_train_pids, start, cfg.model.dropout)
    if start is None:
        share_initial_backbone(net, cfg.model.arch, cfg.model.backbone_seed)
    model = prepare_model(net, cfg.runtime, device, cfg.data)
    optimizer = build_adam(model.parameters(), p.lr, p.weight_decay, cfg.runtime, device)
    trained = training_module(model, cfg.runtime, device)
    train_tf = build_train_transform(cfg.data.height, cfg.data.width, random_erasing=False)
    source_set, target_set = (ImageDataset(d.train, train_tf, decoded_images(cfg, d.train)) for d in (source, target))

    def run_epoch(epoch: int, history: list[dict[str, Any]]) -> dict[str, Any]:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(p, epoch)
        tic = time.perf_counter()
        source_loader = build_train_loader(
            source_set, source.train, batch_size=cfg.data.batch_size, num_instances=cfg.data.num_instances,
            num_workers=cfg.data.num_workers, seed=cfg.seed, epoch=epoch, pin_memory=device.type == "cuda",
            rank=distributed.rank(), world_size=distributed.world_size(),
        )
        target_loader = _shuffled_loader(target_set, cfg, epoch, device) if p.target_bn_forward else None
        record = train_epoch(trained, optimizer, source_loader, target_loader, cfg, device, epoch)
        record["seconds_train"] = time.perf_counter() - tic
        if evaluates_after(epoch, p.eval_every, p.epochs):
            tic = time.perf_counter()
            record["source"] = distributed.on_main(evaluate_model, model, source, cfg, device, "evaluate source")
            record["target"] = distributed.on_main(evaluate_model, model, target, cfg, device, "evaluate target")
            record["seconds_eval"] = time.perf_counter() - tic
        return record

    def restore(state: dict[str, Any]) -> None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])

    history = run_epochs(
        cfg, out_dir, p.epochs, run_epoch, restore=restore, resume=resume, desc="Stage I epochs",
        snapshot=lambda: {"provenance": provenance.record(cfg), "arch": cfg.model.arch,
                          "num_classes": source.num_train_pids,
                          "model": model.state_dict(), "optimizer": optimizer.state_dict()},
    )
    final = history[-1]
    return {
        "stage": "pretrain", "task": cfg.task, "seed": cfg.seed, "config_hash": cfg.config_hash(),
        "provenance": provenance.record(cfg),
        "config": cfg.to_dict(), "selection": "last epoch, evaluated on the target (direct transfer)",
        "source": final["source"], "target": final["target"],
        **final["target"], "history": history,
    }


def train_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    source_loader: DataLoader,
    target_loader: DataLoader | None,
    cfg: RunConfig,
    device: torch.device,
    epoch: int,
) -> dict[str, float]:
    """``iters`` steps of label-smoothed CE + hard softmax-triplet (weights 1:1) on source batches.

    ``model`` is the network as trained (``engine.training_module``); logged losses are averaged over processes.
    """
    model.train()
    totals = {"ce": 0.0, "triplet": 0.0}
    target_batches = iter(IterLoader(target_loader, cfg.pretrain.iters)) if target_loader is not None else None
    for it, (images, pids, _, _) in enumerate(IterLoader(source_loader, cfg.pretrain.iters)):
        images, pids = images.to(device, non_blocking=True), pids.to(device, non_blocking=True)
        if target_batches is not None:
            with torch.no_grad(), autocast(cfg.runtime, device):
                model(next(target_batches)[0].to(device, non_blocking=True))
        with autocast(cfg.runtime, device):
            features, logits = model(images)
            terms = {
                "ce": label_smooth_cross_entropy(logits.float(), pids, eps=cfg.pretrain.label_smoothing),
                "triplet": softmax_triplet(features.float(), pids),
            }
        check_finite(terms, it, epoch)
        optimizer.zero_grad(set_to_none=True)
        sum(terms.values()).backward()
        optimizer.step()
        for name, value in terms.items():
            totals[name] += float(value.detach())
    return {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"],
            **{f"loss_{k}": v / cfg.pretrain.iters for k, v in distributed.mean_over_ranks(totals).items()}}


def _shuffled_loader(dataset: ImageDataset, cfg: RunConfig, epoch: int, device: torch.device) -> DataLoader:
    return build_shuffled_loader(
        dataset, cfg.data.batch_size, cfg.data.num_workers, seed=derive_seed(cfg.seed, epoch, TARGET_ORDER_STREAM),
        on_cuda=device.type == "cuda", rank=distributed.rank(), world_size=distributed.world_size(),
    )

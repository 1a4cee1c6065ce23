"""Stage I: supervised pre-training on the labelled source domain (MMT_SPEC, "Stage I").

Run twice, with seeds 1 and 2, to get the two networks that MMT trains together; both backbones
start from the same weights (ImageNet's, or without them the random draw of ``model.backbone_seed``).
Each iteration also forwards a target batch without a loss, so BatchNorm running statistics absorb
the target domain.
"""

from __future__ import annotations

import time
from bisect import bisect_right
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm.auto import trange

from mmt_lib import distributed
from mmt_lib.checkpoints import load_checkpoint, save_checkpoint
from mmt_lib.config import PretrainConfig, RunConfig
from mmt_lib.data.loaders import ImageDataset, IterLoader, build_shuffled_loader, build_train_loader
from mmt_lib.data.transforms import build_train_transform
from mmt_lib.engine import (
    autocast, build_adam, check_finite, decoded_images, evaluate_model, load_task_datasets, prepare_model,
    setup_device, show_progress, training_module,
)
from mmt_lib.losses import label_smooth_cross_entropy, softmax_triplet
from mmt_lib.paths import project_path
from mmt_lib.models import ReidNet, build_model, share_initial_backbone
from mmt_lib.seeding import seed_everything

CHECKPOINT = "checkpoint.pt"


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
    metrics as an uninterrupted run, because every epoch reseeds from (seed, epoch). Under
    ``torchrun`` each process trains on its share of every batch and rank 0 alone writes.
    """
    out_dir = project_path(out_dir)
    p = cfg.pretrain
    device = setup_device(cfg.runtime)
    source, target = load_task_datasets(cfg.data)
    seed_everything(cfg.seed)
    net = build_model(cfg.model.arch, source.num_train_pids, cfg.model.pretrained, cfg.model.dropout)
    if cfg.model.pretrained is None:
        share_initial_backbone(net, cfg.model.arch, cfg.model.backbone_seed)
    model = prepare_model(net, cfg.runtime, device, cfg.data)
    optimizer = build_adam(model.parameters(), p.lr, p.weight_decay, cfg.runtime, device)
    history: list[dict[str, Any]] = []
    start_epoch = 0
    if resume and (out_dir / CHECKPOINT).exists():
        state = load_checkpoint(out_dir / CHECKPOINT)
        _check_same_run(state, cfg, out_dir / CHECKPOINT)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history, start_epoch = state["history"], state["epoch"] + 1
    trained = training_module(model, cfg.runtime, device)

    train_tf = build_train_transform(cfg.data.height, cfg.data.width, random_erasing=False)
    source_set, target_set = (ImageDataset(d.train, train_tf, decoded_images(cfg, d.train)) for d in (source, target))
    for epoch in trange(start_epoch, p.epochs, desc="Stage I epochs", disable=not show_progress(cfg.runtime),
                        initial=start_epoch, total=p.epochs):
        seed_everything(cfg.seed, epoch, rank=distributed.rank())
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
        if (epoch + 1) % p.eval_every == 0 or epoch + 1 == p.epochs:
            tic = time.perf_counter()
            record["source"] = distributed.on_main(evaluate_model, model, source, cfg, device, "evaluate source")
            record["target"] = distributed.on_main(evaluate_model, model, target, cfg, device, "evaluate target")
            record["seconds_eval"] = time.perf_counter() - tic
        history.append(record)
        if distributed.is_main():  # one writer; the others have nothing to wait for
            save_checkpoint(out_dir / CHECKPOINT, {
                "stage": "pretrain", "epoch": epoch, "config_hash": cfg.config_hash(),
                "arch": cfg.model.arch, "num_classes": source.num_train_pids,
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "history": history,
            })

    final = history[-1]
    metrics = {
        "stage": "pretrain", "task": cfg.task, "seed": cfg.seed, "config_hash": cfg.config_hash(),
        "config": cfg.to_dict(), "selection": "last epoch, evaluated on the target (direct transfer)",
        "source": final["source"], "target": final["target"],
        **final["target"], "history": history,
    }
    return metrics


def results_table(metrics: dict[str, Any]) -> pd.DataFrame:
    """Source and target retrieval of the final network: the gap between the rows is the domain gap."""
    return pd.DataFrame.from_dict({"source (supervised)": metrics["source"], "target (direct transfer)": metrics["target"]},
                                  orient="index")


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


def load_pretrained_network(path: str | Path, arch: str | None = None) -> ReidNet:
    """A Stage I network from its checkpoint (``weights_only``), checking the architecture when given."""
    state = load_checkpoint(path)
    if state.get("stage") != "pretrain":
        raise ValueError(f"{path} is not a Stage I checkpoint (stage={state.get('stage')!r})")
    if arch is not None and state["arch"] != arch:
        raise ValueError(f"{path} holds a {state['arch']!r} network but the run asks for model.arch={arch!r}")
    net = build_model(state["arch"], state["num_classes"])
    net.load_state_dict(state["model"])
    return net


def _shuffled_loader(dataset: ImageDataset, cfg: RunConfig, epoch: int, device: torch.device) -> DataLoader:
    return build_shuffled_loader(
        dataset, cfg.data.batch_size, cfg.data.num_workers, seed=cfg.seed * 100_003 + epoch,
        on_cuda=device.type == "cuda", rank=distributed.rank(), world_size=distributed.world_size(),
    )


def _check_same_run(state: dict[str, Any], cfg: RunConfig, path: Path) -> None:
    if state.get("config_hash") != cfg.config_hash():
        raise ValueError(
            f"{path} was written by a different configuration (hash {state.get('config_hash')}, "
            f"now {cfg.config_hash()}): use another out_dir or delete the checkpoint"
        )

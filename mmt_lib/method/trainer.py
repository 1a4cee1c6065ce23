"""The skeleton both training stages share: start or resume a run, one seeded epoch at a time, checkpoint.

Stage I (``pretrain``) and Stage II (``mmt``) differ only in what one epoch does and in what their
checkpoint holds. Everything around that is here, written once:

* a run folder holds one ``checkpoint.pt``, rewritten atomically after every epoch;
* a checkpoint is resumed only by the configuration that wrote it (same stage, same config hash);
* every epoch reseeds from ``(seed, epoch)`` (``seeding.seed_everything``), so a resumed run draws
  exactly what an uninterrupted one draws;
* under ``torchrun`` every process runs the epoch and rank 0 alone writes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from mmt_lib.config import RunConfig
from mmt_lib.method.engine import show_progress
from mmt_lib.method.provenance import Stage1Checkpoint, read_stage1
from mmt_lib.models import ReidNet, build_model
from mmt_lib.runtime import distributed
from mmt_lib.runtime.checkpoints import load_checkpoint, save_checkpoint
from mmt_lib.runtime.progress import trange
from mmt_lib.runtime.seeding import seed_everything

CHECKPOINT = "checkpoint.pt"

History = list[dict[str, Any]]


def check_same_run(state: dict[str, Any], cfg: RunConfig, path: Path) -> None:
    """Refuse a checkpoint that another stage or another configuration wrote, naming both hashes."""
    if state.get("stage") != cfg.stage or state.get("config_hash") != cfg.config_hash():
        raise ValueError(
            f"{path} was written by another run (stage {state.get('stage')!r}, config hash "
            f"{state.get('config_hash')}); this run is stage {cfg.stage!r}, config hash {cfg.config_hash()}: "
            f"use another out_dir or delete the checkpoint"
        )


def run_epochs(
    cfg: RunConfig,
    out_dir: Path,
    epochs: int,
    run_epoch: Callable[[int, History], dict[str, Any]],
    snapshot: Callable[[], dict[str, Any]],
    restore: Callable[[dict[str, Any]], None],
    resume: bool = True,
    desc: str = "epochs",
) -> History:
    """Run epochs ``0 .. epochs-1`` of one stage, resuming after the last one checkpointed in ``out_dir``.

    ``run_epoch(epoch, history)`` trains (and evaluates) one epoch and returns its record;
    ``snapshot()`` gives the stage's tensors to checkpoint and ``restore(state)`` puts them back.
    Returns the history: one record per epoch, the resumed ones included.
    """
    path = out_dir / CHECKPOINT
    history: History = []
    if resume and path.exists():
        state = load_checkpoint(path)
        check_same_run(state, cfg, path)
        restore(state)
        history = state["history"]
    start = len(history)
    for epoch in trange(start, epochs, desc=desc, disable=not show_progress(cfg.runtime),
                        initial=start, total=epochs):
        seed_everything(cfg.seed, epoch, rank=distributed.rank())
        history.append(run_epoch(epoch, history))
        if distributed.is_main():  # one writer; the others have nothing to wait for
            save_checkpoint(path, {"stage": cfg.stage, "epoch": epoch, "config_hash": cfg.config_hash(),
                                   "history": history, **snapshot()})
    return history


def evaluates_after(epoch: int, every: int, epochs: int) -> bool:
    """Whether epoch ``epoch`` (from 0) ends with an evaluation: every ``every`` epochs, and the last."""
    return (epoch + 1) % every == 0 or epoch + 1 == epochs


def load_pretrained_network(source: str | Path | Stage1Checkpoint, arch: str | None = None) -> ReidNet:
    """A Stage I network from its checkpoint, read here unless already read, checking the architecture when given."""
    checkpoint = read_stage1(source)
    state = checkpoint.state
    if arch is not None and state["arch"] != arch:
        raise ValueError(f"{checkpoint.path} holds a {state['arch']!r} network but the run asks for model.arch={arch!r}")
    net = build_model(state["arch"], state["num_classes"])
    net.load_state_dict(state["model"])
    return net

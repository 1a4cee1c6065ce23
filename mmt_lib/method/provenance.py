"""Where a Stage I network comes from, and Stage II's refusal of networks trained for another task.

MMT adapts two networks, pre-trained with different seeds on the labelled source (the paper's
Stage I), to the unlabelled target (Stage II). A Stage I network of another source, or one whose
BatchNorm statistics absorbed another target, has the right architecture and loads without an
error: only its record says what it is. Stage I writes the record into its checkpoint and metrics;
Stage II checks it before it loads any weights, on the checkpoint it reads once (``Stage1Checkpoint``)
and then builds its networks from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmt_lib.config import DOMAIN_DATASETS, DataConfig, RunConfig
from mmt_lib.runtime.checkpoints import load_checkpoint


def data_kind(data: DataConfig) -> str:
    """``synthetic`` or ``real`` when both datasets are the embedded domains or the real datasets, else ``custom``."""
    for kind, names in DOMAIN_DATASETS.items():
        if {data.source, data.target} <= set(names.values()):
            return kind
    return "custom"


def record(cfg: RunConfig) -> dict[str, Any]:
    """What a Stage I run was trained for: kept in its checkpoint and in its ``metrics.json``."""
    return {"task": cfg.task, "source": cfg.data.source, "target": cfg.data.target, "data": data_kind(cfg.data),
            "seed": cfg.seed, "config_hash": cfg.config_hash()}


@dataclass(frozen=True)
class Stage1Checkpoint:
    """A Stage I checkpoint as read from disk: its path, for messages, and what it holds."""

    path: Path
    state: dict[str, Any]


def read_stage1(source: str | Path | Stage1Checkpoint) -> Stage1Checkpoint:
    """The Stage I checkpoint at ``source`` (``weights_only``); one already read is returned as it is, so
    a checkpoint is read once however many steps look at it."""
    if isinstance(source, Stage1Checkpoint):
        return source
    state = load_checkpoint(source)
    if state.get("stage") != "pretrain":
        raise ValueError(f"{source} is not a Stage I checkpoint (stage={state.get('stage')!r})")
    return Stage1Checkpoint(Path(source), state)


def check_pretrained(cfg: RunConfig, checkpoints: Sequence[str | Path | Stage1Checkpoint]) -> list[Stage1Checkpoint]:
    """Refuse Stage I checkpoints of another source or target, and one Stage I run given twice; return
    the checkpoints the run uses, read, for it to build its networks from.

    ``direct`` evaluates the first network alone, so only that one is read and checked. Two students
    from the same run (the same folder, or a copy: one seed and configuration) start identical, which
    the paper's method does not do; ``mmt.allow_same_pretrained`` permits it as a deliberate study.
    """
    used = [read_stage1(c) for c in (checkpoints[:1] if cfg.variant == "direct" else checkpoints)]
    records = []
    for checkpoint in used:
        path, given = checkpoint.path, checkpoint.state.get("provenance")
        if given is None:
            raise ValueError(f"{path} records no provenance (task, source, target): it was written before Stage I "
                             "recorded them; train Stage I again")
        if (given["source"], given["target"]) != (cfg.data.source, cfg.data.target):
            raise ValueError(
                f"{path} is a Stage I network of {given['task']} ({given['source']} -> {given['target']}, seed "
                f"{given['seed']}), but this Stage II run is {cfg.task} ({cfg.data.source} -> {cfg.data.target}): "
                f"give the Stage I runs of {cfg.task}")
        records.append(given)
    if len(used) == 2 and not cfg.mmt.allow_same_pretrained:
        same_file = used[0].path.resolve() == used[1].path.resolve()
        if same_file or records[0]["config_hash"] == records[1]["config_hash"]:
            raise ValueError(
                f"both Stage I checkpoints are one run ({used[0].path} and {used[1].path}: seed {records[0]['seed']}, config "
                f"{records[0]['config_hash']}): MMT trains two networks pre-trained with different seeds; set "
                "mmt.allow_same_pretrained=True to start both from one network on purpose")
    return used

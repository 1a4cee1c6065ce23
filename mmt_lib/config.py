"""Every setting of a run in one place: profiles, the four transfer tasks and the Table 2 variants.

A *profile* picks model size and schedule (``smoke`` for tests, ``synthetic`` for CPU experiments,
``paper`` for the published GPU schedule). The data are chosen separately: ``data="synthetic"``
maps each task to the embedded synthetic domains, ``data="real"`` to the real datasets under
``data_root``; ``source``/``target`` name any two datasets for a custom task. k-means' K follows
the target (``default_num_clusters``); a custom target's must be set (``mmt.num_clusters``).

Baseline and every ablation are *settings* of the one Stage II trainer (see ``VARIANTS``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
import typing
from dataclasses import dataclass, field, replace
from typing import Any

from mmt_lib import __version__
from mmt_lib.runtime.paths import project_path

TASKS: dict[str, tuple[str, str]] = {
    "market2duke": ("market", "duke"),
    "duke2market": ("duke", "market"),
    "market2msmt": ("market", "msmt"),
    "duke2msmt": ("duke", "msmt"),
}
"""The paper's four transfer tasks as (source domain, target domain)."""

DOMAIN_DATASETS: dict[str, dict[str, str]] = {
    "synthetic": {"market": "synth-market", "duke": "synth-duke", "msmt": "synth-msmt"},
    "synthetic-transient": {"market": "synth-transient-market", "duke": "synth-transient-duke",
                            "msmt": "synth-transient-msmt"},
    "real": {"market": "market1501", "duke": "dukemtmc", "msmt": "msmt17"},
}


@dataclass(frozen=True)
class DataConfig:
    """Which images, at which size, in which batches."""

    source: str
    target: str
    data_root: str = "data"
    synthetic_size: str = "default"
    synthetic_seed: int = 0
    height: int = 256
    width: int = 128
    batch_size: int = 64
    num_instances: int = 4
    test_batch_size: int = 128
    num_workers: int = 0
    """Loader worker processes. A setting, not picked from the machine, because another count draws other
    augmentations (``data.loaders``); 0 on the CPU profiles, where it was measured fastest with decoded
    images (benchmarks/README.md), 4 on the paper's GPU profile."""
    bn_group_size: int | None = None
    """Images each BatchNorm normalises over. ``None``: the whole global batch, as one process does,
    whatever the device count. Under ``torchrun`` a smaller group is one process's share of the batch,
    or SyncBatchNorm over a few processes (e.g. 16 with batch 64 on 4 GPUs matches the reference)."""


STAGE0 = "stage0"
"""``model.pretrained`` value meaning: the Stage 0 start (``mmt_lib.method.stage0``) for the run's arch and input size."""
STAGE0_FAMILIES = ("fractal", "spectrum", "people")
"""The images a Stage 0 start learns from (``model.stage0_family``): FractalDB's fractals, coloured-noise
spectra, or randomised synthetic people (``mmt_lib.method.stage0.FAMILIES`` says what each is)."""


@dataclass(frozen=True)
class ModelConfig:
    """``pretrained``: a local ImageNet weights file for the backbone, or ``STAGE0`` for the
    formula-driven start that stands in for ImageNet (``mmt_lib.method.stage0``, seeded by ``backbone_seed``).

    ``backbone_seed``: without ``pretrained`` weights, every network's backbone starts from the
    random weights this seed draws, so that the two Stage I networks still share their starting
    point as the paper's share ImageNet's (the run's own seed draws the classifier, sampling and
    augmentation). 1 keeps the seed-1 network exactly what it was before the weights were shared."""

    arch: str = "resnet50"
    pretrained: str | None = None
    dropout: float = 0.0
    backbone_seed: int = 1
    stage0_family: str = "fractal"
    """The images of the Stage 0 start, when ``pretrained`` is ``STAGE0`` (``STAGE0_FAMILIES``)."""


@dataclass(frozen=True)
class PretrainConfig:
    """Stage I: supervised training on the source (the paper's Section 3.1; docs/method.md)."""

    epochs: int = 80
    iters: int = 100
    lr: float = 3.5e-4
    weight_decay: float = 5e-4
    warmup_epochs: int = 10
    warmup_factor: float = 0.01
    milestones: tuple[int, ...] = (40, 70)
    gamma: float = 0.1
    label_smoothing: float = 0.1
    target_bn_forward: bool = True
    eval_every: int = 10


@dataclass(frozen=True)
class MMTConfig:
    """Stage II. Loss weights follow the paper's overall objective (docs/method.md); the switches make
    every Table 2 row.

    ``mean_teacher=False`` removes the temporal average entirely: pseudo labels and evaluation
    then use the current networks, as the baseline and "w/o E[theta]" rows require.
    ``soft_teacher`` says whose predictions supervise a student: the peer's mean net (MMT),
    the student's own mean net, or the peer's current network.
    The mean teacher's ramp alpha_t = min(1 - 1/(t + 1), alpha_max) averages over a window of about
    1/(1 - alpha_max) iterations. The paper's alpha_max = 0.999 is a window of 1,000 of its 16,000
    Stage II iterations: ``ema_window_share`` = 1/16 keeps that share at any schedule length
    (``max_alpha``), so a shorter run does not turn its mean net into the plain average of the whole
    run, which lags more the longer the run (docs/findings.md). An explicit ``ema_alpha`` wins.
    ``eval_every``: the mean nets are evaluated every that many epochs and after the last; the
    headline numbers use only the last.
    """

    epochs: int = 40
    iters: int = 400
    lr: float = 3.5e-4
    weight_decay: float = 5e-4
    soft_ce_weight: float = 0.5
    soft_tri_weight: float = 0.8
    hard_ce: bool = True
    hard_triplet: bool = True
    mean_teacher: bool = True
    soft_teacher: str = "peer-mean"
    ema_window_share: float = 1 / 16
    ema_alpha: float | None = None
    label_smoothing: float = 0.1
    clustering: str = "kmeans"
    num_clusters: int | None = None
    """k-means' K. ``None``: ``resolve`` derives it from the target (``default_num_clusters``); it stays
    ``None`` only for a custom target, where a k-means run is refused until it is set."""
    k1: int = 20
    k2: int = 6
    rho: float = 1.6e-3
    min_samples: int = 4
    random_erasing: bool = True
    save_embeddings: bool = False
    allow_same_pretrained: bool = False
    """Both students from one Stage I run: refused unless set, as a study of what the second seed brings."""
    eval_every: int = 1

    def max_alpha(self) -> float:
        """alpha_max: ``ema_alpha`` when set, else 1 - 1/(``ema_window_share`` x all Stage II iterations)."""
        if self.ema_alpha is not None:
            return self.ema_alpha
        return 1.0 - 1.0 / (self.ema_window_share * self.epochs * self.iters)

    def term_weights(self) -> dict[str, float]:
        """The weight of each of the four loss terms (the paper's overall objective)."""
        return {
            "hard_ce": (1.0 - self.soft_ce_weight) if self.hard_ce else 0.0,
            "hard_triplet": (1.0 - self.soft_tri_weight) if self.hard_triplet else 0.0,
            "soft_ce": self.soft_ce_weight,
            "soft_triplet": self.soft_tri_weight,
        }


@dataclass(frozen=True)
class RuntimeConfig:
    """How to run, not what to compute. ``None`` picks by device (``engine.uses_*``): bf16 on CUDA and
    on CPUs with native bf16, channels_last everywhere, fused Adam on CUDA."""

    device: str = "auto"
    bf16: bool | None = None
    channels_last: bool | None = None
    fused_adam: bool | None = None
    compile: bool = False
    progress: bool = True


@dataclass(frozen=True)
class RunConfig:
    """A fully resolved run: what the trainers receive."""

    stage: str
    profile: str
    task: str
    variant: str
    seed: int
    data: DataConfig
    model: ModelConfig
    pretrain: PretrainConfig
    mmt: MMTConfig
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def config_hash(self) -> str:
        payload = json.dumps({"config": self.to_dict(), "version": __version__}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


VARIANTS: dict[str, dict[str, Any]] = {
    "direct": {},
    "baseline": {"soft_ce_weight": 0.0, "soft_tri_weight": 0.0, "mean_teacher": False, "soft_teacher": "none"},
    "mmt-kmeans": {},
    "mmt-dbscan": {"clustering": "dbscan"},
    "mmt-only-soft": {"hard_ce": False, "hard_triplet": False},
    "mmt-no-hard-ce": {"hard_ce": False},
    "mmt-no-hard-triplet": {"hard_triplet": False},
    "mmt-no-soft-ce": {"soft_ce_weight": 0.0},
    "mmt-no-soft-triplet": {"soft_tri_weight": 0.0},
    "mmt-own-teacher": {"soft_teacher": "own-mean"},
    "mmt-current-peer": {"soft_teacher": "peer-current", "mean_teacher": False},
}
"""Table 2 of the paper, rows 1-10, plus DBSCAN. ``direct`` evaluates the Stage I network only."""

ABLATION_VARIANTS = [
    "mmt-only-soft", "mmt-no-hard-ce", "mmt-no-hard-triplet", "mmt-no-soft-ce",
    "mmt-no-soft-triplet", "mmt-own-teacher", "mmt-current-peer",
]
MAIN_VARIANTS = ["direct", "baseline", "mmt-kmeans", "mmt-dbscan"]
ABLATION_TASKS = ["duke2market", "market2duke"]

SOFT_TEACHERS = ("peer-mean", "own-mean", "peer-current", "none")
CLUSTERINGS = ("kmeans", "dbscan")

PROFILES: dict[str, dict[str, Any]] = {
    "smoke": {
        "data": {"synthetic_size": "tiny", "height": 32, "width": 16, "batch_size": 16,
                 "test_batch_size": 64},
        "model": {"arch": "cpu_tiny"},
        "pretrain": {"epochs": 2, "iters": 3, "warmup_epochs": 1, "milestones": (1,), "eval_every": 1},
        "mmt": {"epochs": 2, "iters": 3, "k1": 6, "k2": 3, "rho": 0.1, "min_samples": 2, "save_embeddings": True,
                "ema_window_share": 1.0},  # 6 iterations hold no window of 1/16: the mean nets average them all
        "synthetic_num_clusters": 8,
        "stage0": {"classes": 8, "images_per_class": 16, "epochs": 1, "batch_size": 16},
        "data_kind": "synthetic",
    },
    "synthetic": {
        "data": {"synthetic_size": "compact", "height": 64, "width": 32, "batch_size": 64},
        # The paper fine-tunes both Stage I networks from one ImageNet start; a generic synthetic-people
        # start stands in for it (fresh identities in looks drawn from broad ranges, never a task domain's).
        "model": {"arch": "cpu_small", "pretrained": STAGE0, "stage0_family": "people"},
        # More identities than FractalDB's classes, fewer images each: 10,000 images either way.
        "stage0": {"classes": 400, "images_per_class": 50, "epochs": 8},
        # Both stages at the paper's 3.5e-4 (the defaults): fine-tuning a start, as the paper's do. Stage I
        # runs to the plateau of its source loss, as the paper's 80 epochs do: at 30 epochs it was still falling.
        "pretrain": {"epochs": 60, "iters": 40, "warmup_epochs": 2, "milestones": (42,), "eval_every": 15},
        # Stage II run until the baseline has plateaued on every task (make calibrate checks it); the mean
        # teacher's window keeps the paper's share of it (1/16).
        "mmt": {"epochs": 45, "iters": 36, "eval_every": 3, "save_embeddings": True},
        "data_kind": "synthetic",
    },
    "paper": {
        "data": {"height": 256, "width": 128, "batch_size": 64, "num_workers": 4},
        "model": {"arch": "resnet50"},
        "pretrain": {},
        "mmt": {},
        "data_kind": "real",
    },
}
"""Model size and schedule per profile; anything not named keeps the paper's value.

K is not a profile setting: it follows the target (``default_num_clusters``), except that
``synthetic_num_clusters`` fixes it on the synthetic domains of a profile that says so (the smoke
profile's tiny domains, for fast tests). ``stage0`` sizes the Stage 0 start of ``model.pretrained="stage0"``
(``mmt_lib.method.stage0.Stage0Config``; nothing named: its defaults). The synthetic profile keeps the
paper's protocol at a smaller scale: one shared pretrained start, Stage II at Stage I's base rate,
the mean teacher's window at the paper's share of Stage II; its comments give each departure's reason
(docs/method.md). The settings it had before, a shared random start (``model.pretrained=None``,
learning rates of 3e-3 for a network without any start) and a window as long as the run
(``mmt.ema_window_share=1``), stay reachable as overrides (``studies.STUDIES["what-mmt-needs"]``).
"""

PAPER_NUM_CLUSTERS = {"market": 500, "duke": 500, "msmt": 1500}
"""k-means' K in the paper per target domain: MMT-500 on Market-1501 and DukeMTMC-reID, MMT-1500 on MSMT17."""

_DOMAIN_OF = {name: domain for names in DOMAIN_DATASETS.values() for domain, name in names.items()}
EXPLICIT_NUM_CLUSTERS = "mmt.num_clusters, set explicitly"
"""Where a K came from that no rule gives: the overrides (or a K the rule would not have chosen)."""


def default_num_clusters(profile: str, target: str, synthetic_size: str) -> tuple[int, str] | None:
    """k-means' K for ``target`` when ``mmt.num_clusters`` is not set, with where it comes from.

    K stands for the number of identities in the target's training set, so it follows the data:
    a real named dataset gets the paper's K whatever the profile; a synthetic domain gets the K of
    the real dataset it stands for, scaled by the share of that dataset's training identities the
    generator draws at ``synthetic_size`` (``synthetic.SIZES``: 188 of Market's 751 at the default
    size, so 125 clusters). ``None`` for any other (custom) target: nothing says how many people it holds.
    """
    domain = _DOMAIN_OF.get(target)
    if domain is None:
        return None
    paper_k = PAPER_NUM_CLUSTERS[domain]
    real = DOMAIN_DATASETS["real"][domain]
    if target == real:
        return paper_k, f"the paper's K for {real} (MMT-{paper_k})"
    fixed = PROFILES[profile].get("synthetic_num_clusters")
    if fixed is not None:
        return fixed, f"the {profile} profile's K for synthetic targets"
    from mmt_lib.data.synthetic import DOMAINS, SIZES, identity_counts

    if synthetic_size not in SIZES:
        raise ValueError(f"unknown data.synthetic_size {synthetic_size!r}; known: {sorted(SIZES)}")
    spec = DOMAINS[target]
    ids = identity_counts(spec, SIZES[synthetic_size])[0]
    return (round(paper_k * ids / spec.real_train_ids),
            f"the paper's K for {real} ({paper_k}) x {ids}/{spec.real_train_ids}, the share of its train "
            f"identities {target} draws at size {synthetic_size!r}")


def num_clusters_origin(cfg: RunConfig) -> str:
    """Where ``cfg.mmt.num_clusters`` came from: the rule of ``default_num_clusters``, or an explicit setting."""
    if cfg.mmt.num_clusters is None:
        return "not set (custom target)"
    rule = default_num_clusters(cfg.profile, cfg.data.target, cfg.data.synthetic_size)
    return rule[1] if rule is not None and rule[0] == cfg.mmt.num_clusters else EXPLICIT_NUM_CLUSTERS


def _overlay(obj: Any, updates: dict[str, Any], section: str) -> Any:
    names = {f.name for f in dataclasses.fields(obj)}
    unknown = sorted(set(updates) - names)
    if unknown:
        raise ValueError(f"unknown {section} setting(s) {unknown}; known: {sorted(names)}")
    return replace(obj, **updates)


def parse_overrides(text: str) -> dict[str, dict[str, Any]]:
    """``--overrides`` of the command lines: a JSON object of sections, ``{"section": {"field": value}}``."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"--overrides is not valid JSON ({err}): {text}") from err
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise ValueError(f'--overrides must be {{"section": {{"field": value}}}}, got {text}')
    return value


def resolve(
    stage: str = "mmt",
    profile: str = "synthetic",
    task: str = "duke2market",
    variant: str = "mmt-kmeans",
    seed: int = 1,
    data: str | None = None,
    data_root: str | None = None,
    source: str | None = None,
    target: str | None = None,
    arch: str | None = None,
    pretrained: str | None = None,
    device: str = "auto",
    overrides: dict[str, dict[str, Any]] | None = None,
) -> RunConfig:
    """Turn the plain literals of a notebook's parameters cell into a validated ``RunConfig``.

    ``overrides`` is ``{"data"|"model"|"pretrain"|"mmt"|"runtime": {field: value}}`` for anything
    the named arguments do not cover; unknown sections or fields are refused, never ignored.
    """
    if stage not in ("pretrain", "mmt"):
        raise ValueError(f"stage must be 'pretrain' or 'mmt', got {stage!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"seed must be an integer >= 0, got {seed!r} ({type(seed).__name__})")
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; known: {sorted(PROFILES)}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known: {list(VARIANTS)}")
    spec = PROFILES[profile]
    data_kind = data or spec["data_kind"]
    if data_kind not in DOMAIN_DATASETS:
        raise ValueError(f"data must be one of {sorted(DOMAIN_DATASETS)}, got {data_kind!r}")
    if source is None or target is None:
        if task not in TASKS:
            raise ValueError(
                f"unknown task {task!r}; known: {sorted(TASKS)} (or give source= and target= dataset names)"
            )
        src_domain, tgt_domain = TASKS[task]
        source = source or DOMAIN_DATASETS[data_kind][src_domain]
        target = target or DOMAIN_DATASETS[data_kind][tgt_domain]
    else:
        tgt_domain = None

    data_cfg = _overlay(DataConfig(source=source, target=target), spec["data"], "data")
    if data_root is not None:
        data_cfg = replace(data_cfg, data_root=str(data_root))
    model_cfg = _overlay(ModelConfig(), spec["model"], "model")
    if arch is not None:
        model_cfg = replace(model_cfg, arch=arch)
    if pretrained is not None:
        model_cfg = replace(model_cfg, pretrained=str(pretrained))
    pretrain_cfg = _overlay(PretrainConfig(), spec["pretrain"], "pretrain")
    mmt_cfg = _overlay(_overlay(MMTConfig(), spec["mmt"], "mmt"), VARIANTS[variant], "mmt")
    sections = {"data": data_cfg, "model": model_cfg, "pretrain": pretrain_cfg, "mmt": mmt_cfg,
                "runtime": RuntimeConfig(device=device)}
    for section, updates in (overrides or {}).items():
        if section not in sections:
            raise ValueError(f"unknown override section {section!r}; known: {sorted(sections)}")
        sections[section] = _overlay(sections[section], dict(updates), section)
    if sections["mmt"].num_clusters is None:
        rule = default_num_clusters(profile, sections["data"].target, sections["data"].synthetic_size)
        if rule is not None:
            sections["mmt"] = replace(sections["mmt"], num_clusters=rule[0])
    cfg = RunConfig(stage=stage, profile=profile, task=task if tgt_domain else f"{source}2{target}",
                    variant=variant, seed=int(seed), **sections)
    validate(cfg)
    return cfg


@dataclass(frozen=True)
class _Range:
    """An interval for a number; open ends are excluded."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def admits(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


_AT_LEAST_0, _AT_LEAST_1, _POSITIVE = _Range(0), _Range(1), _Range(0, low_open=True)
_FRACTION, _UNIT, _UNIT_OPEN = _Range(0, 1), _Range(0, 1, high_open=True), _Range(0, 1, True, True)

RANGES: dict[str, _Range] = {
    "seed": _AT_LEAST_0,
    "data.synthetic_seed": _AT_LEAST_0, "data.height": _AT_LEAST_1, "data.width": _AT_LEAST_1,
    "data.batch_size": _AT_LEAST_1, "data.num_instances": _AT_LEAST_1, "data.test_batch_size": _AT_LEAST_1,
    "data.num_workers": _AT_LEAST_0, "data.bn_group_size": _AT_LEAST_1,
    "model.dropout": _UNIT, "model.backbone_seed": _AT_LEAST_0,
    "pretrain.epochs": _AT_LEAST_1, "pretrain.iters": _AT_LEAST_1, "pretrain.lr": _POSITIVE,
    "pretrain.weight_decay": _AT_LEAST_0, "pretrain.warmup_epochs": _AT_LEAST_0,
    "pretrain.warmup_factor": _Range(0, 1, low_open=True), "pretrain.milestones": _AT_LEAST_1,
    "pretrain.gamma": _Range(0, 1, low_open=True), "pretrain.label_smoothing": _UNIT,
    "pretrain.eval_every": _AT_LEAST_1,
    "mmt.epochs": _AT_LEAST_1, "mmt.iters": _AT_LEAST_1, "mmt.lr": _POSITIVE, "mmt.weight_decay": _AT_LEAST_0,
    "mmt.soft_ce_weight": _FRACTION, "mmt.soft_tri_weight": _FRACTION, "mmt.ema_alpha": _UNIT,
    "mmt.ema_window_share": _Range(0, 1, low_open=True), "mmt.eval_every": _AT_LEAST_1,
    "mmt.label_smoothing": _UNIT, "mmt.num_clusters": _Range(2), "mmt.k1": _AT_LEAST_1, "mmt.k2": _AT_LEAST_1,
    "mmt.rho": _UNIT_OPEN, "mmt.min_samples": _AT_LEAST_1,
}
"""What each number may be (a tuple's entries each); a field not named here may be any value of its type."""


def _type_fits(value: Any, hint: Any) -> bool:
    if hint is bool:
        return isinstance(value, bool)
    if hint in (int, float):  # true is not a count, nor is 2.0; but 1 is a fine learning rate
        return not isinstance(value, bool) and isinstance(value, int if hint is int else (int, float))
    if hint is str or hint is type(None):
        return isinstance(value, hint)
    if typing.get_origin(hint) is tuple:
        return isinstance(value, (tuple, list)) and all(_type_fits(v, typing.get_args(hint)[0]) for v in value)
    return any(_type_fits(value, h) for h in typing.get_args(hint))  # a union: X | None


def _type_name(hint: Any) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "None"}
    if hint in names:
        return names[hint]
    if typing.get_origin(hint) is tuple:
        return f"a list of {_type_name(typing.get_args(hint)[0]).removeprefix('an ').removeprefix('a ')}s"
    return " or ".join(_type_name(h) for h in typing.get_args(hint))


def _check_values(cfg: RunConfig) -> None:
    """Every field of every section: its type, then its range (``RANGES``)."""
    fields = [("seed", cfg.seed, int)]
    for section in ("data", "model", "pretrain", "mmt", "runtime"):
        obj = getattr(cfg, section)
        hints = typing.get_type_hints(type(obj))
        fields += [(f"{section}.{f.name}", getattr(obj, f.name), hints[f.name]) for f in dataclasses.fields(obj)]
    for name, value, hint in fields:
        if not _type_fits(value, hint):
            raise ValueError(f"{name} must be {_type_name(hint)}, got {value!r} ({type(value).__name__})")
        allowed = RANGES.get(name)
        if allowed is None or value is None:
            continue
        for item in value if isinstance(value, (tuple, list)) else [value]:
            if not allowed.admits(item):
                number = [h for h in typing.get_args(hint) if h is not type(None)][0] if _type_fits(None, hint) else hint
                optional = " (or None)" if number is not hint else ""
                raise ValueError(f"{name} must be {_type_name(number)} {allowed}{optional}, got {value!r}")


def _check_names(cfg: RunConfig) -> None:
    """Settings that name something: a backbone, a synthetic size, a clustering, a teacher."""
    from mmt_lib.data.synthetic import (
        SIZES,  # here: the batch driver imports this module without torch
    )
    from mmt_lib.models import known_archs

    if cfg.model.arch not in known_archs():
        raise ValueError(f"model.arch must be one of {known_archs()}, got {cfg.model.arch!r}")
    if cfg.data.synthetic_size not in SIZES:
        raise ValueError(f"data.synthetic_size must be one of {list(SIZES)}, got {cfg.data.synthetic_size!r}")
    if not cfg.data.source or not cfg.data.target:
        raise ValueError(f"data.source and data.target must name datasets, got {cfg.data.source!r}, "
                         f"{cfg.data.target!r}")
    if cfg.mmt.soft_teacher not in SOFT_TEACHERS:
        raise ValueError(f"mmt.soft_teacher must be one of {SOFT_TEACHERS}, got {cfg.mmt.soft_teacher!r}")
    if cfg.model.stage0_family not in STAGE0_FAMILIES:
        raise ValueError(f"model.stage0_family must be one of {STAGE0_FAMILIES}, got {cfg.model.stage0_family!r}")
    if cfg.mmt.clustering not in CLUSTERINGS:
        raise ValueError(f"mmt.clustering must be one of {CLUSTERINGS}, got {cfg.mmt.clustering!r}")
    chosen = cfg.model.pretrained
    if chosen is not None and chosen != STAGE0 and not project_path(chosen).is_file():
        raise ValueError(f"model.pretrained must be {STAGE0!r} (the formula-driven start) or an existing weights "
                         f"file, got {chosen!r}: no such file ({project_path(chosen)})")


def validate(cfg: RunConfig) -> None:
    """Refuse, before any data loads, settings that would fail later or silently train something
    other than what was asked: each refusal names the field, the value and what is allowed."""
    _check_values(cfg)
    _check_names(cfg)
    m, d, p = cfg.mmt, cfg.data, cfg.pretrain
    if cfg.stage == "mmt" and cfg.variant != "direct" and m.clustering == "kmeans" and m.num_clusters is None:
        raise ValueError(
            f"k-means (variant {cfg.variant!r}) needs its K for the custom target {d.target!r}, which no rule "
            f"gives: set mmt.num_clusters to about the number of identities in its training set "
            f"(overrides={{'mmt': {{'num_clusters': K}}}}; in the batch: "
            f"--param 'overrides={{\"mmt\": {{\"num_clusters\": K}}}}'), or use DBSCAN, which needs no K "
            f"(--variant mmt-dbscan; in the batch: --only '*/mmt-dbscan/*')"
        )
    uses_soft = m.soft_ce_weight > 0 or m.soft_tri_weight > 0
    if uses_soft and m.soft_teacher == "none":
        raise ValueError("soft losses have non-zero weight but mmt.soft_teacher is 'none'")
    if m.soft_teacher in ("peer-mean", "own-mean") and uses_soft and not m.mean_teacher:
        raise ValueError(f"mmt.soft_teacher={m.soft_teacher!r} needs mmt.mean_teacher=True")
    if m.ema_alpha is None and m.ema_window_share * m.epochs * m.iters < 1:
        raise ValueError(
            f"mmt.ema_window_share ({m.ema_window_share:g}) of {m.epochs} x {m.iters} Stage II iterations is a "
            "mean-teacher window shorter than one iteration: raise the share or set mmt.ema_alpha")
    if d.batch_size % d.num_instances:
        raise ValueError(
            f"data.batch_size ({d.batch_size}) must be a multiple of data.num_instances ({d.num_instances})"
        )
    if d.bn_group_size is not None and d.batch_size % d.bn_group_size:
        raise ValueError(
            f"data.bn_group_size ({d.bn_group_size}) must be a positive divisor of data.batch_size ({d.batch_size})"
        )
    if list(p.milestones) != sorted(set(p.milestones)):
        raise ValueError(f"pretrain.milestones must be increasing epochs, got {list(p.milestones)}")
    if m.k2 > m.k1 + 1:
        raise ValueError(f"mmt.k2 must be in [1, mmt.k1 + 1] = [1, {m.k1 + 1}], got {m.k2}")
    if not any(w > 0 for w in m.term_weights().values()):
        raise ValueError("every Stage II loss term has weight 0: nothing would be trained")

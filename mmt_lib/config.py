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
from dataclasses import dataclass, field, replace
from typing import Any

from mmt_lib import __version__

TASKS: dict[str, tuple[str, str]] = {
    "market2duke": ("market", "duke"),
    "duke2market": ("duke", "market"),
    "market2msmt": ("market", "msmt"),
    "duke2msmt": ("duke", "msmt"),
}
"""The paper's four transfer tasks as (source domain, target domain)."""

DOMAIN_DATASETS: dict[str, dict[str, str]] = {
    "synthetic": {"market": "synth-market", "duke": "synth-duke", "msmt": "synth-msmt"},
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


@dataclass(frozen=True)
class ModelConfig:
    """``backbone_seed``: without ``pretrained`` weights, every network's backbone starts from the
    random weights this seed draws, so that the two Stage I networks still share their starting
    point as MMT_SPEC's share ImageNet's (the run's own seed draws the classifier, sampling and
    augmentation). 1 keeps the seed-1 network exactly what it was before the weights were shared."""

    arch: str = "resnet50"
    pretrained: str | None = None
    dropout: float = 0.0
    backbone_seed: int = 1


@dataclass(frozen=True)
class PretrainConfig:
    """Stage I: supervised training on the source (MMT_SPEC, "Stage I")."""

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
    """Stage II. Loss weights follow MMT_SPEC's objective; the switches make every Table 2 row.

    ``mean_teacher=False`` removes the temporal average entirely: pseudo labels and evaluation
    then use the current networks, as the baseline and "w/o E[theta]" rows require.
    ``soft_teacher`` says whose predictions supervise a student: the peer's mean net (MMT),
    the student's own mean net, or the peer's current network.
    ``ema_alpha`` caps the mean teacher's ramp alpha_t = min(1 - 1/(t + 1), ema_alpha), reached at
    t = 1/(1 - ema_alpha) - 1 (999 for 0.999): a shorter run's mean net is the plain average of
    every weight since Stage II began, which lags more the longer the run (README, "Why MMT trails").
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
    ema_alpha: float = 0.999
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

    def term_weights(self) -> dict[str, float]:
        """The weight of each of the four loss terms (MMT_SPEC's objective)."""
        return {
            "hard_ce": (1.0 - self.soft_ce_weight) if self.hard_ce else 0.0,
            "hard_triplet": (1.0 - self.soft_tri_weight) if self.hard_triplet else 0.0,
            "soft_ce": self.soft_ce_weight,
            "soft_triplet": self.soft_tri_weight,
        }


@dataclass(frozen=True)
class RuntimeConfig:
    """How to run, not what to compute. ``None`` means: on for CUDA, off on the CPU (see ``engine``)."""

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
        "mmt": {"epochs": 2, "iters": 3, "k1": 6, "k2": 3, "rho": 0.1, "min_samples": 2, "save_embeddings": True},
        "synthetic_num_clusters": 8,
        "data_kind": "synthetic",
    },
    "synthetic": {
        "data": {"synthetic_size": "default", "height": 64, "width": 32, "batch_size": 64},
        "model": {"arch": "cpu_small"},
        "pretrain": {"epochs": 30, "iters": 40, "lr": 3e-3, "warmup_epochs": 2, "milestones": (21,), "eval_every": 15},
        "mmt": {"epochs": 6, "iters": 30, "lr": 3e-3, "save_embeddings": True},
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
profile's tiny domains, for fast tests). The synthetic profile trains a small network from
scratch (no ImageNet weights), so its learning rate is larger than the paper's; Stage II keeps the
paper's rule of using Stage I's base rate.
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


def validate(cfg: RunConfig) -> None:
    """Refuse settings that would silently train something other than what was asked."""
    m, d = cfg.mmt, cfg.data
    if m.soft_teacher not in SOFT_TEACHERS:
        raise ValueError(f"mmt.soft_teacher must be one of {SOFT_TEACHERS}, got {m.soft_teacher!r}")
    if m.clustering not in CLUSTERINGS:
        raise ValueError(f"mmt.clustering must be one of {CLUSTERINGS}, got {m.clustering!r}")
    if m.num_clusters is not None and m.num_clusters < 1:
        raise ValueError(f"mmt.num_clusters must be a positive integer, got {m.num_clusters}")
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
    if d.batch_size % d.num_instances:
        raise ValueError(
            f"data.batch_size ({d.batch_size}) must be a multiple of data.num_instances ({d.num_instances})"
        )
    if d.bn_group_size is not None and (d.bn_group_size < 1 or d.batch_size % d.bn_group_size):
        raise ValueError(
            f"data.bn_group_size ({d.bn_group_size}) must be a positive divisor of data.batch_size ({d.batch_size})"
        )
    for name in ("soft_ce_weight", "soft_tri_weight"):
        if not 0.0 <= getattr(m, name) <= 1.0:
            raise ValueError(f"mmt.{name} must lie in [0, 1], got {getattr(m, name)}")
    if not any(w > 0 for w in m.term_weights().values()):
        raise ValueError("every Stage II loss term has weight 0: nothing would be trained")

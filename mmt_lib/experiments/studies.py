"""Named studies: small grids that each vary one or two parts of the protocol around MMT.

A study is a task, a few variants and *factors*: each factor has named levels, and each level is
a set of overrides. Every combination of levels is run for every variant it affects and every seed;
the first level of each factor is the profile as it stands. The batch driver runs a study with
``python -m mmt_lib.batch run --study NAME`` (``experiments.plan.study_plan``) and ``results.study_table``
reads it back.

``what-mmt-needs`` is the teaching point of the project: MMT's soft labels come from a peer that
was pre-trained from the *same* start (the paper's ImageNet weights; here the synthetic-people
Stage 0 start) and from a temporal average over a window that is a small share of Stage II (the
paper's 1,000 of 16,000 iterations), and they refine labels whose noise persists, as real re-ID's
does. Taking any of these away is how a small-scale reproduction most easily loses the paper's
result; the study shows what each costs.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from mmt_lib.config import VARIANTS

LEVEL_SEPARATOR = "."
"""Joins a variant and its levels into a run folder name: ``mmt-kmeans.random-start.whole-run-window``."""


TRANSIENT_NOISE = {"data": {"source": "synth-transient-duke", "target": "synth-transient-market"}}
"""The study's task on the earlier domains, whose k-means mistakes hard-label self-training corrects by itself."""

FRACTAL_START = {"model": {"stage0_family": "fractal"}}
"""The formula-driven FractalDB start instead of the synthetic-people one, both stages at the profile's rate."""

FROM_SCRATCH = {"model": {"pretrained": None}, "pretrain": {"lr": 3e-3}, "mmt": {"lr": 3e-3}}
"""Both Stage I networks from one random draw (``model.backbone_seed``), at the learning rate that was
chosen for a network without any start (both stages; the paper's 3.5e-4 is for fine-tuning one)."""


@dataclass(frozen=True)
class Factor:
    """One part of the protocol and its named settings; ``stage_one`` says whether Stage I sees it."""

    name: str
    levels: dict[str, dict[str, dict[str, Any]]]
    stage_one: bool
    only_mean_teacher: bool = False
    """The level makes no difference to a variant without a mean teacher (the baseline), which then
    runs at the first level only."""


@dataclass(frozen=True)
class Study:
    task: str
    variants: tuple[str, ...]
    factors: tuple[Factor, ...]
    seeds: tuple[int, ...] = (1, 2, 3)
    description: str = ""


STUDIES: dict[str, Study] = {
    "what-mmt-needs": Study(
        task="duke2market",
        variants=("baseline", "mmt-kmeans"),
        factors=(
            Factor("domains", {
                "persistent-noise": {},
                "transient-noise": TRANSIENT_NOISE,
            }, stage_one=True),
            Factor("start", {
                "shared-start": {},
                "fractal-start": FRACTAL_START,
                "random-start": FROM_SCRATCH,
            }, stage_one=True),
            Factor("window", {
                "paper-window": {},
                "whole-run-window": {"mmt": {"ema_window_share": 1.0}},
            }, stage_one=False, only_mean_teacher=True),
        ),
        description="the default domains, whose label noise persists, or the earlier ones, whose noise "
                    "self-training corrects alone (synth-transient-*), x both Stage I networks from the shared "
                    "synthetic-people Stage 0 start, from FractalDB's (model.stage0_family=fractal), or from one "
                    "random draw trained at the from-scratch learning rate 3e-3 (model.pretrained=None), x the "
                    "mean teacher's window at the paper's share of Stage II (1/16) or as long as the whole run (mmt.ema_window_share=1)",
    ),
}


def merge_overrides(*parts: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """One ``{"section": {"field": value}}`` from several; a later part wins a field both set."""
    merged: dict[str, dict[str, Any]] = {}
    for part in parts:
        for section, fields in part.items():
            merged[section] = {**merged.get(section, {}), **fields}
    return merged


def get_study(name: str) -> Study:
    if name not in STUDIES:
        raise ValueError(f"unknown study {name!r}; known: {sorted(STUDIES)}")
    return STUDIES[name]


def stage_one_settings(study: Study) -> list[tuple[str, dict[str, dict[str, Any]]]]:
    """(label, overrides) of each Stage I setting: the combinations of the factors Stage I sees."""
    return _combinations([f for f in study.factors if f.stage_one])


def stage_two_settings(study: Study, variant: str) -> list[tuple[str, str, dict[str, dict[str, Any]]]]:
    """(label, Stage I label, overrides) of each Stage II run of ``variant``; levels a variant without
    a mean teacher cannot tell apart run once, at the factor's first level, and its label omits them."""
    named = factors_named(study, variant)
    first_levels = [next(iter(f.levels.values())) for f in study.factors if f not in named]
    settings = []
    for label, overrides in _combinations(named):
        levels = label.split(LEVEL_SEPARATOR)
        stage_one = LEVEL_SEPARATOR.join(level for level, f in zip(levels, named) if f.stage_one)
        settings.append((label, stage_one, merge_overrides(*first_levels, overrides)))
    return settings


def factors_named(study: Study, variant: str) -> list[Factor]:
    """The factors whose levels a run of ``variant`` names in its folder: Stage I's for Stage I runs
    and direct transfer, all but the mean teacher's for a variant without one, otherwise all."""
    if variant in ("pretrain", "direct"):
        return [f for f in study.factors if f.stage_one]
    if not VARIANTS[variant].get("mean_teacher", True):
        return [f for f in study.factors if not f.only_mean_teacher]
    return list(study.factors)


def levels_of(run_label: str, study: Study) -> dict[str, str]:
    """``{"variant": ..., factor: level}`` of a study's run folder name (``LEVEL_SEPARATOR``-joined).

    A level the run cannot tell apart, and so does not name (``factors_named``), is ``n/a``.
    """
    variant, *levels = run_label.split(LEVEL_SEPARATOR)
    named = factors_named(study, variant)
    if len(levels) != len(named):
        raise ValueError(f"run {run_label!r} names {len(levels)} levels; it should name those of "
                         f"{[f.name for f in named]}")
    given = dict(zip((f.name for f in named), levels))
    return {"variant": variant, **{f.name: given.get(f.name, "n/a") for f in study.factors}}


def _combinations(factors: list[Factor]) -> list[tuple[str, dict[str, dict[str, Any]]]]:
    combos = itertools.product(*(f.levels.items() for f in factors))
    return [(LEVEL_SEPARATOR.join(name for name, _ in combo), merge_overrides(*(o for _, o in combo)))
            for combo in combos]

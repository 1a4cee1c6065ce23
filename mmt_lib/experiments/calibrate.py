"""Calibrating the synthetic domains: is each target learnable, and is the gap from its source real?

A benchmark for pseudo-label refinery is only fair when three things hold for every transfer task,
each measured by the same Stage I pipeline and network the experiments use (never by Stage II):

- ``supervised_mAP``: Stage I trained on the *target's own* labelled training set and evaluated on
  its test split. The upper bound: no unsupervised method should reach it, and a target below it
  is too hard for the network, so no adaptation result on it means much;
- ``direct_mAP``: the task's own Stage I network (trained on the source, with the target forwarded
  through BatchNorm) evaluated on the target: direct transfer, where adaptation starts;
- ``kmeans_nmi``: k-means with the task's K on that network's target training features, scored
  against the true identities (which training never sees): how noisy the first pseudo labels are.
  Stage II averages two networks' features, which is a little cleaner than this one network, and
  seeds its k-means differently, so its first-epoch NMI differs a little from this one;
- ``pair_cosine``: the mean cosine of the two Stage I networks' features (seeds 1 and 2) on the target's
  training images: whether both fine-tuned one shared start, as the paper's two ImageNet networks do;
- ``baseline_gap_share``: the hard-label baseline (Stage II without soft labels or mean teachers, from
  that pair) after its last epoch, as a share of the gap from direct transfer to the upper bound. In the
  paper's setting it stops about half-way, and the refinery wins the rest; a domain whose baseline walks
  to the bound has label noise that self-training corrects alone, where refinery has nothing to win;
- ``baseline_late_gain``: the mAP the baseline gained over the last fifth of its epochs: Stage II must
  be long enough that the baseline has plateaued, or the share measures the schedule, not the noise.

The baseline is the only Stage II run of the calibration, never an MMT row: the domains and the
schedule are chosen by numbers that do not look at MMT.

``CRITERIA`` holds the bands (``low <= x < high``); ``python -m mmt_lib.calibrate`` writes
``calibration.csv``, ``calibration.md`` and ``calibration.json`` under ``runs/<profile>/calibration``
with a pass/fail per number, and exits with status ``EXIT_OUT_OF_BAND`` when any number is outside.
The synthetic domains' knobs (``synthetic.DOMAINS``) are chosen by these numbers alone, before any
Stage II run is looked at.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import multiprocessing
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from mmt_lib import config
from mmt_lib.data import synthetic
from mmt_lib.evaluation.label_quality import pseudo_label_quality
from mmt_lib.figures.analysis import feature_agreement
from mmt_lib.figures.plots import plot_baseline_convergence
from mmt_lib.method.engine import load_named_dataset, prepare_model, resolve_device
from mmt_lib.method.mmt import (assign_pseudo_labels, embed_target, pseudo_label_seed, run_checked_variant,
                                stage1_checkpoints)
from mmt_lib.method.pretrain import pretrain
from mmt_lib.method.provenance import Stage1Checkpoint
from mmt_lib.method.trainer import CHECKPOINT, load_pretrained_network
from mmt_lib.runtime import distributed, lifeline
from mmt_lib.runtime.checkpoints import (remove_dead_temps, save_metrics, temp_token, write_json_atomic,
                                         write_text_atomic)
from mmt_lib.runtime.commandline import refuse
from mmt_lib.runtime.paths import from_command_line, project_path
from mmt_lib.runtime.progress import tqdm

CRITERIA: dict[str, tuple[float | None, float | None]] = {
    "supervised_mAP": (0.80, None),
    "direct_mAP": (0.15, 0.45),
    "kmeans_nmi": (None, 0.85),
    "pair_cosine": (0.70, None),
    "baseline_gap_share": (0.35, 0.65),
    "baseline_late_gain": (None, 0.01),
}
"""(low, high) of each calibration number's band, ``low <= x < high``; ``None``: no bound on that side."""

EXIT_OUT_OF_BAND = 3
"""Exit status of ``python -m mmt_lib.calibrate`` when it ran but some number is outside its band."""


def default_out_dir(profile: str) -> Path:
    return project_path(f"runs/{profile}/calibration")


PEER_SEED_OFFSET = 1
"""The second Stage I network of a task is seed ``seed + 1``: MMT seed k pairs Stage I seeds 2k-1 and 2k."""


@dataclass(frozen=True)
class Cell:
    """One run of the calibration: Stage I ``direct/<task>`` (the pair's first network), ``peer/<task>``
    (its second), ``supervised/<target>``, or the Stage II ``baseline/<task>`` that ``needs`` the pair."""

    name: str
    cfg: config.RunConfig
    needs: tuple[str, ...] = ()

    @property
    def kind(self) -> str:
        return self.name.split("/")[0]


RUN_ORDER = {"baseline": 0, "direct": 1, "peer": 1, "supervised": 2}
"""Which ready cell a free worker takes: a baseline as soon as its pair is done (the longest runs, so the
critical path), else the next pair, the upper bounds last."""


def calibration_cells(
    profile: str = "synthetic",
    tasks: list[str] | None = None,
    seed: int = 1,
    data_root: str | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> list[Cell]:
    """Per task its Stage I pair (``direct``, ``peer``) and its ``baseline``, then one supervised run per
    distinct target. The baseline is MMT seed ``(seed + 1) // 2``'s hard-label run from the pair.

    ``overrides`` (``config.resolve``'s) change every cell alike: a probe such as a longer Stage I
    is then measured against all the bands at once, never on the supervised runs alone.
    """
    tasks = list(config.TASKS) if tasks is None else list(tasks)
    unknown = [t for t in tasks if t not in config.TASKS]
    if unknown or not tasks or len(set(tasks)) != len(tasks):
        raise ValueError(f"calibration tasks must be distinct and among {sorted(config.TASKS)}, got {tasks}")
    overrides = overrides or {}
    quiet = {**overrides, "runtime": {**overrides.get("runtime", {}), "progress": False}}
    cells = []
    for task in tasks:
        pair = [config.resolve("pretrain", profile, task=task, seed=s, data_root=data_root, overrides=quiet)
                for s in (seed, seed + PEER_SEED_OFFSET)]
        baseline = config.resolve("mmt", profile, task=task, variant="baseline", seed=(seed + 1) // 2,
                                  data_root=data_root, overrides=quiet)
        cells += [Cell(f"direct/{task}", pair[0]), Cell(f"peer/{task}", pair[1]),
                  Cell(f"baseline/{task}", baseline, needs=(f"direct/{task}", f"peer/{task}"))]
    targets = list(dict.fromkeys(cell.cfg.data.target for cell in cells))
    return cells + [Cell(f"supervised/{name}", config.resolve("pretrain", profile, source=name, target=name,
                                                             seed=seed, data_root=data_root, overrides=quiet))
                    for name in targets]


def first_label_noise(cfg: config.RunConfig, run_dir: str | Path) -> dict[str, float]:
    """Quality of k-means pseudo labels (the task's K) from the Stage I network in ``run_dir``."""
    device = distributed.init(resolve_device(cfg.runtime.device))
    net = prepare_model(load_pretrained_network(Path(run_dir) / CHECKPOINT, cfg.model.arch), cfg.runtime, device)
    target = load_named_dataset(cfg.data, cfg.data.target)
    features = embed_target([net], target, cfg, device)
    labels, _ = assign_pseudo_labels(features, replace(cfg.mmt, clustering="kmeans"),
                                     pseudo_label_seed(cfg.seed, 0), None)
    return pseudo_label_quality(labels, np.array([pid for _, pid, _ in target.train]))


def pair_cosine(cfg: config.RunConfig, stage1: list[Stage1Checkpoint]) -> float:
    """Mean feature cosine of the two Stage I networks on the target's training images (``feature_agreement``)."""
    device = distributed.init(resolve_device(cfg.runtime.device))
    nets = [prepare_model(load_pretrained_network(c, cfg.model.arch), cfg.runtime, device) for c in stage1]
    return feature_agreement(nets[0], nets[1], load_named_dataset(cfg.data, cfg.data.target), cfg, device)


def last_fifth_start(epochs: int) -> int:
    """The epoch count after which the last fifth of ``epochs`` begins (36 of 45)."""
    return epochs - math.ceil(epochs / 5)


def late_gain(history: list[dict[str, Any]], epochs: int) -> float:
    """mAP (network 1) after the last epoch minus after the last evaluation at or before the start of the
    last fifth of the epochs (``last_fifth_start``); NaN when no evaluation lies there (evaluate more often)."""
    start = last_fifth_start(epochs)
    curve = {r["epoch"] + 1: r["net1"]["mAP"] for r in history if "net1" in r}
    earlier = [done for done in curve if done <= start]
    if epochs not in curve or not earlier:
        return float("nan")
    return curve[epochs] - curve[max(earlier)]


def _train_baseline(cell: Cell, work: Path, out_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The baseline from the pair's folders: its metrics, and its summary with the pair's cosine and curve."""
    stage1 = stage1_checkpoints(cell.cfg, [out_dir / name for name in cell.needs])
    cosine = pair_cosine(cell.cfg, stage1)
    metrics = run_checked_variant(cell.cfg, work, stage1)
    curve = [{"epoch": r["epoch"] + 1, "mAP": r["net1"]["mAP"], "nmi": r["pseudo_labels"]["nmi"]}
             for r in metrics["history"] if "net1" in r]
    return metrics, {"pair_cosine": cosine, "curve": curve,
                     "late_gain": late_gain(metrics["history"], cell.cfg.mmt.epochs)}


def run_cell(cell: Cell, out_dir: str | Path, threads: int | None = None, key: str = "") -> dict[str, Any]:
    """Train one cell from scratch into ``out_dir/<cell.name>`` (a temp folder renamed when done); a
    baseline cell starts from its pair's folders under ``out_dir``. ``key`` (``cell_key``) is recorded
    in its summary, so that a later calibration keeps the cell while nothing it depends on changed."""
    if threads is not None:
        torch.set_num_threads(threads)
    final = project_path(out_dir) / cell.name
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_temps(final.parent, final.name)
    work = final.with_name(f".{final.name}.tmp-{temp_token()}")
    tic = time.perf_counter()
    try:
        extra: dict[str, Any] = {}
        if cell.kind == "baseline":
            metrics, extra = _train_baseline(cell, work, project_path(out_dir))
        else:
            metrics = pretrain(cell.cfg, work, resume=False)
        summary = {"cell": cell.name, "task": cell.cfg.task, "source": cell.cfg.data.source,
                   "target": cell.cfg.data.target, "mAP": metrics["mAP"], "top1": metrics["top1"], "key": key, **extra}
        if cell.kind == "direct":
            summary["kmeans"] = first_label_noise(cell.cfg, work)
        summary["seconds"] = time.perf_counter() - tic
        metrics["calibration"] = summary
        save_metrics(work, metrics)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(work, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return summary


def cell_key(cell: Cell, needs: dict[str, str]) -> str:
    """What a finished cell must match to be kept: its run's config hash, the specification of each
    synthetic domain it reads (their knobs live in ``synthetic.DOMAINS``, not in the config), and the
    keys of the cells it ``needs`` (``needs`` maps each of those names to its key)."""
    data = cell.cfg.data
    domains = {name: synthetic.spec_hash(name, data.synthetic_size, data.synthetic_seed)
               for name in (data.source, data.target) if name in synthetic.DOMAINS}
    payload = {"config": cell.cfg.config_hash(), "domains": domains, "needs": [needs[n] for n in cell.needs]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def cell_keys(cells: list[Cell]) -> dict[str, str]:
    """``cell_key`` of every cell, by name; a cell's ``needs`` come before it in ``cells``."""
    keys: dict[str, str] = {}
    for cell in cells:
        keys[cell.name] = cell_key(cell, keys)
    return keys


def finished_cells(cells: list[Cell], out_dir: Path) -> dict[str, dict[str, Any]]:
    """The summaries of the cells already finished under ``out_dir`` with their current ``cell_key``, and
    whose ``needs`` are kept too: a stopped calibration goes on from them, and a changed knob, override or
    pair trains its cells again."""
    keys, finished = cell_keys(cells), {}
    for cell in cells:
        summary = _recorded_summary(out_dir / cell.name / "metrics.json")
        if summary.get("key") == keys[cell.name] and all(name in finished for name in cell.needs):
            finished[cell.name] = summary
    return finished


def _recorded_summary(path: Path) -> dict[str, Any]:
    """The calibration summary a cell's ``metrics.json`` holds; empty when there is none or it cannot be
    read, so that the cell is trained again and its folder replaced."""
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return recorded.get("calibration", {}) if isinstance(recorded, dict) else {}


def cell_pool(jobs: int) -> ProcessPoolExecutor:
    """``jobs`` worker processes that end with this driver, however it ends (SIGTERM, SIGKILL): a
    stopped calibration must not leave cells training on the cores that its rerun needs."""
    return ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                               initializer=lifeline.die_with_parent, initargs=(signal.SIGTERM, os.getpid()))


def run_cells(cells: list[Cell], out_dir: Path, jobs: int, threads: int,
              on_done: Callable[[dict[str, Any]], None] = lambda summary: None,
              fresh: bool = False) -> dict[str, dict[str, Any]]:
    """Every cell not finished already (``finished_cells``; every cell when ``fresh``), ``jobs`` at a time,
    each once its ``needs`` are done, a free worker taking the ready cell first in ``RUN_ORDER``; the
    summaries by cell name. A failed cell stops the queue, not just itself."""
    keys = cell_keys(cells)
    done = {} if fresh else finished_cells(cells, out_dir)
    for summary in done.values():
        on_done(summary)
    waiting, running = [c for c in cells if c.name not in done], {}
    with cell_pool(jobs) as pool:
        try:
            while waiting or running:
                ready = sorted((c for c in waiting if all(n in done for n in c.needs)), key=lambda c: RUN_ORDER[c.kind])
                for cell in ready[:jobs - len(running)]:
                    waiting.remove(cell)
                    running[pool.submit(run_cell, cell, out_dir, threads, keys[cell.name])] = cell
                if not running:
                    raise ValueError(f"calibration cells need runs that are not cells: {[c.name for c in waiting]}")
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    running.pop(future)
                    summary = future.result()
                    done[summary["cell"]] = summary
                    on_done(summary)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return done


def _passes(value: float, bounds: tuple[float | None, float | None]) -> bool:
    if not math.isfinite(value):
        return False
    low, high = bounds
    return (low is None or value >= low) and (high is None or value < high)


def gap_share(reached: float, start: float, bound: float) -> float:
    """How much of the gap from ``start`` (direct transfer) to ``bound`` (the upper bound) ``reached`` closed."""
    return (reached - start) / (bound - start) if bound > start else float("nan")


def calibration_table(summaries: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per task: the numbers of ``CRITERIA``, whether each passes, and whether all do."""
    supervised = {s["target"]: s for s in summaries if s["cell"].startswith("supervised/")}
    baselines = {s["task"]: s for s in summaries if s["cell"].startswith("baseline/")}
    rows = []
    for s in (s for s in summaries if s["cell"].startswith("direct/")):
        if s["target"] not in supervised:
            raise ValueError(f"no supervised calibration run for {s['target']} (needed by {s['task']})")
        if s["task"] not in baselines:
            raise ValueError(f"no baseline calibration run for {s['task']}")
        base, bound = baselines[s["task"]], supervised[s["target"]]["mAP"]
        row = {"task": s["task"], "source": s["source"], "target": s["target"],
               "supervised_mAP": bound, "direct_mAP": s["mAP"],
               "kmeans_nmi": s["kmeans"]["nmi"], "kmeans_clusters": s["kmeans"]["num_clusters"],
               "pair_cosine": base["pair_cosine"], "baseline_mAP": base["mAP"],
               "baseline_gap_share": gap_share(base["mAP"], s["mAP"], bound),
               "baseline_late_gain": base["late_gain"]}
        for name, bounds in CRITERIA.items():
            row[f"{name}_ok"] = _passes(row[name], bounds)
        row["calibrated"] = all(row[f"{name}_ok"] for name in CRITERIA)
        rows.append(row)
    return pd.DataFrame(rows)


def read_calibration(out_dir: str | Path) -> tuple[pd.DataFrame, dict[str, list[dict[str, float]]]]:
    """The table and each task's baseline curve of a finished calibration (its ``calibration.json``),
    the bands checked again against today's ``CRITERIA``."""
    path = project_path(out_dir) / "calibration.json"
    if not path.is_file():
        raise FileNotFoundError(f"no calibration at {path}: run make calibrate (python -m mmt_lib.calibrate) first")
    runs = json.loads(path.read_text(encoding="utf-8"))["runs"]
    return calibration_table(runs), {s["task"]: s["curve"] for s in runs if s["cell"].startswith("baseline/")}


def calibration_summary(out_dir: str | Path) -> tuple[str, Figure | None]:
    """What the results notebook shows of a calibration: the table in Markdown and the baseline's
    convergence figure; where no calibration has run, a line saying how to run one, and no figure."""
    try:
        table, curves = read_calibration(out_dir)
    except FileNotFoundError as missing:
        return f"*{missing}*", None
    last_fifth = {task: last_fifth_start(curve[-1]["epoch"]) for task, curve in curves.items()}
    return to_markdown(table), plot_baseline_convergence(table, curves, last_fifth)


def _bounds_text(bounds: tuple[float | None, float | None]) -> str:
    low, high = bounds
    if low is not None and high is not None:
        return f"{low:g} ≤ x < {high:g}"
    return f"≥ {low:g}" if low is not None else f"< {high:g}"


def to_markdown(table: pd.DataFrame) -> str:
    """The table as Markdown, mAP in percent, each number marked ✓ or ✗ against its band."""
    shown = table[["task"]].copy()
    for name, bounds in CRITERIA.items():
        scale, fmt = (100.0, "{:.1f}") if name.endswith(("mAP", "gain")) else (1.0, "{:.3f}")
        header = f"{name} ({_bounds_text(tuple(None if b is None else b * scale for b in bounds))})"
        shown[header] = [f"{fmt.format(v * scale)} {'✓' if ok else '✗'}"
                         for v, ok in zip(table[name], table[f"{name}_ok"])]
        if name == "direct_mAP":
            shown["baseline_mAP"] = [f"{v * 100:.1f}" for v in table["baseline_mAP"]]
    shown["calibrated"] = ["yes" if ok else "no" for ok in table["calibrated"]]
    return shown.to_markdown(index=False)


def calibrate(
    profile: str = "synthetic",
    tasks: list[str] | None = None,
    seed: int = 1,
    out_dir: str | Path | None = None,
    jobs: int = 1,
    data_root: str | None = None,
    progress: bool = True,
    overrides: dict[str, dict[str, Any]] | None = None,
    fresh: bool = False,
) -> pd.DataFrame:
    """Run every calibration cell (``jobs`` at a time) and write ``calibration.csv`` / ``.md`` / ``.json``.

    ``out_dir`` defaults to ``runs/<profile>/calibration``; ``overrides`` apply to every cell and are
    recorded in ``calibration.json`` and ``calibration.md``. Cells finished there under the same config and
    domains are kept (``finished_cells``), so a stopped calibration goes on where it stopped; ``fresh``
    trains every cell again (after a change to the training code, which no key sees).
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    cells = calibration_cells(profile, tasks, seed, data_root, overrides)
    out_dir = default_out_dir(profile) if out_dir is None else project_path(out_dir)
    for cfg in {c.cfg.data for c in cells}:  # generate the domains once, before workers race for them
        load_named_dataset(cfg, cfg.source)
        load_named_dataset(cfg, cfg.target)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    with tqdm(total=len(cells), desc="calibration runs", unit="run", disable=not progress) as bar:
        by_name = run_cells(cells, out_dir, jobs, threads, on_done=lambda summary: bar.update(1), fresh=fresh)
    summaries = [by_name[cell.name] for cell in cells]
    table = calibration_table(summaries)
    write_text_atomic(out_dir / "calibration.csv", table.to_csv(index=False, float_format="%.4f"))
    changed = f"Overrides: `{json.dumps(overrides)}`\n\n" if overrides else ""
    write_text_atomic(out_dir / "calibration.md", f"# Calibration: profile {profile}, seed {seed}\n\n"
                                                  f"{changed}{to_markdown(table)}\n")
    write_json_atomic(out_dir / "calibration.json",
                      {"profile": profile, "seed": seed, "overrides": overrides or {}, "runs": summaries})
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmt_lib.calibrate", description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="synthetic", choices=sorted(config.PROFILES))
    parser.add_argument("--tasks", nargs="+", default=None, choices=sorted(config.TASKS))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--data-root", default=None, help="a relative path starts at the current directory (default: <project>/data)")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--out", default=None,
                        help="a relative path starts at the current directory (default: <project>/runs/<profile>/calibration)")
    parser.add_argument("--overrides", default="{}",
                        help='JSON applied to every run, e.g. \'{"pretrain": {"epochs": 60, "milestones": [42]}}\'')
    parser.add_argument("--fresh", action="store_true",
                        help="train every cell again, also those finished under --out with the same config and domains")
    args = parser.parse_args(argv)
    try:
        overrides = config.parse_overrides(args.overrides)
    except ValueError as err:
        raise SystemExit(refuse(parser.prog, err)) from None
    out = default_out_dir(args.profile) if args.out is None else Path(from_command_line(args.out))
    tic = time.perf_counter()
    table = calibrate(args.profile, args.tasks, args.seed, out, args.jobs, from_command_line(args.data_root),
                      overrides=overrides, fresh=args.fresh)
    print(to_markdown(table))
    print(f"{len(table)} tasks, {int(table['calibrated'].sum())} calibrated, {time.perf_counter() - tic:.0f} s "
          f"-> {out / 'calibration.csv'}")
    return 0 if table["calibrated"].all() else EXIT_OUT_OF_BAND


if __name__ == "__main__":
    sys.exit(main())

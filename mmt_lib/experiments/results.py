"""Results tables: read every run's ``metrics.json``, aggregate over seeds, set beside the paper.

Only runs whose metrics carry a headline ``mAP`` count; Stage I runs and analysis notebooks are
left out of the tables (their own metrics stay in their folders). The batch driver names the runs
to read (``run_ids``: those whose metrics carry their current hash); without names, every run
folder under the profile counts, and an unreadable ``metrics.json`` is skipped with a warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from mmt_lib.config import ABLATION_TASKS, ABLATION_VARIANTS, MAIN_VARIANTS
from mmt_lib.experiments.claims import claims_markdown, claims_table
from mmt_lib.experiments.studies import get_study, levels_of
from mmt_lib.figures.analysis import flat_history
from mmt_lib.figures.plot_style import metric_label, task_label, variant_label
from mmt_lib.figures.plots import empty_figure, plot_results, save_figure
from mmt_lib.runtime.checkpoints import METRICS_FILE, read_metrics, write_text_atomic

METRIC_COLUMNS = ["mAP", "top1", "top5", "top10"]

PUBLISHED: dict[tuple[str, str], tuple[float, float, float, float]] = {
    ("market2duke", "direct"): (29.6, 46.0, 61.5, 67.2),
    ("duke2market", "direct"): (31.8, 61.9, 76.4, 82.2),
    ("market2duke", "mmt-kmeans"): (63.1, 76.8, 88.0, 92.2),
    ("duke2market", "mmt-kmeans"): (71.2, 87.7, 94.9, 96.9),
    ("market2msmt", "direct"): (7.1, 19.4, 28.9, 34.2),
    ("duke2msmt", "direct"): (9.4, 27.0, 38.1, 43.7),
    ("market2msmt", "mmt-kmeans"): (22.9, 49.2, 63.1, 68.8),
    ("duke2msmt", "mmt-kmeans"): (23.3, 50.1, 63.9, 69.8),
}
"""The paper's ResNet-50 numbers (percent, its Tables 1 and 2): K = 500 for Market/Duke targets, 1500 for MSMT17."""

FIGURE_VARIANTS = ["direct", "baseline", "mmt-kmeans", "mmt-dbscan", *ABLATION_VARIANTS]
"""Order of the bars in the results figure: the references, the method, then Table 2's rows."""

CURVE_PANELS: dict[str, list[str]] = {
    "baseline and MMT": ["baseline", "mmt-kmeans", "mmt-dbscan"],
    "Table 2: without a hard loss": ["baseline", "mmt-kmeans", "mmt-only-soft", "mmt-no-hard-ce",
                                     "mmt-no-hard-triplet"],
    "Table 2: without a soft loss": ["baseline", "mmt-kmeans", "mmt-no-soft-ce", "mmt-no-soft-triplet"],
    "Table 2: who gives the soft labels": ["baseline", "mmt-kmeans", "mmt-own-teacher", "mmt-current-peer"],
}
"""Per-epoch curves of one task, grouped so that each panel compares a few rows with the baseline and MMT."""


def run_metrics(profile_dir: str | Path, run_ids: list[str] | None = None,
                seed: int | str = "*") -> Iterator[dict[str, Any]]:
    """The metrics of the named runs (``task/variant/seed<k>``), or of every run folder of one seed
    (``*``: any) under ``runs/<profile>/``."""
    profile_dir = Path(profile_dir)
    if run_ids is not None:
        for run_id in run_ids:
            if seed == "*" or run_id.endswith(f"/seed{seed}"):
                yield read_metrics(profile_dir / run_id / METRICS_FILE)
        return
    for path in sorted(profile_dir.glob(f"*/*/seed{seed}/{METRICS_FILE}")):
        try:
            yield read_metrics(path)
        except ValueError as err:
            warnings.warn(f"skipped: {err}", stacklevel=2)


def is_table_row(metrics: dict) -> bool:
    """Whether a run's metrics belong in the results tables: a finished Stage II run or direct
    transfer. Stage I runs report their own target mAP, which is not a row of the paper's tables."""
    return "mAP" in metrics and metrics.get("stage") in ("mmt", "direct")


def load_runs(profile_dir: str | Path, run_ids: list[str] | None = None) -> pd.DataFrame:
    """One row per finished run (task, variant, seed) under ``runs/<profile>/``: the named ones, or all."""
    rows = []
    for metrics in run_metrics(profile_dir, run_ids):
        if not is_table_row(metrics):
            continue
        row = {"task": metrics["task"], "variant": metrics["variant"], "seed": metrics["seed"]}
        row.update({k: 100.0 * metrics[k] for k in METRIC_COLUMNS})
        row["oracle_mAP"] = 100.0 * metrics["oracle"]["mAP"] if "oracle" in metrics else float("nan")
        row["numerics"] = metrics.get("numerics", {}).get("mode", "unrecorded")
        rows.append(row)
    return pd.DataFrame(rows, columns=["task", "variant", "seed", *METRIC_COLUMNS, "oracle_mAP", "numerics"])


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over seeds (percent), one row per task x variant."""
    columns = [*METRIC_COLUMNS, "oracle_mAP"]
    grouped = runs.groupby(["task", "variant"], sort=True)[columns]
    table = grouped.mean().add_suffix("_mean").join(grouped.std(ddof=1).add_suffix("_std"))
    table["seeds"] = grouped.size()
    modes = runs.groupby(["task", "variant"], sort=True)["numerics"]
    table["numerics"] = modes.agg(lambda m: ", ".join(sorted(set(m))))
    ordered = [f"{c}_{s}" for c in METRIC_COLUMNS for s in ("mean", "std")]
    ordered += ["oracle_mAP_mean", "seeds", "numerics"]
    return table[ordered].reset_index()


def main_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Table 1: every task with direct transfer, the baseline and both MMT clusterings."""
    return _rows(table, MAIN_VARIANTS)


def ablation_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Table 2: the ablation tasks, rows in the paper's order."""
    order = ["direct", "baseline", *ABLATION_VARIANTS, "mmt-kmeans"]
    return _rows(table[table["task"].isin(ABLATION_TASKS)], order)


def _rows(table: pd.DataFrame, variants: list[str]) -> pd.DataFrame:
    rank = {v: i for i, v in enumerate(variants)}
    picked = table[table["variant"].isin(rank)].copy()
    picked["_order"] = picked["variant"].map(rank)
    return picked.sort_values(["task", "_order"]).drop(columns="_order").reset_index(drop=True)


def histories_by_task(
    profile_dir: str | Path, seed: int = 1, run_ids: list[str] | None = None
) -> dict[str, dict[str, list[dict]]]:
    """Per task, each trained variant's flat per-epoch history (one seed), for curves side by side."""
    out: dict[str, dict[str, list[dict]]] = {}
    for metrics in run_metrics(profile_dir, run_ids, seed):
        if metrics.get("stage") == "mmt":
            out.setdefault(metrics["task"], {})[metrics["variant"]] = flat_history(metrics["history"])
    return out


def with_published(summary: pd.DataFrame) -> pd.DataFrame:
    """Add the paper's ResNet-50 mAP / top-1 where the paper gives them (NaN elsewhere)."""
    out = summary.copy()
    published = [PUBLISHED.get((t, v)) for t, v in zip(out["task"], out["variant"])]
    out["paper_mAP"] = [p[0] if p else float("nan") for p in published]
    out["paper_top1"] = [p[1] if p else float("nan") for p in published]
    return out


def paper_values(value: str) -> dict[tuple[str, str], float]:
    """The paper's number for one metric (``mAP``, ``top1``, ...) per (task, variant) it reports."""
    if value not in METRIC_COLUMNS:
        raise ValueError(f"the paper reports {METRIC_COLUMNS}, not {value!r}")
    column = METRIC_COLUMNS.index(value)
    return {key: numbers[column] for key, numbers in PUBLISHED.items()}


def results_figure(runs: pd.DataFrame, value: str = "mAP") -> Figure:
    """Every task's variants over seeds, the references as lines and the paper's number as a marker."""
    return plot_results(runs, value=value, paper=paper_values(value), variants=FIGURE_VARIANTS)


def to_markdown(table: pd.DataFrame) -> str:
    """A compact Markdown table: ``mean ± std`` cells (sample std; a single seed shows the mean alone)."""
    shown = table[["task", "variant"]].copy()
    for col in METRIC_COLUMNS:
        shown[col] = [f"{m:.1f}" if np.isnan(s) else f"{m:.1f} ± {s:.1f}"
                      for m, s in zip(table[f"{col}_mean"], table[f"{col}_std"])]
    for extra in ("oracle_mAP_mean", "paper_mAP", "paper_top1", "seeds"):
        if extra in table:
            shown[extra] = table[extra].astype(object).where(table[extra].notna(), None)
    if "numerics" in table and (table["numerics"] != "reproducible").any():
        shown["numerics"] = table["numerics"]  # rows not all in reproducible mode differ between CPUs
    return shown.to_markdown(index=False, floatfmt=".1f", missingval="")


@dataclass(frozen=True)
class Collected:
    """What ``collect`` wrote, handed back so that a caller need not read the run folders again."""

    table: pd.DataFrame
    """One row per task and variant: mean and std over seeds, beside the paper (``results.csv``)."""
    runs: pd.DataFrame
    """One row per run (``runs.csv``)."""
    claims: pd.DataFrame
    """The paper's claims, paired by seed (``claims.csv``)."""


def collect(profile_dir: str | Path, run_ids: list[str] | None = None) -> Collected:
    """Write ``results.csv`` / ``results.md`` (over seeds), ``runs.csv`` (one row per run) and
    ``claims.csv`` / ``claims.md`` (the paper's claims, seed by seed) of the named runs (None: every
    run folder), and the results figures; return the three tables."""
    profile_dir = Path(profile_dir)
    runs = load_runs(profile_dir, run_ids)
    table = with_published(summarise(runs))
    claims = claims_table(runs)
    for name, frame in (("results.csv", table), ("runs.csv", runs), ("claims.csv", claims)):
        write_text_atomic(profile_dir / name, frame.to_csv(index=False, float_format="%.2f"))
    write_text_atomic(
        profile_dir / "claims.md",
        f"# The paper's claims: {profile_dir.name}\n\nmAP points of the first row over the second, "
        "paired by seed (both rows start from the same Stage I networks); mean ± sample std over "
        "seeds, the seeds it holds in, and each seed's difference.\n\n" + claims_markdown(claims) + "\n",
    )
    write_text_atomic(
        profile_dir / "results.md",
        f"# Results: {profile_dir.name}\n\nPercent, mean ± sample std over seeds. Label-free model selection "
        "(last epoch, network 1); `oracle_mAP_mean` picks the best epoch by target-test mAP and is "
        "not a valid unsupervised result. `paper_*`: the paper's ResNet-50 numbers on the real datasets. "
        "A `numerics` column appears when some runs were not in reproducible mode (`--fast`): their "
        "numbers differ between CPUs.\n\n"
        + to_markdown(table) + "\n",
    )
    if len(runs):
        for value in ("mAP", "top1"):
            save_figure(results_figure(runs, value), profile_dir / "figures" / f"results_{value}.png")
    return Collected(table, runs, claims)


# ---------------------------------------------------------------- named studies (mmt_lib.experiments.studies)


def study_runs(profile_dir: str | Path, name: str, run_ids: list[str] | None = None) -> pd.DataFrame:
    """One row per finished run of study ``name``: its variant, its level of each factor, seed and metrics.

    ``run_ids`` as the batch driver names them (``<task>/<label>/seed<k>``; None: every run folder
    with metrics). A level a run cannot tell apart (the mean teacher's window for the baseline,
    Stage II's levels for direct transfer) is ``n/a``.
    """
    study = get_study(name)
    factors = [f.name for f in study.factors]
    if run_ids is None:
        run_ids = sorted(p.parent.relative_to(profile_dir).as_posix()
                         for p in Path(profile_dir).glob(f"{study.task}/*/seed*/{METRICS_FILE}"))
    rows = []
    for run_id in run_ids:
        task, label, seed = run_id.split("/")
        metrics = read_metrics(Path(profile_dir) / run_id / METRICS_FILE)
        if not is_table_row(metrics):
            continue
        rows.append({**levels_of(label, study), "seed": int(seed.removeprefix("seed")),
                     **{k: 100.0 * metrics[k] for k in METRIC_COLUMNS}})
    return pd.DataFrame(rows, columns=["variant", *factors, "seed", *METRIC_COLUMNS])


def study_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean, sample std and every seed's value (percent) per variant and levels, in the study's order."""
    keys = [c for c in runs.columns if c not in ("seed", *METRIC_COLUMNS)]
    grouped = runs.sort_values("seed").groupby(keys, sort=False)
    table = grouped["mAP"].agg(["mean", "std", "count"]).add_prefix("mAP_")
    table["top1_mean"] = grouped["top1"].mean()
    table["mAP_per_seed"] = grouped["mAP"].agg(lambda v: ", ".join(f"{x:.1f}" for x in v))
    table["seeds"] = grouped["seed"].agg(lambda v: ", ".join(str(x) for x in v))
    return table.reset_index()


def study_figure(runs: pd.DataFrame, name: str, value: str = "mAP") -> Figure:
    """One panel per level of the study's first factor; a bar per variant and level of the others."""
    study = get_study(name)
    if runs.empty:
        return empty_figure(f"no finished run of study {name} yet: python -m mmt_lib.batch run --study {name}")
    first, *others = [f.name for f in study.factors]
    panels = runs.assign(
        task=runs[first].str.replace("-", " "),
        variant=[", ".join([variant_label(v), *(str(r[o]).replace("-", " ") for o in others if r[o] != "n/a")])
                 for v, (_, r) in zip(runs["variant"], runs.iterrows())],
    )
    return plot_results(panels[["task", "variant", "seed", value]], value=value,
                        references=(variant_label("direct"), variant_label("baseline")),
                        title=f"{name} on {task_label(study.task)}: {metric_label(value)}, mean over seeds, "
                              "whiskers min–max")


def collect_study(profile_dir: str | Path, name: str, run_ids: list[str]) -> pd.DataFrame:
    """Write ``study.csv``, ``study_runs.csv``, ``study.md`` and ``figures/study_mAP.png``; return the table."""
    profile_dir = Path(profile_dir)
    runs = study_runs(profile_dir, name, run_ids)
    table = study_table(runs)
    for file, frame in (("study.csv", table), ("study_runs.csv", runs)):
        write_text_atomic(profile_dir / file, frame.to_csv(index=False, float_format="%.2f"))
    write_text_atomic(profile_dir / "study.md", f"# Study: {name}\n\n{get_study(name).description}.\n\n"
                      "Target mAP and top-1 in percent, mean ± sample std over seeds, and each seed's mAP.\n\n"
                      + study_markdown(table) + "\n")
    if len(runs):
        save_figure(study_figure(runs, name), profile_dir / "figures" / "study_mAP.png")
    return table


def study_markdown(table: pd.DataFrame) -> str:
    """The study table in Markdown: ``mean ± std`` mAP, mean top-1, every seed's mAP."""
    shown = table.drop(columns=["mAP_mean", "mAP_std", "mAP_count", "top1_mean"]).copy()
    shown.insert(len(shown.columns) - 2, "mAP", [f"{m:.1f}" if np.isnan(s) else f"{m:.1f} ± {s:.1f}"
                                                 for m, s in zip(table["mAP_mean"], table["mAP_std"])])
    shown.insert(len(shown.columns) - 2, "top1", [f"{m:.1f}" for m in table["top1_mean"]])
    return shown.to_markdown(index=False)

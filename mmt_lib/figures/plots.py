"""The figures the notebooks show: embeddings, training curves, label quality, results, galleries.

Every function takes data and returns a matplotlib ``Figure``; none shows it or touches a file
(``save_figure`` is the one writer). Figures are detached from pyplot right after creation, so a
notebook displays a returned figure exactly once and a batch run never piles up open figures.
Sizes, fonts, colours and the words for metric keys come from ``plot_style``. The backend is left
to the caller (tests use Agg).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator
from PIL import Image

from mmt_lib.config import ABLATION_VARIANTS
from mmt_lib.figures.plot_style import (FAMILY_COLOURS, LINE_COLOURS, MAX_WIDTH_IN, MIN_FONT_PT, REFERENCE_GREY, finish,
                                        metric_label, metric_scale, styled, task_label, variant_label)
from mmt_lib.method.stage0 import Stage0Config, class_images
from mmt_lib.runtime.checkpoints import replacing

_OUTLIER_COLOUR = (0.75, 0.75, 0.75)
MAX_LINES = len(LINE_COLOURS)
"""Lines one panel may hold: more cannot be told apart at a glance."""


def _new_figure(nrows: int, ncols: int, figsize: tuple[float, float], **kwargs: Any) -> tuple[Figure, np.ndarray]:
    if figsize[0] > MAX_WIDTH_IN + 1e-9:
        raise ValueError(f"a figure {figsize[0]:.1f} in wide would be shrunk in JupyterLab; at most {MAX_WIDTH_IN}")
    fig, axes = plt.subplots(nrows, ncols, squeeze=False, figsize=figsize, layout="constrained", **kwargs)
    plt.close(fig)  # the caller owns it: no pyplot bookkeeping, no second display in Jupyter
    return fig, axes


def _label_colours(labels: np.ndarray) -> np.ndarray:
    """One distinct colour per label (-1 grey); shuffled so that neighbouring ids differ in hue."""
    ids = np.unique(labels[labels != -1])
    palette = np.asarray(sns.color_palette("husl", max(len(ids), 1)))
    palette = palette[np.random.default_rng(0).permutation(len(palette))]
    colours = np.tile(np.asarray(_OUTLIER_COLOUR), (len(labels), 1))
    inside = labels != -1
    colours[inside] = palette[np.searchsorted(ids, labels[inside])]
    return colours


@styled
def plot_embedding(
    points_2d: np.ndarray,
    truth: np.ndarray,
    pseudo: np.ndarray,
    noisy_mask: np.ndarray,
    title: str,
) -> Figure:
    """Two panels of the same 2-D points: coloured by true identity, and by pseudo label.

    Noisy samples (``evaluation.label_quality.noisy_samples``) are marked with black crosses in both panels, so
    the reader sees which true identities the clustering merges or splits. Outliers (-1) are grey.
    """
    points = np.asarray(points_2d, dtype=float)
    truth, pseudo, noisy = np.asarray(truth), np.asarray(pseudo), np.asarray(noisy_mask, dtype=bool)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"points_2d must have shape [N, 2], got {points.shape}")
    n = points.shape[0]
    for name, arr in (("truth", truth), ("pseudo", pseudo), ("noisy_mask", noisy)):
        if arr.shape != (n,):
            raise ValueError(f"{name} must have shape ({n},) to match points_2d, got {arr.shape}")

    fig, axes = _new_figure(1, 2, figsize=(MAX_WIDTH_IN, 5.0))
    size = float(np.clip(3000.0 / max(n, 1), 4.0, 30.0))
    num_ids = np.unique(truth).size
    num_clusters = np.unique(pseudo[pseudo != -1]).size
    num_outliers = int((pseudo == -1).sum())
    panels = (
        (truth, f"ground-truth identities ({num_ids})"),
        (pseudo, f"pseudo labels ({num_clusters} clusters, {num_outliers} outliers)"),
    )
    for ax, (labels, subtitle) in zip(axes[0], panels):
        ax.scatter(points[:, 0], points[:, 1], c=_label_colours(labels), s=size, linewidths=0)
        ax.scatter(
            points[noisy, 0], points[noisy, 1], marker="x", c="black", s=size * 1.5,
            linewidths=0.8, label=f"noisy pseudo label ({int(noisy.sum())} of {n})",
        )
        ax.set_title(subtitle)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside lower center")
    fig.suptitle(title)
    return finish(fig)


def _series(history: Sequence[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(epochs, shown values) of one key; an entry's epoch is its "epoch" field, else its position."""
    epochs = np.array([entry.get("epoch", i) for i, entry in enumerate(history)], dtype=float)
    values = np.array([entry.get(key, np.nan) for entry in history], dtype=float)
    return epochs, values * metric_scale(key)


@styled
def plot_training_curves(history: list[dict], keys: list[str], title: str) -> Figure:
    """One panel per key (loss terms, mAP, ...) against the epoch, named in words with its unit.

    ``history`` holds one flat dict per epoch, e.g. ``{"epoch": 3, "loss_ce": 1.2, "target.mAP": 0.41}``;
    an entry without "epoch" is plotted at its position in the list, a missing key as a gap.
    Fractions (mAP, shares of images) are shown in percent (``plot_style.metric_scale``).
    """
    if not history:
        raise ValueError("history is empty: nothing to plot")
    if not keys:
        raise ValueError("keys is empty: name at least one metric to plot")
    available = sorted({k for entry in history for k in entry})
    missing = [k for k in keys if k not in available]
    if missing:
        raise ValueError(f"keys {missing} appear in no history entry; available keys: {available}")

    ncols = min(3, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    fig, axes = _new_figure(nrows, ncols, figsize=(min(MAX_WIDTH_IN, 3.4 * ncols), 2.9 * nrows))
    flat = axes.ravel()
    for ax, key in zip(flat, keys):
        epochs, values = _series(history, key)
        ax.plot(epochs, values, marker="o")
        ax.set_title(metric_label(key, unit=False))
        ax.set_ylabel(metric_label(key))
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in flat[len(keys):]:
        fig.delaxes(ax)
    fig.suptitle(title)
    return finish(fig)


@styled
def plot_run_curves(
    histories: Mapping[str, list[dict]],
    metric: str,
    title: str | None = None,
    groups: Mapping[str, Sequence[str]] | None = None,
    task: str | None = None,
) -> Figure:
    """One line per run (e.g. baseline vs MMT) of a metric across epochs, at most five lines a panel.

    ``histories`` maps a run name (a variant) to its per-epoch flat dicts (see
    ``plot_training_curves``). ``groups`` maps a panel title to the runs it compares; runs absent
    from ``histories`` are skipped, a panel whose runs all appear in earlier panels is left out,
    and a run drawn in several panels (a reference such as the baseline) keeps one colour and a
    dashed line throughout. Without ``groups`` all runs share panels of five.
    Without ``title`` the figure is named after the metric, and the ``task`` when given.
    """
    if not histories:
        raise ValueError("histories is empty: pass {run name: per-epoch history}")
    for name, history in histories.items():
        if not any(metric in entry for entry in history):
            raise ValueError(f"run {name!r} has no {metric!r} in any epoch of its history")
    if groups is None:
        names = list(histories)
        groups = {"" if len(names) <= MAX_LINES else f"runs {i + 1}–{min(i + MAX_LINES, len(names))}":
                  names[i:i + MAX_LINES] for i in range(0, len(names), MAX_LINES)}
    panels: dict[str, list[str]] = {}
    drawn: set[str] = set()
    for panel_title, runs in groups.items():
        present = [r for r in runs if r in histories]
        if set(present) - drawn:  # a panel of runs already drawn elsewhere would only repeat them
            panels[panel_title] = present
            drawn.update(present)
    if not panels:
        raise ValueError(f"no run of {sorted(histories)} is named in groups {dict(groups)}")
    crowded = {t: runs for t, runs in panels.items() if len(runs) > MAX_LINES}
    if crowded:
        raise ValueError(f"panels {crowded} hold more than {MAX_LINES} runs; split them into smaller groups")

    shared = [r for r in histories if sum(r in runs for runs in panels.values()) > 1]
    ncols = min(2, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = _new_figure(nrows, ncols, figsize=(7.0 if ncols == 1 else MAX_WIDTH_IN, 3.9 * nrows),
                            sharey=True)
    flat = axes.ravel()
    for ax, (panel_title, runs) in zip(flat, panels.items()):
        free = iter(c for i, c in enumerate(LINE_COLOURS) if i >= len(shared))
        for run in runs:
            colour = LINE_COLOURS[shared.index(run)] if run in shared else next(free)
            epochs, values = _series(histories[run], metric)
            ax.plot(epochs, values, marker="o", color=colour, label=variant_label(run),
                    linestyle="--" if run in shared else "-")
        ax.set_title(panel_title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(metric_label(metric))
        ax.yaxis.set_tick_params(labelleft=True)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncols=2, frameon=False)
    for ax in flat[len(panels):]:
        fig.delaxes(ax)
    if title is None:
        title = f"{metric_label(metric, unit=False)} per epoch"
        title = f"{task_label(task)}: {title}" if task else title
    fig.suptitle(title)
    return finish(fig)


def _family(variant: str, references: Sequence[str]) -> str:
    if variant in references:
        return "reference"
    return "ablation" if variant in ABLATION_VARIANTS else "mmt"


@styled
def plot_baseline_convergence(rows: pd.DataFrame, curves: Mapping[str, Sequence[Mapping[str, float]]],
                              last_fifth_from: Mapping[str, int]) -> Figure:
    """One panel per task: the hard-label baseline's target mAP and pseudo-label NMI epoch by epoch, with
    direct transfer and the upper bound as lines, and the last fifth of the epochs shaded: where the
    baseline stops between the two lines is the share of the gap its labels let it close.

    ``rows`` is the calibration table (``task``, ``direct_mAP``, ``supervised_mAP``); ``curves`` each task's
    ``[{"epoch", "mAP", "nmi"}, ...]`` (1-based epochs, as the calibration records them); ``last_fifth_from``
    each task's epoch where the shaded last fifth begins (``calibrate.last_fifth_start``)."""
    if rows.empty:
        raise ValueError("the calibration table has no task: nothing to plot")
    fig, axes = _new_figure(1, len(rows), figsize=(min(MAX_WIDTH_IN, 3.2 * len(rows)), 3.0), sharey=True)
    for ax, (_, row) in zip(axes[0], rows.iterrows()):
        curve = curves[row["task"]]
        epochs = [point["epoch"] for point in curve]
        ax.plot(epochs, [100 * point["mAP"] for point in curve], marker="o", color=LINE_COLOURS[0], label="baseline mAP")
        ax.plot(epochs, [100 * point["nmi"] for point in curve], linestyle="--", color=LINE_COLOURS[1],
                label="pseudo-label NMI x 100")
        for level, name in ((row["supervised_mAP"], "upper bound"), (row["direct_mAP"], "direct transfer")):
            ax.axhline(100 * level, color=REFERENCE_GREY, linewidth=1)
            ax.annotate(name, (epochs[0], 100 * level), textcoords="offset points", xytext=(0, 2), fontsize=MIN_FONT_PT)
        ax.axvspan(last_fifth_from[row["task"]], max(epochs), color=REFERENCE_GREY, alpha=0.15, linewidth=0)
        ax.set_title(f"{row['task']}: {row['baseline_gap_share']:.0%} of the gap")
        ax.set_xlabel("Stage II epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0][0].set_ylabel("percent")
    axes[0][0].legend(loc="lower right", fontsize=MIN_FONT_PT)
    fig.suptitle("The hard-label baseline on each target: where it stops")
    return finish(fig)


def empty_figure(message: str) -> Figure:
    """A small figure that says in words why there is nothing to plot yet (a notebook shows it in place)."""
    fig, axes = _new_figure(1, 1, figsize=(6.0, 1.2))
    axes[0, 0].axis("off")
    axes[0, 0].text(0.5, 0.5, message, ha="center", va="center", wrap=True)
    return finish(fig)


@styled
def plot_results(
    runs: pd.DataFrame,
    value: str = "mAP",
    paper: Mapping[tuple[str, str], float] | None = None,
    variants: Sequence[str] | None = None,
    references: Sequence[str] = ("direct", "baseline"),
    title: str | None = None,
) -> Figure:
    """One panel per task: each variant's mean over seeds (bar) with its min–max over seeds (whisker).

    ``runs`` holds one row per run with columns task, variant, seed and ``value`` (in percent, as
    ``results.load_runs`` gives them). The reference variants' means (direct transfer, the
    baseline) are drawn across the panel as lines, and ``paper`` ({(task, variant): number}) marks
    the published number where there is one. Bars follow ``variants`` (then first appearance);
    a panel holds only the variants its task ran.
    """
    missing = [c for c in ("task", "variant", "seed", value) if c not in runs.columns]
    if missing:
        raise ValueError(f"runs table lacks columns {missing}; it has {list(runs.columns)}")
    if runs.empty:
        raise ValueError("runs table is empty: nothing to plot")
    if runs.duplicated(["task", "variant", "seed"]).any():
        raise ValueError("runs table has several rows for one (task, variant, seed); pass one row per run")
    paper = paper or {}
    stats = runs.groupby(["task", "variant"], sort=False)[value].agg(["mean", "min", "max", "count"])
    order = {v: i for i, v in enumerate(variants or [])}
    first_seen = {v: i for i, v in enumerate(pd.unique(runs["variant"]))}
    tasks = list(pd.unique(runs["task"]))
    per_task = {t: sorted(pd.unique(runs.loc[runs["task"] == t, "variant"]),
                          key=lambda v: (order.get(v, len(order)), first_seen[v]))
                for t in tasks}
    families = {v: _family(v, references) for v in first_seen}

    ncols = min(2, len(tasks))
    nrows = math.ceil(len(tasks) / ncols)
    rows = [max(len(per_task[t]) for t in tasks[r * ncols:(r + 1) * ncols]) for r in range(nrows)]
    fig, axes = _new_figure(nrows, ncols, figsize=(MAX_WIDTH_IN, 0.36 * sum(rows) + 1.1 * nrows + 1.0),
                            gridspec_kw={"height_ratios": [n + 2 for n in rows]})
    label = metric_label(value)
    top = max(stats["max"].max(), max((paper.get((t, v), 0.0) for t in tasks for v in per_task[t]), default=0.0))
    flat = axes.ravel()
    any_marked = False
    for i, (ax, task) in enumerate(zip(flat, tasks)):
        names = per_task[task]
        rows_here = stats.loc[[(task, v) for v in names]]
        y = np.arange(len(names))
        means = rows_here["mean"].to_numpy(float)
        spread = np.vstack([means - rows_here["min"].to_numpy(float), rows_here["max"].to_numpy(float) - means])
        spread[:, rows_here["count"].to_numpy() < 2] = np.nan  # one seed: no spread to show
        ax.barh(y, means, height=0.7, color=[FAMILY_COLOURS[families[v]] for v in names])
        ax.errorbar(means, y, xerr=spread, fmt="none", ecolor="black", capsize=3, linewidth=1.2)
        for yi, m in zip(y, means):  # the means in a column right of the panel, clear of every mark
            ax.text(1.01, yi, f"{m:.1f}", transform=ax.get_yaxis_transform(), va="center", ha="left")
        for ref, style in zip(references, (":", "--")):
            if ref in names:
                ax.axvline(stats.loc[(task, ref), "mean"], color=REFERENCE_GREY, linestyle=style, linewidth=1.5)
        marked = [(yi, paper[(task, v)]) for yi, v in zip(y, names) if (task, v) in paper]
        if marked:
            ax.plot([p for _, p in marked], [yi for yi, _ in marked], "D", color="black", markersize=7)
            any_marked = True
        seeds = rows_here["count"]
        count = f"{seeds.min()}" if seeds.min() == seeds.max() else f"{seeds.min()}–{seeds.max()}"
        ax.set_title(f"{task_label(task)} ({count} seed{'s' if seeds.max() > 1 else ''})")
        ax.set_yticks(y, [variant_label(v) for v in names])
        ax.set_ylim(rows[i // ncols] - 0.5, -0.5)  # bars as thick as in the row's fullest panel
        ax.set_xlim(0, top * 1.05)
        ax.set_xlabel(label)
        ax.grid(axis="y", visible=False)
    for ax in flat[len(tasks):]:
        fig.delaxes(ax)
    handles: list[Any] = [Patch(color=FAMILY_COLOURS[f], label=text) for f, text in
                          (("reference", "reference row"), ("mmt", "MMT"), ("ablation", "Table 2 ablation"))
                          if f in families.values()]
    handles += [Line2D([], [], color=REFERENCE_GREY, linestyle=s, label=f"{variant_label(r)}: level")
                for r, s in zip(references, (":", "--")) if r in first_seen]
    if any_marked:
        handles.append(Line2D([], [], marker="D", color="black", linestyle="none",
                              label="paper (ResNet-50, real data)"))
    fig.legend(handles=handles, loc="outside lower center", ncols=3, frameon=False)
    fig.suptitle(title or f"Target-domain {label} per transfer task: mean over seeds, whiskers min–max")
    return finish(fig)


@styled
def image_grid(
    images: Sequence[np.ndarray | Image.Image | None],
    nrows: int,
    ncols: int,
    titles: Sequence[str] | None = None,
    row_labels: Sequence[str] | None = None,
    max_cols: int = 10,
    cell_width: float = 0.9,
) -> Figure:
    """A gallery of images ([H, W], [H, W, 1], [H, W, 3] or [H, W, 4] arrays, or PIL images).

    Filled row by row; a ``None`` image and cells beyond ``len(images)`` stay blank. A row of more
    than ``max_cols`` images wraps onto as many lines as it needs, evenly filled (15 cameras: two
    lines of 8), so that each image stays about ``cell_width`` inches wide. ``row_labels`` name
    each row at its left.
    """
    if nrows < 1 or ncols < 1:
        raise ValueError(f"nrows and ncols must be >= 1, got nrows={nrows}, ncols={ncols}")
    if len(images) > nrows * ncols:
        raise ValueError(f"{len(images)} images do not fit a {nrows} x {ncols} grid")
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"titles has {len(titles)} entries for {len(images)} images")
    if row_labels is not None and len(row_labels) != nrows:
        raise ValueError(f"row_labels has {len(row_labels)} entries for {nrows} rows")
    if max_cols < 1:
        raise ValueError(f"max_cols must be >= 1, got {max_cols}")

    pixels = [None if image is None else _pixels(i, image) for i, image in enumerate(images)]
    shapes = [p.shape[:2] for p in pixels if p is not None]
    aspect = float(np.median([h / w for h, w in shapes])) if shapes else 2.0
    lines = math.ceil(ncols / max_cols)
    cols = math.ceil(ncols / lines)
    label_width = 0.35 if row_labels is not None else 0.0
    width = min(cell_width, (MAX_WIDTH_IN - label_width) / cols)
    height = width * aspect + (0.3 if titles is not None else 0.05)
    fig, axes = _new_figure(nrows * lines, cols, figsize=(width * cols + label_width, height * nrows * lines))
    for ax in axes.ravel():
        ax.set_axis_off()
    for i, image in enumerate(pixels):
        row, col = divmod(i, ncols)
        line, col = divmod(col, cols)
        ax = axes[row * lines + line, col]
        if image is None:
            continue
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None)
        if titles is not None:
            ax.set_title(titles[i], fontsize=MIN_FONT_PT)
    if row_labels is not None:
        for row, text in enumerate(row_labels):
            ax = axes[row * lines, 0]
            ax.set_axis_on()
            ax.set_xticks([])
            ax.set_yticks([])
            ax.spines[:].set_visible(False)
            ax.set_ylabel(text)
    return finish(fig)


def _pixels(index: int, image: np.ndarray | Image.Image) -> np.ndarray:
    pixels = np.asarray(image)
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    if not (pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[-1] in (3, 4))):
        raise ValueError(
            f"image {index} has shape {pixels.shape}; expected [H, W] or [H, W, C] with C in 1, 3, 4 "
            "(a [C, H, W] tensor needs .permute(1, 2, 0))"
        )
    return pixels


def save_figure(fig: Figure, path: str | os.PathLike[str], dpi: int = 150) -> Path:
    """Write ``fig`` to ``path`` atomically, in the format its suffix names (.png, .pdf, .svg, ...).

    The figure goes to a temporary file in the same folder first and then replaces ``path``, so a
    reader never sees a half-written image. Missing parent folders are created.
    """
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    supported = fig.canvas.get_supported_filetypes()
    if fmt not in supported:
        raise ValueError(f"cannot save a figure to {path}: suffix must be one of {sorted(supported)}")
    with replacing(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight")
    return path


_QUALITY_CURVES = ("num_clusters", "nmi", "pairwise_precision", "pairwise_recall", "wrong_majority_fraction")


def run_figures(history: list[dict[str, Any]], title: str) -> list[Figure]:
    """The standard figures of one run's flat history: loss terms and mAP, then pseudo-label quality.

    A run without training epochs (direct transfer) has nothing to draw and gets no figure.
    """
    present = {k for entry in history for k in entry}
    curves = sorted(k for k in present if k.startswith("loss_")) + sorted(k for k in present if k.endswith(".mAP"))
    quality = [k for k in (f"pseudo_labels.{m}" for m in _QUALITY_CURVES) if k in present]
    figures = []
    if curves:
        figures.append(plot_training_curves(history, curves, title=title))
    if quality:
        figures.append(plot_training_curves(history, quality,
                                            title=f"{title}: pseudo labels against the true identities"))
    return figures


def stage0_sample_figure(cfg: Stage0Config, classes: int = 6, per_class: int = 8) -> Figure:
    """The first ``per_class`` training images of the first ``classes`` classes, one row per class."""
    if not 1 <= classes <= cfg.classes or not 1 <= per_class <= cfg.images_per_class:
        raise ValueError(f"stage0_sample_figure shows 1..{cfg.classes} classes of 1..{cfg.images_per_class} images, "
                         f"got classes={classes}, per_class={per_class}")
    images = [image for k in range(classes) for image in class_images(cfg, k)[:per_class]]
    return image_grid(images, classes, per_class, row_labels=[f"class {k}" for k in range(classes)],
                      max_cols=max(per_class, 1))

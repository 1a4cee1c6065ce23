"""The figures the notebooks show: embeddings, training curves, label quality, results, galleries.

Every function takes data and returns a matplotlib ``Figure``; none shows it or touches a file
(``save_figure`` is the one writer). Figures are detached from pyplot right after creation, so a
notebook displays a returned figure exactly once and a batch run never piles up open figures.
The backend is left to the caller (tests use Agg).
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
from PIL import Image

from mmt_lib.checkpoints import replacing

_OUTLIER_COLOUR = (0.75, 0.75, 0.75)


def _new_figure(nrows: int, ncols: int, figsize: tuple[float, float]) -> tuple[Figure, np.ndarray]:
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(nrows, ncols, squeeze=False, figsize=figsize, layout="constrained")
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


def plot_embedding(
    points_2d: np.ndarray,
    truth: np.ndarray,
    pseudo: np.ndarray,
    noisy_mask: np.ndarray,
    title: str,
) -> Figure:
    """Two panels of the same 2-D points: coloured by true identity, and by pseudo label.

    Noisy samples (``analysis.noisy_samples``) are marked with black crosses in both panels, so
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

    fig, axes = _new_figure(1, 2, figsize=(12.0, 5.5))
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
        ax.legend(loc="best", fontsize="small")
    fig.suptitle(title)
    return fig


def _series(history: Sequence[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(epochs, values) of one key; an entry's epoch is its "epoch" field, else its position."""
    epochs = np.array([entry.get("epoch", i) for i, entry in enumerate(history)], dtype=float)
    values = np.array([entry.get(key, np.nan) for entry in history], dtype=float)
    return epochs, values


def plot_training_curves(history: list[dict], keys: list[str], title: str) -> Figure:
    """One subplot per key (loss terms, mAP, ...) against the epoch.

    ``history`` holds one flat dict per epoch, e.g. ``{"epoch": 3, "loss_ce": 1.2, "mAP": 0.41}``;
    an entry without "epoch" is plotted at its position in the list, a missing key as a gap.
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
    fig, axes = _new_figure(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows))
    flat = axes.ravel()
    for ax, key in zip(flat, keys):
        epochs, values = _series(history, key)
        ax.plot(epochs, values, marker="o", markersize=3)
        ax.set_title(key)
        ax.set_xlabel("epoch")
    for ax in flat[len(keys):]:
        fig.delaxes(ax)
    fig.suptitle(title)
    return fig


def plot_label_quality(histories: dict[str, list[dict]], metric: str, title: str | None = None) -> Figure:
    """One line per run (e.g. baseline vs MMT) of a pseudo-label quality metric across epochs.

    ``histories`` maps a run name to its per-epoch flat dicts (see ``plot_training_curves``);
    ``metric`` is a key of ``analysis.pseudo_label_quality``, such as "nmi" or
    "wrong_majority_fraction".
    """
    if not histories:
        raise ValueError("histories is empty: pass {run name: per-epoch history}")
    fig, axes = _new_figure(1, 1, figsize=(6.5, 4.0))
    ax = axes[0, 0]
    for name, history in histories.items():
        if not any(metric in entry for entry in history):
            raise ValueError(f"run {name!r} has no {metric!r} in any epoch of its history")
        epochs, values = _series(history, metric)
        ax.plot(epochs, values, marker="o", markersize=3, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(title or f"pseudo-label {metric} per epoch")
    ax.legend(fontsize="small")
    return fig


def plot_results_bars(df: pd.DataFrame, value: str = "mAP") -> Figure:
    """Grouped bars of a results table: one group per task, one bar per variant, std error bars.

    ``df`` has columns task, variant, ``<value>_mean`` and ``<value>_std`` (one row per pair; a
    NaN std, e.g. from a single seed, draws no error bar). Tasks and variants keep the order in
    which they first appear, so the ablation table's order survives.
    """
    mean_col, std_col = f"{value}_mean", f"{value}_std"
    missing = [c for c in ("task", "variant", mean_col, std_col) if c not in df.columns]
    if missing:
        raise ValueError(f"results table lacks columns {missing}; it has {list(df.columns)}")
    if df.empty:
        raise ValueError("results table is empty: nothing to plot")
    if df.duplicated(["task", "variant"]).any():
        raise ValueError("results table has several rows for one (task, variant); aggregate them first")

    tasks, variants = list(pd.unique(df["task"])), list(pd.unique(df["variant"]))
    table = df.set_index(["task", "variant"])
    width = 0.8 / len(variants)
    palette = sns.color_palette("colorblind" if len(variants) <= 10 else "husl", len(variants))
    fig, axes = _new_figure(1, 1, figsize=(max(6.0, 0.35 * len(tasks) * len(variants) + 2.0), 4.5))
    ax = axes[0, 0]
    positions = np.arange(len(tasks))
    for j, variant in enumerate(variants):
        rows = table.reindex([(task, variant) for task in tasks])
        ax.bar(
            positions + (j - (len(variants) - 1) / 2) * width, rows[mean_col].to_numpy(float),
            width, yerr=rows[std_col].to_numpy(float), capsize=2, color=palette[j], label=str(variant),
        )
    ax.set_xticks(positions, [str(t) for t in tasks])
    ax.set_ylabel(value)
    ax.legend(fontsize="small", ncols=min(len(variants), 4), loc="upper center", bbox_to_anchor=(0.5, -0.1))
    return fig


def image_grid(
    images: list[np.ndarray | Image.Image],
    nrows: int,
    ncols: int,
    titles: list[str] | None = None,
) -> Figure:
    """A gallery of images ([H, W], [H, W, 1], [H, W, 3] or [H, W, 4] arrays, or PIL images).

    Filled row by row; cells beyond ``len(images)`` stay blank.
    """
    if nrows < 1 or ncols < 1:
        raise ValueError(f"nrows and ncols must be >= 1, got nrows={nrows}, ncols={ncols}")
    if len(images) > nrows * ncols:
        raise ValueError(f"{len(images)} images do not fit a {nrows} x {ncols} grid")
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"titles has {len(titles)} entries for {len(images)} images")

    fig, axes = _new_figure(nrows, ncols, figsize=(1.6 * ncols, 2.6 * nrows))
    for i, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if i >= len(images):
            continue
        pixels = np.asarray(images[i])
        if pixels.ndim == 3 and pixels.shape[-1] == 1:
            pixels = pixels[..., 0]
        if not (pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[-1] in (3, 4))):
            raise ValueError(
                f"image {i} has shape {pixels.shape}; expected [H, W] or [H, W, C] with C in 1, 3, 4 "
                "(a [C, H, W] tensor needs .permute(1, 2, 0))"
            )
        ax.imshow(pixels, cmap="gray" if pixels.ndim == 2 else None)
        if titles is not None:
            ax.set_title(titles[i], fontsize="small")
    return fig


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
        figures.append(plot_training_curves(history, quality, title=f"{title}: pseudo labels vs ground truth"))
    return figures


"""One look for every figure: sizes that JupyterLab shows unscaled, readable fonts, words for keys.

JupyterLab shows a figure at its own pixel size up to the width of the notebook (about 1,000 px in
a default window) and shrinks anything wider, fonts included. Figures here are drawn at 100 dpi and
at most 10 in wide, so they are shown unscaled, and no text is smaller than 10 pt (14 px).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import matplotlib as mpl
import seaborn as sns
from matplotlib.figure import Figure

from mmt_lib.config import TASKS

MAX_WIDTH_IN = 10.0
DPI = 100
MIN_FONT_PT = 10.0
RC = {
    "figure.dpi": DPI,
    "font.size": 11.0,
    "axes.titlesize": 12.0,
    "axes.labelsize": 11.0,
    "xtick.labelsize": 10.0,
    "ytick.labelsize": 10.0,
    "legend.fontsize": 10.0,
    "legend.title_fontsize": 10.0,
    "figure.titlesize": 13.0,
    "lines.linewidth": 1.8,
    "lines.markersize": 5.0,
}

P = ParamSpec("P")
R = TypeVar("R")


def styled(draw: Callable[P, R]) -> Callable[P, R]:
    """Draw a figure inside this module's style (fonts are fixed when each text is made)."""

    @functools.wraps(draw)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with sns.axes_style("whitegrid"), mpl.rc_context(RC):
            return draw(*args, **kwargs)

    return wrapper


def finish(fig: Figure) -> Figure:
    """Fix tick label sizes on every axes: ticks are made when drawn, maybe outside ``styled``."""
    for ax in fig.axes:
        ax.tick_params(labelsize=RC["xtick.labelsize"])
    return fig


_METRICS: dict[str, tuple[str, str, float]] = {
    "mAP": ("mAP", "%", 100.0),
    "mINP": ("mINP", "%", 100.0),
    "top1": ("rank-1 accuracy", "%", 100.0),
    "top5": ("rank-5 accuracy", "%", 100.0),
    "top10": ("rank-10 accuracy", "%", 100.0),
    "loss_ce": ("cross-entropy loss", "", 1.0),
    "loss_triplet": ("triplet loss", "", 1.0),
    "loss_hard_ce": ("hard cross-entropy loss", "", 1.0),
    "loss_hard_triplet": ("hard triplet loss", "", 1.0),
    "loss_soft_ce": ("soft cross-entropy loss", "", 1.0),
    "loss_soft_triplet": ("soft triplet loss", "", 1.0),
    "lr": ("learning rate", "", 1.0),
    "num_clusters": ("clusters", "count", 1.0),
    "outlier_fraction": ("outliers", "% of images", 100.0),
    "nmi": ("NMI", "", 1.0),
    "ari": ("ARI", "", 1.0),
    "pairwise_precision": ("pairwise precision", "", 1.0),
    "pairwise_recall": ("pairwise recall", "", 1.0),
    "pairwise_f1": ("pairwise F1", "", 1.0),
    "wrong_majority_fraction": ("impurity", "% of images", 100.0),
    "seconds_train": ("training time", "s", 1.0),
    "seconds_eval": ("evaluation time", "s", 1.0),
    "seconds_extract": ("feature extraction time", "s", 1.0),
    "seconds_cluster": ("clustering time", "s", 1.0),
    "dbscan_eps": ("DBSCAN eps", "", 1.0),
}
"""History key (without its section) -> (words, unit, factor from stored value to shown value).

``impurity`` is 1 - cluster purity: the share of images whose cluster's most frequent identity is
another person (``evaluation.label_quality.pseudo_label_quality``'s ``wrong_majority_fraction``)."""

_SECTIONS = {
    "source": "source",
    "target": "target",
    "net1": "network 1",
    "net2": "network 2",
    "oracle": "best-epoch",
    "pseudo_labels": "pseudo-label",
}

VARIANT_LABELS: dict[str, str] = {
    "direct": "direct transfer",
    "baseline": "baseline (hard labels)",
    "mmt-kmeans": "MMT, k-means",
    "mmt-dbscan": "MMT, DBSCAN",
    "mmt-only-soft": "soft losses only",
    "mmt-no-hard-ce": "w/o hard CE",
    "mmt-no-hard-triplet": "w/o hard triplet",
    "mmt-no-soft-ce": "w/o soft CE",
    "mmt-no-soft-triplet": "w/o soft triplet",
    "mmt-own-teacher": "own mean net teaches",
    "mmt-current-peer": "current peer teaches",
}
"""The paper's words for each variant (Table 2: "w/o" a loss term, who gives the soft labels)."""

_DOMAINS = {"market": "Market", "duke": "Duke", "msmt": "MSMT"}

REFERENCE_GREY = (0.45, 0.45, 0.45)
_PALETTE = sns.color_palette("colorblind", 10)
FAMILY_COLOURS = {"reference": (0.70, 0.70, 0.70), "mmt": _PALETTE[0], "ablation": _PALETTE[1]}
"""Results bars: three colours that say what a bar is (reference row, MMT, a Table 2 ablation)."""
LINE_COLOURS = [_PALETTE[i] for i in (0, 1, 2, 4, 3)]
"""At most five lines share a panel; these five stay apart for colour-blind readers too."""


def _split(key: str) -> tuple[str, str]:
    section, _, name = key.rpartition(".")
    return section, name


def metric_label(key: str, unit: bool = True) -> str:
    """Words (and unit) for a history or table key.

    ``pseudo_labels.pairwise_precision`` -> "pseudo-label pairwise precision", ``net1.mAP`` ->
    "network 1 mAP (%)"; an unknown key keeps its name with spaces for underscores.
    """
    section, name = _split(key)
    words, suffix, _ = _METRICS.get(name, (name.replace("_", " "), "", 1.0))
    if section:
        words = f"{_SECTIONS.get(section, section.replace('_', ' '))} {words}"
    return f"{words} ({suffix})" if unit and suffix else words


def metric_scale(key: str) -> float:
    """Factor from the stored value to the shown one (fractions are shown in percent)."""
    return _METRICS.get(_split(key)[1], ("", "", 1.0))[2]


def variant_label(variant: str) -> str:
    return VARIANT_LABELS.get(variant, variant)


def task_label(task: str) -> str:
    """``duke2market`` -> "Duke → Market"; a custom task keeps its name."""
    if task in TASKS:
        source, target = TASKS[task]
        return f"{_DOMAINS[source]} → {_DOMAINS[target]}"
    return task

"""What the notebooks display about one run: a sentence saying what a variant trains, and its numbers as tables."""

from __future__ import annotations

from typing import Any

import pandas as pd

from mmt_lib.config import MMTConfig, RunConfig, num_clusters_origin


def results_table(metrics: dict[str, Any]) -> pd.DataFrame:
    """Stage I: source and target retrieval of the final network; the gap between the rows is the domain gap."""
    return pd.DataFrame.from_dict({"source (supervised)": metrics["source"], "target (direct transfer)": metrics["target"]},
                                  orient="index")


def describe_variant(cfg: RunConfig) -> str:
    """A Markdown line saying which loss terms are on and who gives the soft labels."""
    if cfg.variant == "direct":
        return f"**direct**: the Stage I network evaluated on `{cfg.data.target}`, no adaptation."
    m = cfg.mmt
    on = ", ".join(f"{name} x{w:g}" for name, w in m.term_weights().items() if w > 0)
    teacher = {"peer-mean": "the peer's mean teacher", "own-mean": "the network's own mean teacher",
               "peer-current": "the peer's current network", "none": "nobody (hard labels only)"}[m.soft_teacher]
    clusters = (f"k-means, K={m.num_clusters} ({num_clusters_origin(cfg)})" if m.clustering == "kmeans"
                else f"DBSCAN on Jaccard (k1={m.k1})")
    return (f"**{cfg.variant}** on `{cfg.data.source}` → `{cfg.data.target}`: loss terms {on}; soft labels from "
            f"{teacher}; pseudo labels by {clusters}; mean teachers {'on' if m.mean_teacher else 'off'}.")


def headline_table(metrics: dict[str, Any]) -> pd.DataFrame:
    """The reported numbers and, apart, the oracle choice (target labels: not a valid UDA number)."""
    keys = ["mAP", "mINP", "top1", "top5", "top10"]
    rows = {metrics["selection"]: [metrics[k] for k in keys]}
    if "oracle" in metrics:
        o = metrics["oracle"]
        rows[f"oracle (epoch {o['epoch']}, {o['network']})"] = [o[k] for k in keys]
    return pd.DataFrame.from_dict(rows, orient="index", columns=keys)


def describe_schedule(cfg: RunConfig) -> str:
    """A Markdown line: this run's Stage II length and its mean teacher's window, beside the paper's.

    The window is about 1 / (1 - alpha_max) iterations: the span over which the temporal average
    weighs a student's past weights (Eq. 7's E^(T)[theta]). Read from the configuration, so the
    notebook's prose never states a number that a profile changes.
    """
    here, paper = cfg.mmt, MMTConfig()

    def schedule(m: MMTConfig) -> str:
        total = m.epochs * m.iters
        window = 1.0 / (1.0 - m.max_alpha())
        return (f"{m.epochs} epochs x {m.iters} iterations = {total:,} iterations, alpha_max {m.max_alpha():.4g}: "
                f"each mean net averages about the last {window:,.0f} iterations ({window / total:.1%} of the run)")

    return f"**Stage II here** ({cfg.profile}): {schedule(here)}. **The paper**: {schedule(paper)}."

"""The paper's claims as paired comparisons: does one row of a table beat another, seed by seed?

Two rows of the same task and seed start from the same Stage I networks and draw the same seeds,
so the difference is taken per seed. A seed that trains well lifts both rows together; the paired
difference shows whether the gap is consistent even where the seeds' spread is larger than it.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from mmt_lib.config import ABLATION_TASKS


@dataclass(frozen=True)
class Claim:
    """``better`` scores higher than ``worse`` (mAP) on each of ``tasks`` (None: every task with both rows)."""

    statement: str
    better: str
    worse: str
    where: str
    tasks: tuple[str, ...] | None = None


CLAIMS: list[Claim] = [
    Claim("the hard-label baseline beats direct transfer", "baseline", "direct", "Table 2, rows 1-2"),
    Claim("MMT beats direct transfer", "mmt-kmeans", "direct", "Tables 1 and 2"),
    Claim("MMT beats the hard-label baseline", "mmt-kmeans", "baseline", "Table 2, rows 2 and 10"),
    Claim("the hard losses help beside the soft ones", "mmt-kmeans", "mmt-only-soft", "Table 2, row 3",
          tuple(ABLATION_TASKS)),
    Claim("the hard classification loss helps", "mmt-kmeans", "mmt-no-hard-ce", "Table 2, row 4",
          tuple(ABLATION_TASKS)),
    Claim("the hard softmax-triplet loss helps", "mmt-kmeans", "mmt-no-hard-triplet", "Table 2, row 5",
          tuple(ABLATION_TASKS)),
    Claim("the soft classification loss helps", "mmt-kmeans", "mmt-no-soft-ce", "Table 2, row 6",
          tuple(ABLATION_TASKS)),
    Claim("the soft softmax-triplet loss helps", "mmt-kmeans", "mmt-no-soft-triplet", "Table 2, row 7",
          tuple(ABLATION_TASKS)),
    Claim("the peer's mean net teaches better than one's own mean net", "mmt-kmeans", "mmt-own-teacher",
          "Table 2, row 8", tuple(ABLATION_TASKS)),
    Claim("the peer's mean net teaches better than the current peer", "mmt-kmeans", "mmt-current-peer",
          "Table 2, row 9", tuple(ABLATION_TASKS)),
    Claim("DBSCAN pseudo labels beat k-means", "mmt-dbscan", "mmt-kmeans",
          "later re-implementations, not the paper's tables"),
]
"""Every comparison the reproduction reports, in the order of the paper's tables."""

CLAIM_COLUMNS = ["statement", "where", "task", "difference_mean", "difference_std", "seeds_holding",
                 "seeds", "per_seed"]


def paired_differences(runs: pd.DataFrame, better: str, worse: str, value: str = "mAP") -> pd.DataFrame:
    """``better - worse`` of one metric per task and seed, for the seeds that finished both rows."""
    wide = runs.pivot_table(index=["task", "seed"], columns="variant", values=value, aggfunc="first")
    if better not in wide or worse not in wide:
        return pd.DataFrame(columns=["task", "seed", "difference"])
    diff = (wide[better] - wide[worse]).dropna().rename("difference")
    return diff.reset_index().sort_values(["task", "seed"], ignore_index=True)


def claims_table(runs: pd.DataFrame, claims: list[Claim] = CLAIMS, value: str = "mAP") -> pd.DataFrame:
    """One row per claim and task: the mean and sample std of the paired difference (points of
    ``value``), how many seeds it holds in, and each seed's own difference."""
    rows = []
    for claim in claims:
        diffs = paired_differences(runs, claim.better, claim.worse, value)
        if claim.tasks is not None:
            diffs = diffs[diffs["task"].isin(claim.tasks)]
        for task, per_task in diffs.groupby("task", sort=True):
            d = per_task["difference"]
            rows.append({
                "statement": claim.statement, "where": claim.where, "task": task,
                "difference_mean": d.mean(), "difference_std": d.std(ddof=1),
                "seeds_holding": int((d > 0).sum()), "seeds": len(d),
                "per_seed": " ".join(f"{x:+.1f}" for x in d),
            })
    return pd.DataFrame(rows, columns=CLAIM_COLUMNS)


def claims_markdown(table: pd.DataFrame) -> str:
    """The claims table with ``mean ± std`` cells and the seeds a claim holds in, e.g. ``3/3``."""
    shown = table[["statement", "where", "task"]].copy()
    shown["difference (mAP)"] = [
        f"{m:+.1f}" if pd.isna(s) else f"{m:+.1f} ± {s:.1f}"
        for m, s in zip(table["difference_mean"], table["difference_std"])
    ]
    shown["holds in"] = [f"{h}/{n}" for h, n in zip(table["seeds_holding"], table["seeds"])]
    shown["each seed"] = table["per_seed"]
    return shown.to_markdown(index=False, disable_numparse=True)  # keep "+1.0" as written

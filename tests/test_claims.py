"""The claims table: paired differences per seed, the seeds a claim holds in, the rows it names."""

import pandas as pd
import pytest

from mmt_lib.experiments import claims, results
from mmt_lib.experiments.claims import Claim


def table_rows(markdown: str) -> list[list[str]]:
    """A Markdown table's rows as lists of stripped cells (padding aside)."""
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in markdown.splitlines()]


def runs_frame(rows: list[tuple[str, str, int, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["task", "variant", "seed", "mAP"])


def test_paired_difference_is_taken_seed_by_seed_and_skips_unmatched_seeds():
    runs = runs_frame([
        ("duke2market", "baseline", 1, 50.0), ("duke2market", "mmt-kmeans", 1, 53.0),
        ("duke2market", "baseline", 2, 60.0), ("duke2market", "mmt-kmeans", 2, 59.0),
        ("duke2market", "baseline", 3, 40.0), ("duke2market", "mmt-kmeans", 3, 45.0),
        ("duke2market", "baseline", 4, 70.0),  # no MMT run for seed 4: not paired
    ])
    diffs = claims.paired_differences(runs, "mmt-kmeans", "baseline")
    assert diffs["seed"].tolist() == [1, 2, 3]
    assert diffs["difference"].tolist() == [3.0, -1.0, 5.0]


def test_claims_table_reports_mean_std_seeds_holding_and_each_seed():
    runs = runs_frame([
        ("duke2market", "baseline", 1, 50.0), ("duke2market", "mmt-kmeans", 1, 53.0),
        ("duke2market", "baseline", 2, 60.0), ("duke2market", "mmt-kmeans", 2, 59.0),
        ("duke2market", "baseline", 3, 40.0), ("duke2market", "mmt-kmeans", 3, 45.0),
    ])
    claim = Claim("MMT beats the hard-label baseline", "mmt-kmeans", "baseline", "Table 2")
    row = claims.claims_table(runs, [claim]).iloc[0]
    assert row["task"] == "duke2market"
    assert row["difference_mean"] == pytest.approx(7.0 / 3)
    assert row["difference_std"] == pytest.approx(pd.Series([3.0, -1.0, 5.0]).std(ddof=1))
    assert (row["seeds_holding"], row["seeds"], row["per_seed"]) == (2, 3, "+3.0 -1.0 +5.0")
    markdown = claims.claims_markdown(claims.claims_table(runs, [claim]))
    assert ["MMT beats the hard-label baseline", "Table 2", "duke2market", "+2.3 ± 3.1", "2/3",
            "+3.0 -1.0 +5.0"] in table_rows(markdown)


def test_ablation_claims_are_reported_on_the_ablation_tasks_only():
    runs = runs_frame([
        (task, variant, 1, value)
        for task in ("duke2market", "duke2msmt")
        for variant, value in (("mmt-kmeans", 50.0), ("mmt-no-soft-ce", 48.0), ("baseline", 49.0))
    ])
    table = claims.claims_table(runs)
    soft_ce = table[table["statement"] == "the soft classification loss helps"]
    assert soft_ce["task"].tolist() == ["duke2market"]
    beats_baseline = table[table["statement"] == "MMT beats the hard-label baseline"]
    assert beats_baseline["task"].tolist() == ["duke2market", "duke2msmt"]
    assert beats_baseline["difference_std"].isna().all()  # one seed: no spread to report
    assert [row[3] for row in table_rows(claims.claims_markdown(beats_baseline))[2:]] == ["+1.0", "+1.0"]


def test_every_claim_names_rows_of_the_grid():
    from mmt_lib.config import VARIANTS

    for claim in claims.CLAIMS:
        assert {claim.better, claim.worse} <= set(VARIANTS), claim


def loaded_runs() -> pd.DataFrame:
    """Two runs as ``results.load_runs`` gives them: MMT 2.5 mAP over the baseline."""
    runs = runs_frame([("duke2market", "baseline", 1, 50.0), ("duke2market", "mmt-kmeans", 1, 52.5)])
    for metric in ("top1", "top5", "top10", "oracle_mAP"):
        runs[metric] = 0.0
    runs["numerics"] = "reproducible"
    return runs


def test_collect_writes_the_claims_beside_the_results(tmp_path, monkeypatch):
    runs = loaded_runs()
    monkeypatch.setattr(results, "load_runs", lambda profile_dir, run_ids=None: runs)
    results.collect(tmp_path / "synthetic")
    written = pd.read_csv(tmp_path / "synthetic" / "claims.csv")
    assert written["statement"].tolist() == ["MMT beats the hard-label baseline"]
    assert written["difference_mean"].tolist() == [2.5]
    assert ["MMT beats the hard-label baseline", "Table 2, rows 2 and 10", "duke2market", "+2.5", "1/1", "+2.5"] \
        in table_rows((tmp_path / "synthetic" / "claims.md").read_text())


def test_collect_hands_back_what_it_read_and_wrote_so_the_notebook_reads_the_runs_once(tmp_path, monkeypatch):
    runs = loaded_runs()
    reads = []
    monkeypatch.setattr(results, "load_runs", lambda profile_dir, run_ids=None: reads.append(run_ids) or runs)
    collected = results.collect(tmp_path / "synthetic", ["a", "b"])
    assert reads == [["a", "b"]]
    assert collected.runs is runs
    assert collected.claims["difference_mean"].tolist() == [2.5]
    written = pd.read_csv(tmp_path / "synthetic" / "results.csv")
    assert collected.table["variant"].tolist() == written["variant"].tolist() == ["baseline", "mmt-kmeans"]
    assert collected.table["mAP_mean"].tolist() == [50.0, 52.5]

"""Collecting a plan's done runs into tables and figures; runs that are not done are named apart."""

from __future__ import annotations

import sys
from pathlib import Path

from mmt_lib.experiments.notebook import execute_notebook
from mmt_lib.experiments.plan import Run, run_hashes, run_state
from mmt_lib.runtime.checkpoints import METRICS_FILE, read_metrics
from mmt_lib.runtime.commandline import Refusal
from mmt_lib.runtime.paths import project_path


def collect_grid(profile: str, runs_dir: Path, runs: list[Run]) -> int:
    """Tables of the plan's done runs; stale, unfinished and corrupt runs are listed apart (exit 1)."""
    from mmt_lib.experiments.results import collect

    profile_dir = runs_dir / profile
    if not profile_dir.is_dir():
        raise Refusal(f"--runs-dir {runs_dir} holds no runs of profile {profile!r} (no folder {profile_dir}): "
                      "`batch run` with the same arguments first")
    hashes = run_hashes(runs)
    states = {r.run_id: run_state(r, hashes[r.run_id]) for r in runs}
    current = [r.run_id for r in runs if states[r.run_id] == "done"]
    table = collect(profile_dir, current).table
    if len(table):
        execute_notebook("04_results", profile_dir / "04_results.ipynb",
                         {"profile": profile, "runs_dir": str(runs_dir), "run_ids": current})
        print((profile_dir / "results.md").read_text())
        print(f"{len(table)} rows from {len(current)} done runs -> {profile_dir / 'results.csv'}; figures in "
              f"{profile_dir / 'figures'}; tables and curves in {profile_dir / '04_results.ipynb'}")
    else:
        print(f"no done run of the plan has results: {profile_dir / 'results.csv'} is empty", file=sys.stderr)
    planned = {project_path(r.parameters["out_dir"]) for r in runs}
    outside = [p.parent for p in profile_dir.glob(f"*/*/seed*/{METRICS_FILE}") if p.parent not in planned]
    if outside:
        print(f"{len(outside)} run folder(s) under {profile_dir} are outside this plan and were left out "
              "(give collect the --seeds, --tasks, --only and --param that run was given)", file=sys.stderr)
    return report_skipped(runs, states)


def collect_study_runs(name: str, profile_dir: Path, runs: list[Run]) -> int:
    """The study's table and figure from its done runs; the others are listed apart (exit 1)."""
    from mmt_lib.experiments.results import collect_study

    hashes = run_hashes(runs)
    states = {r.run_id: run_state(r, hashes[r.run_id]) for r in runs}
    table = collect_study(profile_dir, name, [r.run_id for r in runs if states[r.run_id] == "done"])
    if len(table):
        print((profile_dir / "study.md").read_text())
        print(f"-> {profile_dir / 'study.csv'}, {profile_dir / 'figures' / 'study_mAP.png'}; the results notebook "
              "(04_results) shows them too")
    else:
        print(f"no done run of study {name} has results yet", file=sys.stderr)
    return report_skipped(runs, states)


def report_skipped(runs: list[Run], states: dict[str, str]) -> int:
    """Name the runs a table left out and why; 1 if there are any."""
    skipped = [r for r in runs if states[r.run_id] != "done"]
    for state, why in (("stale", "finished under an older hash (notebook, parameters, library or upstream "
                                 "changed): `batch run` redoes them"),
                       ("unfinished", "started but not finished: `batch run` resumes them"),
                       ("todo", "never started: `batch run` runs them")):
        ids = [r.run_id for r in skipped if states[r.run_id] == state]
        if ids:
            print(f"not reported, {len(ids)} {state} run(s), {why}: {', '.join(ids)}", file=sys.stderr)
    for r in skipped:
        if states[r.run_id] == "corrupt":
            try:
                read_metrics(project_path(r.parameters["out_dir"]) / METRICS_FILE)
            except ValueError as err:
                print(f"not reported, corrupt: {err}", file=sys.stderr)
    return 1 if skipped else 0



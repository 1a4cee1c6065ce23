"""The papermill batch driver: ``python -m mmt_lib.batch {plan,run,collect}``.

``plan`` lists a profile's grid (the four tasks, the Table 2 variants, the Stage I runs they need and
one noise notebook per task and seed: ``mmt_lib.experiments.plan``); each run executes one notebook
with papermill into ``runs/<profile>/<task>/<variant>/seed<k>/``.

Your own data: ``--data real --data-root DIR`` runs the named tasks on the real datasets under DIR
(into ``runs/real/<profile>/`` on a profile of synthetic data, unless ``--runs-dir`` says otherwise);
``--tasks SRC2TGT`` or ``--source SRC --target TGT`` runs any two datasets the parsers read, e.g. a
folder of your own in the ``folder`` layout by its name (see ``task_specs``); a custom target's
k-means needs ``--param 'overrides={"mmt": {"num_clusters": K}}'``.

A run is done only when its ``metrics.json`` exists and carries the run's hash: the notebook's
code cells, its parameters, the library version and the hashes of the runs it depends on
(``run_state`` says which of done, stale, unfinished, todo or corrupt a run is; ``plan``, ``run``
and ``collect`` all ask it). ``run`` skips done runs, resumes interrupted ones from their
checkpoint and starts changed ones afresh; ``collect`` reports done runs only.

``run`` holds the runs folder (``mmt_lib.runtime.runlock``) while it works. SIGINT or SIGTERM start no new
run, stop the running ones and their kernels, and end the driver within seconds, saying what to
rerun; its workers and their kernels also end when the driver is killed (``mmt_lib.runtime.lifeline``).
papermill, pyzmq and jupyter_client are imported only where a notebook executes.

This module is the command line; each verb's work lives in ``mmt_lib.experiments``: ``plan``, ``run``
(with ``schedule``, the order runs start in) and ``collect``.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from typing import Any

from mmt_lib.config import DOMAIN_DATASETS, PROFILES, TASKS
from mmt_lib.experiments.collect import collect_grid, collect_study_runs
from mmt_lib.experiments.plan import (Run, check_configs, check_parameters, default_runs_dir, plan, run_hashes,
                                      run_state, select, study_plan, with_parameters, with_stage0)
from mmt_lib.experiments.run import run_grid
from mmt_lib.experiments.studies import STUDIES
from mmt_lib.runtime import runlock
from mmt_lib.runtime.commandline import Refusal, refuse
from mmt_lib.runtime.paths import project_path

PROG = "python -m mmt_lib.batch"


def _parse_params(pairs: list[str]) -> dict[str, Any]:
    params = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"--param expects NAME=VALUE (VALUE as JSON or a plain string), got {pair!r}")
        name, raw = pair.split("=", 1)
        try:
            params[name] = json.loads(raw)
        except json.JSONDecodeError:
            params[name] = raw
    return params



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    what = {"plan": "list the runs of the plan with their state and hash",
            "run": "execute the runs of the plan that are not done",
            "collect": "tables and figures of the plan's done runs; give it the plan arguments run was given"}
    for name in ("plan", "run", "collect"):  # one set of arguments: a command repeats with another verb
        p = sub.add_parser(name, help=what[name], description=what[name],
                           epilog="Every verb takes every argument, so that a command can be repeated with another "
                                  "verb; --force, --fast, --jobs and --wait change only `run`.")
        p.add_argument("--profile", default="synthetic", choices=sorted(PROFILES))
        p.add_argument("--data", default=None, choices=sorted(DOMAIN_DATASETS),
                       help="the named tasks' datasets (default: the profile's)")
        p.add_argument("--runs-dir", default=None,
                       help="the folder that holds <profile>/<task>/<variant>/seed<k>/ (default: runs, or "
                            "runs/<data> for --data other than the profile's); a relative path starts at the "
                            "project folder, not at the current directory")
        p.add_argument("--data-root", default=None,
                       help="the folder holding the datasets (default: data); a relative path starts at the "
                            "project folder")
        p.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 1 (a study: its own seeds)")
        p.add_argument("--study", default=None, choices=sorted(STUDIES),
                       help="run a named study of the protocol instead of the grid (mmt_lib.experiments.studies), "
                            "into runs/studies/<study> unless --runs-dir says otherwise")
        p.add_argument("--tasks", nargs="+", default=None,
                       help=f"{', '.join(sorted(TASKS))} (default: all four), or SRC2TGT of any two datasets")
        p.add_argument("--source", default=None, help="a custom task's source dataset (with --target)")
        p.add_argument("--target", default=None)
        p.add_argument("--only", nargs="+", default=None, help="run-id globs, e.g. 'duke2market/mmt-*/*'")
        p.add_argument("--shard", default=None, help="i/n: this machine's share of the grid")
        p.add_argument("--param", nargs="+", default=[],
                       help="NAME=VALUE given to every notebook that declares NAME; the notebooks run in the "
                            "project folder, so a relative path (data_root=...) starts there")
        p.add_argument("--force", action="store_true", help="run: redo done runs too")
        p.add_argument("--fast", action="store_true",
                       help="run: let torch, oneDNN, MKL, faiss and numba pick this CPU's fastest kernels and "
                            "threads: faster, but the metrics then differ between CPUs (results mark such runs)")
        p.add_argument("--jobs", type=int, default=1, help="run: how many runs at a time")
        p.add_argument("--wait", action="store_true",
                       help="run: if another driver holds the runs folder, wait for it instead of refusing")
    args = parser.parse_args(argv)
    try:
        runs, runs_dir = planned_runs(args)
        if args.command == "collect":
            if args.study:
                return collect_study_runs(args.study, project_path(runs_dir) / args.profile, runs)
            return collect_grid(args.profile, project_path(runs_dir), runs)
        check_configs(runs)
        check_parameters(runs)
    except (ValueError, Refusal) as err:
        return refuse(f"{PROG} {args.command}", err)
    if args.command == "plan":
        hashes = run_hashes(runs)
        for r in runs:
            print(f"{run_state(r, hashes[r.run_id]):10s}  {r.notebook:22s}  {r.run_id:40s}  {hashes[r.run_id]}")
        return 0
    if args.jobs < 1:
        return refuse(f"{PROG} run", f"--jobs must be 1 or more, got {args.jobs}")
    tic = time.perf_counter()
    try:
        with runlock.driver_lock(project_path(runs_dir) / args.profile, args.shard, args.wait):
            outcome = run_grid(runs, force=args.force, jobs=args.jobs, fast=args.fast)
    except runlock.LockHeld as err:
        print(err, file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # only before run_grid began (waiting for the lock): it turns SIGINT into a stop
        print("stopped before any run started", file=sys.stderr)
        return 128 + signal.SIGINT
    for f in outcome.failures:
        print(f"FAILED {f['run']}: {f['error']} (cell {f['cell']}, notebook {f['notebook']})", file=sys.stderr)
    if outcome.stopped_by is not None:
        print(f"stopped by {signal.Signals(outcome.stopped_by).name} after {time.perf_counter() - tic:.0f} s: "
              f"{len(runs) - len(outcome.unfinished)} of {len(runs)} runs done, finished now: "
              f"{', '.join(outcome.finished) or 'none'}; to rerun (the same command resumes them from their "
              f"checkpoints): {', '.join(outcome.unfinished)}", file=sys.stderr)
        return 128 + outcome.stopped_by
    print(f"{len(runs)} runs in the plan, {len(outcome.failures)} failed, {time.perf_counter() - tic:.0f} s")
    if (share := outcome.utilisation()) is not None:
        print(f"{outcome.busy_seconds / 60:.1f} run-minutes in {outcome.wall_seconds / 60:.1f} min on "
              f"{outcome.jobs} job(s): utilisation {share:.0%}")
    return 1 if outcome.failures else 0


def planned_runs(args: argparse.Namespace) -> tuple[list[Run], str]:
    """The runs the arguments name, with their parameters, and the runs folder they live under."""
    params = _parse_params(args.param)
    data, data_root = args.data or params.get("data"), args.data_root or params.get("data_root")
    if args.study:
        given = [flag for flag, value in (("--data", data), ("--data-root", data_root), ("--tasks", args.tasks),
                                          ("--source", args.source), ("--param overrides", params.get("overrides")))
                 if value]
        if given:
            raise Refusal(f"--study {args.study} sets its own task and overrides per run; drop {', '.join(given)}")
        runs_dir = args.runs_dir or f"runs/studies/{args.study}"
        grid = study_plan(args.profile, runs_dir, args.study, args.seeds)
    else:
        runs_dir = args.runs_dir or default_runs_dir(args.profile, data)
        grid = plan(args.profile, runs_dir, args.seeds, _tasks(args), data, data_root)
    return with_parameters(with_stage0(select(grid, args.only, args.shard), params), params), runs_dir


def _tasks(args: argparse.Namespace) -> list[str | tuple[str, str]] | None:
    """``--tasks`` plus the ``--source``/``--target`` pair; ``None`` (every named task) when neither is given."""
    if (args.source is None) != (args.target is None):
        raise Refusal("--source and --target go together: give both dataset names, or neither")
    pair = [(args.source, args.target)] if args.source else []
    return (args.tasks or []) + pair or None




if __name__ == "__main__":
    sys.exit(main())

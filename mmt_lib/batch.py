"""The papermill batch driver: ``python -m mmt_lib.batch {plan,run,collect}``.

``plan`` expands a profile's grid: the four tasks x {direct, baseline, mmt-kmeans, mmt-dbscan},
the Table 2 variants on duke2market and market2duke, x seeds, with the Stage I runs they need
(MMT seed k trains the Stage I pair with seeds 2k-1 and 2k; k = 1 gives the paper's seeds 1 and 2)
and one pseudo-label-noise notebook per task and seed. Each run executes one notebook with
papermill into ``runs/<profile>/<task>/<variant>/seed<k>/``.

Your own data: ``--data real --data-root DIR`` runs the named tasks on the real datasets under DIR
(into ``runs/real/<profile>/`` on a profile of synthetic data, unless ``--runs-dir`` says otherwise);
``--tasks SRC2TGT`` or ``--source SRC --target TGT`` runs any two datasets the parsers read, e.g. a
folder of your own in the ``folder`` layout by its name (see ``task_specs``); a custom target's
k-means needs ``--param 'overrides={"mmt": {"num_clusters": K}}'``.

A run is done only when its ``metrics.json`` exists and carries the run's hash: the notebook's
code cells, its parameters, the library version and the hashes of the runs it depends on.
``run`` skips done runs, resumes interrupted ones from their checkpoint and starts changed ones
afresh.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import papermill
import zmq
from jupyter_client.manager import AsyncKernelManager
from papermill.exceptions import PapermillExecutionError
from tqdm.auto import tqdm

from mmt_lib import __version__
from mmt_lib.checkpoints import METRICS_FILE, write_json_atomic
from mmt_lib.config import (
    ABLATION_TASKS, ABLATION_VARIANTS, DOMAIN_DATASETS, MAIN_VARIANTS, PROFILES, TASKS, resolve,
)
from mmt_lib.data.registry import is_folder_dataset, known_datasets
from mmt_lib.paths import PROJECT_ROOT, project_path

NOTEBOOKS = PROJECT_ROOT / "notebooks"
RUN_RECORD = "run.json"


class _CurveKernelManager(AsyncKernelManager):
    """Encrypts the kernel's local TCP link (CurveZMQ) where pyzmq and jupyter_client can.

    Recent ipykernel prints a plain-TCP warning at every kernel start: once per run in a batch log.
    """

    def __init__(self, **kwargs: Any) -> None:
        if zmq.has("curve") and "transport_encryption" in AsyncKernelManager.class_trait_names():
            kwargs.setdefault("transport_encryption", "auto")
        super().__init__(**kwargs)


def execute_notebook(notebook: str, output: Path, parameters: dict[str, Any]) -> None:
    """Run ``notebooks/<notebook>.ipynb`` with papermill into `output`, from the project root."""
    papermill.execute_notebook(str(NOTEBOOKS / f"{notebook}.ipynb"), str(output), parameters=parameters,
                               kernel_name="python3", progress_bar=False, cwd=str(PROJECT_ROOT),
                               kernel_manager_class=_CurveKernelManager)


@dataclass(frozen=True)
class Run:
    """One notebook execution with its parameters and the runs it depends on."""

    notebook: str
    task: str
    variant: str
    seed: int
    parameters: dict[str, Any] = field(hash=False)
    upstream: tuple[str, ...] = ()

    @property
    def run_id(self) -> str:
        return f"{self.task}/{self.variant}/seed{self.seed}"

    @property
    def group(self) -> str:
        """Runs of one group depend only on each other: the unit of ``--shard``."""
        return self.parameters.get("group", self.run_id)


def plan(
    profile: str,
    runs_dir: str | Path = "runs",
    seeds: list[int] | None = None,
    tasks: list[str | tuple[str, str]] | None = None,
    data: str | None = None,
    data_root: str | None = None,
) -> list[Run]:
    """The grid for ``profile`` in dependency order.

    ``tasks`` are the paper's task names, custom ``SRC2TGT`` names or (source, target) pairs of
    dataset names (``task_specs``); ``data`` and ``data_root`` go to every notebook that reads data.
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; known: {sorted(PROFILES)}")
    seeds = seeds or [1]
    spec = PROFILES[profile]
    specs = task_specs(tasks or list(TASKS), data or spec["data_kind"], data_root or "data")
    if data == spec["data_kind"]:
        data = None  # the profile's own data: the same runs, the same hashes, as without --data
    reading = {name: value for name, value in (("data", data), ("data_root", data_root)) if value is not None}
    base = Path(runs_dir) / profile
    runs: list[Run] = []

    def add(notebook: str, task: str, variant: str, seed: int, params: dict, upstream=(), group=""):
        run_id = f"{task}/{variant}/seed{seed}"
        full = {"profile": profile, "seed": seed, "out_dir": str(base / run_id), **params, "group": group}
        runs.append(Run(notebook, task, variant, seed, full, tuple(upstream)))
        return run_id

    tour = {"datasets": list(dict.fromkeys(name for pair in specs.values() for name in pair)),
            "synthetic_size": spec["data"].get("synthetic_size", "default")}
    add("00_data_tour", "data", "tour", 0, {**tour, **({"data_root": data_root} if data_root else {})}, group="data")
    for task, (source, target) in specs.items():
        task_params = {"task": task} if task in TASKS else {"task": task, "source": source, "target": target}
        for k in seeds:
            group = f"{task}/seed{k}"
            pair = [add("01_pretrain", task, "pretrain", s, {**task_params, **reading}, group=group)
                    for s in (2 * k - 1, 2 * k)]
            pair_dirs = [str(base / rid) for rid in pair]
            variants = MAIN_VARIANTS + (ABLATION_VARIANTS if task in ABLATION_TASKS else [])
            done = {v: add("02_mmt", task, v, k,
                           {**task_params, **reading, "variant": v, "pretrained_dirs": pair_dirs}, pair, group)
                    for v in variants}
            compare = {"baseline": done["baseline"], "mmt-kmeans": done["mmt-kmeans"]}
            add("03_pseudo_label_noise", task, "noise", k,
                {"task": task, "run_dirs": {name: str(base / rid) for name, rid in compare.items()}},
                list(compare.values()), group)
    return runs


def task_specs(
    tasks: list[str | tuple[str, str]], data_kind: str, data_root: str | Path
) -> dict[str, tuple[str, str]]:
    """Each task's name and its (source, target) dataset names, in order.

    A task is one of the paper's four (its datasets are those of ``data_kind``), a pair of dataset
    names, or ``SRC2TGT`` where SRC and TGT each name a dataset: a parser's name (``market1501``,
    ``folder``...), a domain of ``data_kind`` (``market``, ``duke``, ``msmt``), or a folder under
    ``data_root`` in the ``folder`` layout. A custom task is named ``<source>2<target>`` by its
    dataset names, as ``config.resolve`` names it.
    """
    if data_kind not in DOMAIN_DATASETS:
        raise ValueError(f"data must be one of {sorted(DOMAIN_DATASETS)}, got {data_kind!r}")
    specs: dict[str, tuple[str, str]] = {}
    for task in tasks:
        if isinstance(task, str) and task in TASKS:
            src, tgt = (DOMAIN_DATASETS[data_kind][domain] for domain in TASKS[task])
            specs[task] = (src, tgt)
            continue
        pairs = [tuple(task)] if not isinstance(task, str) else [
            (task[:i], task[i + 1:]) for i, c in enumerate(task) if c == "2" and 0 < i < len(task) - 1]
        named = {(a, b) for a, b in ((dataset_name(x, data_kind, data_root), dataset_name(y, data_kind, data_root))
                                     for x, y in pairs) if a and b}
        if len(named) != 1:
            splits = " or ".join(f"{a} -> {b}" for a, b in sorted(named))
            why = f"is ambiguous ({splits}): use --source and --target" if named else "names no two datasets"
            raise ValueError(
                f"task {task!r} {why}. A task is one of {sorted(TASKS)} or SRC2TGT (or --source SRC --target TGT) "
                f"where each side is a dataset: {', '.join(sorted(DOMAIN_DATASETS[data_kind]))}, "
                f"{', '.join(known_datasets())}, or a folder under {project_path(data_root)} in the folder "
                f"layout (train/, query/, gallery/)")
        src, tgt = named.pop()
        specs[f"{src}2{tgt}"] = (src, tgt)
    return specs


def dataset_name(name: str, data_kind: str, data_root: str | Path) -> str | None:
    """The dataset name ``config.resolve`` takes for ``name`` (see ``task_specs``); ``None`` if none."""
    if name in DOMAIN_DATASETS[data_kind]:
        return DOMAIN_DATASETS[data_kind][name]
    if name.lower() in known_datasets():
        return name.lower()
    return name if is_folder_dataset(name, project_path(data_root)) else None


def default_runs_dir(profile: str, data: str | None) -> str:
    """``runs``; ``runs/<data>`` for data other than the profile's own, so that a grid of real data on
    the synthetic profile never replaces the synthetic grid's runs of the same task and seed."""
    return "runs" if data in (None, PROFILES[profile]["data_kind"]) else f"runs/{data}"


def check_configs(runs: list[Run]) -> None:
    """Resolve every training run's configuration before anything runs, so that a setting the library
    refuses (k-means on a custom target without ``mmt.num_clusters``, say) stops the batch at once."""
    stages = {"01_pretrain": "pretrain", "02_mmt": "mmt"}
    keys = ("profile", "task", "variant", "seed", "data", "data_root", "source", "target", "device", "overrides")
    for run in runs:
        if run.notebook in stages:
            try:
                resolve(stage=stages[run.notebook], **{k: run.parameters[k] for k in keys if k in run.parameters})
            except ValueError as err:
                raise ValueError(f"{run.run_id}: {err}") from None


def with_parameters(runs: list[Run], extra: dict[str, Any]) -> list[Run]:
    """Give each ``--param`` to every notebook that declares it; a name no notebook declares is refused."""
    declared = {nb: notebook_parameters(nb) for nb in {r.notebook for r in runs}}
    unknown = sorted(set(extra) - set().union(*declared.values()))
    if unknown:
        raise ValueError(f"parameter(s) {unknown} are declared by no notebook of the plan; "
                         f"declared: {sorted(set().union(*declared.values()))}")
    return [replace(r, parameters={**r.parameters, **{k: v for k, v in extra.items() if k in declared[r.notebook]}})
            for r in runs]


def notebook_parameters(notebook: str) -> set[str]:
    """The names declared in a notebook's ``parameters`` cell."""
    return set(papermill.inspect_notebook(str(NOTEBOOKS / f"{notebook}.ipynb")))


def check_parameters(runs: list[Run]) -> None:
    """Refuse, before anything runs, a parameter that a notebook does not declare."""
    declared = {nb: notebook_parameters(nb) for nb in {r.notebook for r in runs}}
    for run in runs:
        unknown = sorted(set(run.parameters) - declared[run.notebook] - {"group"})
        if unknown:
            raise ValueError(
                f"{run.run_id}: notebook {run.notebook}.ipynb has no parameter(s) {unknown}; "
                f"it declares {sorted(declared[run.notebook])}"
            )


def code_hash(notebook: str) -> str:
    cells = json.loads((NOTEBOOKS / f"{notebook}.ipynb").read_text())["cells"]
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    return hashlib.sha256(code.encode()).hexdigest()


def library_fingerprint() -> str:
    """The library's version and the hash of its source: any change to the code that trains is a new version."""
    digest = hashlib.sha256(__version__.encode())
    for path in sorted((PROJECT_ROOT / "mmt_lib").rglob("*.py")):
        digest.update(path.relative_to(PROJECT_ROOT).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def run_hashes(runs: list[Run]) -> dict[str, str]:
    """Each run's hash, folding in its upstream runs' hashes so a change flows downstream."""
    hashes: dict[str, str] = {}
    library = library_fingerprint()
    for run in runs:
        params = {k: v for k, v in run.parameters.items() if k != "group"}
        payload = json.dumps({"notebook": code_hash(run.notebook), "parameters": params,
                              "library": library, "upstream": [hashes[u] for u in run.upstream]},
                             sort_keys=True)
        hashes[run.run_id] = hashlib.sha256(payload.encode()).hexdigest()[:16]
    return hashes


def is_done(run: Run, run_hash: str) -> bool:
    path = project_path(run.parameters["out_dir"]) / METRICS_FILE
    if not path.exists():
        return False
    try:
        return json.loads(path.read_text()).get("run_hash") == run_hash
    except json.JSONDecodeError:
        return False


def select(runs: list[Run], only: list[str] | None, shard: str | None) -> list[Run]:
    """Runs matching ``--only`` globs (plus what they depend on) in shard ``i/n`` (split by group)."""
    chosen = runs
    if shard:
        index, count = _parse_shard(shard)
        groups = sorted({r.group for r in runs})
        mine = {g for i, g in enumerate(groups) if i % count == index}
        chosen = [r for r in chosen if r.group in mine]
    if only:
        wanted = {r.run_id for r in chosen if any(fnmatch.fnmatch(r.run_id, pat) for pat in only)}
        if not wanted:
            raise ValueError(f"--only {only} matches no run of the plan")
        by_id = {r.run_id: r for r in runs}
        stack = list(wanted)
        while stack:
            for up in by_id[stack.pop()].upstream:
                if up not in wanted:
                    wanted.add(up)
                    stack.append(up)
        chosen = [r for r in runs if r.run_id in wanted]
    return chosen


def _parse_shard(shard: str) -> tuple[int, int]:
    try:
        index, count = (int(x) for x in shard.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like i/n (e.g. 0/4), got {shard!r}") from None
    if not 0 <= index < count:
        raise ValueError(f"--shard {shard!r}: need 0 <= i < n")
    return index, count


def execute(run: Run, run_hash: str, force: bool, threads: int, gpu: str | None) -> dict[str, Any] | None:
    """Execute one run with papermill; returns a failure record or None. Runs in a worker process."""
    out_dir = project_path(run.parameters["out_dir"])
    record = out_dir / RUN_RECORD
    previous = json.loads(record.read_text()).get("run_hash") if record.exists() else None
    if force or previous != run_hash:
        shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(record, {"run_hash": run_hash, "notebook": run.notebook, "started": time.time()})
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    params = {k: v for k, v in run.parameters.items() if k != "group"}
    output = out_dir / f"{run.notebook}.ipynb"
    try:
        execute_notebook(run.notebook, output, params)
    except PapermillExecutionError as err:
        return {"run": run.run_id, "notebook": str(output), "cell": err.exec_count,
                "error": f"{err.ename}: {err.evalue}"}
    except Exception as err:
        return {"run": run.run_id, "notebook": str(output), "cell": None, "error": f"{type(err).__name__}: {err}"}
    metrics_path = out_dir / METRICS_FILE
    if not metrics_path.exists():
        return {"run": run.run_id, "notebook": str(output), "cell": None,
                "error": "the notebook finished without writing metrics.json"}
    metrics = json.loads(metrics_path.read_text())
    metrics["run_hash"] = run_hash
    write_json_atomic(metrics_path, metrics)
    return None


def run_grid(runs: list[Run], force: bool = False, jobs: int = 1, progress: bool = True) -> list[dict[str, Any]]:
    """Execute what is not done, wave by wave (a run starts once its upstream runs are done)."""
    check_parameters(runs)
    hashes = run_hashes(runs)
    todo = [r for r in runs if force or not is_done(r, hashes[r.run_id])]
    failures: list[dict[str, Any]] = []
    failed: set[str] = set()
    threads = max(1, (os.cpu_count() or 1) // max(1, jobs))
    gpus = _visible_gpus()
    bar = tqdm(total=len(runs), initial=len(runs) - len(todo), desc="runs", unit="run", disable=not progress)
    pending = list(todo)
    with ProcessPoolExecutor(max_workers=max(1, jobs)) as pool:
        while pending:
            ready_ids = {r.run_id for r in pending}
            wave = [r for r in pending if not any(u in ready_ids for u in r.upstream)]
            pending = [r for r in pending if r not in wave]
            blocked = [r for r in wave if any(u in failed for u in r.upstream)]
            for r in blocked:
                failed.add(r.run_id)
                failures.append({"run": r.run_id, "notebook": None, "cell": None,
                                 "error": "skipped: an upstream run failed"})
                bar.update(1)
            wave = [r for r in wave if r not in blocked]
            futures = {pool.submit(execute, r, hashes[r.run_id], force, threads,
                                   gpus[i % len(gpus)] if gpus else None): r for i, r in enumerate(wave)}
            for future, r in futures.items():
                failure = future.result()
                if failure:
                    failed.add(r.run_id)
                    failures.append(failure)
                bar.update(1)
    bar.close()
    return failures


def _visible_gpus() -> list[str]:
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


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
    parser = argparse.ArgumentParser(prog="python -m mmt_lib.batch", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("plan", "run", "collect"):
        p = sub.add_parser(name)
        p.add_argument("--profile", default="synthetic", choices=sorted(PROFILES))
        p.add_argument("--data", default=None, choices=sorted(DOMAIN_DATASETS),
                       help="the named tasks' datasets (default: the profile's)")
        p.add_argument("--runs-dir", default=None,
                       help="default: runs, or runs/<data> for --data other than the profile's; "
                            "relative paths start at the project folder")
        if name != "collect":
            p.add_argument("--data-root", default=None, help="the folder holding the datasets (default: data)")
            p.add_argument("--seeds", type=int, nargs="+", default=[1])
            p.add_argument("--tasks", nargs="+", default=None,
                           help=f"{', '.join(sorted(TASKS))} (default: all four), or SRC2TGT of any two datasets")
            p.add_argument("--source", default=None, help="a custom task's source dataset (with --target)")
            p.add_argument("--target", default=None)
            p.add_argument("--only", nargs="+", default=None, help="run-id globs, e.g. 'duke2market/mmt-*/*'")
            p.add_argument("--shard", default=None, help="i/n: this machine's share of the grid")
            p.add_argument("--param", nargs="+", default=[], help="NAME=VALUE given to every notebook")
        if name == "run":
            p.add_argument("--force", action="store_true")
            p.add_argument("--jobs", type=int, default=1)
    args = parser.parse_args(argv)

    if args.command == "collect":
        return _collect(args.profile, project_path(args.runs_dir or default_runs_dir(args.profile, args.data)))
    params = _parse_params(args.param)
    data, data_root = args.data or params.get("data"), args.data_root or params.get("data_root")
    runs_dir = args.runs_dir or default_runs_dir(args.profile, data)
    runs = with_parameters(select(plan(args.profile, runs_dir, args.seeds, _tasks(args), data, data_root),
                                  args.only, args.shard), params)
    check_parameters(runs)
    check_configs(runs)
    if args.command == "plan":
        hashes = run_hashes(runs)
        for r in runs:
            state = "done" if is_done(r, hashes[r.run_id]) else "todo"
            print(f"{state:4s}  {r.notebook:22s}  {r.run_id:40s}  {hashes[r.run_id]}")
        return 0
    tic = time.perf_counter()
    failures = run_grid(runs, force=args.force, jobs=args.jobs)
    print(f"{len(runs)} runs in the plan, {len(failures)} failed, {time.perf_counter() - tic:.0f} s")
    for f in failures:
        print(f"FAILED {f['run']}: {f['error']} (cell {f['cell']}, notebook {f['notebook']})", file=sys.stderr)
    return 1 if failures else 0


def _tasks(args: argparse.Namespace) -> list[str | tuple[str, str]] | None:
    """``--tasks`` plus the ``--source``/``--target`` pair; ``None`` (every named task) when neither is given."""
    if (args.source is None) != (args.target is None):
        raise SystemExit("--source and --target go together: give both dataset names, or neither")
    pair = [(args.source, args.target)] if args.source else []
    return (args.tasks or []) + pair or None


def _collect(profile: str, runs_dir: Path) -> int:
    from mmt_lib.results import collect

    profile_dir = runs_dir / profile
    if not profile_dir.is_dir():
        raise SystemExit(f"no runs for profile {profile!r} under {profile_dir}: run `batch run` first")
    table = collect(profile_dir)
    execute_notebook("04_results", profile_dir / "04_results.ipynb", {"profile": profile, "runs_dir": str(runs_dir)})
    print((profile_dir / "results.md").read_text())
    print(f"{len(table)} rows -> {profile_dir / 'results.csv'}; figures in {profile_dir / 'figures'}; "
          f"tables and curves in {profile_dir / '04_results.ipynb'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

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
code cells, its parameters, the library version and the hashes of the runs it depends on
(``run_state`` says which of done, stale, unfinished, todo or corrupt a run is; ``plan``, ``run``
and ``collect`` all ask it). ``run`` skips done runs, resumes interrupted ones from their
checkpoint and starts changed ones afresh; ``collect`` reports done runs only.

``run`` holds the runs folder (``mmt_lib.runlock``) while it works. SIGINT or SIGTERM start no new
run, stop the running ones and their kernels, and end the driver within seconds, saying what to
rerun; its workers and their kernels also end when the driver is killed (``mmt_lib.lifeline``).
papermill, pyzmq and jupyter_client are imported only where a notebook executes.
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import functools
import hashlib
import json
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mmt_lib import __version__, config, lifeline, reproducible, runlock
from mmt_lib.checkpoints import METRICS_FILE, read_metrics, write_json_atomic
from mmt_lib.config import ABLATION_TASKS, ABLATION_VARIANTS, DOMAIN_DATASETS, MAIN_VARIANTS, PROFILES, TASKS
from mmt_lib.paths import PROJECT_ROOT, project_path
from mmt_lib.progress import tqdm
from mmt_lib.studies import STUDIES

NOTEBOOKS = PROJECT_ROOT / "notebooks"
RUN_RECORD = "run.json"
RUN_STATES = ("done", "stale", "unfinished", "todo", "corrupt")
"""done: metrics carry the current hash; stale: metrics of an older hash; unfinished: started, no
stamped metrics yet; todo: never started; corrupt: ``metrics.json`` is not readable JSON."""

_KERNELS: list[Any] = []
"""The kernel managers this worker process started, so that a stop can take their kernels along."""


@functools.cache
def _kernel_manager_class() -> type:
    """jupyter_client's async kernel manager, with an encrypted link and a kernel that dies with its worker.

    CurveZMQ encrypts the kernel's local TCP link where pyzmq and jupyter_client can: recent
    ipykernel prints a plain-TCP warning at every kernel start, once per run in a batch log. The
    kernel leads its own process group (jupyter_client starts it in a new session, out of reach of
    the terminal's Ctrl-C) and receives SIGKILL when the worker that started it ends.
    """
    import zmq
    from jupyter_client.manager import AsyncKernelManager

    class KernelManager(AsyncKernelManager):
        def __init__(self, **kwargs: Any) -> None:
            if zmq.has("curve") and "transport_encryption" in AsyncKernelManager.class_trait_names():
                kwargs.setdefault("transport_encryption", "auto")
            super().__init__(**kwargs)

        async def _async_launch_kernel(self, kernel_cmd: list[str], **kw: Any) -> None:
            kw["preexec_fn"] = lifeline.dying_with_parent(signal.SIGKILL)
            await super()._async_launch_kernel(kernel_cmd, **kw)
            _KERNELS.append(self)

    return KernelManager


def execute_notebook(notebook: str, output: Path, parameters: dict[str, Any]) -> None:
    """Run ``notebooks/<notebook>.ipynb`` with papermill into `output`, from the project root.

    Each cell's text output is stored as the terminal would show it: a progress bar's redraws
    (carriage returns) collapse to its last state, one line per bar.
    """
    import papermill

    papermill.execute_notebook(str(NOTEBOOKS / f"{notebook}.ipynb"), str(output), parameters=parameters,
                               kernel_name="python3", progress_bar=False, cwd=str(PROJECT_ROOT),
                               kernel_manager_class=_kernel_manager_class(), coalesce_streams=True)


@dataclass(frozen=True)
class Run:
    """One notebook execution with its parameters and the runs it depends on.

    Relative paths among the parameters (``out_dir``, ``data_root``) start at the project folder:
    the notebooks run there, and the driver resolves ``out_dir`` against it too.
    """

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

    A relative ``runs_dir`` starts at the project folder (where the notebooks run), not at the
    current directory: the runs' ``out_dir`` parameters keep it relative. ``tasks`` are the paper's
    task names, custom ``SRC2TGT`` names or (source, target) pairs of dataset names (``task_specs``);
    ``data`` and ``data_root`` go to every notebook that reads data.
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

    custom = any(task not in TASKS for task in specs) or data not in (None, spec["data_kind"])
    tour = {"datasets": list(dict.fromkeys(name for pair in specs.values() for name in pair))} if custom else {}
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


def study_plan(profile: str, runs_dir: str | Path, name: str, seeds: list[int] | None = None) -> list[Run]:
    """A named study's grid (``mmt_lib.studies``): per seed, a Stage I pair and direct transfer for each
    setting Stage I sees, then every variant at every combination of levels that makes a difference
    to it. Run folders are ``<task>/<variant>.<level>.<level>/seed<k>`` under ``<runs_dir>/<profile>``."""
    from mmt_lib.studies import get_study, stage_one_settings, stage_two_settings

    study = get_study(name)
    base = Path(runs_dir) / profile
    runs: list[Run] = []

    def add(notebook: str, label: str, seed: int, params: dict, upstream=(), group=""):
        run = Run(notebook, study.task, label, seed,
                  {"profile": profile, "seed": seed, "out_dir": str(base / study.task / label / f"seed{seed}"),
                   "task": study.task, **params, "group": group}, tuple(upstream))
        runs.append(run)
        return run.run_id

    for k in seeds or list(study.seeds):
        group = f"{study.task}/seed{k}"
        pairs = {}
        for label, overrides in stage_one_settings(study):
            pair = [add("01_pretrain", f"pretrain.{label}", s, {"overrides": overrides}, group=group)
                    for s in (2 * k - 1, 2 * k)]
            pairs[label] = pair
            add("02_mmt", f"direct.{label}", k, {"variant": "direct", "overrides": overrides,
                                                 "pretrained_dirs": [str(base / rid) for rid in pair]}, pair, group)
        for variant in study.variants:
            for label, stage_one, overrides in stage_two_settings(study, variant):
                pair = pairs[stage_one]
                add("02_mmt", f"{variant}.{label}", k, {"variant": variant, "overrides": overrides,
                                                        "pretrained_dirs": [str(base / rid) for rid in pair]},
                    pair, group)
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
    from mmt_lib.data.registry import known_datasets

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
    from mmt_lib.data.registry import is_folder_dataset, known_datasets

    if name in DOMAIN_DATASETS[data_kind]:
        return DOMAIN_DATASETS[data_kind][name]
    if name.lower() in known_datasets():
        return name.lower()
    return name if is_folder_dataset(name, project_path(data_root)) else None


def default_runs_dir(profile: str, data: str | None) -> str:
    """``runs``; ``runs/<data>`` for data other than the profile's own, so that a grid of real data on
    the synthetic profile never replaces the synthetic grid's runs of the same task and seed."""
    return "runs" if data in (None, PROFILES[profile]["data_kind"]) else f"runs/{data}"


_CONFIG_KEYS = ("profile", "task", "variant", "seed", "data", "data_root", "source", "target", "device", "overrides")
_STAGES = {"01_pretrain": "pretrain", "02_mmt": "mmt"}


def run_config(run: Run, extra: dict[str, Any] | None = None) -> config.RunConfig:
    """The resolved configuration of a training run (notebook 01 or 02), with the ``--param`` values
    ``extra`` it will receive; a setting the library refuses is named with the run."""
    given = {**run.parameters, **(extra or {})}
    try:
        return config.resolve(stage=_STAGES[run.notebook], **{k: v for k, v in given.items() if k in _CONFIG_KEYS})
    except ValueError as err:
        raise ValueError(f"{run.run_id}: {err}") from None


def check_configs(runs: list[Run]) -> None:
    """Resolve every training run's configuration before anything runs, so that a setting the library
    refuses (k-means on a custom target without ``mmt.num_clusters``, say) stops the batch at once."""
    for run in runs:
        if run.notebook in _STAGES:
            run_config(run)


STAGE0_RUN = "stage0/start/seed0"


def with_stage0(runs: list[Run], extra: dict[str, Any] | None = None) -> list[Run]:
    """Put the Stage 0 notebook first when the Stage I runs start from ``model.pretrained="stage0"``
    (the profile's setting, or ``overrides`` among the ``--param`` values ``extra``), as their upstream:
    the start is built once, shown with its images and training curve, and every Stage I run then finds
    it in the cache. A plan whose Stage I runs start otherwise is returned unchanged."""
    resolved = {r.run_id: run_config(r, extra) for r in runs if r.notebook == "01_pretrain"}
    users = {rid for rid, cfg in resolved.items() if cfg.model.pretrained == config.STAGE0}
    if not users:
        return runs
    from mmt_lib.stage0 import stage0_config

    starts: dict[Any, str] = {}
    for rid in sorted(users):
        starts.setdefault(stage0_config(resolved[rid]), rid)
    if len(starts) > 1:
        raise ValueError(f"the Stage I runs of one plan must share one Stage 0 start, got {len(starts)}: "
                         + "; ".join(f"{rid}: {start}" for start, rid in starts.items()))
    first = next(r.parameters for r in runs if r.run_id in users)
    params = {"profile": first["profile"], "out_dir": str(Path(first["out_dir"]).parents[2] / STAGE0_RUN),
              **({"data_root": first["data_root"]} if "data_root" in first else {}), "group": "stage0"}
    step = Run("00_stage0", "stage0", "start", 0, params)
    return [step] + [replace(r, upstream=(STAGE0_RUN, *r.upstream)) if r.run_id in users else r for r in runs]


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
    """The names assigned in a notebook's ``parameters`` cell (plain literals, so ``ast`` reads them
    without papermill)."""
    cells = json.loads((NOTEBOOKS / f"{notebook}.ipynb").read_text())["cells"]
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if not tagged:
        return set()
    names = set()
    for statement in ast.parse("".join(tagged[0]["source"])).body:
        targets = statement.targets if isinstance(statement, ast.Assign) else [getattr(statement, "target", None)]
        names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


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


def run_state(run: Run, run_hash: str) -> str:
    """One of ``RUN_STATES``: the one judgement of a run's folder that ``plan``, ``run`` and ``collect`` share."""
    out_dir = project_path(run.parameters["out_dir"])
    path = out_dir / METRICS_FILE
    if not path.exists():
        return "unfinished" if (out_dir / RUN_RECORD).exists() else "todo"
    try:
        stamp = read_metrics(path).get("run_hash")
    except ValueError:
        return "corrupt"
    if stamp is None:  # the notebook wrote its metrics; the driver had not stamped them yet
        return "unfinished"
    return "done" if stamp == run_hash else "stale"


def is_done(run: Run, run_hash: str) -> bool:
    return run_state(run, run_hash) == "done"


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


def execute(run: Run, run_hash: str, force: bool, numerics: dict[str, Any], gpu: str | None) -> dict[str, Any] | None:
    """Execute one run with papermill; returns a failure record or None. Runs in a worker process.

    ``numerics`` (``reproducible.describe``) holds the environment the notebook's kernel starts with:
    its pins are read when the kernel's libraries load. It is recorded in ``run.json`` and ``metrics.json``.
    """
    from papermill.exceptions import PapermillExecutionError

    out_dir = project_path(run.parameters["out_dir"])
    record = out_dir / RUN_RECORD
    previous = json.loads(record.read_text()).get("run_hash") if record.exists() else None
    if force or previous != run_hash:
        shutil.rmtree(out_dir, ignore_errors=True)
    for partial in out_dir.rglob(".*.tmp"):  # files a killed run was writing (the lock says no one else is)
        partial.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(record, {"run_hash": run_hash, "notebook": run.notebook, "started": time.time(),
                               "numerics": numerics})
    os.environ.update(numerics["env"])
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
    try:
        metrics = read_metrics(metrics_path)
    except ValueError as err:
        return {"run": run.run_id, "notebook": str(output), "cell": None, "error": str(err)}
    metrics["run_hash"] = run_hash
    metrics["numerics"] = numerics
    write_json_atomic(metrics_path, metrics)
    return None


def _work(run: Run, run_hash: str, force: bool, numerics: dict[str, Any], gpu: str | None, driver: int,
          results: multiprocessing.connection.Connection) -> None:
    """A worker process: one run, its failure record (or None) sent back, then exit.

    It ends when the driver ends, however the driver ends, and takes its kernel along; SIGINT
    (the terminal's Ctrl-C reaches the whole process group) is the driver's to handle, so it is
    ignored here.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # a Ctrl-C pending since the start is dropped
    lifeline.die_with_parent(signal.SIGTERM, driver)
    signal.signal(signal.SIGTERM, _end_worker)
    results.send(execute(run, run_hash, force, numerics, gpu))
    results.close()


def _end_worker(signum: int, frame: Any) -> None:
    """Stop this worker's kernel (its whole process group) and leave at once, without a traceback."""
    for manager in _KERNELS:
        process = manager.provisioner.process if manager.provisioner else None
        try:
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            if manager.connection_file:
                Path(manager.connection_file).unlink(missing_ok=True)
        except OSError:
            continue
    os._exit(128 + signum)


@dataclass
class _Worker:
    process: multiprocessing.process.BaseProcess
    results: multiprocessing.connection.Connection
    slot: int

    def outcome(self, run: Run) -> dict[str, Any] | None:
        if self.results.poll():
            return self.results.recv()
        return {"run": run.run_id, "notebook": None, "cell": None,
                "error": f"the worker process ended without a result (exit code {self.process.exitcode})"}


class _StopRequest:
    """SIGINT and SIGTERM become a request to stop, read between steps (``signum``); handlers restored after."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._request)
        return self

    def _request(self, signum: int, frame: Any) -> None:
        self.signum = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@dataclass
class Outcome:
    """What ``run_grid`` did: failure records, the runs it finished, the runs of the plan still not
    done, and the signal that stopped it (None: it ran to the end)."""

    failures: list[dict[str, Any]]
    finished: list[str]
    unfinished: list[str]
    stopped_by: int | None = None


def run_grid(
    runs: list[Run], force: bool = False, jobs: int = 1, progress: bool = True, fast: bool = False
) -> Outcome:
    """Execute what is not done, up to ``jobs`` at a time; a run starts once its upstream runs are done.

    Every notebook runs in reproducible mode (``mmt_lib.reproducible``: the same metrics on any
    x86-64 CPU) unless ``fast``, which lets the libraries pick their fastest kernels for this CPU.

    On SIGINT or SIGTERM no further run starts and the running ones are stopped, their kernels with
    them; what they checkpointed stays, so the same command resumes them.
    """
    check_parameters(runs)
    with _StopRequest() as stop:
        hashes = run_hashes(runs)
        todo = [r for r in runs if force or not is_done(r, hashes[r.run_id])]
        done = {r.run_id for r in runs} - {r.run_id for r in todo}
        failures: list[dict[str, Any]] = []
        failed: set[str] = set()
        finished: list[str] = []
        jobs = max(1, jobs)
        numerics = reproducible.numerics(not fast, threads=max(1, (os.cpu_count() or 1) // jobs))
        gpus = _visible_gpus() if todo else []
        bar = tqdm(total=len(runs), initial=len(runs) - len(todo), desc="runs", unit="run", disable=not progress)
        context = multiprocessing.get_context("spawn")
        pending = list(todo)
        running: dict[str, _Worker] = {}
        by_id = {r.run_id: r for r in runs}
        while (pending or running) and stop.signum is None:
            for run in list(pending):
                if any(u in failed for u in run.upstream):
                    pending.remove(run)
                    failed.add(run.run_id)
                    failures.append({"run": run.run_id, "notebook": None, "cell": None,
                                     "error": "skipped: an upstream run failed"})
                    bar.update(1)
                elif len(running) < jobs and all(u in done for u in run.upstream):
                    pending.remove(run)
                    slot = min(set(range(jobs)) - {w.slot for w in running.values()})
                    gpu = gpus[slot % len(gpus)] if gpus else None
                    running[run.run_id] = _start_worker(context, run, hashes[run.run_id], force, numerics, gpu, slot)
            if not running:
                continue
            multiprocessing.connection.wait([w.process.sentinel for w in running.values()], timeout=0.5)
            for run_id, worker in list(running.items()):
                if worker.process.exitcode is None:
                    continue
                del running[run_id]
                failure = worker.outcome(by_id[run_id])
                if failure:
                    failed.add(run_id)
                    failures.append(failure)
                else:
                    done.add(run_id)
                    finished.append(run_id)
                bar.update(1)
        if stop.signum is not None:
            _stop_workers(list(running.values()))
        bar.close()
    return Outcome(failures, finished, [r.run_id for r in runs if r.run_id not in done], stop.signum)


def _start_worker(context: Any, run: Run, run_hash: str, force: bool, numerics: dict[str, Any], gpu: str | None,
                  slot: int) -> _Worker:
    """Start a worker from this (main) thread, which the worker's parent-death signal is tied to.

    SIGINT is blocked meanwhile: the worker inherits it blocked until it ignores it (Ctrl-C reaches
    the driver alone from the worker's first instant), and a Ctrl-C of this moment reaches the
    driver once it is unblocked, instead of being lost.
    """
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_work, args=(run, run_hash, force, numerics, gpu, os.getpid(), send),
                              name=f"run {run.run_id}")
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        process.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    send.close()
    return _Worker(process, receive, slot)


def _stop_workers(workers: list[_Worker], grace_s: float = 10.0) -> None:
    """SIGTERM to each worker (it kills its kernel and leaves), SIGKILL to any still there after ``grace_s``."""
    for worker in workers:
        worker.process.terminate()
    deadline = time.monotonic() + grace_s
    for worker in workers:
        worker.process.join(max(0.0, deadline - time.monotonic()))
        if worker.process.exitcode is None:
            worker.process.kill()
            worker.process.join()


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
    what = {"plan": "list the runs of the plan with their state and hash",
            "run": "execute the runs of the plan that are not done",
            "collect": "tables and figures of the plan's done runs; give it the plan arguments run was given"}
    for name in ("plan", "run", "collect"):
        p = sub.add_parser(name, help=what[name], description=what[name])
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
                       help="run a named study of the protocol instead of the grid (mmt_lib.studies), into "
                            "runs/studies/<study> unless --runs-dir says otherwise")
        p.add_argument("--tasks", nargs="+", default=None,
                       help=f"{', '.join(sorted(TASKS))} (default: all four), or SRC2TGT of any two datasets")
        p.add_argument("--source", default=None, help="a custom task's source dataset (with --target)")
        p.add_argument("--target", default=None)
        p.add_argument("--only", nargs="+", default=None, help="run-id globs, e.g. 'duke2market/mmt-*/*'")
        p.add_argument("--shard", default=None, help="i/n: this machine's share of the grid")
        p.add_argument("--param", nargs="+", default=[],
                       help="NAME=VALUE given to every notebook that declares NAME; the notebooks run in the "
                            "project folder, so a relative path (data_root=...) starts there")
        if name == "run":
            p.add_argument("--force", action="store_true")
            p.add_argument("--fast", action="store_true",
                           help="let torch, oneDNN, MKL, faiss and numba pick this CPU's fastest kernels and threads: "
                                "faster, but the metrics then differ between CPUs (results mark such runs)")
            p.add_argument("--jobs", type=int, default=1)
            p.add_argument("--wait", action="store_true",
                           help="if another driver holds the runs folder, wait for it instead of refusing")
    args = parser.parse_args(argv)

    params = _parse_params(args.param)
    data, data_root = args.data or params.get("data"), args.data_root or params.get("data_root")
    if args.study:
        given = [flag for flag, value in (("--data", data), ("--data-root", data_root), ("--tasks", args.tasks),
                                          ("--source", args.source), ("--param overrides", params.get("overrides")))
                 if value]
        if given:
            raise SystemExit(f"--study {args.study} sets its own task and overrides per run; drop {', '.join(given)}")
        runs_dir = args.runs_dir or f"runs/studies/{args.study}"
        grid = study_plan(args.profile, runs_dir, args.study, args.seeds)
    else:
        runs_dir = args.runs_dir or default_runs_dir(args.profile, data)
        grid = plan(args.profile, runs_dir, args.seeds, _tasks(args), data, data_root)
    runs = with_parameters(with_stage0(select(grid, args.only, args.shard), params), params)
    if args.command == "collect":
        if args.study:
            return _collect_study(args.study, project_path(runs_dir) / args.profile, runs)
        return _collect(args.profile, project_path(runs_dir), runs)
    check_configs(runs)
    if args.command == "plan":
        hashes = run_hashes(runs)
        for r in runs:
            print(f"{run_state(r, hashes[r.run_id]):10s}  {r.notebook:22s}  {r.run_id:40s}  {hashes[r.run_id]}")
        return 0
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
    return 1 if outcome.failures else 0


def _tasks(args: argparse.Namespace) -> list[str | tuple[str, str]] | None:
    """``--tasks`` plus the ``--source``/``--target`` pair; ``None`` (every named task) when neither is given."""
    if (args.source is None) != (args.target is None):
        raise SystemExit("--source and --target go together: give both dataset names, or neither")
    pair = [(args.source, args.target)] if args.source else []
    return (args.tasks or []) + pair or None


def _collect(profile: str, runs_dir: Path, runs: list[Run]) -> int:
    """Tables of the plan's done runs; stale, unfinished and corrupt runs are listed apart (exit 1)."""
    from mmt_lib.results import collect

    profile_dir = runs_dir / profile
    if not profile_dir.is_dir():
        raise SystemExit(f"no runs for profile {profile!r} under {profile_dir}: run `batch run` first")
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
    return _report_skipped(runs, states)


def _collect_study(name: str, profile_dir: Path, runs: list[Run]) -> int:
    """The study's table and figure from its done runs; the others are listed apart (exit 1)."""
    from mmt_lib.results import collect_study

    hashes = run_hashes(runs)
    states = {r.run_id: run_state(r, hashes[r.run_id]) for r in runs}
    table = collect_study(profile_dir, name, [r.run_id for r in runs if states[r.run_id] == "done"])
    if len(table):
        print((profile_dir / "study.md").read_text())
        print(f"-> {profile_dir / 'study.csv'}, {profile_dir / 'figures' / 'study_mAP.png'}; the results notebook "
              "(04_results) shows them too")
    else:
        print(f"no done run of study {name} has results yet", file=sys.stderr)
    return _report_skipped(runs, states)


def _report_skipped(runs: list[Run], states: dict[str, str]) -> int:
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


if __name__ == "__main__":
    sys.exit(main())

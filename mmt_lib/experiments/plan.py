"""The batch plan: which notebook runs, with which parameters, after which runs, and whether it is done.

``plan`` expands a profile's grid: the four tasks x {direct, baseline, mmt-kmeans, mmt-dbscan},
the Table 2 variants on duke2market and market2duke, x seeds, with the Stage I runs they need
(MMT seed k trains the Stage I pair with seeds 2k-1 and 2k; k = 1 gives the paper's seeds 1 and 2)
and one pseudo-label-noise notebook per task and seed. Each run executes one notebook with
papermill into ``runs/<profile>/<task>/<variant>/seed<k>/``.

A run is done only when its ``metrics.json`` exists and carries the run's hash: the notebook's
code cells, its parameters, the library version and the hashes of the runs it depends on
(``run_state`` says which of done, stale, unfinished, todo or corrupt a run is; ``plan``, ``run``
and ``collect`` all ask it).
"""

from __future__ import annotations

import ast
import fnmatch
import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mmt_lib import __version__, config
from mmt_lib.config import ABLATION_TASKS, ABLATION_VARIANTS, DOMAIN_DATASETS, MAIN_VARIANTS, PROFILES, TASKS
from mmt_lib.runtime.checkpoints import METRICS_FILE, read_metrics
from mmt_lib.runtime.paths import PROJECT_ROOT, project_path

NOTEBOOKS = PROJECT_ROOT / "notebooks"
RUN_RECORD = "run.json"
RUN_STATES = ("done", "stale", "unfinished", "todo", "corrupt")
"""done: metrics carry the current hash; stale: metrics of an older hash; unfinished: started, no
stamped metrics yet; todo: never started; corrupt: ``metrics.json`` is not readable JSON."""



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
    """A named study's grid (``mmt_lib.experiments.studies``): per seed, a Stage I pair and direct transfer for each
    setting Stage I sees, then every variant at every combination of levels that makes a difference
    to it. Run folders are ``<task>/<variant>.<level>.<level>/seed<k>`` under ``<runs_dir>/<profile>``."""
    from mmt_lib.experiments.studies import get_study, stage_one_settings, stage_two_settings

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
    from mmt_lib.method.stage0 import stage0_config

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



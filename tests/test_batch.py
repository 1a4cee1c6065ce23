"""The papermill batch driver end to end on the smoke profile, and the committed notebooks' form."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest

from mmt_lib import batch
from mmt_lib.config import ABLATION_VARIANTS, MAIN_VARIANTS
from mmt_lib.experiments import plan as batch_plan
from mmt_lib.experiments import results
from mmt_lib.runtime import reproducible, runlock
from mmt_lib.runtime.paths import PROJECT_ROOT

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
SUBSET = ["data/tour/*", "duke2market/direct/*", "duke2market/noise/*"]


def cli(tmp: Path, command: str, *extra: str) -> int:
    args = [command, "--profile", "smoke", "--runs-dir", str(tmp / "runs"),
            "--only", *SUBSET, "--param", f"data_root={tmp / 'data'}", "device=cpu"]
    return batch.main(args + list(extra))


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """One smoke batch run: the data tour, Stage I pair, direct, baseline, MMT and the noise notebook."""
    tmp = tmp_path_factory.mktemp("batch")
    assert cli(tmp, "run", "--jobs", "2") == 0
    return tmp


def planned(tmp: Path) -> list[batch_plan.Run]:
    runs = batch_plan.select(batch_plan.plan("smoke", tmp / "runs"), SUBSET, None)
    return batch_plan.with_parameters(runs, {"data_root": str(tmp / "data"), "device": "cpu"})


def test_grid_covers_every_task_and_variant():
    runs = batch_plan.plan("smoke", "runs", seeds=[1, 2])
    mmt_runs = {(r.task, r.variant, r.seed) for r in runs if r.notebook == "02_mmt"}
    for task in ("market2duke", "duke2market", "market2msmt", "duke2msmt"):
        for seed in (1, 2):
            assert {(task, v, seed) for v in MAIN_VARIANTS} <= mmt_runs
    assert {("duke2market", v, 1) for v in ABLATION_VARIANTS} <= mmt_runs
    assert not {("market2msmt", v, 1) for v in ABLATION_VARIANTS} & mmt_runs
    pretrain_seeds = {r.seed for r in runs if r.notebook == "01_pretrain" and r.task == "duke2market"}
    assert pretrain_seeds == {1, 2, 3, 4}
    kmeans = next(r for r in runs if r.run_id == "duke2market/mmt-kmeans/seed2")
    assert kmeans.upstream == ("duke2market/pretrain/seed3", "duke2market/pretrain/seed4")


def test_run_then_collect_writes_results_and_executed_notebooks(grid, capfd):
    profile_dir = grid / "runs" / "smoke"
    for run_id in ("data/tour/seed0", "duke2market/pretrain/seed1", "duke2market/pretrain/seed2",
                   "duke2market/direct/seed1", "duke2market/baseline/seed1", "duke2market/mmt-kmeans/seed1",
                   "duke2market/noise/seed1"):
        metrics = json.loads((profile_dir / run_id / "metrics.json").read_text())
        assert metrics["run_hash"], run_id
        executed = json.loads(next((profile_dir / run_id).glob("0*.ipynb")).read_text())
        assert any(c.get("outputs") for c in executed["cells"] if c["cell_type"] == "code"), run_id
    capfd.readouterr()
    assert cli(grid, "collect") == 0
    assert "without encryption" not in capfd.readouterr().err  # the kernel's link is encrypted: no warning
    table = pd.read_csv(profile_dir / "results.csv")
    assert set(table["variant"]) == {"direct", "baseline", "mmt-kmeans"}
    assert {"task", "variant", "mAP_mean", "mAP_std", "top1_mean", "top5_mean", "top10_mean"} <= set(table)
    assert table["mAP_mean"].between(0, 100).all()
    per_run = pd.read_csv(profile_dir / "runs.csv")
    assert len(per_run) == len(table) and set(per_run["seed"]) == {1}
    kmeans = json.loads((profile_dir / "duke2market/mmt-kmeans/seed1/metrics.json").read_text())
    row = per_run[(per_run["task"] == "duke2market") & (per_run["variant"] == "mmt-kmeans")].iloc[0]
    assert row["mAP"] == pytest.approx(100 * kmeans["mAP"], abs=0.01)
    assert "| duke2market | mmt-kmeans" in (profile_dir / "results.md").read_text()
    assert (profile_dir / "figures" / "results_mAP.png").stat().st_size > 0
    assert (profile_dir / "04_results.ipynb").exists()


def test_executed_notebooks_hold_progress_as_text_lines_and_no_stray_value(grid):
    """papermill's copies: a finished line per outer bar, no widget, no warning, no Out[] value."""
    notebooks = sorted((grid / "runs" / "smoke").rglob("0*.ipynb"))
    assert {p.stem for p in notebooks} >= {"00_data_tour", "01_pretrain", "02_mmt", "03_pseudo_label_noise"}
    for path in notebooks:
        for cell in json.loads(path.read_text())["cells"]:
            for out in cell.get("outputs", []):
                assert out["output_type"] not in ("execute_result", "error"), (path, cell["source"])
                assert not any("widget" in mime for mime in out.get("data", {})), path
                if out["output_type"] != "stream":
                    continue
                text = "".join(out["text"])
                assert "IProgress" not in text and "TqdmWarning" not in text, path
                assert text.strip(), f"{path}: a stream of blanks"
                bars = [line for line in text.splitlines() if re.search(r"\d+%\|", line)]
                assert all("100%|" in line for line in bars), (path, bars)  # nested bars left no line
                names = [line.split(":")[0] for line in bars]
                assert len(names) == len(set(names)), (path, bars)  # one line per bar, not per update


@contextmanager
def edited(path: Path, text: str) -> Iterator[None]:
    """``path`` holds ``text`` inside the block, its own bytes again after it."""
    original = path.read_bytes()
    path.write_text(text)
    try:
        yield
    finally:
        path.write_bytes(original)


def test_collect_reports_current_runs_only_and_names_the_others(grid, capfd):
    profile_dir = grid / "runs" / "smoke"
    baseline = profile_dir / "duke2market/baseline/seed1/metrics.json"
    kmeans = profile_dir / "duke2market/mmt-kmeans/seed1/metrics.json"
    older = json.loads(baseline.read_text()) | {"run_hash": "0123456789abcdef"}
    with edited(baseline, json.dumps(older)), edited(kmeans, kmeans.read_text()[:100]):
        capfd.readouterr()
        assert cli(grid, "plan") == 0
        states = {line.split()[2]: line.split()[0] for line in capfd.readouterr().out.splitlines()}
        assert cli(grid, "collect") == 1
        err = capfd.readouterr().err
        table = pd.read_csv(profile_dir / "results.csv")
        markdown = (profile_dir / "results.md").read_text()
    assert (states["duke2market/baseline/seed1"], states["duke2market/mmt-kmeans/seed1"]) == ("stale", "corrupt")
    assert states["duke2market/direct/seed1"] == "done"
    assert set(table["variant"]) == {"direct"}  # what plan calls stale or corrupt, collect leaves out
    assert "| duke2market | baseline" not in markdown
    assert "1 stale run(s)" in err and "duke2market/baseline/seed1" in err
    assert f"corrupt: {kmeans} is not valid JSON" in err


def test_run_state_tells_every_state_apart(tmp_path):
    run = batch_plan.Run("01_pretrain", "duke2market", "pretrain", 1, {"out_dir": str(tmp_path / "run")})
    assert batch_plan.run_state(run, "abc") == "todo"
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / batch_plan.RUN_RECORD).write_text('{"run_hash": "abc"}')
    assert batch_plan.run_state(run, "abc") == "unfinished"
    metrics = tmp_path / "run" / "metrics.json"
    metrics.write_text('{"mAP": 0.5}')  # written by the notebook, not yet stamped by the driver
    assert batch_plan.run_state(run, "abc") == "unfinished"
    metrics.write_text('{"mAP": 0.5, "run_hash": "abc"}')
    assert (batch_plan.run_state(run, "abc"), batch_plan.run_state(run, "new")) == ("done", "stale")
    metrics.write_text('{"mAP": 0.')
    assert batch_plan.run_state(run, "abc") == "corrupt"


def test_results_without_run_names_skip_a_corrupt_file_by_name(tmp_path):
    good = {"stage": "mmt", "task": "duke2market", "variant": "mmt-kmeans", "seed": 1,
            "mAP": 0.5, "top1": 0.6, "top5": 0.7, "top10": 0.8}
    (tmp_path / "duke2market/mmt-kmeans/seed1").mkdir(parents=True)
    (tmp_path / "duke2market/mmt-kmeans/seed1/metrics.json").write_text(json.dumps(good))
    broken = tmp_path / "duke2market/baseline/seed1/metrics.json"
    broken.parent.mkdir(parents=True)
    broken.write_text('{"stage": "mm')
    with pytest.warns(UserWarning, match=f"{broken} is not valid JSON"):
        table = results.load_runs(tmp_path)
    assert list(table["variant"]) == ["mmt-kmeans"] and table["mAP"].iloc[0] == pytest.approx(50.0)
    with pytest.raises(ValueError, match=f"{broken} is not valid JSON"):
        results.load_runs(tmp_path, ["duke2market/baseline/seed1"])


def hold_runs_folder(folder: Path, seconds: float) -> subprocess.Popen:
    """Another process holding the runs folder as a running driver does; returns once it holds it."""
    code = ("import time\nfrom mmt_lib.runtime.runlock import driver_lock\n"
            f"with driver_lock({str(folder)!r}):\n    print('held', flush=True)\n    time.sleep({seconds})\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")])}
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_driver_refuses_at_once_and_names_the_first(grid, capfd):
    holder = hold_runs_folder(grid / "runs" / "smoke", 120)
    try:
        capfd.readouterr()
        assert cli(grid, "run") == 1
        assert holder.poll() is None  # refused while the first still held the folder: it did not wait
        assert f"pid {holder.pid} on " in capfd.readouterr().err
    finally:
        holder.kill()
        holder.wait()


def test_a_driver_asked_to_wait_starts_once_the_first_is_done(grid, capfd):
    holder = hold_runs_folder(grid / "runs" / "smoke", 3)
    try:
        capfd.readouterr()
        assert cli(grid, "run", "--wait") == 0  # the lock is exclusive: it came free only when the holder let go
        assert holder.wait(60) == 0  # the holder ran its whole hold to the end
        assert f"waiting for the batch driver holding {grid / 'runs' / 'smoke'} (pid {holder.pid} on " in \
            capfd.readouterr().err
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_left_by_a_dead_driver_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = tmp_path / runlock.LOCK_FILE
    lock.write_text(f"pid {dead.pid} on somewhere\n")
    with runlock.driver_lock(tmp_path):
        assert lock.read_text().startswith(f"pid {os.getpid()} on ")
    assert lock.read_text() == ""


def test_shards_share_a_runs_folder_but_not_one_shard(tmp_path):
    with runlock.driver_lock(tmp_path, shard="0/2"):
        with runlock.driver_lock(tmp_path, shard="1/2"):
            pass
        with pytest.raises(runlock.LockHeld, match=rf"pid {os.getpid()} on .* \(shard 0/2\)"):
            with runlock.driver_lock(tmp_path, shard="0/2"):
                pass
        with pytest.raises(runlock.LockHeld, match=r"\(shard 0/2\)"):
            with runlock.driver_lock(tmp_path):
                pass
    with runlock.driver_lock(tmp_path):
        with pytest.raises(runlock.LockHeld, match=f"pid {os.getpid()} on "):
            with runlock.driver_lock(tmp_path, shard="1/2"):
                pass


def test_plan_and_the_module_import_without_papermill_zmq_or_jupyter_client():
    code = ("import sys\nfrom mmt_lib import batch\n"
            "batch.main(['plan', '--profile', 'smoke', '--only', 'duke2market/mmt-kmeans/*'])\n"
            "print(sorted(m for m in ('papermill', 'zmq', 'jupyter_client') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.splitlines()[-1] == "[]"
    assert "duke2market/mmt-kmeans/seed1" in out


def test_second_run_skips_everything(grid):
    runs = planned(grid)
    hashes = batch_plan.run_hashes(runs)
    assert all(batch_plan.is_done(r, hashes[r.run_id]) for r in runs)
    stamps = {p: p.stat().st_mtime_ns for p in (grid / "runs").rglob("metrics.json")}
    assert cli(grid, "run") == 0
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_a_run_killed_midway_is_redone_from_its_checkpoint(grid):
    run_dir = grid / "runs" / "smoke" / "duke2market" / "mmt-kmeans" / "seed1"
    (run_dir / "metrics.json").unlink()
    runs = planned(grid)
    hashes = batch_plan.run_hashes(runs)
    todo = [r.run_id for r in runs if not batch_plan.is_done(r, hashes[r.run_id])]
    assert todo == ["duke2market/mmt-kmeans/seed1"]
    assert cli(grid, "run") == 0
    assert json.loads((run_dir / "metrics.json").read_text())["run_hash"] == hashes["duke2market/mmt-kmeans/seed1"]


def test_a_changed_parameter_changes_the_hash_downstream(tmp_path):
    runs = batch_plan.select(batch_plan.plan("smoke", tmp_path), SUBSET, None)
    base = batch_plan.run_hashes(batch_plan.with_parameters(runs, {"device": "cpu"}))
    changed = batch_plan.run_hashes(batch_plan.with_parameters(runs, {"device": "cuda"}))
    assert base["duke2market/pretrain/seed1"] != changed["duke2market/pretrain/seed1"]
    assert base["duke2market/noise/seed1"] != changed["duke2market/noise/seed1"]
    assert base["data/tour/seed0"] == changed["data/tour/seed0"]


def one_line_refusal(capsys, *, names: str) -> str:
    """The refusal a command printed: one line on stderr, naming what was refused; nothing on stdout."""
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and not out and "usage:" not in err, err
    assert names in lines[0], lines[0]
    return lines[0]


def test_an_unknown_parameter_is_refused_before_anything_runs(tmp_path, capsys):
    assert batch.main(["run", "--profile", "smoke", "--runs-dir", str(tmp_path / "runs"),
                       "--param", "lerning_rate=1"]) == 2
    line = one_line_refusal(capsys, names="['lerning_rate'] are declared by no notebook")
    assert line.startswith("python -m mmt_lib.batch run: ")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("verb", ["plan", "run", "collect"])
def test_every_verb_takes_the_arguments_run_was_given(tmp_path, capsys, verb):
    """The README's "collect with the same arguments": the command a user ran repeats with another verb."""
    args = [verb, "--profile", "smoke", "--jobs", "1", "--runs-dir", str(tmp_path / "runs"), "--only", "data/*",
            "--param", f"data_root={tmp_path / 'data'}", "--wait", "--fast"]
    if verb == "run":
        args += ["--shard", "0/1"]
        assert batch.main(args + ["--jobs", "0"]) == 2
        one_line_refusal(capsys, names="--jobs must be 1 or more, got 0")
        return
    code = batch.main(args)
    if verb == "collect":  # nothing has run yet, and it says so
        assert code == 2
        one_line_refusal(capsys, names=f"--runs-dir {tmp_path / 'runs'} holds no runs of profile 'smoke'")
        return
    assert code == 0 and "data/tour/seed0" in capsys.readouterr().out


def test_every_verb_lists_the_same_options_in_its_help(capsys):
    options = {}
    for verb in ("plan", "run", "collect"):
        with pytest.raises(SystemExit) as shown:
            batch.main([verb, "--help"])
        assert shown.value.code == 0
        options[verb] = set(re.findall(r"^  (--[a-z-]+)", capsys.readouterr().out, re.M))
    assert options["plan"] == options["run"] == options["collect"]
    assert {"--jobs", "--force", "--fast", "--wait", "--only", "--param", "--runs-dir"} <= options["collect"]


def test_shards_partition_the_grid_without_cutting_dependencies():
    runs = batch_plan.plan("smoke", "runs", seeds=[1, 2])
    shards = [batch_plan.select(runs, None, f"{i}/3") for i in range(3)]
    ids = [r.run_id for shard in shards for r in shard]
    assert sorted(ids) == sorted(r.run_id for r in runs)
    for shard in shards:
        inside = {r.run_id for r in shard}
        assert all(u in inside for r in shard for u in r.upstream)
    with pytest.raises(ValueError, match="i/n"):
        batch_plan.select(runs, None, "3")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebooks_are_stripped_and_parameterised(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c["outputs"] and c["execution_count"] is None for c in code)
    tagged = [c for c in code if "parameters" in c["metadata"].get("tags", [])]
    assert len(tagged) == 1 and code.index(tagged[0]) == 0
    assert nb["cells"][0]["cell_type"] == "markdown"
    for statement in ast.parse("".join(tagged[0]["source"])).body:
        assert isinstance(statement, ast.Assign)
        ast.literal_eval(statement.value)


def test_every_run_records_reproducible_mode_and_its_pins(grid):
    for record in (grid / "runs" / "smoke").rglob(batch_plan.RUN_RECORD):
        numerics = json.loads(record.read_text())["numerics"]
        assert numerics["mode"] == "reproducible" and numerics["env"] == reproducible.PINNED_ENV, record
        metrics = json.loads((record.parent / "metrics.json").read_text())
        assert metrics["numerics"] == numerics


def test_results_mark_rows_with_runs_outside_reproducible_mode():
    runs = pd.DataFrame([
        {"task": "duke2market", "variant": v, "seed": s, "mAP": 50.0, "top1": 60.0, "top5": 70.0, "top10": 80.0,
         "oracle_mAP": float("nan"), "numerics": mode}
        for v, s, mode in [("baseline", 1, "reproducible"), ("baseline", 2, "reproducible"),
                           ("mmt-kmeans", 1, "reproducible"), ("mmt-kmeans", 2, "fast")]])
    table = results.summarise(runs)
    assert dict(zip(table["variant"], table["numerics"])) == {"baseline": "reproducible",
                                                              "mmt-kmeans": "fast, reproducible"}
    assert "numerics" in results.to_markdown(table).splitlines()[0]
    assert "numerics" not in results.to_markdown(results.summarise(runs[runs["variant"] == "baseline"]))


def test_fast_mode_sets_threads_only():
    fast = reproducible.numerics(False, threads=3)
    assert fast["mode"] == "fast" and set(fast["env"].values()) == {"3"}
    assert not set(fast["env"]) & (set(reproducible.PINNED_ENV) - set(reproducible.THREAD_VARIABLES))
    assert reproducible.numerics(True, threads=3)["env"] == reproducible.PINNED_ENV

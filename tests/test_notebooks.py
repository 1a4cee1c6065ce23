"""The committed notebooks as a reader meets them: every parameter does something, paths say where
they resolve, no cell prints a stray value, and the data tour follows its profile."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

from mmt_lib.figures import tour  # noqa: E402

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
PATH_SUFFIXES = ("_dir", "_dirs", "_root")


def code_cells(path: Path) -> list[str]:
    cells = json.loads(path.read_text())["cells"]
    return ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]


def parameters(path: Path) -> dict[str, int]:
    """Name -> line number of each assignment in the parameters cell (the first code cell)."""
    return {target.id: node.lineno for node in ast.parse(code_cells(path)[0]).body
            for target in node.targets}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_declared_parameter_is_used_after_the_parameters_cell(path):
    read = {node.id for cell in code_cells(path)[1:] for node in ast.walk(ast.parse(cell))
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)}
    unused = sorted(set(parameters(path)) - read)
    assert not unused, f"{path.name} declares {unused} but no later cell reads them"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_path_parameters_say_relative_paths_resolve_against_the_project_folder(path):
    lines = code_cells(path)[0].splitlines()
    paths = {name: line for name, line in parameters(path).items() if name.endswith(PATH_SUFFIXES)}
    assert paths, f"{path.name} declares no path parameter"
    for name, line in paths.items():
        said = lines[line - 1] + (lines[line - 2] if line > 1 else "")
        assert "relative path" in said and "project folder" in said, f"{path.name}: {name} says nothing of it"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_cell_ends_in_a_value_that_jupyter_would_print(path):
    for cell in code_cells(path):
        body = ast.parse(cell).body
        if not body or not isinstance(body[-1], ast.Expr) or cell.rstrip().endswith(";"):
            continue
        value = body[-1].value
        shown = not (isinstance(value, ast.Call) and isinstance(value.func, ast.Name)
                     and value.func.id in ("display", "print"))
        assert not shown, f"{path.name}: the cell ending in {ast.unparse(value)!r} prints its value as Out[]"


def test_the_data_tour_takes_its_sizes_and_domains_from_the_profile(tmp_path):
    domains = tour.load_domains(None, str(tmp_path), profile="smoke")
    assert [d.name for d in domains] == ["synth-market", "synth-duke", "synth-msmt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "synth-duke-tiny-seed0", "synth-market-tiny-seed0", "synth-msmt-tiny-seed0"]
    with pytest.raises(ValueError, match="unknown profile 'smok'"):
        tour.load_domains(None, str(tmp_path), profile="smok")
    msmt = domains[2]
    grid = tour.identity_camera_grid(msmt, identities=2)  # 15 cameras: two lines of 8 per identity
    assert msmt.num_cams == 15 and len(grid.axes) == 2 * 2 * 8
    assert grid.get_size_inches()[0] <= 10.0


def test_the_style_table_says_what_every_knob_does():
    table = tour.style_table()
    assert table["what it does"].notna().all(), list(table.loc[table["what it does"].isna(), "knob"])
    assert all(sentence.endswith(".") and len(sentence.split()) >= 5 for sentence in table["what it does"])


def test_notebook_prose_states_no_number_the_profile_sets():
    """A number in prose that a profile changes goes stale: the notebooks read them from the configuration."""
    from mmt_lib.config import resolve

    cfg = resolve(stage="mmt", profile="synthetic")
    settings = {cfg.mmt.epochs, cfg.mmt.iters, cfg.mmt.epochs * cfg.mmt.iters, cfg.pretrain.epochs, cfg.pretrain.iters,
                cfg.data.batch_size}
    for path in NOTEBOOKS:
        for cell in json.loads(path.read_text())["cells"]:
            if cell["cell_type"] == "markdown":
                numbers = {int(n.replace(",", "")) for n in re.findall(r"(?<![\w.-])\d[\d,]*(?![\w.])", "".join(cell["source"]))}
                assert not numbers & settings, (path.name, cell.get("id"), sorted(numbers & settings))
                schedule = re.findall(r"\d[\d,]*\s*(?:x\s*\d[\d,]*\s*)?(?:epochs?|iterations?)\b", "".join(cell["source"]))
                assert not schedule, (path.name, cell.get("id"), schedule)  # a schedule: the profile's to state


def test_the_schedule_line_reads_the_profile():
    from mmt_lib.config import resolve
    from mmt_lib.experiments import reporting

    cfg = resolve(stage="mmt", profile="synthetic")
    line = reporting.describe_schedule(cfg)
    m = cfg.mmt
    assert f"{m.epochs} epochs x {m.iters} iterations = {m.epochs * m.iters:,} iterations" in line
    assert "40 epochs x 400 iterations = 16,000 iterations, alpha_max 0.999" in line  # the paper's

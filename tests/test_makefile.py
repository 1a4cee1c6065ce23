"""`make lab` starts JupyterLab for root (which it refuses without --allow-root) and for anyone else."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize(("uid", "allowed"), [("0", True), ("1000", False)])
def test_make_lab_allows_root_only_for_root(tmp_path, uid, allowed):
    fake_id = tmp_path / "id"
    fake_id.write_text(f"#!/bin/sh\necho {uid}\n")
    fake_id.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}
    dry = subprocess.run(["make", "-n", "lab"], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    [command] = [line for line in dry.stdout.splitlines() if "jupyter lab" in line]
    assert ("--allow-root" in command.split()) is allowed
    assert command.split()[-1] == "notebooks/"

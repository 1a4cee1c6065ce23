"""Golden values: under reproducible mode the same commit and seed give these metrics, bit for bit, on any x86-64 CPU.

The work is ``benchmarks/cpu_determinism.work``: the smoke profile's Stage 0 start, Stage I pair and Stage II
(k-means and DBSCAN), and the synthetic profile's first task with a short Stage I pair and one
Stage II epoch. It runs in a fresh process with ``mmt_lib.runtime.reproducible.PINNED_ENV`` set, as the
batch driver runs every notebook. After a change that is meant to change the numbers, rewrite the
expected values with ``PYTHONPATH=benchmarks python tests/test_golden.py --write`` and say why in the commit.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

import pytest
from cpu_determinism import fingerprints, run_in_subprocess

from mmt_lib.runtime.reproducible import PINNED_ENV

EXPECTED = Path(__file__).with_name("golden") / "cpu_metrics.json"


def measure(scratch: Path) -> dict[str, dict[str, str]]:
    env = {**os.environ, **PINNED_ENV}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                      os.environ.get("PYTHONPATH")]))
    return fingerprints(run_in_subprocess(env, scratch / "data", scratch / "runs"))


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="the golden values are for x86-64 CPUs")
def test_reproducible_mode_gives_the_golden_metrics_bit_for_bit(tmp_path):
    expected = json.loads(EXPECTED.read_text())
    measured = measure(tmp_path)
    assert measured.keys() == expected.keys()
    for run, values in expected.items():
        assert measured[run] == values, f"{run}: {measured[run]} != golden {values}"


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: PYTHONPATH=benchmarks python tests/test_golden.py --write   (rewrites the golden values)")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        values = measure(Path(tmp))
    EXPECTED.parent.mkdir(exist_ok=True)
    EXPECTED.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")
    print(f"wrote {EXPECTED}")

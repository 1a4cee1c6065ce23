"""Which library settings change the metrics of a CPU run: each pin of reproducible mode, released one at a time.

Every setting runs the same work (``work``) in a fresh process, since the pins are read when the
libraries load, and is compared bit for bit with reproducible mode (``mmt_lib.runtime.reproducible.PINNED_ENV``).
The same work, under reproducible mode, gives the golden values that ``tests/test_golden.py`` checks. Releasing a pin to another
value that this CPU also runs (scalar kernels, SSE4.1, generic builds, two threads) shows whether
that library's choice of kernel reaches the metrics, as a CPU with another instruction set would.

    python benchmarks/cpu_determinism.py               # every setting, about 10 minutes on 2 cores
    python benchmarks/cpu_determinism.py --only unpinned reproducible
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmt_lib.runtime.reproducible import PINNED_ENV, THREAD_VARIABLES  # noqa: E402

RELEASED: dict[str, dict[str, str]] = {
    "reproducible": {},
    "aten: ATEN_CPU_CAPABILITY=default": {"ATEN_CPU_CAPABILITY": "default"},
    "oneDNN: ONEDNN_MAX_CPU_ISA=SSE41": {"ONEDNN_MAX_CPU_ISA": "SSE41"},
    "MKL: MKL_CBWR=COMPATIBLE": {"MKL_CBWR": "COMPATIBLE", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
    "OpenBLAS: OPENBLAS_CORETYPE=Nehalem": {"OPENBLAS_CORETYPE": "Nehalem"},
    "faiss: FAISS_OPT_LEVEL=generic": {"FAISS_OPT_LEVEL": "generic"},
    "numba: NUMBA_CPU_NAME=generic": {"NUMBA_CPU_NAME": "generic"},
    "threads: 2 per run": {name: "2" for name in THREAD_VARIABLES},
}
"""Each setting: reproducible mode with these pins changed; ``unpinned`` (nothing set) is added apart."""


def environment(name: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in PINNED_ENV}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    if name != "unpinned":
        env.update(PINNED_ENV)
        env.update(RELEASED[name])
    return env


def work(data_root: Path, out_dir: Path) -> dict[str, Any]:
    """The runs of one setting, in this process; their metrics, in full.

    The smoke profile's Stage I pair (seeds 1 and 2) from its Stage 0 start (the fractal images and
    their training, at smoke size) and Stage II from it with k-means (faiss) and with DBSCAN on the
    Jaccard distance (numba); then the ``synthetic`` profile's first task, its data, input size and
    network, with a short Stage I pair (1 epoch x 10 iterations) from the shared random start (its
    Stage 0 start takes minutes to build) and one Stage II epoch of 10 iterations from it.
    """
    import torch

    from mmt_lib import config
    from mmt_lib.method import mmt

    quiet = {"runtime": {"progress": False}}
    results: dict[str, Any] = {"torch_capability": torch.backends.cpu.get_cpu_capability(),
                               "torch_threads": torch.get_num_threads()}
    tic = time.perf_counter()
    smoke = {"profile": "smoke", "task": "duke2market", "data_root": str(data_root), "device": "cpu"}
    stage1 = _stage1_pair(smoke, {**quiet, "model": {"pretrained": "stage0"}}, out_dir / "smoke", results, "smoke")
    for variant in ("mmt-kmeans", "mmt-dbscan"):
        cfg = config.resolve("mmt", variant=variant, seed=1, overrides=quiet, **smoke)
        results[f"smoke stage II {variant}"] = mmt.train_mmt(cfg, out_dir / "smoke" / variant, stage1, resume=False)
    results["seconds_smoke"] = time.perf_counter() - tic
    tic = time.perf_counter()
    synthetic = {"profile": "synthetic", "task": next(iter(config.TASKS)), "data_root": str(data_root),
                 "device": "cpu"}
    short = {**quiet, "model": {"pretrained": None},
             "pretrain": {"epochs": 1, "iters": 10, "warmup_epochs": 1, "eval_every": 1}}
    stage1 = _stage1_pair(synthetic, short, out_dir / "synthetic", results, "synthetic")
    cfg = config.resolve("mmt", seed=1, overrides={**quiet, "mmt": {"epochs": 1, "iters": 10, "ema_window_share": 1.0}},
                         **synthetic)
    results["synthetic stage II, 1 epoch"] = mmt.train_mmt(cfg, out_dir / "synthetic" / "mmt", stage1, resume=False)
    results["seconds_synthetic"] = time.perf_counter() - tic
    return results


def _stage1_pair(common: dict[str, Any], overrides: dict[str, Any], out_dir: Path, results: dict[str, Any],
                 label: str) -> tuple[Path, Path]:
    from mmt_lib import config
    from mmt_lib.method import pretrain

    for seed in (1, 2):
        cfg = config.resolve("pretrain", seed=seed, overrides=overrides, **common)
        results[f"{label} stage I seed {seed}"] = pretrain.pretrain(cfg, out_dir / f"pre{seed}", resume=False)
    return out_dir / "pre1" / "checkpoint.pt", out_dir / "pre2" / "checkpoint.pt"


HEADLINE = ("mAP", "mINP", "top1", "top5", "top10")
PATH_BOUND = ("config", "config_hash", "provenance")
"""Left out of the digest: they hold (or hash) the run's folders, which differ between two runs."""


def fingerprint(metrics: dict[str, Any]) -> dict[str, str]:
    """The headline metrics in ``float.hex`` (nothing rounded) and a digest of every number the run
    recorded, histories included (timings and what names the run's folders left out)."""
    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if not k.startswith("seconds") and k not in PATH_BOUND}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value.hex() if isinstance(value, float) else value

    payload = json.dumps(strip(metrics), sort_keys=True)
    return {**{k: float(metrics[k]).hex() for k in HEADLINE}, "digest": hashlib.sha256(payload.encode()).hexdigest()[:16]}


def fingerprints(raw: dict[str, Any]) -> dict[str, dict[str, str]]:
    """The fingerprint of every run in what ``work`` returned."""
    return {key: fingerprint(value) for key, value in raw.items() if isinstance(value, dict)}


def run_in_subprocess(env: dict[str, str], data_root: Path, out_dir: Path) -> dict[str, Any]:
    """``work`` in a fresh process with ``env``: the libraries read their pins only when they load."""
    code = ("import json, sys; from pathlib import Path; sys.path.insert(0, sys.argv[3]); "
            "import cpu_determinism as c; r = c.work(Path(sys.argv[1]), Path(sys.argv[2])); "
            "(Path(sys.argv[2]) / 'results.json').write_text(json.dumps(r, default=float))")
    out_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-c", code, str(data_root), str(out_dir), str(Path(__file__).parent)],
                   env=env, check=True, cwd=ROOT)
    return json.loads((out_dir / "results.json").read_text())


def run_setting(name: str, data_root: Path, scratch: Path) -> dict[str, Any]:
    raw = run_in_subprocess(environment(name), data_root, scratch / name.split(":")[0].replace(" ", "-"))
    return {"setting": name, "capability": raw["torch_capability"], "threads": raw["torch_threads"],
            "seconds": raw["seconds_smoke"] + raw["seconds_synthetic"], **fingerprints(raw)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="+", default=None, help="setting names (or their prefixes before ':')")
    parser.add_argument("--json", default=None, help="also write the table as JSON here")
    args = parser.parse_args()
    names = ["unpinned", *RELEASED]
    if args.only:
        names = [n for n in names if n in args.only or n.split(":")[0] in args.only]
    with tempfile.TemporaryDirectory(prefix="cpu-determinism-") as tmp:
        scratch = Path(tmp)
        rows = [run_setting(name, scratch / "data", scratch) for name in names]
    runs = [k for k in rows[0] if isinstance(rows[0][k], dict)]
    reference = next((r for r in rows if r["setting"] == "reproducible"), rows[0])
    print("| setting | torch capability | threads | seconds | " + " | ".join(runs) + " |")
    print("|---" * (4 + len(runs)) + "|")
    for row in rows:
        cells = [("= " if row[k] == reference[k] else "≠ ") + f"{float.fromhex(row[k]['mAP']):.17g}" for k in runs]
        print(f"| {row['setting']} | {row['capability']} | {row['threads']} | {row['seconds']:.0f} | "
              + " | ".join(cells) + " |")
    print("\n'=': every recorded number (histories included) bit-identical to reproducible mode; '≠': some differ.")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

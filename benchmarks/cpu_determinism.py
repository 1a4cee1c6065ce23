"""Which library settings change the metrics of a CPU run: each pin of reproducible mode, released one at a time.

Every setting runs the same work in a fresh process (the pins are read when the libraries load):
a smoke-profile Stage I pair (seeds 1 and 2), Stage II from that pair with k-means (faiss) and with
DBSCAN on the Jaccard distance (numba), and a short Stage I of the ``synthetic`` profile on its
first task (2 epochs x 10 iterations, evaluated on the target). Each setting is compared, bit for
bit, with reproducible mode (``mmt_lib.reproducible.PINNED_ENV``). Releasing a pin to another
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

from mmt_lib.reproducible import PINNED_ENV, THREAD_VARIABLES  # noqa: E402

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
    """The runs of one setting, in this process; every metric as ``float.hex`` so that nothing is rounded."""
    import torch

    from mmt_lib import config, mmt, pretrain

    quiet = {"runtime": {"progress": False}}
    smoke = {"profile": "smoke", "task": "duke2market", "data_root": str(data_root), "device": "cpu"}
    results: dict[str, Any] = {"torch_capability": torch.backends.cpu.get_cpu_capability(),
                               "torch_threads": torch.get_num_threads()}
    tic = time.perf_counter()
    for seed in (1, 2):
        cfg = config.resolve("pretrain", seed=seed, overrides=quiet, **smoke)
        results[f"smoke stage I seed {seed}"] = pretrain.pretrain(cfg, out_dir / f"pre{seed}", resume=False)
    checkpoints = (out_dir / "pre1" / "checkpoint.pt", out_dir / "pre2" / "checkpoint.pt")
    for variant in ("mmt-kmeans", "mmt-dbscan"):
        cfg = config.resolve("mmt", variant=variant, seed=1, overrides=quiet, **smoke)
        results[f"smoke stage II {variant}"] = mmt.train_mmt(cfg, out_dir / variant, checkpoints, resume=False)
    results["seconds_smoke"] = time.perf_counter() - tic
    tic = time.perf_counter()
    short = {**quiet, "pretrain": {"epochs": 2, "iters": 10, "eval_every": 2}}
    cfg = config.resolve("pretrain", profile="synthetic", task="duke2market", seed=1, data_root=str(data_root),
                         device="cpu", overrides=short)
    results["synthetic stage I (2 x 10)"] = pretrain.pretrain(cfg, out_dir / "synthetic", resume=False)
    results["seconds_synthetic"] = time.perf_counter() - tic
    return results


def fingerprint(metrics: dict[str, Any]) -> dict[str, str]:
    """The headline mAP in hex and a digest of every number the run recorded (timings left out)."""
    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if not k.startswith("seconds") and k != "config"}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value.hex() if isinstance(value, float) else value

    payload = json.dumps(strip(metrics), sort_keys=True)
    return {"mAP": metrics["mAP"].hex(), "digest": hashlib.sha256(payload.encode()).hexdigest()[:12]}


def run_setting(name: str, data_root: Path, scratch: Path) -> dict[str, Any]:
    out = scratch / name.split(":")[0].replace(" ", "-")
    code = ("import json, sys; from pathlib import Path; sys.path.insert(0, sys.argv[3]); "
            "import cpu_determinism as c; r = c.work(Path(sys.argv[1]), Path(sys.argv[2])); "
            "json.dump(r, open(Path(sys.argv[2]) / 'results.json', 'w'), default=float)")
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-c", code, str(data_root), str(out), str(Path(__file__).parent)],
                   env=environment(name), check=True, cwd=ROOT)
    raw = json.loads((out / "results.json").read_text())
    return {"setting": name, "capability": raw["torch_capability"], "threads": raw["torch_threads"],
            "seconds": raw["seconds_smoke"] + raw["seconds_synthetic"],
            **{key: fingerprint(value) for key, value in raw.items() if isinstance(value, dict)}}


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
    print("| setting | torch capability | threads | seconds | "
          + " | ".join(runs) + " |")
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

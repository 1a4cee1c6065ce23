"""Reading what finished runs left on disk: metrics, per-epoch embedding snapshots, histories."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from mmt_lib.evaluation.label_quality import noisy_samples, pseudo_label_quality
from mmt_lib.figures.analysis import embed_2d, flat_history
from mmt_lib.runtime.checkpoints import METRICS_FILE, read_metrics
from mmt_lib.runtime.paths import project_path
from mmt_lib.runtime.progress import tqdm

SNAPSHOT_DIR = "embeddings"
_SNAPSHOT = re.compile(r"epoch(\d+)\.npz$")


def load_metrics(run_dir: str | Path) -> dict[str, Any]:
    path = project_path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the run has not finished (run its notebook first)")
    return read_metrics(path)


def snapshot_epochs(run_dir: str | Path) -> list[int]:
    """Epochs whose target features and pseudo labels were saved (``mmt.save_embeddings``)."""
    folder = project_path(run_dir) / SNAPSHOT_DIR
    epochs = sorted(int(m.group(1)) for p in folder.glob("epoch*.npz") if (m := _SNAPSHOT.search(p.name)))
    if not epochs:
        raise FileNotFoundError(f"no embedding snapshots in {folder}: run Stage II with mmt.save_embeddings=True")
    return epochs


def load_snapshot(run_dir: str | Path, epoch: int) -> dict[str, np.ndarray]:
    """Features, pseudo labels and true identities of one epoch (plain arrays; pickles refused)."""
    path = project_path(run_dir) / SNAPSHOT_DIR / f"epoch{epoch:03d}.npz"
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def noise_snapshots(
    run_dirs: dict[str, str], epochs: list[int], method: str = "tsne", seed: int = 0, max_points: int = 1500
) -> list[dict[str, Any]]:
    """2-D views of pseudo-label noise for each run at each requested epoch (Python indices: -1 = last).

    The same random subset of images is shown for every run and epoch, so panels compare like with like.
    """
    out = []
    available = {name: snapshot_epochs(run_dir) for name, run_dir in run_dirs.items()}
    views = [(name, run_dir, wanted) for name, run_dir in run_dirs.items() for wanted in epochs]
    for name, run_dir, wanted in tqdm(views, desc=f"{method} embeddings", unit="view"):
        epoch = available[name][wanted]
        snap = load_snapshot(run_dir, epoch)
        n = len(snap["true_pids"])
        keep = np.sort(np.random.default_rng(seed).permutation(n)[:max_points])
        noisy = noisy_samples(snap["pseudo_labels"], snap["true_pids"])
        out.append({
            "run": name, "epoch": epoch,
            "points": embed_2d(snap["features"][keep], method=method, seed=seed),
            "true_pids": snap["true_pids"][keep], "pseudo_labels": snap["pseudo_labels"][keep],
            "noisy": noisy[keep],
            "quality": pseudo_label_quality(snap["pseudo_labels"], snap["true_pids"]),
        })
    return out


def snapshot_summary(snapshots: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What a batch run records of the noise notebook: per run and epoch, the full-set label quality."""
    return [{"run": s["run"], "epoch": s["epoch"], **s["quality"]} for s in snapshots]


def quality_histories(run_dirs: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    """Flat per-epoch histories of each run, for curves of pseudo-label quality."""
    return {name: flat_history(load_metrics(run_dir).get("history", [])) for name, run_dir in run_dirs.items()}

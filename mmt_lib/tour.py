"""What the data-tour notebook shows: dataset sizes, identities across cameras, styles across domains."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from PIL import Image

from mmt_lib.data import ReidDataset, load_dataset
from mmt_lib.data.synthetic import DOMAINS
from mmt_lib.paths import project_path
from mmt_lib.plots import image_grid


def load_domains(names: list[str], data_root: str, synthetic_size: str = "default",
                 synthetic_seed: int = 0) -> list[ReidDataset]:
    """Load (and for synthetic names, generate on first use) each dataset under ``data_root``."""
    root = project_path(data_root)
    return [load_dataset(n, root, size=synthetic_size, seed=synthetic_seed) if n in DOMAINS
            else load_dataset(n, root) for n in names]


def statistics_table(datasets: list[ReidDataset]) -> pd.DataFrame:
    rows = []
    for ds in datasets:
        per_id = np.bincount([pid for _, pid, _ in ds.train])
        rows.append({
            "dataset": ds.name, "cameras": ds.num_cams, "train ids": ds.num_train_pids,
            "train images": len(ds.train), "images per id": round(float(per_id.mean()), 1),
            "query images": len(ds.query), "gallery images": len(ds.gallery),
            "test ids": len({pid for _, pid, _ in ds.query}),
        })
    return pd.DataFrame(rows)


def identity_camera_grid(dataset: ReidDataset, identities: int = 4, seed: int = 0) -> Figure:
    """Rows: training identities seen by the most cameras; columns: cameras (blank where unseen)."""
    by_id: dict[int, dict[int, str]] = defaultdict(dict)
    for path, pid, cam in dataset.train:
        by_id[pid].setdefault(cam, path)
    rng = np.random.default_rng(seed)
    ranked = sorted(by_id, key=lambda pid: (-len(by_id[pid]), rng.random()))[:identities]
    blank = np.full((8, 4, 3), 255, np.uint8)
    images, titles = [], []
    for pid in ranked:
        for cam in range(dataset.num_cams):
            path = by_id[pid].get(cam)
            images.append(np.asarray(Image.open(path).convert("RGB")) if path else blank)
            titles.append(f"id {pid} · cam {cam + 1}" if path else "")
    fig = image_grid(images, nrows=len(ranked), ncols=dataset.num_cams, titles=titles)
    fig.suptitle(f"{dataset.name}: one row per identity, one column per camera")
    return fig


def domain_style_figure(datasets: list[ReidDataset], per_domain: int = 10, seed: int = 0) -> Figure:
    """A row of random training images per domain: the style gap at a glance."""
    rng = np.random.default_rng(seed)
    count = min(per_domain, *(len(ds.train) for ds in datasets))
    images, titles = [], []
    for ds in datasets:
        for i, idx in enumerate(rng.choice(len(ds.train), size=count, replace=False)):
            images.append(np.asarray(Image.open(ds.train[idx][0]).convert("RGB")))
            titles.append(ds.name if i == 0 else "")
    return image_grid(images, nrows=len(datasets), ncols=count, titles=titles)


def style_table() -> pd.DataFrame:
    """Every rendering knob of the synthetic domains, side by side (the domain gap, made explicit)."""
    return pd.DataFrame({name: {"cameras": spec.num_cams, **asdict(spec.style)} for name, spec in DOMAINS.items()}
                        ).rename_axis("knob").reset_index()

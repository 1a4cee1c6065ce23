"""What the data-tour notebook shows: dataset sizes, identities across cameras, styles across domains."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from PIL import Image

from mmt_lib.config import DOMAIN_DATASETS, PROFILES
from mmt_lib.data import ReidDataset, load_dataset
from mmt_lib.data.synthetic import DOMAINS
from mmt_lib.data.synthetic_render import KNOB_MEANINGS
from mmt_lib.figures.plots import image_grid
from mmt_lib.runtime.paths import project_path


def load_domains(names: list[str] | None, data_root: str, profile: str = "synthetic",
                 synthetic_size: str | None = None, synthetic_seed: int = 0) -> list[ReidDataset]:
    """Load (and for synthetic names, generate on first use) each dataset under ``data_root``.

    ``names=None`` takes the profile's three domains (synthetic or real); ``synthetic_size=None``
    the profile's size of the synthetic domains (``smoke``: tiny), so the tour shows the data the
    profile trains on.
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; known: {sorted(PROFILES)}")
    spec = PROFILES[profile]
    names = list(DOMAIN_DATASETS[spec["data_kind"]].values()) if names is None else names
    size = spec["data"].get("synthetic_size", "default") if synthetic_size is None else synthetic_size
    root = project_path(data_root)
    return [load_dataset(n, root, size=size, seed=synthetic_seed) if n in DOMAINS
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
    """One row per training identity (those seen by the most cameras), one cell per camera, blank where unseen.

    With many cameras (MSMT17's 15) each identity's row wraps onto two lines, so the images stay legible.
    """
    by_id: dict[int, dict[int, str]] = defaultdict(dict)
    for path, pid, cam in dataset.train:
        by_id[pid].setdefault(cam, path)
    rng = np.random.default_rng(seed)
    ranked = sorted(by_id, key=lambda pid: (-len(by_id[pid]), rng.random()))[:identities]
    images, titles = [], []
    for pid in ranked:
        for cam in range(dataset.num_cams):
            path = by_id[pid].get(cam)
            images.append(np.asarray(Image.open(path).convert("RGB")) if path else None)
            titles.append(f"cam {cam + 1}" if path else "")
    fig = image_grid(images, nrows=len(ranked), ncols=dataset.num_cams, titles=titles,
                     row_labels=[f"id {pid} ({len(by_id[pid])} cams)" for pid in ranked])
    fig.suptitle(f"{dataset.name}: one identity per row across its {dataset.num_cams} cameras")
    return fig


def domain_style_figure(datasets: list[ReidDataset], per_domain: int = 10, seed: int = 0) -> Figure:
    """A row of random training images per domain: the style gap at a glance."""
    rng = np.random.default_rng(seed)
    count = min(per_domain, *(len(ds.train) for ds in datasets))
    images = [np.asarray(Image.open(ds.train[idx][0]).convert("RGB"))
              for ds in datasets for idx in rng.choice(len(ds.train), size=count, replace=False)]
    fig = image_grid(images, nrows=len(datasets), ncols=count, row_labels=[ds.name for ds in datasets])
    fig.suptitle(f"{count} random training images per domain")
    return fig


def style_table(names: list[str] | None = None) -> pd.DataFrame:
    """Every rendering knob of the synthetic domains ``names`` (default: the three of ``data="synthetic"``),
    side by side (the domain gap, made explicit), with a sentence saying what each knob does."""
    names = list(DOMAIN_DATASETS["synthetic"].values()) if names is None else names
    specs = {name: DOMAINS[name] for name in names}
    table = pd.DataFrame({name: {"cameras": spec.num_cams, "family_size": spec.family_size,
                                 "look_alike_cue": spec.look_alike_cue, **asdict(spec.style)}
                          for name, spec in specs.items()}).rename_axis("knob").reset_index()
    table["what it does"] = table["knob"].map(KNOB_MEANINGS)
    return table

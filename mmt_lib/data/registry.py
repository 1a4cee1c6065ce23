"""`load_dataset(name, root)`: one entry point for every dataset; adding a parser is one line in DATASETS.

Any other name is a folder under the root in the `folder` layout (`mmt_lib.data.folder`): data of
your own is used by its folder's name, e.g. `load_dataset("mycams", "data")` reads `data/mycams/`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

from .base import ReidDataset
from .dukemtmc import load_dukemtmc
from .folder import load_folder
from .market1501 import load_market1501, load_market_layout
from .msmt17 import load_msmt17
from .synthetic import DOMAINS


def _load_synthetic(domain: str, root: str | Path, **options) -> ReidDataset:
    """Generate the synthetic domain under `root` if absent, then read it as a Market-layout dataset.

    `options` go to `ensure_domain` (size, seed).
    """
    from .synthetic import ensure_domain

    folder = ensure_domain(domain, Path(root), **options)
    return load_market_layout(folder, name=domain, max_cam=None)


DATASETS: dict[str, Callable[..., ReidDataset]] = {
    "market1501": load_market1501,
    "dukemtmc": load_dukemtmc,
    "msmt17": load_msmt17,
    "folder": load_folder,
    **{name: partial(_load_synthetic, name) for name in DOMAINS},
}
"""Dataset name -> parser `(root, **options) -> ReidDataset`."""


def known_datasets() -> list[str]:
    """The parsers' names, sorted (`load_dataset` also takes the name of a folder-layout folder)."""
    return sorted(DATASETS)


def load_dataset(name: str, root: str | Path, **options) -> ReidDataset:
    """Load dataset `name` from `root` (the dataset folder or the folder holding it).

    `options` go to the parser: `version` for msmt17, `display_name` for folder, `size`/`seed` for synth-*.
    A name no parser has is read as the folder `root/name` in the `folder` layout, labelled `name`.
    """
    key = name.strip().lower()
    if key in DATASETS:
        return DATASETS[key](root, **options)
    if is_folder_dataset(name, root):
        return load_folder(Path(root) / name, display_name=name)
    raise ValueError(f"unknown dataset {name!r}: no parser has this name (known: {', '.join(known_datasets())}) "
                     f"and {Path(root) / name} is not a folder in the folder layout (train/, query/, gallery/)")


def is_folder_dataset(name: str, root: str | Path) -> bool:
    """Whether `name` is no parser's name but a folder under `root`, to be read in the `folder` layout."""
    plain = name not in ("", ".", "..") and Path(name).name == name
    return plain and name.strip().lower() not in DATASETS and (Path(root) / name).is_dir()

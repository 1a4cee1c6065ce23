"""DukeMTMC-reID (Zheng et al., ICCV 2017): `DukeMTMC-reID/{bounding_box_train,query,bounding_box_test}/`.

File names look like `0001_c2_f0046182.jpg`: identity, camera (1-8), frame. The dataset was
withdrawn by its authors in 2019; it is supported for users who hold a copy and never downloaded.
"""

from __future__ import annotations

import re
from pathlib import Path

from ._layout import load_split_folders
from .base import ReidDataset

SPLITS = ("bounding_box_train", "query", "bounding_box_test")
ALIASES = ("DukeMTMC-reID", "dukemtmc-reid", "dukemtmc", "dukemtmc-reid/DukeMTMC-reID")
NAME_PATTERN = re.compile(r"(?P<pid>\d+)_c(?P<cam>\d+)_f\d+")
NAME_PATTERN_TEXT = "<pid>_c<cam>_f<frame>.jpg (e.g. 0001_c2_f0046182.jpg)"
NUM_CAMS = 8


def load_dukemtmc(root: str | Path) -> ReidDataset:
    """DukeMTMC-reID from its folder or the folder holding it (702 train ids / 16,522 images at full size)."""
    return load_split_folders(
        root,
        name="dukemtmc",
        label="dukemtmc",
        aliases=ALIASES,
        splits=SPLITS,
        pattern=NAME_PATTERN,
        pattern_text=NAME_PATTERN_TEXT,
        max_cam=NUM_CAMS,
    )

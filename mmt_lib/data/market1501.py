"""Market-1501 (Zheng et al., ICCV 2015): `Market-1501-v15.09.15/{bounding_box_train,query,bounding_box_test}/`.

File names look like `0002_c1s1_000451_03.jpg`: identity, camera (1-6), sequence, frame, box.
Identity -1 marks junk detections and is dropped everywhere; identity 0 marks distractors, which
are kept (they sit in the gallery and make retrieval harder, as in the official protocol).
"""

from __future__ import annotations

import re
from pathlib import Path

from ._layout import load_split_folders
from .base import ReidDataset

SPLITS = ("bounding_box_train", "query", "bounding_box_test")
ALIASES = ("Market-1501-v15.09.15", "Market-1501", "market1501", "market1501/Market-1501-v15.09.15")
NAME_PATTERN = re.compile(r"(?P<pid>-1|\d+)_c(?P<cam>\d+)s\d+_\d+_\d+")
NAME_PATTERN_TEXT = "<pid>_c<cam>s<seq>_<frame>_<box>.jpg (e.g. 0002_c1s1_000451_03.jpg)"
NUM_CAMS = 6


def load_market_layout(root: str | Path, *, name: str = "market1501", max_cam: int | None = NUM_CAMS) -> ReidDataset:
    """Any dataset in the Market-1501 layout and naming; `max_cam=None` lifts the 6-camera check.

    The synthetic domains are written in this layout with their own camera counts, so they reuse it.
    """
    return load_split_folders(
        root,
        name=name,
        label=name,
        aliases=ALIASES,
        splits=SPLITS,
        pattern=NAME_PATTERN,
        pattern_text=NAME_PATTERN_TEXT,
        max_cam=max_cam,
    )


def load_market1501(root: str | Path) -> ReidDataset:
    """Market-1501 from its folder or the folder holding it (751 train ids / 12,936 images at full size)."""
    return load_market_layout(root, name="market1501", max_cam=NUM_CAMS)

"""The `folder` layout: bring any re-ID data by renaming files, no code needed.

Layout (the root given to `load_dataset("folder", root)` is this folder itself; a folder under a data
root is also found by its own name, `load_dataset("mycams", data_root)`, which labels it `mycams`)::

    <root>/train/<pid>_c<cam>[_<anything>].<ext>
    <root>/query/<pid>_c<cam>[_<anything>].<ext>
    <root>/gallery/<pid>_c<cam>[_<anything>].<ext>

- `<pid>` is a non-negative integer identity, or -1 for junk images, which are dropped.
  Train identities are relabelled 0..N-1 in sorted order; query and gallery keep their ids, so
  the same person must carry the same id in query and gallery.
- `<cam>` is the camera, an integer from 1 (stored 0-based). Evaluation ignores gallery images of
  the query's identity taken by the query's camera, so give each camera its own number.
- `<ext>` is one of .jpg .jpeg .png .bmp (any case). Other files (Thumbs.db, notes) are ignored;
  sub-folders are not searched. Examples: `0007_c2_000123.jpg`, `-1_c1_junk.png`, `12_c3.jpg`.
- All three folders must hold at least one usable image. For an unlabelled target domain, give
  train images any valid ids (e.g. all 0): MMT training never reads target train ids; only the
  pseudo-label quality analysis does, and it is then meaningless.
"""

from __future__ import annotations

import re
from pathlib import Path

from ._layout import load_split_folders
from .base import ReidDataset

SPLITS = ("train", "query", "gallery")
NAME_PATTERN = re.compile(r"(?P<pid>-1|\d+)_c(?P<cam>\d+)(?:_.*)?")
NAME_PATTERN_TEXT = "<pid>_c<cam>[_<anything>].<jpg|jpeg|png|bmp> (e.g. 0007_c2_000123.jpg; pid -1 = junk)"


def load_folder(root: str | Path, *, display_name: str = "folder") -> ReidDataset:
    """A dataset in the `folder` layout above; `display_name` labels it in summaries and results."""
    return load_split_folders(
        root,
        name=display_name,
        label=f"{display_name} (folder layout)",
        aliases=(),
        splits=SPLITS,
        pattern=NAME_PATTERN,
        pattern_text=NAME_PATTERN_TEXT,
        max_cam=None,
    )

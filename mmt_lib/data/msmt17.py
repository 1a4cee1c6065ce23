"""MSMT17 (Wei et al., CVPR 2018), V1 or V2, told apart by the folders present.

V1: `MSMT17_V1/{train,test}/`, V2: `MSMT17_V2/{mask_train_v2,mask_test_v2}/`; both with
`list_train.txt`, `list_val.txt`, `list_query.txt`, `list_gallery.txt` beside the folders. Each
list line is `<relative path> <label>`, e.g. `0000/0000_000_01_0303morning_0015_0.jpg 0`; the
path is relative to the train folder (train and val lists) or the test folder (query and gallery
lists). Image names are `<pid>_<index>_<camera>_<date+time>_...`: the third field is the camera,
1-15. The training set is train + val, as in the paper (1,041 ids / 32,621 images).
"""

from __future__ import annotations

import re
from pathlib import Path

from ._layout import find_dataset_dir, parse_camera, relabel_train
from .base import DatasetLayoutError, ReidDataset, Sample

LABEL = "msmt17"
LIST_FILES = ("list_train.txt", "list_val.txt", "list_query.txt", "list_gallery.txt")
IMAGE_DIRS = {
    "V1": ("train", "test"),
    "V2": ("mask_train_v2", "mask_test_v2"),
    "V2 (capital V)": ("mask_train_V2", "mask_test_V2"),
}
"""Image folders (train, test) per layout; some V2 copies spell the folders with a capital V."""
ALIASES = ("MSMT17_V1", "MSMT17_V2", "MSMT17", "msmt17", "msmt17/MSMT17_V1", "msmt17/MSMT17_V2")
NAME_PATTERN = re.compile(r"(?P<pid>\d+)_(?P<index>\d+)_(?P<cam>\d+)_.+")
NAME_PATTERN_TEXT = "<pid>_<index>_<camera>_<date+time>_... (e.g. 0000_000_01_0303morning_0015_0.jpg)"
NUM_CAMS = 15


def load_msmt17(root: str | Path, *, version: str | None = None) -> ReidDataset:
    """MSMT17 from its folder or the folder holding it; `version` ("V1"/"V2") forces a layout when both exist."""
    layouts = {key: [f"{d}/" for d in dirs] + list(LIST_FILES) for key, dirs in IMAGE_DIRS.items()}
    if version is not None:
        if version.upper() not in ("V1", "V2"):
            raise ValueError(f"msmt17: version must be 'V1', 'V2' or None (auto-detect), got {version!r}")
        layouts = {key: entries for key, entries in layouts.items() if key.startswith(version.upper())}
    dataset_dir, layout = find_dataset_dir(root, LABEL, ALIASES, layouts)
    train_dir, test_dir = (dataset_dir / d for d in IMAGE_DIRS[layout])
    train = _read_list(dataset_dir / "list_train.txt", train_dir) + _read_list(dataset_dir / "list_val.txt", train_dir)
    train, raw_pids = relabel_train(sorted(train))
    return ReidDataset(
        name="msmt17",
        root=dataset_dir,
        train=train,
        query=sorted(_read_list(dataset_dir / "list_query.txt", test_dir)),
        gallery=sorted(_read_list(dataset_dir / "list_gallery.txt", test_dir)),
        meta={"version": layout[:2], "train_raw_pids": raw_pids},
    )


def _read_list(list_file: Path, image_dir: Path) -> list[Sample]:
    """Samples of one list file; the identity is the list's label, the camera comes from the file name.

    Every listed image must exist: a missing one would otherwise fail hours into training.
    """
    samples: list[Sample] = []
    missing: list[str] = []
    with open(list_file, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            fields = line.split()
            if len(fields) != 2 or not fields[1].isdigit():
                raise DatasetLayoutError(
                    f"{LABEL}: {list_file} line {number} is {line.strip()!r}; "
                    "expected '<relative path> <non-negative integer label>'"
                )
            relative, pid = fields[0], int(fields[1])
            match = NAME_PATTERN.fullmatch(Path(relative).stem)
            if match is None:
                raise DatasetLayoutError(
                    f"{LABEL}: {list_file} line {number}: image name {relative} does not match {NAME_PATTERN_TEXT}"
                )
            path = image_dir / relative
            if not path.is_file():
                missing.append(str(path))
            cam = parse_camera(int(match["cam"]), NUM_CAMS, LABEL, f"{list_file} line {number}")
            samples.append((str(path), pid, cam))
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise DatasetLayoutError(f"{LABEL}: {len(missing)} images listed in {list_file} do not exist: {shown}")
    if not samples:
        raise DatasetLayoutError(f"{LABEL}: list file {list_file} lists no images")
    return samples

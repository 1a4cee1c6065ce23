"""What every dataset parser shares: find the dataset folder, read identities from file names, relabel.

Parsers never open images: at real scale (MSMT17 holds 126k files) reading image headers would take
minutes, and a broken image is better reported by the loader that decodes it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from .base import IMAGE_SUFFIXES, DatasetLayoutError, ReidDataset, Sample

JUNK_PID = -1
"""Images labelled -1 are junk (bad detections) and are dropped at load, as the Market protocol says."""


def absolute(path: str | Path) -> Path:
    """An absolute, normalised path; symlinks are kept so messages show the path the user gave."""
    return Path(os.path.abspath(os.path.expanduser(str(path))))


def find_dataset_dir(
    root: str | Path,
    label: str,
    aliases: Sequence[str],
    layouts: Mapping[str, Sequence[str]],
    hint: str = "",
) -> tuple[Path, str]:
    """Return (folder, layout name) for the first of `root`, `root/<alias>`... that holds a whole layout.

    Users point at the dataset folder itself or at the folder that holds it, under several common
    names; trying both keeps configs short. A layout is a list of required entries: a name ending in
    "/" must be a folder, any other name a file. `hint` ends the error (e.g. the file naming pattern).
    """
    root = absolute(root)
    if not root.is_dir():
        raise DatasetLayoutError(f"{label}: dataset root {root} does not exist or is not a folder")
    candidates = [root] + [root / alias for alias in aliases]
    closest: tuple[int, Path, str, list[str]] | None = None
    for folder in candidates:
        if not folder.is_dir():
            continue
        for layout, required in layouts.items():
            missing = [entry for entry in required if not _entry_exists(folder, entry)]
            if not missing:
                return folder, layout
            if len(missing) < len(required) and (closest is None or len(missing) < closest[0]):
                closest = (len(missing), folder, layout, missing)
    expected = "; ".join(
        (f"{name}: " if len(layouts) > 1 else "") + ", ".join(required) for name, required in layouts.items()
    )
    message = f"{label}: expected {expected} under one of: " + ", ".join(str(c) for c in candidates)
    if closest is not None:
        _, folder, _, missing = closest
        message += f". Closest match {folder} lacks " + ", ".join(missing)
    raise DatasetLayoutError(message + (f". {hint}" if hint else ""))


def _entry_exists(folder: Path, entry: str) -> bool:
    path = folder / entry.rstrip("/")
    return path.is_dir() if entry.endswith("/") else path.is_file()


def is_image(name: str) -> bool:
    """Image files by suffix (case-insensitive); anything else in a split folder (Thumbs.db, notes) is ignored."""
    return name.lower().endswith(IMAGE_SUFFIXES)


def parse_camera(raw_cam: int, max_cam: int | None, label: str, where: str) -> int:
    """Check a 1-based raw camera id and return it 0-based."""
    if raw_cam < 1 or (max_cam is not None and raw_cam > max_cam):
        allowed = f"1..{max_cam}" if max_cam is not None else ">= 1"
        raise DatasetLayoutError(f"{label}: camera {raw_cam} in {where} is outside {allowed}")
    return raw_cam - 1


def scan_split(
    folder: Path, pattern: re.Pattern[str], pattern_text: str, label: str, max_cam: int | None
) -> list[Sample]:
    """Samples of one split folder (not recursive), sorted by path, junk dropped, cameras 0-based.

    `pattern` is matched against the whole file name without its suffix and must have the groups
    `pid` and `cam`; an image whose name does not match is an error, because silently skipping it
    would change the dataset's statistics without a word.
    """
    samples: list[Sample] = []
    with os.scandir(folder) as entries:
        names = sorted(entry.name for entry in entries if is_image(entry.name) and entry.is_file())
    for name in names:
        path = folder / name
        match = pattern.fullmatch(Path(name).stem)
        if match is None:
            raise DatasetLayoutError(f"{label}: image name {path} does not match the expected pattern {pattern_text}")
        pid = int(match["pid"])
        if pid == JUNK_PID:
            continue
        samples.append((str(path), pid, parse_camera(int(match["cam"]), max_cam, label, str(path))))
    if not samples:
        raise DatasetLayoutError(f"{label}: split folder {folder} holds no usable images named {pattern_text}")
    return samples


def relabel_train(samples: list[Sample]) -> tuple[list[Sample], list[int]]:
    """Relabel train identities 0..N-1 in sorted raw-id order; also return the raw ids (index = new label)."""
    raw_pids = sorted({pid for _, pid, _ in samples})
    new_label = {raw: i for i, raw in enumerate(raw_pids)}
    return [(path, new_label[pid], cam) for path, pid, cam in samples], raw_pids


def load_split_folders(
    root: str | Path,
    *,
    name: str,
    label: str,
    aliases: Sequence[str],
    splits: tuple[str, str, str],
    pattern: re.Pattern[str],
    pattern_text: str,
    max_cam: int | None,
) -> ReidDataset:
    """A dataset stored as three folders of images (train, query, gallery) whose names carry id and camera."""
    layout = {"layout": [f"{split}/" for split in splits]}
    dataset_dir, _ = find_dataset_dir(root, label, aliases, layout, hint=f"Images are named {pattern_text}")
    train, query, gallery = (
        scan_split(dataset_dir / split, pattern, pattern_text, label, max_cam) for split in splits
    )
    train, raw_pids = relabel_train(train)
    return ReidDataset(
        name=name,
        root=dataset_dir,
        train=train,
        query=query,
        gallery=gallery,
        meta={"train_raw_pids": raw_pids},
    )

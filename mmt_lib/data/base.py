"""The one data type every part of the library shares: a re-ID dataset as three lists of samples."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

Sample = tuple[str, int, int]
"""One image: (absolute path, identity, 0-based camera)."""

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


class DatasetLayoutError(ValueError):
    """A dataset folder or file does not look as expected; the message names the path."""


@dataclass(frozen=True)
class ReidDataset:
    """Train, query and gallery splits. Train identities are relabelled 0..N-1; query/gallery keep raw ids."""

    name: str
    root: Path
    train: list[Sample]
    query: list[Sample]
    gallery: list[Sample]
    meta: dict = field(default_factory=dict)

    @property
    def num_train_pids(self) -> int:
        return len({pid for _, pid, _ in self.train})

    @property
    def num_cams(self) -> int:
        cams = {cam for split in (self.train, self.query, self.gallery) for _, _, cam in split}
        return max(cams) + 1 if cams else 0

    def summary(self) -> str:
        rows = [
            f"{self.name} ({self.root})",
            f"  train   {self.num_train_pids:5d} ids {len(self.train):7d} images",
            f"  query   {len({p for _, p, _ in self.query}):5d} ids {len(self.query):7d} images",
            f"  gallery {len({p for _, p, _ in self.gallery}):5d} ids {len(self.gallery):7d} images",
            f"  cameras {self.num_cams}",
        ]
        return "\n".join(rows)

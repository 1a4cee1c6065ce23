"""Images decoded once: every image of a sample list, decoded and resized to the input size, in one file.

Decoding a JPEG and resizing it to the network's input is the same work every epoch: only the
augmentation after it is random. So each list of images is decoded and resized once, into rows of a
uint8 ``.npy`` file of shape ``[N, height, width, 3]`` that every epoch and every later run maps into
memory (``np.load(mmap_mode="r")``); the operating system shares those pages between loader workers
and runs. An image comes back as the RGB PIL image the transforms' resize step would have made, so
that step meets an image of its own size, returns it unchanged (PIL copies an image resized to its
own size), and the tensors are bit-identical to decoding on every draw.

The file is named by what it was made from: the target size and the path, byte size and
modification time of every image, in order. A changed, added or removed image gives another name,
so a stale file is never read; building the new one removes the older files of the same folders
and size. Files are written to a temporary sibling and renamed into place, under a lock, so that
concurrent runs decode a dataset once and an interrupted run leaves no half-written file.

Where: ``<data root>/.mmt-cache/decoded`` unless the environment variable ``MMT_CACHE_DIR`` names
another folder (``MMT_CACHE_DIR=off`` decodes on every draw, as without a cache). Any file there may
be deleted at any time; it is rebuilt on next use.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image
from torchvision.transforms import functional as F

from mmt_lib.data.transforms import RESIZE_INTERPOLATION
from mmt_lib.runtime.checkpoints import replacing
from mmt_lib.runtime.progress import tqdm

CACHE_ENV = "MMT_CACHE_DIR"
CACHE_OFF = "off"
FORMAT_VERSION = 1
"""Bump when what a row holds changes (decoder, resize): older files then no longer match any name."""


def cache_dir(data_root: str | Path, kind: str = "decoded") -> Path | None:
    """The folder for cached files of one ``kind`` (decoded images, Stage 0 starts) made from data under
    ``data_root``: ``<data_root>/.mmt-cache/<kind>``, or ``MMT_CACHE_DIR`` itself when set (file names
    of different kinds never collide); ``None`` when ``MMT_CACHE_DIR=off``."""
    chosen = os.environ.get(CACHE_ENV)
    if chosen == CACHE_OFF:
        return None
    return Path(chosen).expanduser() if chosen else Path(data_root) / ".mmt-cache" / kind


def load_image(path: str | Path) -> Image.Image:
    """An RGB PIL image; a missing or unreadable file raises ``OSError`` naming the path."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except OSError as err:
        raise OSError(f"cannot read image file {path}: {err}") from err


def decode_resized(path: str | Path, height: int, width: int) -> np.ndarray:
    """One image as the transforms' first step leaves it: RGB, resized (bicubic) to ``height x width``."""
    image = F.resize(load_image(path), [height, width], interpolation=RESIZE_INTERPOLATION)
    return np.asarray(image, dtype=np.uint8)


class DecodedImages:
    """Decoded, resized images looked up by path (rows of a memory-mapped ``.npy`` file).

    Lookup by path lets one file serve every subset of its list (MMT trains on the target images
    its clustering kept). Pickling drops the map, so spawned loader workers reopen the file
    rather than receive a copy of every row.
    """

    def __init__(self, file: str | Path, paths: Sequence[str]) -> None:
        self.file = Path(file)
        self.rows = {path: row for row, path in enumerate(paths)}
        self._array: np.ndarray | None = None

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = np.load(self.file, mmap_mode="r", allow_pickle=False)
        return self._array

    def __len__(self) -> int:
        return len(self.rows)

    def __contains__(self, path: object) -> bool:
        return path in self.rows

    def image(self, path: str) -> Image.Image:
        """The image at ``path`` as an RGB PIL image of the cached size."""
        try:
            row = self.rows[path]
        except KeyError:
            raise KeyError(f"{path} is not among the {len(self.rows)} images decoded in {self.file}") from None
        return Image.fromarray(np.asarray(self.array[row]))

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_array": None}


def decode_once(
    paths: Sequence[str], height: int, width: int, folder: str | Path, progress: bool = True,
    threads: int | None = None,
) -> DecodedImages:
    """The images at ``paths``, decoded and resized to ``height x width``: from ``folder`` if a
    matching file is there, else decoded now (``threads`` at a time) and stored there first."""
    paths = list(dict.fromkeys(str(p) for p in paths))
    if not paths:
        raise ValueError("decode_once needs at least one image path, got none")
    if height < 1 or width < 1:
        raise ValueError(f"image height and width must be positive, got height={height}, width={width}")
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(f"cannot create the decoded-image cache folder {folder} ({err}): set {CACHE_ENV} to a "
                      f"writable folder, or {CACHE_ENV}={CACHE_OFF} to decode on every draw") from err
    group, name = cache_name(paths, height, width)
    file = folder / name
    if not file.exists():
        with locked(folder / f".{group}.lock"):
            if not file.exists():
                _build(file, paths, height, width, progress, threads)
                for stale in folder.glob(f"{group}-*.npy"):
                    if stale != file:
                        stale.unlink(missing_ok=True)
    return DecodedImages(file, paths)


def cache_name(paths: Sequence[str], height: int, width: int) -> tuple[str, str]:
    """(group, file name): the group names the folders and size, the file also every image's state.

    Reading each file's size and modification time (``os.stat``, no decoding) is what notices a
    changed image; at MSMT17's 126k files it takes well under a second.
    """
    folders = sorted({os.path.dirname(p) for p in paths})
    label = "".join(c if c.isalnum() or c in "-." else "_" for c in "_".join(_common_folder(folders).parts[-2:]))[:60]
    where = hashlib.sha256("\n".join(folders).encode()).hexdigest()[:12]
    group = f"{label}-{height}x{width}-{where}"
    state = hashlib.sha256(f"{FORMAT_VERSION} {height} {width}\n".encode())
    for path in paths:
        try:
            info = os.stat(path)
        except OSError as err:
            raise OSError(f"cannot read image file {path}: {err}") from err
        state.update(f"{path}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
    return group, f"{group}-{state.hexdigest()[:16]}.npy"


def _common_folder(folders: Sequence[str]) -> Path:
    """The folder that holds all of ``folders``; the first of them when their paths cannot be compared."""
    try:
        return Path(os.path.commonpath(folders))
    except ValueError:  # absolute and relative paths mixed
        return Path(folders[0])


def _build(file: Path, paths: list[str], height: int, width: int, progress: bool, threads: int | None) -> None:
    threads = threads or available_cores()
    where = "/".join(_common_folder(sorted({os.path.dirname(p) for p in paths})).parts[-2:])
    with replacing(file) as tmp:
        rows = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), height, width, 3))
        with ThreadPoolExecutor(max_workers=threads) as pool:
            decoded = pool.map(decode_resized, paths, [height] * len(paths), [width] * len(paths))
            for row, pixels in enumerate(tqdm(decoded, total=len(paths), unit="img", disable=not progress, leave=False,
                                              desc=f"decoding {len(paths)} images of {where} to {height}x{width} "
                                                   "(once)")):
                rows[row] = pixels
        rows.flush()
        del rows


def available_cores() -> int:
    """CPU cores this process may run on (its affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (created if needed) while the block runs."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)

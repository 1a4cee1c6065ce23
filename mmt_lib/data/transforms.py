"""Image transforms of the paper: flip + pad/crop for training (random erasing in Stage II), resize for test.

The padding scales with the image height: ``pad = max(1, round(10 * height / 256))``, which is the
paper's 10 pixels at 256x128. A crop after padding shifts the person by up to ``pad`` pixels, and
the paper's augmentation is a shift of about 4% of the height (8% of the width). A fixed 10
pixels would be a third of the width on the CPU profile's 64x32 images and almost two thirds at
32x16: a much stronger augmentation than the one the paper tuned, cropping much of the person away.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ERASING_SCALE = (0.02, 0.4)
"""Erased area as a fraction of the image (MMT: 0.02-0.4)."""
ERASING_RATIO = (0.3, 1 / 0.3)
"""Aspect ratio range of the erased rectangle (MMT: at least 0.3, either orientation)."""
ERASING_FILL = 0.0
"""Erasing runs after Normalize, where the ImageNet mean pixel is (mean - mean) / std = 0 in every channel:
filling with 0 is filling with the ImageNet mean, as the paper specifies."""

RESIZE_INTERPOLATION = InterpolationMode.BICUBIC
"""How every image is resized to the input size (``decoded`` caches exactly this step's output)."""
_PIL_RESAMPLE = Image.Resampling.BICUBIC
"""``RESIZE_INTERPOLATION`` as Pillow names it: torchvision's ``Resize`` on a PIL image calls exactly this."""

Transform = Callable[[Image.Image], torch.Tensor]


def train_padding(height: int) -> int:
    """Pixels of padding before the random crop: the paper's 10 at height 256, scaled with the height."""
    return max(1, round(10 * height / 256))


class ReidTransform:
    """Resize, then optionally flip + pad/crop, ToTensor, Normalize and random erasing, drawn and computed
    exactly as ``torchvision.transforms`` does them (same random draws in the same order, the same
    pixels and floats), but on a numpy array instead of through PIL for each step.

    Why not ``T.Compose``: on a CPU the loader is part of every training step, and at 64x32 the
    per-step overheads of a PIL round trip and of ``ToTensor``/``Normalize`` (about 0.4 ms of an
    image's 0.7 ms) are most of it (benchmarks/README.md). A resize to the size an image already
    has (the decoded cache's images) is skipped: Pillow returns a copy for it.
    """

    def __init__(self, height: int, width: int, augment: bool = False, random_erasing: bool = False,
                 erasing_prob: float = 0.5) -> None:
        _check_size(height, width)
        if not 0.0 <= erasing_prob <= 1.0:
            raise ValueError(f"erasing_prob must be in [0, 1], got {erasing_prob}")
        self.size = (height, width)
        self.augment = augment
        self.pad = train_padding(height) if augment else 0
        self.mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)
        self.std = np.asarray(IMAGENET_STD, dtype=np.float32)
        self.erasing = (T.RandomErasing(p=erasing_prob, scale=ERASING_SCALE, ratio=ERASING_RATIO,
                                        value=ERASING_FILL, inplace=True) if random_erasing else None)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        height, width = self.size
        if image.size != (width, height):
            image = image.resize((width, height), _PIL_RESAMPLE)
        if image.mode != "RGB":
            image = image.convert("RGB")
        pixels = np.asarray(image)
        if self.augment:
            pixels = self._flip_pad_crop(pixels)
        out = torch.from_numpy(self._normalised(pixels).transpose(2, 0, 1).copy())
        return self.erasing(out) if self.erasing is not None else out

    def _flip_pad_crop(self, pixels: np.ndarray) -> np.ndarray:
        """``RandomHorizontalFlip(0.5)``, ``Pad(pad)`` with black, ``RandomCrop(size)``: torchvision's draws."""
        if torch.rand(1) < 0.5:
            pixels = pixels[:, ::-1]
        height, width = self.size
        pad = self.pad
        padded = np.zeros((height + 2 * pad, width + 2 * pad, pixels.shape[2]), dtype=pixels.dtype)
        padded[pad:pad + height, pad:pad + width] = pixels
        top = torch.randint(0, 2 * pad + 1, size=(1,)).item()
        left = torch.randint(0, 2 * pad + 1, size=(1,)).item()
        return padded[top:top + height, left:left + width]

    def _normalised(self, pixels: np.ndarray) -> np.ndarray:
        """``ToTensor`` then ``Normalize``, the same float32 operations in the same order, on HxWxC."""
        out = pixels.astype(np.float32)
        out /= np.float32(255)
        out -= self.mean
        out /= self.std
        return out


def build_train_transform(
    height: int, width: int, random_erasing: bool, erasing_prob: float = 0.5
) -> Transform:
    """Bicubic resize, flip (0.5), pad + random crop, ImageNet normalisation, then optional random erasing.

    ``erasing_prob`` is the paper's 0.5; it is a parameter so tests can force an erasure.
    """
    return ReidTransform(height, width, augment=True, random_erasing=random_erasing, erasing_prob=erasing_prob)


def build_test_transform(height: int, width: int) -> Transform:
    """Bicubic resize and ImageNet normalisation, nothing random."""
    return ReidTransform(height, width)


def torchvision_transform(
    height: int, width: int, train: bool, random_erasing: bool = False, erasing_prob: float = 0.5
) -> Transform:
    """The same transform as ``build_train_transform`` (``train``) or ``build_test_transform``, written
    step by step with ``torchvision.transforms``: the specification the tests and
    ``benchmarks/bench_transforms.py`` hold ``ReidTransform`` to, draw for draw and float for float."""
    _check_size(height, width)
    steps: list[Callable] = [T.Resize((height, width), interpolation=RESIZE_INTERPOLATION)]
    if train:
        steps += [T.RandomHorizontalFlip(p=0.5), T.Pad(train_padding(height)), T.RandomCrop((height, width))]
    steps += [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if train and random_erasing:
        steps.append(T.RandomErasing(p=erasing_prob, scale=ERASING_SCALE, ratio=ERASING_RATIO, value=ERASING_FILL))
    return T.Compose(steps)


def _check_size(height: int, width: int) -> None:
    if height < 1 or width < 1:
        raise ValueError(f"image height and width must be positive, got height={height}, width={width}")

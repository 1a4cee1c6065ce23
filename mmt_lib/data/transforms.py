"""Image transforms of the paper: flip + pad/crop for training (random erasing in Stage II), resize for test.

The padding scales with the image height: ``pad = max(1, round(10 * height / 256))``, which is the
paper's 10 pixels at 256x128. A crop after padding shifts the person by up to ``pad`` pixels, and
the paper's augmentation is a shift of about 4% of the height (8% of the width). A fixed 10
pixels would be a third of the width on the CPU profile's 64x32 images and almost two thirds at
32x16: a much stronger augmentation than the one the paper tuned, cropping much of the person away.
"""

from __future__ import annotations

from collections.abc import Callable

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

Transform = Callable[[Image.Image], torch.Tensor]


def train_padding(height: int) -> int:
    """Pixels of padding before the random crop: the paper's 10 at height 256, scaled with the height."""
    return max(1, round(10 * height / 256))


def build_train_transform(
    height: int, width: int, random_erasing: bool, erasing_prob: float = 0.5
) -> Transform:
    """Bicubic resize, flip (0.5), pad + random crop, ImageNet normalisation, then optional random erasing.

    ``erasing_prob`` is the paper's 0.5; it is a parameter so tests can force an erasure.
    """
    _check_size(height, width)
    if not 0.0 <= erasing_prob <= 1.0:
        raise ValueError(f"erasing_prob must be in [0, 1], got {erasing_prob}")
    steps: list[Callable] = [
        T.Resize((height, width), interpolation=RESIZE_INTERPOLATION),
        T.RandomHorizontalFlip(p=0.5),
        T.Pad(train_padding(height)),
        T.RandomCrop((height, width)),
        T.ToTensor(),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ]
    if random_erasing:
        steps.append(T.RandomErasing(p=erasing_prob, scale=ERASING_SCALE, ratio=ERASING_RATIO, value=ERASING_FILL))
    return T.Compose(steps)


def build_test_transform(height: int, width: int) -> Transform:
    """Bicubic resize and ImageNet normalisation, nothing random."""
    _check_size(height, width)
    return T.Compose([
        T.Resize((height, width), interpolation=RESIZE_INTERPOLATION),
        T.ToTensor(),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def _check_size(height: int, width: int) -> None:
    if height < 1 or width < 1:
        raise ValueError(f"image height and width must be positive, got height={height}, width={width}")

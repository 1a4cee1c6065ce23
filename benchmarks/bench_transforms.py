"""Microseconds per image of the library's transforms against the same steps in ``torchvision.transforms``.

On a CPU the loader runs inside every training step (0 workers on 2 cores), so the per-image cost of
the augmentation is part of each iteration: 128 images (two views of 64) per Stage II step. The
library's ``ReidTransform`` draws and computes exactly what ``torchvision_transform`` does; this
script checks that on every image it times (``identical``) and reports the best of ``--rounds``
rounds of ``--images`` calls each, one thread, on a decoded image of the input size (what the
decoded cache hands the transform).

    python benchmarks/bench_transforms.py                         # 64x32, the synthetic profile's size
    python benchmarks/bench_transforms.py --height 256 --width 128 --images 500
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmt_lib.data.transforms import (  # noqa: E402
    build_test_transform,
    build_train_transform,
    torchvision_transform,
)

CASES: dict[str, tuple[Callable, Callable]] = {
    "train, random erasing (Stage II)": (lambda h, w: build_train_transform(h, w, random_erasing=True),
                                         lambda h, w: torchvision_transform(h, w, True, random_erasing=True)),
    "train (Stage I)": (lambda h, w: build_train_transform(h, w, random_erasing=False),
                        lambda h, w: torchvision_transform(h, w, True)),
    "test (extraction, evaluation)": (build_test_transform, lambda h, w: torchvision_transform(h, w, False)),
}


def per_image_us(transform: Callable, images: list[Image.Image], rounds: int) -> tuple[float, list[torch.Tensor]]:
    """Best round's microseconds per image, and the outputs of the last round (seeded alike for both)."""
    best = float("inf")
    for _ in range(rounds):
        torch.manual_seed(0)
        tic = time.perf_counter()
        outputs = [transform(image) for image in images]
        best = min(best, (time.perf_counter() - tic) / len(images) * 1e6)
    return best, outputs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (args.height, args.width, 3), dtype=np.uint8))
              for _ in range(args.images)]
    print(f"{args.height}x{args.width}, {args.images} images, best of {args.rounds} rounds, 1 thread\n")
    print("| transform | ours (us/image) | torchvision (us/image) | speed-up | identical |")
    print("|---|---:|---:|---:|---|")
    for name, (ours, reference) in CASES.items():
        ours_us, ours_out = per_image_us(ours(args.height, args.width), images, args.rounds)
        ref_us, ref_out = per_image_us(reference(args.height, args.width), images, args.rounds)
        same = all(torch.equal(a, b) for a, b in zip(ours_out, ref_out))
        print(f"| {name} | {ours_us:.0f} | {ref_us:.0f} | {ref_us / ours_us:.2f}x | {'yes' if same else 'NO'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Stage 0: a pretrained start made from formulas, standing in for ImageNet where none can be downloaded.

The paper fine-tunes both Stage I networks from one ImageNet start. Without those weights the CPU
profiles would start both from one *random* draw, and the two networks end far apart. Formula-driven
supervised pre-training (FractalDB; Kataoka et al., ACCV 2020) gives a generic start instead, learnt
from images that hold no person and none of the synthetic domains' rendering:

* each class is an iterated function system (IFS) of 2-8 random affine maps, kept only if the point
  cloud the chaos game draws from it fills enough of the image (FractalDB's filling-rate filter);
* the instances of a class differ by FractalDB's weight jitter of one map's parameters, and by
  colour, flip, scale and position;
* a linear classifier on the backbone's pooled features learns the classes (cross-entropy).

The backbone's ``state_dict`` is written in the format of an ImageNet weights file
(``models.weights.load_imagenet_weights``), so ``model.pretrained="stage0"`` goes through the same
local-weights path as ImageNet weights. The same ``Stage0Config`` always gives the same file, byte
for byte: every random draw comes from its seed and training runs on one thread. The file is cached
under ``<data root>/.mmt-cache/stage0`` (or ``$MMT_CACHE_DIR``, as the decoded images) and named by
a hash of its config and the library version, with a JSON report (training curve, held-out accuracy)
beside it.

    python -m mmt_lib.stage0 --profile synthetic [--data-root DIR] [--seed N] [--family spectrum]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import io
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from mmt_lib import __version__
from mmt_lib.config import PROFILES, STAGE0, STAGE0_FAMILIES, RunConfig
from mmt_lib.data.decoded import cache_dir, locked
from mmt_lib.data.synthetic_render import make_background, make_cameras, random_style, render_image, sample_identity
from mmt_lib.models import known_archs
from mmt_lib.models.backbones import build_backbone
from mmt_lib.runtime.checkpoints import replacing, write_json_atomic
from mmt_lib.runtime.commandline import refuse
from mmt_lib.runtime.paths import project_path
from mmt_lib.runtime.progress import tqdm, trange

FAMILIES = STAGE0_FAMILIES
"""``fractal``: FractalDB's iterated function systems; ``spectrum``: coloured noise of a class's amplitude
spectrum (Baradad et al., NeurIPS 2021), the other formula-driven family tried for the same start;
``people``: randomised synthetic persons, one fresh identity per class, each in a look and cameras drawn
from broad ranges (``synthetic_render.random_style``), as RandPerson (ACM MM 2020) and UnrealPerson
(CVPR 2021) pre-train re-ID networks: never a task domain's settings."""
PEOPLE_CAMERAS = 6
"""Cameras each ``people`` class is filmed by, so that a class holds one person under several views and lights."""
FORMAT_VERSION = 1
"""Bump when what a file holds for a given config changes (renderer, training): older files then no longer match."""
FILLING_RATE = 0.2
"""FractalDB's filling-rate filter: an IFS is kept only if its points cover at least this share of the image."""
FILL_GRID = 64
"""The square grid, in pixels, on which the filling rate is measured: one size, so one IFS passes or fails
whatever size its images are rendered at."""
POINTS_PER_PIXEL = 2
"""Chaos-game points per image pixel: enough that the attractor shows as shapes rather than scattered dots
at the small CPU sizes."""
BURN_IN = 20
"""Chaos-game points dropped before drawing: the walk needs a few steps to reach the attractor."""
JITTER = (0.8, 1.2)
"""FractalDB's intra-class weighting: one map's parameters of an instance multiplied by a weight in this range."""
OUTLIER_SHARE = 0.005
"""Share of the points at each end of each axis left out of the box an image is scaled to."""
CANDIDATES = 16
"""IFS drawn at once when looking for one that passes the filling-rate filter (about one in several does)."""
HELD_OUT_PER_CLASS = 10
"""Instances per class rendered apart from training, to measure how well the classes were learnt."""


@dataclass(frozen=True)
class Stage0Config:
    """What the Stage 0 start is made of and trained with; the file name hashes every field.

    Defaults follow FractalDB's design, scaled to a 2-core CPU (about 5 minutes for ``cpu_small``):

    * ``family="fractal"``: FractalDB's images (``FAMILIES``);
    * ``classes=100``, ``images_per_class=100``: a tenth of FractalDB-1k's 1000 classes and of its 1000
      instances per class, the scale the CPU budget allows;
    * ``epochs=4``: four passes over those 10,000 images, about 95 s of CPU time for ``cpu_small`` at
      64 x 32 (rendering included), within the budget even on a shared machine;
    * ``batch_size=64``: the batch of the CPU profiles' re-ID training;
    * ``lr=1e-3``: Adam's default rate (Kingma & Ba), with Adam as in the rest of the library, decayed
      to zero by a cosine over the epochs so that the last weights are not mid-step;
    * ``seed=1``: the profiles' ``model.backbone_seed``, which names the one shared start;
    * ``arch``, ``height``, ``width``: the run's backbone and input size, so the start is learnt on the
      images' scale.
    """

    family: str = "fractal"
    classes: int = 100
    images_per_class: int = 100
    epochs: int = 4
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 1
    arch: str = "cpu_small"
    height: int = 64
    width: int = 32

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"Stage 0 family must be one of {FAMILIES}, got {self.family!r}")
        if self.arch not in known_archs():
            raise ValueError(f"Stage 0 arch must be one of {known_archs()}, got {self.arch!r}")
        for name in ("classes", "images_per_class", "epochs", "batch_size", "height", "width"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (2 if name == "classes" else 1):
                raise ValueError(f"Stage 0 {name} must be an integer >= {2 if name == 'classes' else 1}, "
                                 f"got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"Stage 0 seed must be an integer >= 0, got {self.seed!r}")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not 0 < self.lr < float("inf"):
            raise ValueError(f"Stage 0 lr must be a positive number, got {self.lr!r}")


def stage0_config(cfg: RunConfig) -> Stage0Config:
    """The Stage 0 start of a run: its profile's sizes (``PROFILES[...]["stage0"]``), ``model.stage0_family``,
    its backbone and input size, and ``model.backbone_seed`` as the seed (the seed of the start both networks share)."""
    sizes = PROFILES[cfg.profile].get("stage0", {})
    return Stage0Config(**sizes, family=cfg.model.stage0_family, seed=cfg.model.backbone_seed, arch=cfg.model.arch,
                        height=cfg.data.height, width=cfg.data.width)


# ---------------------------------------------------------------- the images


def sample_ifs(rng: np.random.Generator) -> np.ndarray:
    """A FractalDB class: 2-8 affine maps ``(a, b, c, d, e, f)``, each drawn uniformly from [-1, 1],
    redrawn until its points fill at least ``FILLING_RATE`` of a square image. Shape [maps, 6].

    Candidates are drawn ``CANDIDATES`` at a time, for one chaos game over all of them; the first that
    passes is kept."""
    while True:
        candidates = rng.uniform(-1.0, 1.0, size=(CANDIDATES, int(rng.integers(2, 9)), 6))
        clouds = _chaos_game(candidates, FILL_GRID * FILL_GRID * POINTS_PER_PIXEL // 4, rng)
        for maps, points in zip(candidates, clouds):
            if np.isfinite(points).all() and filling_rate(points) >= FILLING_RATE:
                return maps


def filling_rate(points: np.ndarray) -> float:
    """The share of a ``FILL_GRID``-square image that ``points`` [N, 2] cover once scaled to fill it."""
    cells = _to_grid(points, FILL_GRID, FILL_GRID)
    return float(np.unique(cells[:, 0] * FILL_GRID + cells[:, 1]).size) / (FILL_GRID * FILL_GRID)


def map_probabilities(maps: np.ndarray) -> np.ndarray:
    """Each map's chance to be applied, proportional to |det| (the area it keeps), as in FractalDB.

    Shape [..., maps]; a floor keeps a near-singular map from vanishing."""
    det = np.abs(maps[..., 0] * maps[..., 3] - maps[..., 1] * maps[..., 2]) + 1e-3
    return det / det.sum(-1, keepdims=True)


def _chaos_game(maps: np.ndarray, points: int, rng: np.random.Generator) -> np.ndarray:
    """Points [B, N, 2] of the attractors of ``B`` systems of equally many maps ``maps`` [B, M, 6]."""
    batch = maps.shape[0]
    cumulative = np.cumsum(map_probabilities(maps), axis=-1)
    cumulative[:, -1] = 1.0
    choices = (rng.random((BURN_IN + points, batch, 1)) > cumulative[None]).sum(-1)
    a, b, c, d, e, f = np.moveaxis(maps[np.arange(batch)[None], choices], -1, 0)  # each [steps, B]
    x, y = np.zeros(batch), np.zeros(batch)
    out = np.empty((BURN_IN + points, 2, batch))
    with np.errstate(over="ignore", invalid="ignore"):
        for step in range(BURN_IN + points):
            x, y = a[step] * x + b[step] * y + e[step], c[step] * x + d[step] * y + f[step]
            out[step, 0], out[step, 1] = x, y
    return out[BURN_IN:].transpose(2, 0, 1)


def _to_grid(points: np.ndarray, height: int, width: int) -> np.ndarray:
    """Integer (row, column) cells of ``points`` [N, 2] scaled, aspect kept, to fill a ``height x width``
    box; points outside it are dropped (see ``_fit``)."""
    cells, inside = _fit(points[None], np.array([height]), np.array([width]))
    return cells[0][inside[0]]


def _fit(clouds: np.ndarray, heights: np.ndarray, widths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cells [B, N, 2] (row, column) of ``clouds`` [B, N, 2], each scaled, aspect kept, to fill its
    ``heights[i] x widths[i]`` box, and which of them lie inside it [B, N].

    A box spans the central ``1 - 2 * OUTLIER_SHARE`` of its points along each axis, so that a few points
    far out (a map that barely contracts) do not shrink the shape to a dot. Non-finite points lie outside."""
    finite = np.isfinite(clouds).all(-1)
    quantile = np.quantile if finite.all() else np.nanquantile
    with np.errstate(invalid="ignore"):
        low, high = quantile(np.where(finite[..., None], clouds, np.nan), [OUTLIER_SHARE, 1 - OUTLIER_SHARE], axis=1)
        span = np.maximum(high - low, 1e-9)  # [B, 2] as (x, y)
        scale = np.minimum((widths - 1) / span[:, 0], (heights - 1) / span[:, 1])[:, None]
        rows = np.round((clouds[..., 1] - low[:, None, 1]) * scale)
        cols = np.round((clouds[..., 0] - low[:, None, 0]) * scale)
        inside = finite & (rows >= 0) & (cols >= 0) & (rows < heights[:, None]) & (cols < widths[:, None])
    cells = np.stack([np.where(inside, rows, 0), np.where(inside, cols, 0)], axis=-1).astype(np.int64)
    return cells, inside


def render(ifs: np.ndarray, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """One image of ``ifs`` [M, 6]: uint8 [height, width, 3] (see ``render_batch``)."""
    return render_batch(ifs[None], height, width, rng)[0]


def render_batch(systems: np.ndarray, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Images [B, height, width, 3] of ``systems`` [B, M, 6]: the chaos game's points, in one random
    colour on black, scaled to 60-100% of the image, at a random position, flipped half the time.

    A pixel's brightness grows with the log of the points on it, so dense and sparse parts both show."""
    batch = systems.shape[0]
    clouds = _chaos_game(systems, height * width * POINTS_PER_PIXEL, rng)
    scales = rng.uniform(0.6, 1.0, size=batch)
    colours = rng.uniform(0.25, 1.0, size=(batch, 3))
    flips = rng.random(batch) < 0.5
    offsets = rng.random((batch, 2))
    box_h = np.maximum(2, np.round(height * scales)).astype(np.int64)
    box_w = np.maximum(2, np.round(width * scales)).astype(np.int64)
    cells, inside = _fit(clouds, box_h, box_w)
    spans = np.stack([np.where(inside, cells[..., k], 0).max(1) + 1 for k in (0, 1)], axis=1)  # [B, 2]
    cells += (offsets * (np.array([height, width]) - spans)).astype(np.int64)[:, None]
    cells[..., 1] = np.where(flips[:, None], width - 1 - cells[..., 1], cells[..., 1])
    flat = (np.arange(batch)[:, None] * height + cells[..., 0]) * width + cells[..., 1]
    hits = np.bincount(flat[inside], minlength=batch * height * width).reshape(batch, height, width)
    peak = np.log1p(np.maximum(hits.max((1, 2)), 1))[:, None, None]
    shade = np.clip(np.log1p(hits) / peak * 1.5, 0.0, 1.0)
    return np.round(shade[..., None] * colours[:, None, None] * 255).astype(np.uint8)


def jitter(ifs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An instance of a class: the parameters of one of its maps multiplied by a weight in ``JITTER``."""
    out = ifs.copy()
    out[rng.integers(len(ifs))] *= rng.uniform(*JITTER)
    return out


def class_images(cfg: Stage0Config, k: int) -> np.ndarray:
    """Every instance of class ``k``, the ``images_per_class`` for training then the ``HELD_OUT_PER_CLASS``
    held out: uint8 [images_per_class + HELD_OUT_PER_CLASS, height, width, 3].

    Class ``k`` draws from its own stream of the seed, so its IFS and images do not depend on how many
    classes there are, and a figure can show a few classes exactly as training saw them."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k < cfg.classes:
        raise ValueError(f"class index must be in [0, {cfg.classes}), got {k!r}")
    rng = np.random.default_rng([cfg.seed, int(k)])
    count = cfg.images_per_class + HELD_OUT_PER_CLASS
    if cfg.family == "people":
        return person_images(rng, count, cfg.height, cfg.width)
    if cfg.family == "spectrum":
        spectrum = sample_spectrum(rng)
        return np.stack([render_spectrum(spectrum, cfg.height, cfg.width, rng) for _ in range(count)])
    ifs = sample_ifs(rng)
    return render_batch(np.stack([jitter(ifs, rng) for _ in range(count)]), cfg.height, cfg.width, rng)


def person_images(rng: np.random.Generator, count: int, height: int, width: int) -> np.ndarray:
    """A ``people`` class: one identity drawn in a random look (``random_style``), filmed ``count`` times by
    ``PEOPLE_CAMERAS`` random cameras of that look; uint8 [count, height, width, 3]."""
    style = random_style(rng)
    person = sample_identity(style, rng)
    cameras = make_cameras(style, PEOPLE_CAMERAS, rng)
    scenes = [make_background(camera, style) for camera in cameras]
    images = []
    for _ in range(count):
        which = int(rng.integers(PEOPLE_CAMERAS))
        image = render_image(person, cameras[which], style, scenes[which], rng)
        if image.size != (width, height):
            image = image.resize((width, height), Image.BILINEAR)
        images.append(np.asarray(image))
    return np.stack(images)


def sample_spectrum(rng: np.random.Generator) -> np.ndarray:
    """A ``spectrum`` class (Baradad et al., NeurIPS 2021, "spectrum + colour" noise, made a class):
    the amplitude spectrum's decay 1/|f|^alpha (alpha in [0.5, 3]), its anisotropy (x-frequencies scaled
    by [1/3, 3]) and orientation, and a 3 x 3 colour mixing of three independent noise channels.

    Returned as [alpha, anisotropy, angle, 9 mixing weights]."""
    return np.concatenate([[rng.uniform(0.5, 3.0), np.exp(rng.uniform(np.log(1 / 3), np.log(3))),
                            rng.uniform(0, np.pi)], rng.normal(size=9)])


def render_spectrum(spectrum: np.ndarray, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """An instance of a ``spectrum`` class: random phases under its amplitude spectrum, alpha multiplied
    by a weight in ``JITTER`` (FractalDB's instance jitter, carried over), then colour-mixed; uint8 [H, W, 3]."""
    alpha, anisotropy, angle = spectrum[:3]
    alpha *= rng.uniform(*JITTER)
    fy, fx = np.meshgrid(np.fft.fftfreq(height), np.fft.fftfreq(width), indexing="ij")
    u, v = fx * np.cos(angle) + fy * np.sin(angle), -fx * np.sin(angle) + fy * np.cos(angle)
    radius = np.maximum(np.hypot(u * anisotropy, v / anisotropy), 1.0 / max(height, width))
    amplitude = radius ** -alpha
    amplitude[0, 0] = 0.0
    phases = np.exp(2j * np.pi * rng.random((3, height, width)))
    channels = np.fft.ifft2(amplitude * phases).real
    channels /= channels.std(axis=(1, 2), keepdims=True) + 1e-12
    mixed = np.tensordot(spectrum[3:].reshape(3, 3), channels, axes=1)
    mixed /= np.abs(mixed).max() + 1e-12
    return np.round((0.5 + 0.5 * mixed).transpose(1, 2, 0) * 255).astype(np.uint8)


def make_images(cfg: Stage0Config, progress: bool = True) -> dict[str, np.ndarray]:
    """The training and held-out images with their class labels: ``train``/``train_labels`` hold the
    first ``images_per_class`` instances of every class, ``test``/``test_labels`` ``HELD_OUT_PER_CLASS`` more."""
    per_class = cfg.images_per_class + HELD_OUT_PER_CLASS
    images = np.stack([class_images(cfg, k) for k in tqdm(
        range(cfg.classes), desc=f"rendering {cfg.classes} {cfg.family} classes", unit="class", disable=not progress,
        leave=False)])
    labels = np.repeat(np.arange(cfg.classes), per_class).reshape(cfg.classes, per_class)
    split = cfg.images_per_class
    return {"train": images[:, :split].reshape(-1, cfg.height, cfg.width, 3),
            "train_labels": labels[:, :split].reshape(-1),
            "test": images[:, split:].reshape(-1, cfg.height, cfg.width, 3),
            "test_labels": labels[:, split:].reshape(-1)}


# ---------------------------------------------------------------- training


class _Classifier(nn.Module):
    """The backbone, global average pooling and a linear layer over the classes."""

    def __init__(self, arch: str, classes: int) -> None:
        super().__init__()
        self.backbone = build_backbone(arch)
        self.fc = nn.Linear(self.backbone.feature_dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.backbone(x).mean((2, 3)))


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Torch on one thread while the block runs: another thread count sums in another order."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] to float [N, 3, H, W], normalised as the re-ID transforms do (ImageNet's mean/std)."""
    from mmt_lib.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def train_start(cfg: Stage0Config, progress: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Render the images and train the classifier; returns the backbone's ``state_dict`` and a report
    (per-epoch loss and accuracy, held-out accuracy, seconds). Deterministic: one seed, one thread."""
    tic = time.perf_counter()
    data = make_images(cfg, progress)
    seconds_render = time.perf_counter() - tic
    history = []
    with _one_thread(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = _Classifier(cfg.arch, cfg.classes)
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        order = torch.Generator().manual_seed(cfg.seed)
        train_x, train_y = _to_tensor(data["train"]), torch.from_numpy(data["train_labels"])
        steps = -(-len(train_y) // cfg.batch_size)
        total = cfg.epochs * steps
        for epoch in trange(cfg.epochs, desc="Stage 0 epochs", disable=not progress, leave=False):
            model.train()
            loss_sum, correct = 0.0, 0
            perm = torch.randperm(len(train_y), generator=order)
            for step in tqdm(range(steps), desc=f"epoch {epoch + 1}", disable=not progress, leave=False):
                for group in optimizer.param_groups:
                    group["lr"] = cfg.lr * 0.5 * (1 + np.cos(np.pi * (epoch * steps + step) / total))
                idx = perm[step * cfg.batch_size:(step + 1) * cfg.batch_size]
                logits = model(train_x[idx])
                loss = F.cross_entropy(logits, train_y[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += float(loss.detach()) * len(idx)
                correct += int((logits.argmax(1) == train_y[idx]).sum())
            history.append({"epoch": epoch, "loss": loss_sum / len(train_y), "train_accuracy": correct / len(train_y)})
        held_out = _accuracy(model, _to_tensor(data["test"]), torch.from_numpy(data["test_labels"]), cfg.batch_size)
    state = {name: value.detach().clone() for name, value in model.backbone.state_dict().items()}
    report = {"config": dataclasses.asdict(cfg), "version": __version__, "format_version": FORMAT_VERSION,
              "history": history, "held_out_accuracy": held_out, "held_out_images": int(len(data["test_labels"])),
              "chance_accuracy": 1.0 / cfg.classes, "seconds_render": seconds_render,
              "seconds_total": time.perf_counter() - tic}
    return state, report


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    """Top-1 accuracy in eval mode (BatchNorm's running statistics, as the backbone will start)."""
    model.eval()
    with torch.inference_mode():
        predicted = torch.cat([model(x[i:i + batch_size]).argmax(1) for i in range(0, len(y), batch_size)])
    return float((predicted == y).float().mean())


# ---------------------------------------------------------------- the cached file


def config_hash(cfg: Stage0Config) -> str:
    """Hash of every field, the library version and ``FORMAT_VERSION``: another start, another name."""
    payload = json.dumps({"config": dataclasses.asdict(cfg), "version": __version__, "format": FORMAT_VERSION},
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def cache_root(data_root: str | Path) -> Path:
    """Where Stage 0 files live: the decoded images' rule (``data.decoded.cache_dir``), in its own folder.

    ``MMT_CACHE_DIR=off`` turns off the decoded-image cache, but a start must be a file to load, so it
    then stays in the default folder under the data root."""
    return cache_dir(project_path(data_root), "stage0") or project_path(data_root) / ".mmt-cache" / "stage0"


def weights_path(cfg: Stage0Config, cache_root: str | Path) -> Path:
    """The file for ``cfg`` under ``cache_root``; its report is the same name with ``.json``."""
    return Path(cache_root) / f"stage0-{cfg.family}-{cfg.arch}-{cfg.height}x{cfg.width}-{config_hash(cfg)}.pt"


def report_path(weights: str | Path) -> Path:
    return Path(weights).with_suffix(".json")


def read_report(weights: str | Path) -> dict[str, Any]:
    """The report written beside a Stage 0 file (training curve, held-out accuracy)."""
    path = report_path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"no Stage 0 report at {path}: build the start with ensure_start first")
    return json.loads(path.read_text(encoding="utf-8"))


def ensure_start(cfg: Stage0Config, cache_root: str | Path, progress: bool = True) -> Path:
    """The Stage 0 weights file for ``cfg``: the cached one, or built now (a lock keeps concurrent runs
    from building it twice; the file is renamed into place only once complete, its report first)."""
    path = weights_path(cfg, cache_root)
    if path.is_file():
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(f"cannot create the Stage 0 cache folder {path.parent} ({err}): set MMT_CACHE_DIR to a "
                      f"writable folder") from err
    with locked(path.parent / f".{path.stem}.lock"):
        if not path.is_file():
            state, report = train_start(cfg, progress)
            write_json_atomic(report_path(path), report)
            buffer = io.BytesIO()  # a file's archive is named after the (random) temporary file; a buffer's is not
            torch.save(state, buffer)
            with replacing(path) as tmp:
                tmp.write_bytes(buffer.getvalue())
    return path


def resolve_pretrained(cfg: RunConfig, progress: bool = True) -> Path | None:
    """The backbone weights file a run starts from: ``None`` (random), the Stage 0 start (built if needed)
    for ``model.pretrained="stage0"``, else the named file."""
    chosen = cfg.model.pretrained
    if chosen is None:
        return None
    if chosen == STAGE0:
        return ensure_start(stage0_config(cfg), cache_root(cfg.data.data_root), progress)
    return project_path(chosen)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmt_lib.stage0",
                                     description="build (or find) the Stage 0 start of a profile and print its path")
    parser.add_argument("--profile", default="synthetic", choices=sorted(PROFILES))
    parser.add_argument("--data-root", default=None, help="the cache lives under it (default: the profile's data root); a relative path starts at the "
                        "current directory")
    parser.add_argument("--seed", type=int, default=None, help="the start's seed (default: model.backbone_seed)")
    parser.add_argument("--family", default=None, choices=FAMILIES, help="the images (default: the profile's)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    from mmt_lib.config import resolve
    from mmt_lib.runtime.paths import from_command_line

    try:
        overrides = {"model": {"backbone_seed": args.seed}} if args.seed is not None else {}
        cfg = resolve(stage="pretrain", profile=args.profile, data_root=from_command_line(args.data_root),
                      overrides=overrides)
        s0 = stage0_config(cfg)
        s0 = dataclasses.replace(s0, family=args.family) if args.family else s0
    except ValueError as err:
        raise SystemExit(refuse(parser.prog, err)) from None
    path = ensure_start(s0, cache_root(cfg.data.data_root), progress=not args.quiet)
    report = read_report(path)
    print(f"held-out accuracy {report['held_out_accuracy']:.3f} (chance {report['chance_accuracy']:.3f}), "
          f"built in {report['seconds_total']:.0f} s", file=sys.stderr)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Seconds per CPU Stage I epoch on real-layout JPEG folders: images decoded on every draw, or decoded once.

Builds (once, under ``--root``) a Market-1501-layout source of ``--images`` JPEG crops at Market's
128x64 and a ``folder``-layout target of as many, then times whole Stage I epochs of the library
(``mmt_lib.method.pretrain.train_epoch``: ``--iters`` identity-balanced source batches, each with a target
batch forwarded for BatchNorm) on the synthetic profile (``cpu_small``, 64x32, batch 64):

* real, decoded every draw: each image read from its JPEG and resized on every draw (no cache);
* real, decoded once: rows of the decoded cache (``mmt_lib.data.decoded``), built before timing;
  timed with 0, 1, ... loader workers, up to this machine's cores;
* synthetic, both ways: the synth-duke -> synth-market domains (default size, generated under
  ``--root`` on first use), the data the epoch time on real images is measured against.

Each case runs ``--epochs`` epochs from the same seeded network, the cases taking turns epoch by
epoch so that a busy spell of a shared machine hits them alike; the table reports the fastest
epoch's wall time (the machine may be shared), the least CPU time (this process's threads plus the
loader workers': the work done, whatever else the machine runs) and every epoch's. It also reports
the cache's build time and size.

    python benchmarks/bench_data_loading.py                                  # 7,000 images, 40 iterations
    python benchmarks/bench_data_loading.py --images 300 --iters 2 --epochs 1 --workers 0   # smoke check
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmt_lib.config import RunConfig, resolve  # noqa: E402
from mmt_lib.data.decoded import available_cores, cache_dir, decode_once  # noqa: E402
from mmt_lib.data.loaders import ImageDataset, build_shuffled_loader, build_train_loader  # noqa: E402
from mmt_lib.data.transforms import build_train_transform  # noqa: E402
from mmt_lib.method.engine import build_adam, load_task_datasets, prepare_model  # noqa: E402
from mmt_lib.method.pretrain import learning_rate, train_epoch  # noqa: E402
from mmt_lib.models import build_model  # noqa: E402
from mmt_lib.runtime.seeding import seed_everything  # noqa: E402

MARKET = "Market-1501-v15.09.15"
TARGET = "bench-target"
HEIGHT, WIDTH = 128, 64
"""Market-1501's crop size."""
IMAGES_PER_ID = 9.3
"""Market-1501's training set: 12,936 images of 751 identities, 17.2 per identity; half that keeps
the number of identities per image of a 7,000-image set near Market's."""


def crop(rng: np.random.Generator) -> Image.Image:
    """A pedestrian-sized JPEG-able crop: smooth colour regions plus sensor-like noise (about Market's file size)."""
    coarse = rng.integers(0, 256, (8, 4, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((WIDTH, HEIGHT), Image.BICUBIC), dtype=np.int16)
    noisy = smooth + rng.integers(-12, 13, smooth.shape)
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8))


def write_split(folder: Path, count: int, ids: int, cams: int, seed: int, name) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        pid, cam = 1 + i % ids, 1 + int(rng.integers(cams))
        crop(rng).save(folder / name(pid, cam, i), "JPEG", quality=90)


def make_datasets(root: Path, images: int) -> None:
    """A Market-layout source and a folder-layout target of ``images`` training crops each (kept once made)."""
    marker = root / ".bench-datasets.json"
    spec = {"images": images, "size": [HEIGHT, WIDTH], "version": 1}
    if marker.exists() and json.loads(marker.read_text()) == spec:
        return
    ids = max(16, round(images / IMAGES_PER_ID))  # at least one batch of 16 identities x 4
    market = root / MARKET
    steps = [
        (market / "bounding_box_train", images, ids, 0, lambda p, c, i: f"{p:04d}_c{c}s1_{i:06d}_00.jpg"),
        (market / "query", 100, 50, 1, lambda p, c, i: f"{p:04d}_c{c}s1_{i:06d}_00.jpg"),
        (market / "bounding_box_test", 500, 50, 2, lambda p, c, i: f"{p:04d}_c{c}s1_{i:06d}_00.jpg"),
        (root / TARGET / "train", images, ids, 3, lambda p, c, i: f"{p}_c{c}_{i}.jpg"),
        (root / TARGET / "query", 100, 50, 4, lambda p, c, i: f"{p}_c{c}_{i}.jpg"),
        (root / TARGET / "gallery", 500, 50, 5, lambda p, c, i: f"{p}_c{c}_{i}.jpg"),
    ]
    for folder, count, n_ids, seed, name in tqdm(steps, desc="writing JPEG folders", unit="split"):
        write_split(folder, count, n_ids, 6, seed, name)
    marker.write_text(json.dumps(spec))


def cpu_seconds() -> float:
    """CPU time of this process (every thread) and of its finished children (loader workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class Case:
    """One way of loading one task: its datasets, and a network trained on from the same seeded start."""

    def __init__(self, name: str, cfg: RunConfig, cached: bool, workers: int) -> None:
        self.name, self.cfg, self.workers = name, cfg, workers
        self.source, target = load_task_datasets(cfg.data)
        tf = build_train_transform(cfg.data.height, cfg.data.width, random_erasing=False)
        folder = cache_dir(cfg.data.data_root)

        def dataset(samples: list) -> ImageDataset:
            images = decode_once([p for p, _, _ in samples], cfg.data.height, cfg.data.width, folder, progress=False)
            return ImageDataset(samples, tf, images if cached else None)

        self.source_set, self.target_set = dataset(self.source.train), dataset(target.train)
        seed_everything(cfg.seed)
        cpu = torch.device("cpu")
        self.model = prepare_model(build_model(cfg.model.arch, self.source.num_train_pids), cfg.runtime, cpu)
        self.optimizer = build_adam(self.model.parameters(), cfg.pretrain.lr, cfg.pretrain.weight_decay,
                                    cfg.runtime, cpu)
        self.seconds: list[tuple[float, float]] = []

    def epoch(self, epoch: int) -> None:
        """One Stage I epoch (loaders built inside it, as ``pretrain`` does); records (wall, CPU) seconds."""
        cfg = self.cfg
        seed_everything(cfg.seed, epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(cfg.pretrain, epoch)
        tic, cpu = time.perf_counter(), cpu_seconds()
        source_loader = build_train_loader(self.source_set, self.source.train, cfg.data.batch_size,
                                           cfg.data.num_instances, self.workers, cfg.seed, epoch)
        target_loader = build_shuffled_loader(self.target_set, cfg.data.batch_size, self.workers, seed=cfg.seed + epoch)
        train_epoch(self.model, self.optimizer, source_loader, target_loader, cfg, torch.device("cpu"), epoch)
        del source_loader, target_loader  # workers exit, so their CPU time is counted
        self.seconds.append((time.perf_counter() - tic, cpu_seconds() - cpu))


def per_image_cpu(case: Case, draws: int) -> float:
    """CPU microseconds to draw one training image, on one thread: read it (JPEG or cache row), transform it."""
    indices = np.random.default_rng(0).integers(len(case.source_set), size=draws)
    tic = time.process_time()
    for index in indices:
        case.source_set[int(index)]
    return (time.process_time() - tic) / draws * 1e6


def step_cpu(case: Case, steps: int) -> float:
    """CPU milliseconds of one Stage I iteration on one thread, its batches already in memory (no loading)."""
    batch = [case.source_set[i] for i in range(case.cfg.data.batch_size)]
    images = torch.stack([b[0] for b in batch])
    pids = torch.arange(len(batch)) // case.cfg.data.num_instances
    cfg = replace(case.cfg, pretrain=replace(case.cfg.pretrain, iters=steps))
    tic = time.process_time()
    train_epoch(case.model, case.optimizer, [(images, pids, None, None)], [(images,)], cfg, torch.device("cpu"), 0)
    return (time.process_time() - tic) / steps * 1e3


def epoch_table(cases: list[Case]) -> None:
    """Wall and CPU seconds of whole epochs, with the default threads, against the synthetic epochs."""
    rows = [(c.name, min(w for w, _ in c.seconds), min(u for _, u in c.seconds), c.seconds) for c in cases]
    references = [next((r[1] for r in rows if r[0] == f"synthetic, decoded {how}"), None)
                  for how in ("every draw", "once")]
    print("\n| case | epoch s (fastest) | CPU s (least) | every epoch: wall / CPU s | "
          "/ synthetic, decoded every draw | / synthetic, decoded once |")
    print("|---|---|---|---|---|---|")
    for name, wall, cpu, seconds in rows:
        ratios = " | ".join(f"{wall / ref:.2f}x" if ref else "-" for ref in references)
        every = ", ".join(f"{w:.1f} / {c:.1f}" for w, c in seconds)
        print(f"| {name} | {wall:.2f} | {cpu:.2f} | {every} | {ratios} |")
    fastest = min((c for c in cases if c.name.startswith("real, decoded once")), key=lambda c: min(c.seconds)[0])
    print(f"\nFastest with the cache on this machine: {fastest.workers} loader workers "
          f"(data.num_workers; a different count draws different augmentations, see mmt_lib.data.loaders)")


def cache_report(cfg: RunConfig) -> tuple[float, int, int]:
    """(seconds to decode both training sets into a fresh cache folder, the files' bytes, images)."""
    source, target = load_task_datasets(cfg.data)
    with tempfile.TemporaryDirectory() as folder:
        tic = time.perf_counter()
        files = [decode_once([p for p, _, _ in ds.train], cfg.data.height, cfg.data.width, folder, progress=False)
                 for ds in (source, target)]
        seconds = time.perf_counter() - tic
        return seconds, sum(f.file.stat().st_size for f in files), sum(len(f) for f in files)


def one_thread_costs(cases: list[Case], draws: int, iters: int, rounds: int = 3) -> None:
    """The epoch split into its parts on one thread, in CPU time: robust to a busy shared machine.

    Each number is the least of ``rounds`` measurements, the cases taking turns within a round.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    plain = [c for c in cases if c.workers == 0]
    images: dict[str, list[float]] = {c.name: [] for c in plain}
    steps = []
    for _ in range(rounds):
        steps.append(step_cpu(cases[0], steps=5))
        for case in plain:
            images[case.name].append(per_image_cpu(case, draws))
    step = min(steps)
    per_epoch_images = 2 * iters * cases[0].cfg.data.batch_size  # a source and a target batch per iteration
    print(f"\nOne thread, CPU time (least of {rounds}): a Stage I iteration without loading takes {step:.0f} ms; "
          f"an epoch draws {per_epoch_images} images.\n")
    epochs = {name: min(costs) * per_epoch_images / 1e6 + step * iters / 1e3 for name, costs in images.items()}
    reference = epochs.get("synthetic, decoded every draw")
    print("| case (0 workers) | CPU us per image | loading CPU s per epoch | epoch CPU s (loading + steps) "
          "| / synthetic, decoded every draw |")
    print("|---|---|---|---|---|")
    for name, costs in images.items():
        loading = min(costs) * per_epoch_images / 1e6
        ratio = f"{epochs[name] / reference:.2f}x" if reference else "-"
        print(f"| {name} | {min(costs):.0f} | {loading:.1f} | {epochs[name]:.1f} | {ratio} |")
    torch.set_num_threads(threads)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="data/bench-loading", help="where the JPEG folders are written (kept)")
    parser.add_argument("--images", type=int, default=7000, help="training images of the source and of the target")
    parser.add_argument("--iters", type=int, default=40, help="iterations per epoch (the synthetic profile's 40)")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per case (0: one-thread costs only)")
    parser.add_argument("--workers", type=int, nargs="+", default=None,
                        help="loader workers to time with the cache (default: 0 .. the available cores)")
    parser.add_argument("--synthetic-root", default="data", help="where the synthetic domains are (generated if absent)")
    parser.add_argument("--skip-synthetic", action="store_true", help="time the real-layout folders only")
    parser.add_argument("--draws", type=int, default=2000,
                        help="images drawn per case for the one-thread CPU cost per image (0: skip)")
    args = parser.parse_args(argv)
    root = Path(args.root).resolve()
    os.environ.pop("MMT_CACHE_DIR", None)
    make_datasets(root, args.images)
    overrides = {"pretrain": {"iters": args.iters}, "runtime": {"progress": False}}
    real = resolve("pretrain", "synthetic", source="market1501", target=TARGET, data_root=str(root), device="cpu",
                   overrides=overrides)
    synthetic = resolve("pretrain", "synthetic", task="duke2market", data_root=args.synthetic_root, device="cpu",
                        overrides=overrides)
    build_s, build_bytes, build_images = cache_report(real)
    workers = args.workers if args.workers is not None else list(range(available_cores() + 1))
    cases = [("real, decoded every draw", real, False, 0)]
    cases += [(f"real, decoded once, {w} worker{'s' * (w != 1)}", real, True, w) for w in workers]
    if not args.skip_synthetic:
        cases += [("synthetic, decoded every draw", synthetic, False, 0), ("synthetic, decoded once", synthetic, True, 0)]
    cases = [Case(*case) for case in cases]
    for epoch in tqdm(range(args.epochs), desc="rounds (one epoch of every case)", unit="round"):
        for case in cases:
            case.epoch(epoch)
    print(f"\ncores available: {available_cores()}, torch threads: {torch.get_num_threads()}, "
          f"{args.iters} iterations of batch {real.data.batch_size} at {real.data.height}x{real.data.width}, "
          f"{args.images} source + {args.images} target training images at {HEIGHT}x{WIDTH}")
    print(f"decoded cache: {build_images} images decoded in {build_s:.1f} s, {build_bytes / 2**20:.1f} MiB on disk")
    if args.epochs:
        epoch_table(cases)
    if args.draws:
        one_thread_costs(cases, args.draws, args.iters)
    return 0


if __name__ == "__main__":
    sys.exit(main())

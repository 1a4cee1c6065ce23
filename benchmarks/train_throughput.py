"""Images per second of one Stage II iteration and of feature extraction: fp32 reference against our settings.

The iteration is the library's own (``mmt_lib.method.mmt.train_epoch``: two students forward and backward,
two mean nets forward, the four MMT loss terms, Adam, the mean-teacher updates), fed with one
synthetic batch of random images that already lies on the device, so data loading is not measured.
Extraction is ``mmt_lib.evaluation.evaluate.extract_features`` in eval mode. Settings compared:

* reference: fp32, contiguous (NCHW) memory, plain Adam;
* ours: the library's defaults on this device (``runtime`` left at ``None``: bf16 autocast on CUDA and
  on CPUs with native bf16, channels_last, fused Adam on CUDA; ``engine.uses_*``), and
  torch.compile of the trained nets with ``--compile``.

    python benchmarks/train_throughput.py                # ResNet-50, 256x128, batch 64 (for a GPU)
    python benchmarks/train_throughput.py --tiny         # small net, 64x32, a few iterations: CPU smoke check
    python benchmarks/train_throughput.py --arch cpu_small --curves 200   # the synthetic profile's net on a CPU
    python benchmarks/train_throughput.py --curves 200   # also each loss term of both settings, 200 iterations

The projection is the paper's Stage II schedule: 40 epochs x 400 iterations, plus 40 extractions of
the target training set by both mean nets (evaluation excluded), for a Market (12,936 images) and a
DukeMTMC (16,522 images) target.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmt_lib.config import RunConfig, resolve  # noqa: E402
from mmt_lib.evaluation.evaluate import extract_features  # noqa: E402
from mmt_lib.method.engine import (  # noqa: E402
    build_adam,
    prepare_model,
    resolve_device,
    uses_bf16,
    uses_channels_last,
    uses_fused_adam,
)
from mmt_lib.method.mmt import Networks, train_epoch  # noqa: E402
from mmt_lib.method.teachers import create_mean_teacher  # noqa: E402
from mmt_lib.models import build_model  # noqa: E402

EPOCHS, ITERS = 40, 400
TARGETS = {"Market-1501": 12_936, "DukeMTMC-reID": 16_522}
SETTINGS = {
    "fp32 reference": {"bf16": False, "channels_last": False, "fused_adam": False, "compile": False},
    "ours": {"bf16": None, "channels_last": None, "fused_adam": None, "compile": False},
}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of ``fn`` with the device's queue drained before and after."""
    synchronize(device)
    tic = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - tic


def make_cfg(args: argparse.Namespace, runtime: dict, iters: int) -> RunConfig:
    return resolve(stage="mmt", profile="paper", arch=args.arch, device=args.device, overrides={
        "data": {"height": args.height, "width": args.width, "batch_size": args.batch},
        "mmt": {"iters": iters}, "runtime": {**runtime, "progress": False},
    })


def build_stage2(args: argparse.Namespace, runtime: dict, device: torch.device, iters: int):
    """Two students, their mean nets and Adam, initialised from seed 0 whatever the settings."""
    cfg = make_cfg(args, runtime, iters)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    students = [prepare_model(build_model(args.arch, args.classes), cfg.runtime, device) for _ in range(2)]
    centroids = torch.nn.functional.normalize(torch.randn(args.classes, students[0].feature_dim, generator=gen), dim=1)
    for net in students:
        net.reset_classifier(centroids.to(device))
    networks = Networks(students, [create_mean_teacher(s) for s in students])
    networks.prepare_training(cfg.runtime, device)
    optimizer = build_adam([p for s in students for p in s.parameters() if p.requires_grad],
                           cfg.mmt.lr, cfg.mmt.weight_decay, cfg.runtime, device)
    return networks, optimizer, cfg


def random_batch(args: argparse.Namespace, device: torch.device, seed: int) -> tuple:
    """Two views of random images with identity labels in groups of 4, as the P x K sampler gives."""
    gen = torch.Generator().manual_seed(seed)
    shape = (args.batch, 3, args.height, args.width)
    labels = (torch.arange(args.batch // 4).repeat_interleave(4) + seed) % args.classes
    return (torch.randn(shape, generator=gen).to(device), torch.randn(shape, generator=gen).to(device),
            labels.to(device), None, None)


def train_throughput(args: argparse.Namespace, runtime: dict, device: torch.device) -> tuple[float, float, float]:
    """Images per second of ``mmt.train_epoch`` (each image counted once, though it feeds four nets),
    CPU milliseconds per iteration and the seconds of the first (warm-up) iterations.

    Both timings are the least of ``--rounds`` rounds. CPU time counts this process's threads only,
    so on a shared machine it measures the work where wall time also measures the neighbours; the
    warm-up includes ``torch.compile``'s compilation when it is on.
    """
    networks, optimizer, cfg = build_stage2(args, runtime, device, args.iters)
    batch = random_batch(args, device, seed=0)
    warm = make_cfg(args, runtime, args.warmup)
    warm_seconds = timed(lambda: train_epoch(networks, optimizer, [batch], warm, device, epoch=0), device)
    wall, cpu = float("inf"), float("inf")
    for round_ in range(args.rounds):
        tic = time.process_time()
        wall = min(wall, timed(lambda: train_epoch(networks, optimizer, [batch], cfg, device, epoch=1 + round_), device))
        cpu = min(cpu, time.process_time() - tic)
    return args.batch * args.iters / wall, 1000 * cpu / args.iters, warm_seconds


def loss_curves(args: argparse.Namespace, runtime: dict, device: torch.device) -> dict[str, list[float]]:
    """Each MMT loss term over ``--curves`` iterations from the same start and the same batches."""
    networks, optimizer, cfg = build_stage2(args, runtime, device, iters=1)
    curves: dict[str, list[float]] = {}
    for it in range(args.curves):
        losses = train_epoch(networks, optimizer, [random_batch(args, device, seed=it)], cfg, device, epoch=it)
        for name, value in losses.items():
            curves.setdefault(name, []).append(value)
    return curves


def curves_table(ref: dict[str, list[float]], ours: dict[str, list[float]], window: int) -> str:
    """Per term: running means (``window`` <= iterations) at the start and the end, and the largest gap.

    "Noise" is the reference's own spread: the standard deviation of its iteration-to-iteration
    changes, scaled to a running mean of ``window`` iterations. Both settings see the same batches,
    so part of that spread is shared: read it as an upper bound on the gap worth worrying about.
    """
    rows = [f"| term | reference, first {window} | ours, first {window} | reference, last {window} | "
            f"ours, last {window} | largest gap of {window}-it. means | noise of such a mean |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in ref.items():
        a, b = torch.tensor(r, dtype=torch.float64), torch.tensor(ours[name], dtype=torch.float64)
        run_a, run_b = a.unfold(0, window, 1).mean(1), b.unfold(0, window, 1).mean(1)
        noise = float(a.diff().std() / (2 * window) ** 0.5) if len(a) > 2 else float("nan")
        rows.append(f"| {name} | {run_a[0]:.4f} | {run_b[0]:.4f} | {run_a[-1]:.4f} | {run_b[-1]:.4f} | "
                    f"{float((run_a - run_b).abs().max()):.4f} | {noise:.4f} |")
    return "\n".join(rows)


def extract_throughput(args: argparse.Namespace, runtime: dict, device: torch.device) -> float:
    """Images per second of ``extract_features`` (eval mode, one network) at ``--test-batch``."""
    cfg = make_cfg(args, runtime, 1)
    net = prepare_model(build_model(args.arch, 0), cfg.runtime, device)
    images = torch.randn((args.test_batch, 3, args.height, args.width), generator=torch.Generator().manual_seed(1))
    zeros = torch.zeros(args.test_batch, dtype=torch.long)
    batch = (images.to(device), zeros, zeros, zeros)
    amp = torch.bfloat16 if uses_bf16(cfg.runtime, device) else None

    def run(batches: int) -> None:
        extract_features(net, [batch] * batches, device=device, amp_dtype=amp, progress=False)

    timed(lambda: run(args.warmup), device)
    return args.test_batch * args.extract_batches / timed(lambda: run(args.extract_batches), device)


def projected_hours(train_ips: float, extract_ips: float, batch: int, target_images: int) -> float:
    """The paper's Stage II schedule: 40 x 400 iterations + 40 extractions by both mean nets."""
    seconds = EPOCHS * ITERS * batch / train_ips + EPOCHS * 2 * target_images / extract_ips
    return seconds / 3600


def table(results: dict[str, tuple[float, float, float, float]], batch: int) -> str:
    names = list(results)
    ref, ours = results[names[0]], results[names[1]]
    projected = " | ".join(f"Stage II, {t} target (h)" for t in TARGETS)
    rows = [f"| setting | train img/s | extract img/s | {projected} | CPU ms per iteration | warm-up (s) |",
            "|---|---:|---:|" + "---:|" * len(TARGETS) + "---:|---:|"]
    for name, (tr, ex, cpu_ms, warm) in results.items():
        hours = " | ".join(f"{projected_hours(tr, ex, batch, n):.2f}" for n in TARGETS.values())
        rows.append(f"| {name} | {tr:.1f} | {ex:.1f} | {hours} | {cpu_ms:.0f} | {warm:.1f} |")
    speed = " | ".join(f"{projected_hours(ref[0], ref[1], batch, n) / projected_hours(ours[0], ours[1], batch, n):.2f}x"
                       for n in TARGETS.values())
    rows.append(f"| speed-up (ours vs reference) | {ours[0] / ref[0]:.2f}x | {ours[1] / ref[1]:.2f}x | {speed} | "
                f"{ref[2] / ours[2]:.2f}x | |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="small net at 64x32, a few iterations (CPU smoke check)")
    parser.add_argument("--compile", action="store_true", help="also torch.compile the trained nets in 'ours'")
    parser.add_argument("--arch", default=None, help="backbone (default: resnet50 at 256x128; a cpu_* net at 64x32)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--iters", type=int, default=None, help="timed training iterations")
    parser.add_argument("--rounds", type=int, default=1, help="timed rounds of --iters iterations; the least counts")
    parser.add_argument("--curves", type=int, default=0, metavar="N",
                        help="also compare the loss terms of both settings over N iterations, e.g. 200")
    args = parser.parse_args(argv)
    tiny = args.tiny
    args.arch = args.arch or ("cpu_tiny" if tiny else "resnet50")
    small = args.arch.startswith("cpu_")
    args.height, args.width = (64, 32) if small else (256, 128)
    args.batch, args.test_batch, args.classes = 64, 128, 500
    args.iters = args.iters or (2 if tiny else 10 if small else 30)
    args.warmup = 1 if tiny else 5
    args.extract_batches = 2 if tiny else 10 if small else 30
    device = resolve_device(args.device)
    settings = {name: dict(s) for name, s in SETTINGS.items()}
    settings["ours"]["compile"] = args.compile
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    results = {}
    for name, runtime in settings.items():
        images_per_s, cpu_ms, warm_s = train_throughput(args, runtime, device)
        results[name] = (images_per_s, extract_throughput(args, runtime, device), cpu_ms, warm_s)
    on = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    defaults = make_cfg(args, settings["ours"], 1).runtime
    chosen = [name for name, on_here in (("bf16 autocast", uses_bf16(defaults, device)),
                                         ("channels_last", uses_channels_last(defaults, device)),
                                         ("fused Adam", uses_fused_adam(defaults, device)),
                                         ("torch.compile", args.compile)) if on_here]
    print(f"{args.arch} at {args.height}x{args.width}, batch {args.batch} (extraction {args.test_batch}), "
          f"{args.iters} timed iterations, on {on} (torch threads: {torch.get_num_threads()}); "
          f"ours = {', '.join(chosen) or 'fp32 as the reference'}\n")
    print(table(results, args.batch))
    if args.curves:
        ref, ours = (loss_curves(args, runtime, device) for runtime in settings.values())
        print(f"\nLoss terms over {args.curves} iterations, same start and batches:\n")
        print(curves_table(ref, ours, window=min(20, args.curves)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

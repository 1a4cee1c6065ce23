"""Where a CPU Stage II run's time goes: extraction, clustering, training, evaluation, and loading inside each.

Builds the two students (and mean nets) of a profile's Stage II on a task's target, with random
weights (time does not depend on what the weights hold), and times each step of one Stage II epoch
(``mmt_lib.method.mmt``) the way ``train_mmt`` runs it: embedding the target's training images with both
labelling nets, k-means (or DBSCAN), ``iters`` MMT iterations, evaluating the labelling nets on
query + gallery. Loading alone (the same loaders iterated without any network) is timed apart, so
each step splits into loading and compute. The table then projects one whole run: ``epochs`` x
(extraction + clustering + training) + evaluations every ``eval_every`` epochs and after the last.
Each step is the least of ``--repeats`` timings (the machine may be shared).

    python benchmarks/stage2_time.py                                    # synthetic profile, duke2market
    python benchmarks/stage2_time.py --runtime '{"channels_last": true}'  # a runtime setting against the default
    python benchmarks/stage2_time.py --profile smoke --repeats 1        # smoke check
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmt_lib.config import resolve  # noqa: E402
from mmt_lib.data.loaders import (  # noqa: E402
    ImageDataset,
    IterLoader,
    TwoViewDataset,
    build_test_loader,
    build_train_loader,
)
from mmt_lib.data.transforms import build_test_transform, build_train_transform  # noqa: E402
from mmt_lib.method.engine import (  # noqa: E402
    build_adam,
    decoded_images,
    evaluate_model,
    load_named_dataset,
    prepare_model,
)
from mmt_lib.method.mmt import (  # noqa: E402
    Networks,
    assign_pseudo_labels,
    embed_target,
    init_classifiers,
    train_epoch,
)
from mmt_lib.method.teachers import create_mean_teacher  # noqa: E402
from mmt_lib.models import build_model  # noqa: E402
from mmt_lib.runtime.seeding import seed_everything  # noqa: E402


def least(fn: Callable[[], object], repeats: int) -> float:
    """The least wall time of ``repeats`` calls: the step's own cost on a machine others share."""
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return min(times)


def drain(loader, batches: int | None = None) -> None:
    for i, _ in enumerate(loader):
        if batches is not None and i + 1 >= batches:
            break


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="synthetic")
    parser.add_argument("--task", default="duke2market")
    parser.add_argument("--variant", default="mmt-kmeans")
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--runtime", default="{}", help="JSON runtime overrides, e.g. '{\"channels_last\": true}'")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the batch driver's 1 per run)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = resolve("mmt", profile=args.profile, task=args.task, variant=args.variant, data_root=args.data_root,
                  device="cpu", overrides={"runtime": {"progress": False, **json.loads(args.runtime)}})
    m, device = cfg.mmt, torch.device("cpu")
    seed_everything(cfg.seed)
    target = load_named_dataset(cfg.data, cfg.data.target)
    k = m.num_clusters or 100
    students = [prepare_model(build_model(cfg.model.arch, k), cfg.runtime, device, cfg.data) for _ in range(2)]
    networks = Networks(students, [create_mean_teacher(s) for s in students] if m.mean_teacher else [])
    images = decoded_images(cfg, target.train)
    split: dict[str, tuple[float, float]] = {}

    test_loader = build_test_loader(ImageDataset(target.train, build_test_transform(cfg.data.height, cfg.data.width),
                                                 images), cfg.data.test_batch_size, cfg.data.num_workers)
    nets = networks.labelling_nets()
    features = embed_target(nets, target, cfg, device)
    split["extract (both nets)"] = (least(lambda: embed_target(nets, target, cfg, device), args.repeats),
                                    len(nets) * least(lambda: drain(test_loader), args.repeats))
    holder: dict[str, np.ndarray] = {}

    def cluster() -> None:
        holder["labels"], _ = assign_pseudo_labels(features, m, seed=cfg.seed, eps=None)

    split[f"cluster ({m.clustering})"] = (least(cluster, args.repeats), 0.0)
    labels = holder["labels"]
    init_classifiers(networks, features, labels, device)
    networks.prepare_training(cfg.runtime, device)
    labelled = [(path, int(y), cam) for (path, _, cam), y in zip(target.train, labels) if y >= 0]
    train_tf = build_train_transform(cfg.data.height, cfg.data.width, random_erasing=m.random_erasing)

    def loader(epoch: int = 0):
        return build_train_loader(TwoViewDataset(labelled, train_tf, images), labelled,
                                  batch_size=cfg.data.batch_size, num_instances=cfg.data.num_instances,
                                  num_workers=cfg.data.num_workers, seed=cfg.seed, epoch=epoch)

    optimizer = build_adam([p for net in networks.students for p in net.parameters() if p.requires_grad],
                           m.lr, m.weight_decay, cfg.runtime, device)
    split[f"train ({m.iters} iterations)"] = (
        least(lambda: train_epoch(networks, optimizer, loader(), cfg, device, 0), args.repeats),
        least(lambda: drain(IterLoader(loader(), m.iters)), args.repeats))
    samples = target.query + target.gallery
    eval_loader = build_test_loader(ImageDataset(samples, build_test_transform(cfg.data.height, cfg.data.width),
                                                 decoded_images(cfg, samples)), cfg.data.test_batch_size,
                                    cfg.data.num_workers)
    split["evaluate (both nets)"] = (
        least(lambda: [evaluate_model(net, target, cfg, device) for net in nets], args.repeats),
        len(nets) * least(lambda: drain(eval_loader), args.repeats))

    evaluations = sum(1 for e in range(m.epochs) if (e + 1) % m.eval_every == 0 or e + 1 == m.epochs)
    counts = {"extract (both nets)": m.epochs, f"cluster ({m.clustering})": m.epochs,
              f"train ({m.iters} iterations)": m.epochs, "evaluate (both nets)": evaluations}
    total = sum(split[s][0] * counts[s] for s in split)
    print(f"{cfg.profile} profile, {cfg.task}, {cfg.variant}: {m.epochs} epochs x {m.iters} iterations, "
          f"evaluation after {evaluations} epochs; {len(target.train)} target training images, "
          f"{len(samples)} query + gallery; {args.threads} thread(s); runtime {json.dumps(json.loads(args.runtime))}")
    print("\n| step | s per epoch | of which loading | epochs | s per run | share |")
    print("|---|---:|---:|---:|---:|---:|")
    for step, (seconds, loading) in split.items():
        run = seconds * counts[step]
        print(f"| {step} | {seconds:.2f} | {loading:.2f} | {counts[step]} | {run:.1f} | {run / total:.0%} |")
    print(f"| whole run (projected) | | | | {total:.1f} | 100% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

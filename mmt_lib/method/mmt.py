"""Stage II: Mutual Mean-Teaching (Algorithm 1 of the paper; docs/method.md).

Per epoch:
  1. both mean nets embed the target training set; their features are averaged;
  2. clustering turns the features into hard pseudo labels (k-means, or DBSCAN on Jaccard distance);
  3. every classifier is re-initialised from the L2-normalised cluster centroids;
  4. a fresh Adam optimises both students;
  5. ``iters`` iterations of the MMT objective on two views of each image, each followed by the
     mean-teacher update;
  6. both mean nets are evaluated and the epoch is checkpointed.

The baseline and every Table 2 row are settings of this one trainer (``config.VARIANTS``): which
loss terms are on, whose predictions give the soft labels, and whether mean teachers exist at all.

Under ``torchrun`` (``mmt_lib.runtime.distributed``) the same steps run in every process: step 1 is split
between processes, step 2 runs once and is shared, step 5 trains on each process's share of the
batch, and only rank 0 evaluates and writes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mmt_lib.config import MMTConfig, RunConfig, RuntimeConfig, num_clusters_origin
from mmt_lib.data import ReidDataset
from mmt_lib.data.loaders import ImageDataset, IterLoader, TwoViewDataset, build_test_loader, build_train_loader
from mmt_lib.data.transforms import build_test_transform, build_train_transform
from mmt_lib.evaluation.evaluate import extract_features
from mmt_lib.evaluation.label_quality import pseudo_label_quality
from mmt_lib.method import provenance
from mmt_lib.method.engine import (autocast, build_adam, check_finite, decoded_images, evaluate_model,
                                   load_named_dataset, prepare_model, resolve_device, show_progress, training_module,
                                   uses_bf16)
from mmt_lib.method.losses import label_smooth_cross_entropy, soft_cross_entropy, soft_softmax_triplet, softmax_triplet
from mmt_lib.method.provenance import Stage1Checkpoint
from mmt_lib.method.pseudo_labels import (average_features, cluster_centroids, dbscan, dbscan_eps, jaccard_distance,
                                          kmeans, relabel)
from mmt_lib.method.teachers import create_mean_teacher, update_mean_teacher
from mmt_lib.method.trainer import CHECKPOINT, evaluates_after, load_pretrained_network, run_epochs
from mmt_lib.models import ReidNet
from mmt_lib.runtime import distributed
from mmt_lib.runtime.checkpoints import save_arrays_atomic
from mmt_lib.runtime.paths import project_path
from mmt_lib.runtime.progress import tqdm
from mmt_lib.runtime.seeding import CLUSTERING_STREAM, derive_seed, seed_everything

EMBEDDINGS = "embeddings"
ORACLE_NOTE = "selected by target-test mAP, which uses target labels: not a valid unsupervised result"


@dataclass
class Networks:
    """The two students and, when the variant has them, their temporal-average (mean) nets."""

    students: list[ReidNet]
    means: list[ReidNet]
    runners: list[nn.Module] = field(default_factory=list)
    """Students then means as the training loop calls them (DDP, compiled); empty: the nets themselves."""

    def prepare_training(self, runtime: RuntimeConfig, device: torch.device) -> None:
        """Wrap the nets for this epoch's training (again each epoch: the classifiers were replaced)."""
        self.runners = [training_module(net, runtime, device, replicate=net in self.students) for net in self.all()]

    def running(self) -> tuple[list[nn.Module], list[nn.Module]]:
        """(students, means) as the training loop calls them."""
        nets = self.runners or self.all()
        return nets[:len(self.students)], nets[len(self.students):]

    def labelling_nets(self) -> list[ReidNet]:
        """Mean nets give pseudo labels and are evaluated; without them, the students do."""
        return self.means or self.students

    def all(self) -> list[ReidNet]:
        return self.students + self.means

    def state_dict(self) -> dict[str, Any]:
        """What a Stage II checkpoint holds: every net's weights and the current number of clusters."""
        return {"num_classes": int(self.students[0].classifier.weight.shape[0]),
                "students": [net.state_dict() for net in self.students],
                "means": [net.state_dict() for net in self.means]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Put a checkpoint's weights back, classifiers resized to its number of clusters first."""
        placeholder = torch.zeros(state["num_classes"], self.students[0].feature_dim,
                                  device=self.students[0].classifier.weight.device)
        for net, weights in zip(self.all(), state["students"] + state["means"]):
            net.reset_classifier(placeholder)
            net.load_state_dict(weights)
        for net in self.means:
            net.classifier.weight.requires_grad_(False)


# ---------------------------------------------------------------- Algorithm 1, step by step


def embed_target(nets: list[ReidNet], target: ReidDataset, cfg: RunConfig, device: torch.device) -> torch.Tensor:
    """Step 1: features of every target training image, averaged over ``nets`` and re-normalised.

    Each process embeds its shard of the images; every process gets all the features.
    """
    n = len(target.train)
    if n < distributed.world_size():  # every rank needs a shard, or the gather waits forever
        raise ValueError(f"the target training set holds {n} images, fewer than the "
                         f"{distributed.world_size()} processes: use fewer processes")
    loader = build_test_loader(
        ImageDataset(target.train[distributed.shard(n)], build_test_transform(cfg.data.height, cfg.data.width),
                     decoded_images(cfg, target.train)),
        batch_size=cfg.data.test_batch_size, num_workers=cfg.data.num_workers, pin_memory=device.type == "cuda",
    )
    amp = torch.bfloat16 if uses_bf16(cfg.runtime, device) else None
    feats = [distributed.gather_rows(
                 extract_features(net, loader, device=device, amp_dtype=amp, progress=show_progress(cfg.runtime))[0], n)
             for net in nets]
    return average_features(*feats) if len(feats) == 2 else feats[0]


def assign_pseudo_labels(
    features: torch.Tensor, m: MMTConfig, seed: int, eps: float | None
) -> tuple[np.ndarray, float | None]:
    """Step 2: hard pseudo labels (``-1`` = DBSCAN outlier). DBSCAN's eps is fixed at the first epoch."""
    if m.clustering == "kmeans":
        if m.num_clusters > len(features):
            raise ValueError(f"mmt.num_clusters ({m.num_clusters}) exceeds the {len(features)} target training "
                             f"images: set it to about the number of identities among them")
        labels, _ = kmeans(features, m.num_clusters, seed=seed)
        return np.asarray(labels), None
    dist = jaccard_distance(features, k1=m.k1, k2=m.k2)
    if eps is None:
        eps = dbscan_eps(dist, rho=m.rho)
    labels = relabel(dbscan(dist, eps, min_samples=m.min_samples))
    if labels.max() < 0:
        raise ValueError(f"DBSCAN put all {len(labels)} target images in no cluster (eps={eps:.4f}, "
                         f"min_samples={m.min_samples}): raise mmt.rho or lower mmt.min_samples")
    return labels, eps


def check_enough_clusters(labels: np.ndarray, cfg: RunConfig, eps: float | None) -> None:
    """Refuse pseudo labels with fewer clusters than a batch has identities, naming the clustering setting."""
    found, needed = len(set(labels.tolist()) - {-1}), cfg.data.batch_size // cfg.data.num_instances
    if found >= needed:
        return
    if cfg.mmt.clustering != "dbscan":
        fix = "raise mmt.num_clusters"
    elif (labels == -1).mean() > 0.5:
        fix = f"most images are DBSCAN outliers (eps={eps:.4f}): raise mmt.rho or lower mmt.min_samples"
    else:
        fix = (f"DBSCAN (eps={eps:.4f}) joined the images into few clusters: lower mmt.rho, the share of all "
               f"image pairs closer than eps (now {cfg.mmt.rho:g}; the paper's 1.6e-3 is for about 13k images)")
    raise ValueError(f"the pseudo labels hold {found} clusters, fewer than the {needed} identities a batch needs "
                     f"(data.batch_size / data.num_instances): {fix}")


def init_classifiers(networks: Networks, features: torch.Tensor, labels: np.ndarray, device: torch.device) -> None:
    """Step 3: every classifier starts from the L2-normalised centroids of the new clusters."""
    centroids = cluster_centroids(features, labels).to(device)
    for net in networks.all():
        net.reset_classifier(centroids)
    for net in networks.means:
        net.classifier.weight.requires_grad_(False)


def soft_targets(
    outputs: list[tuple[torch.Tensor, torch.Tensor]],
    mean_outputs: list[tuple[torch.Tensor, torch.Tensor]], soft_teacher: str,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Whose (features, logits) supervise student 1 and student 2, detached."""
    if soft_teacher == "peer-mean":
        chosen = [mean_outputs[1], mean_outputs[0]]
    elif soft_teacher == "own-mean":
        chosen = [mean_outputs[0], mean_outputs[1]]
    elif soft_teacher == "peer-current":
        chosen = [outputs[1], outputs[0]]
    else:
        raise ValueError(f"no soft targets for soft_teacher={soft_teacher!r}")
    return [(f.detach(), z.detach()) for f, z in chosen]


def mmt_loss_terms(
    outputs: list[tuple[torch.Tensor, torch.Tensor]],
    targets: list[tuple[torch.Tensor, torch.Tensor]] | None,
    labels: torch.Tensor,
    weights: dict[str, float],
    label_smoothing: float,
) -> dict[str, torch.Tensor]:
    """The four terms of the MMT objective, each summed over both students; terms of weight 0 are skipped."""
    (f1, z1), (f2, z2) = [(f.float(), z.float()) for f, z in outputs]
    terms: dict[str, torch.Tensor] = {}
    if weights["hard_ce"] > 0:
        terms["hard_ce"] = (label_smooth_cross_entropy(z1, labels, eps=label_smoothing)
                            + label_smooth_cross_entropy(z2, labels, eps=label_smoothing))
    if weights["hard_triplet"] > 0:
        terms["hard_triplet"] = softmax_triplet(f1, labels) + softmax_triplet(f2, labels)
    if weights["soft_ce"] > 0 or weights["soft_triplet"] > 0:
        (tf1, tz1), (tf2, tz2) = [(f.float(), z.float()) for f, z in targets]
        if weights["soft_ce"] > 0:
            terms["soft_ce"] = soft_cross_entropy(z1, tz1) + soft_cross_entropy(z2, tz2)
        if weights["soft_triplet"] > 0:
            terms["soft_triplet"] = soft_softmax_triplet(f1, tf1, labels) + soft_softmax_triplet(f2, tf2, labels)
    return terms


def train_epoch(
    networks: Networks, optimizer: torch.optim.Optimizer, loader: torch.utils.data.DataLoader,
    cfg: RunConfig, device: torch.device, epoch: int,
) -> dict[str, float]:
    """Step 5: ``iters`` MMT iterations; view 1 feeds student 1 and mean net 1, view 2 the others."""
    m = cfg.mmt
    weights = m.term_weights()
    needs_soft = weights["soft_ce"] > 0 or weights["soft_triplet"] > 0
    students, means = networks.running()
    for net in networks.all():
        net.train()
    totals: dict[str, float] = {}
    progress = tqdm(IterLoader(loader, m.iters), desc=f"MMT epoch {epoch}",
                    disable=not show_progress(cfg.runtime), leave=False)
    for it, (view1, view2, labels, _, _) in enumerate(progress):
        views = [view1.to(device, non_blocking=True), view2.to(device, non_blocking=True)]
        labels = labels.to(device, non_blocking=True)
        with autocast(cfg.runtime, device):
            outputs = [net(view) for net, view in zip(students, views)]
            with torch.no_grad():
                mean_outputs = [net(view) for net, view in zip(means, views)]
            targets = soft_targets(outputs, mean_outputs, m.soft_teacher) if needs_soft else None
            terms = mmt_loss_terms(outputs, targets, labels, weights, m.label_smoothing)
        check_finite(terms, it, epoch)
        optimizer.zero_grad(set_to_none=True)
        sum(weights[name] * value for name, value in terms.items()).backward()
        optimizer.step()
        step = epoch * m.iters + it
        for mean_net, student in zip(networks.means, networks.students):
            update_mean_teacher(mean_net, student, step, max_alpha=m.max_alpha())
        for name, value in terms.items():
            totals[name] = totals.get(name, 0.0) + float(value.detach())
    return {f"loss_{name}": total / m.iters for name, total in distributed.mean_over_ranks(totals).items()}


# ---------------------------------------------------------------- the whole stage


Pretrained = tuple[str | Path | Stage1Checkpoint, str | Path | Stage1Checkpoint]
"""The two Stage I checkpoints of a Stage II run: paths, or checkpoints already read (``provenance.read_stage1``)."""


def build_networks(cfg: RunConfig, pretrained: Pretrained, device: torch.device) -> Networks:
    """Two students from the two Stage I checkpoints; their mean nets start as exact copies."""
    if len(pretrained) != 2:
        raise ValueError(f"MMT needs two Stage I checkpoints (seeds 1 and 2), got {len(pretrained)}")
    students = [prepare_model(load_pretrained_network(path, cfg.model.arch), cfg.runtime, device, cfg.data)
                for path in pretrained]
    means = [create_mean_teacher(s) for s in students] if cfg.mmt.mean_teacher else []
    return Networks(students, means)


def train_mmt(cfg: RunConfig, out_dir: str | Path, pretrained: Pretrained, resume: bool = True) -> dict[str, Any]:
    """Run Stage II for ``cfg.mmt.epochs`` epochs, checkpointing each; returns the run's metrics.

    Model selection is label-free: the reported numbers are mean net 1 after the last epoch. The
    reference's best-epoch-by-test-mAP choice is kept apart under ``oracle`` and labelled as such.
    """
    out_dir = project_path(out_dir)
    m = cfg.mmt
    device = distributed.init(resolve_device(cfg.runtime.device))
    target = load_named_dataset(cfg.data, cfg.data.target)
    true_pids = np.array([pid for _, pid, _ in target.train])
    seed_everything(cfg.seed)
    networks = build_networks(cfg, pretrained, device)
    train_tf = build_train_transform(cfg.data.height, cfg.data.width, random_erasing=m.random_erasing)
    images = decoded_images(cfg, target.train)

    def run_epoch(epoch: int, history: list[dict[str, Any]]) -> dict[str, Any]:
        record: dict[str, Any] = {"epoch": epoch}
        tic = time.perf_counter()
        features = embed_target(networks.labelling_nets(), target, cfg, device)
        record["seconds_extract"], tic = time.perf_counter() - tic, time.perf_counter()
        eps = history[-1]["dbscan_eps"] if history else None
        labels, record["dbscan_eps"] = distributed.on_main(
            assign_pseudo_labels, features, m, seed=pseudo_label_seed(cfg.seed, epoch), eps=eps)
        check_enough_clusters(labels, cfg, record["dbscan_eps"])
        record["seconds_cluster"] = time.perf_counter() - tic
        record["pseudo_labels"] = pseudo_label_quality(labels, true_pids)
        if m.save_embeddings and distributed.is_main():
            save_arrays_atomic(out_dir / EMBEDDINGS / f"epoch{epoch:03d}.npz", features=features.numpy(),
                               pseudo_labels=labels, true_pids=true_pids)
        init_classifiers(networks, features, labels, device)
        networks.prepare_training(cfg.runtime, device)
        optimizer = build_adam([p for net in networks.students for p in net.parameters() if p.requires_grad],
                               m.lr, m.weight_decay, cfg.runtime, device)
        labelled = [(path, int(y), cam) for (path, _, cam), y in zip(target.train, labels) if y >= 0]
        loader = build_train_loader(
            TwoViewDataset(labelled, train_tf, images), labelled, batch_size=cfg.data.batch_size,
            num_instances=cfg.data.num_instances, num_workers=cfg.data.num_workers, seed=cfg.seed,
            epoch=epoch, pin_memory=device.type == "cuda", rank=distributed.rank(),
            world_size=distributed.world_size(),
        )
        tic = time.perf_counter()
        record.update(train_epoch(networks, optimizer, loader, cfg, device, epoch))
        record["seconds_train"], tic = time.perf_counter() - tic, time.perf_counter()
        if evaluates_after(epoch, m.eval_every, m.epochs):
            for i, net in enumerate(networks.labelling_nets(), start=1):
                record[f"net{i}"] = distributed.on_main(evaluate_model, net, target, cfg, device, f"evaluate net {i}")
            record["seconds_eval"] = time.perf_counter() - tic
        return record

    history = run_epochs(
        cfg, out_dir, m.epochs, run_epoch, restore=networks.load_state_dict, resume=resume, desc="MMT epochs",
        snapshot=networks.state_dict,
    )
    return summarise(history, cfg)


def pseudo_label_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch``'s clustering (k-means++ draws), a stream of its own."""
    return derive_seed(seed, epoch, CLUSTERING_STREAM)


def summarise(history: list[dict[str, Any]], cfg: RunConfig) -> dict[str, Any]:
    """Label-free headline numbers (last epoch, net 1) plus the oracle choice, kept apart and labelled."""
    final = history[-1]["net1"]
    best = max(((r["epoch"], name, r[name]) for r in history for name in ("net1", "net2") if name in r),
               key=lambda item: item[2]["mAP"])
    return {
        "stage": "mmt", "task": cfg.task, "variant": cfg.variant, "seed": cfg.seed,
        "config_hash": cfg.config_hash(), "config": cfg.to_dict(),
        "selection": "label-free: last epoch, network 1",
        **cluster_count(cfg),
        "mean_teacher_alpha_max": cfg.mmt.max_alpha() if cfg.mmt.mean_teacher else None,
        **final,
        "oracle": {"epoch": best[0], "network": best[1], **best[2], "note": ORACLE_NOTE},
        "history": history,
    }


def cluster_count(cfg: RunConfig) -> dict[str, Any]:
    """The K k-means used and where it came from; DBSCAN finds its own count each epoch (``history``)."""
    if cfg.mmt.clustering != "kmeans":
        return {"num_clusters": None,
                "num_clusters_from": "DBSCAN: found each epoch (history: pseudo_labels.num_clusters)"}
    return {"num_clusters": cfg.mmt.num_clusters, "num_clusters_from": num_clusters_origin(cfg)}


def evaluate_direct(cfg: RunConfig, pretrained: str | Path | Stage1Checkpoint) -> dict[str, Any]:
    """Table 2, row 1: the Stage I network applied to the target as it is (no adaptation)."""
    device = distributed.init(resolve_device(cfg.runtime.device))
    target = load_named_dataset(cfg.data, cfg.data.target)
    net = prepare_model(load_pretrained_network(pretrained, cfg.model.arch), cfg.runtime, device)
    return {
        "stage": "direct", "task": cfg.task, "variant": "direct", "seed": cfg.seed,
        "config_hash": cfg.config_hash(), "config": cfg.to_dict(), "selection": "Stage I network",
        **distributed.on_main(evaluate_model, net, target, cfg, device, "evaluate direct transfer"),
    }


# ---------------------------------------------------------------- what the notebooks call


def run_variant(cfg: RunConfig, out_dir: str | Path, pretrained_dirs: list[str]) -> dict[str, Any]:
    """The run a batch grid cell means: ``direct`` evaluates Stage I network 1, every other variant trains."""
    return run_checked_variant(cfg, out_dir, stage1_checkpoints(cfg, pretrained_dirs))


def stage1_checkpoints(cfg: RunConfig, pretrained_dirs: list[str | Path]) -> list[Stage1Checkpoint]:
    """The Stage I checkpoints of the run folders ``pretrained_dirs``, read once and checked against the run
    (``provenance.check_pretrained``) before any data loads; ``direct`` reads the first alone."""
    return provenance.check_pretrained(cfg, [project_path(d) / CHECKPOINT for d in pretrained_dirs])


def run_checked_variant(cfg: RunConfig, out_dir: str | Path, stage1: list[Stage1Checkpoint]) -> dict[str, Any]:
    """``run_variant`` on Stage I checkpoints already read and checked (``stage1_checkpoints``)."""
    if cfg.variant == "direct":
        return evaluate_direct(cfg, stage1[0])
    return train_mmt(cfg, project_path(out_dir), (stage1[0], stage1[1]))

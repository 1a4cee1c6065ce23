"""Networks of the paper (ResNet-50, IBN-ResNet-50-a) and small CPU stand-ins, with the re-ID head."""

from __future__ import annotations

from pathlib import Path

import torch

from mmt_lib.models.backbones import BACKBONES, build_backbone
from mmt_lib.models.head import ReidNet
from mmt_lib.models.weights import load_imagenet_weights
from mmt_lib.runtime.seeding import derive_seed

__all__ = ["ReidNet", "build_model", "known_archs", "load_imagenet_weights", "share_initial_backbone"]


def known_archs() -> list[str]:
    """The ``arch`` names :func:`build_model` accepts."""
    return list(BACKBONES)


def build_model(
    arch: str, num_classes: int, pretrained: str | Path | None = None, dropout: float = 0.0
) -> ReidNet:
    """A :class:`ReidNet` on backbone ``arch``; ``pretrained`` is a local ImageNet weights file."""
    backbone = build_backbone(arch)
    if pretrained is not None:
        load_imagenet_weights(backbone, pretrained)
    return ReidNet(backbone, num_classes, dropout)


def share_initial_backbone(model: ReidNet, arch: str, seed: int) -> ReidNet:
    """Overwrite ``model``'s backbone with the weights a backbone built right after
    ``seed_everything(seed)`` starts from; torch's global random state is left as it was.

    Stage I networks trained from scratch with different seeds would otherwise start, and end, in
    unrelated feature spaces, and Stage II averages their features and shares cluster centroids
    between them as if the spaces were aligned, which networks fine-tuned from the same ImageNet
    weights are.
    """
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(derive_seed(seed, 0))  # the CPU generator only: GPUs untouched
        shared = build_backbone(arch)
    model.backbone.load_state_dict(shared.state_dict())
    return model

"""Networks of the paper (ResNet-50, IBN-ResNet-50-a) and small CPU stand-ins, with the re-ID head."""

from __future__ import annotations

from pathlib import Path

from mmt_lib.models.backbones import BACKBONES, build_backbone
from mmt_lib.models.head import ReidNet
from mmt_lib.models.weights import load_imagenet_weights

__all__ = ["ReidNet", "build_model", "known_archs", "load_imagenet_weights"]


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

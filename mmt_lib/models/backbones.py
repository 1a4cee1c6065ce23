"""Backbones: an image batch in, a feature map out (``Backbone.feature_dim`` channels).

The paper's networks are ResNet-50 and IBN-ResNet-50-a with the last stride set to 1, which
doubles the height and width of the final feature map (16 x 8 for a 256 x 128 person crop) and
is standard in re-ID. The CPU backbones keep the same shape of computation at a fraction of the
cost so that the smoke and synthetic profiles run on a laptop:

=============  ===========  ==========================================================
arch           feature_dim  what it is
=============  ===========  ==========================================================
resnet50       2048         torchvision ResNet-50, last stride 1
resnet_ibn50a  2048         the same with IBN-a as the first norm of every bottleneck in
                            layers 1-3 (layer4 keeps plain BatchNorm)
resnet18       512          torchvision ResNet-18, last stride 1
cpu_small      128          stem + four BasicBlocks of widths 16/32/64/128, last stride 1
cpu_tiny       64           three conv-BN-ReLU layers, for tests only
=============  ===========  ==========================================================

ResNet trunks keep torchvision's parameter names (``conv1.weight``, ``layer1.0.bn1.IN.weight``,
...) so ImageNet files load as they are (see :mod:`mmt_lib.models.weights`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from mmt_lib.models.ibn import IBN


class Backbone(nn.Module):
    """Base class: ``forward`` maps images (N, 3, H, W) to a feature map (N, feature_dim, h, w)."""

    feature_dim: int


class ResNetTrunk(Backbone):
    """A torchvision ResNet without its global pooling and ``fc`` layer."""

    def __init__(self, resnet: ResNet) -> None:
        super().__init__()
        self.conv1 = resnet.conv1
        self.bn1 = resnet.bn1
        self.relu = resnet.relu
        self.maxpool = resnet.maxpool
        self.layer1 = resnet.layer1
        self.layer2 = resnet.layer2
        self.layer3 = resnet.layer3
        self.layer4 = resnet.layer4
        self.feature_dim = resnet.fc.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class SequentialBackbone(Backbone):
    """Named stages applied in order (the small CPU nets)."""

    def __init__(self, stages: OrderedDict[str, nn.Module], feature_dim: int) -> None:
        super().__init__()
        for name, stage in stages.items():
            self.add_module(name, stage)
        self.feature_dim = feature_dim
        _init_like_torchvision(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.children():
            x = stage(x)
        return x


def set_last_stride_one(layer4: nn.Sequential) -> None:
    """Make the first block of ``layer4`` (its 3x3 conv and its downsample conv) stride 1."""
    for module in layer4[0].modules():
        if isinstance(module, nn.Conv2d) and module.stride != (1, 1):
            module.stride = (1, 1)


def _init_like_torchvision(module: nn.Module) -> None:
    """Kaiming-normal convolutions and unit BatchNorm, as torchvision initialises its ResNets."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _conv_bn_relu(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


def _basic_block(in_ch: int, out_ch: int, stride: int) -> BasicBlock:
    downsample = None
    if stride != 1 or in_ch != out_ch:
        downsample = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
        )
    return BasicBlock(in_ch, out_ch, stride=stride, downsample=downsample)


def resnet50() -> ResNetTrunk:
    """ResNet-50 (torchvision, v1.5: stride on the 3x3 conv), last stride 1, randomly initialised."""
    trunk = ResNetTrunk(ResNet(Bottleneck, [3, 4, 6, 3]))
    set_last_stride_one(trunk.layer4)
    return trunk


def resnet_ibn50a() -> ResNetTrunk:
    """IBN-ResNet-50-a: ResNet-50 whose bottlenecks in layers 1-3 start with IBN instead of BN."""
    trunk = resnet50()
    for layer in (trunk.layer1, trunk.layer2, trunk.layer3):
        for block in layer:
            block.bn1 = IBN(block.bn1.num_features)
    return trunk


def resnet18() -> ResNetTrunk:
    """ResNet-18 (torchvision), last stride 1."""
    trunk = ResNetTrunk(ResNet(BasicBlock, [2, 2, 2, 2]))
    set_last_stride_one(trunk.layer4)
    return trunk


def cpu_small() -> SequentialBackbone:
    """A strided 3x3 stem (16 channels) and one BasicBlock per stage (16/32/64/128), last stride 1.

    Output stride 8, like a last-stride-1 ResNet's 16 but for inputs a quarter of the size.
    """
    stages = OrderedDict(
        stem=_conv_bn_relu(3, 16, stride=2),
        layer1=_basic_block(16, 16, stride=1),
        layer2=_basic_block(16, 32, stride=2),
        layer3=_basic_block(32, 64, stride=2),
        layer4=_basic_block(64, 128, stride=1),
    )
    return SequentialBackbone(stages, feature_dim=128)


def cpu_tiny() -> SequentialBackbone:
    """Three stride-2 conv-BN-ReLU layers (16/32/64 channels): just enough to exercise the code."""
    stages = OrderedDict(
        conv1=_conv_bn_relu(3, 16, stride=2),
        conv2=_conv_bn_relu(16, 32, stride=2),
        conv3=_conv_bn_relu(32, 64, stride=2),
    )
    return SequentialBackbone(stages, feature_dim=64)


BACKBONES: dict[str, Callable[[], Backbone]] = {
    "resnet50": resnet50,
    "resnet_ibn50a": resnet_ibn50a,
    "resnet18": resnet18,
    "cpu_small": cpu_small,
    "cpu_tiny": cpu_tiny,
}


def build_backbone(arch: str) -> Backbone:
    """A freshly initialised backbone by name (see :data:`BACKBONES`)."""
    if arch not in BACKBONES:
        raise ValueError(f"unknown arch {arch!r}; expected one of {sorted(BACKBONES)}")
    return BACKBONES[arch]()

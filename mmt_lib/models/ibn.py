"""IBN-a normalisation (Pan et al., ECCV 2018) for the IBN-ResNet-50-a backbone.

Instance normalisation on half of the channels removes appearance (colour, contrast) that differs
between cameras and datasets; batch normalisation on the other half keeps the content that
identifies people. The submodule names ``IN`` and ``BN`` match the published IBN-a ImageNet
weights, so those files load without renaming.
"""

from __future__ import annotations

import torch
from torch import nn


class IBN(nn.Module):
    """InstanceNorm2d(affine) on the first ``channels // 2`` channels, BatchNorm2d on the rest."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        if channels < 2:
            raise ValueError(f"IBN needs at least 2 channels, got channels={channels}")
        self.half = channels // 2
        self.IN = nn.InstanceNorm2d(self.half, affine=True)
        self.BN = nn.BatchNorm2d(channels - self.half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, rest = torch.split(x, [self.half, x.shape[1] - self.half], dim=1)
        return torch.cat((self.IN(first.contiguous()), self.BN(rest.contiguous())), dim=1)

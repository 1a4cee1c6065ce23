"""The re-ID network: backbone -> global average pooling -> BNNeck -> bias-free classifier.

The two training signals want different features: the triplet losses work on the pooled feature
``f`` before BatchNorm, the classifier on the BatchNorm output (the "BNNeck" of Luo et al., 2019).
The BatchNorm bias is frozen at zero so that the classifier's decision boundaries pass through the
origin of the normalised space, which is where cosine retrieval happens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmt_lib.models.backbones import Backbone

CLASSIFIER_INIT_STD = 0.001


class ReidNet(nn.Module):
    """Train mode: ``(f, logits)`` with pre-BN features ``f``; eval mode: ``normalize(BN(f))``.

    ``logits`` is ``None`` while the network has no classifier (``num_classes=0``), e.g. before
    the first clustering of Stage II.
    """

    def __init__(self, backbone: Backbone, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.backbone = backbone
        self.feature_dim = backbone.feature_dim
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.bnneck = nn.BatchNorm1d(self.feature_dim)
        nn.init.ones_(self.bnneck.weight)
        nn.init.zeros_(self.bnneck.bias)
        self.bnneck.bias.requires_grad_(False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier: nn.Linear | None = None
        if num_classes > 0:
            self.classifier = nn.Linear(self.feature_dim, num_classes, bias=False)
            nn.init.normal_(self.classifier.weight, std=CLASSIFIER_INIT_STD)

    @property
    def num_classes(self) -> int:
        return 0 if self.classifier is None else self.classifier.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
        f = self.pool(self.backbone(x)).flatten(1)
        bn_f = self.bnneck(f)
        if not self.training:
            return F.normalize(bn_f, dim=1)
        logits = None if self.classifier is None else self.classifier(self.dropout(bn_f))
        return f, logits

    def reset_classifier(self, weights: torch.Tensor) -> None:
        """Replace the classifier by a bias-free linear layer whose weight is ``weights`` (K x D).

        MMT re-clusters every epoch, so K changes; the weights (L2-normalised cluster centroids)
        are copied onto the model's device and dtype. The new weight requires grad.
        """
        if weights.dim() != 2 or weights.shape[1] != self.feature_dim or weights.shape[0] < 1:
            raise ValueError(
                f"reset_classifier expects weights of shape (K >= 1, {self.feature_dim}), "
                f"got {tuple(weights.shape)}"
            )
        reference = self.bnneck.weight
        classifier = nn.Linear(
            self.feature_dim, weights.shape[0], bias=False, device=reference.device, dtype=reference.dtype
        )
        with torch.no_grad():
            classifier.weight.copy_(weights)
        self.classifier = classifier

"""What the features look like: 2-D projections for the t-SNE / UMAP figures, and how close two networks are.

Pure functions of arrays, except ``feature_agreement``, which embeds images with two networks to say
how close their feature spaces are (MMT averages them and shares centroids between them). The
pseudo labels' noise is scored in ``mmt_lib.evaluation.label_quality``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.manifold import TSNE

if TYPE_CHECKING:
    import torch

    from mmt_lib.config import RunConfig
    from mmt_lib.data import ReidDataset

def embed_2d(features: np.ndarray, method: str = "tsne", seed: int = 0, **kwargs: Any) -> np.ndarray:
    """Project features [N, D] to 2-D points [N, 2] with t-SNE or UMAP, reproducibly for a seed.

    ``kwargs`` go to ``sklearn.manifold.TSNE`` or ``umap.UMAP``. For t-SNE the perplexity
    defaults to min(30, (N - 1) / 3) so small sets work; UMAP (umap-learn) is imported only when
    asked for, because it is an optional dependency with a slow import.
    """
    if method not in ("tsne", "umap"):
        raise ValueError(f"method must be 'tsne' or 'umap', got {method!r}")
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2 or features.shape[0] < 3:
        raise ValueError(f"features must be a 2-D array [N, D] with N >= 3, got shape {features.shape}")
    if not np.isfinite(features).all():
        raise ValueError("features contain NaN or infinite values; cannot embed them")
    n = features.shape[0]
    if method == "tsne":
        kwargs.setdefault("perplexity", min(30.0, (n - 1) / 3))
        kwargs.setdefault("init", "pca")
        points = TSNE(n_components=2, random_state=seed, **kwargs).fit_transform(features)
    else:
        try:
            import umap
        except ImportError as err:
            raise ImportError(
                "embed_2d(method='umap') needs umap-learn: pip install umap-learn "
                "(or pip install -e '.[notebooks]')"
            ) from err
        kwargs.setdefault("n_neighbors", min(15, n - 1))
        kwargs.setdefault("n_jobs", 1)  # a seed forces one thread anyway; saying so skips its warning
        points = umap.UMAP(n_components=2, random_state=seed, **kwargs).fit_transform(features)
    return np.asarray(points, dtype=np.float64)


def flat_history(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-epoch records with nested sections flattened to dotted keys ("net1.mAP", "pseudo_labels.nmi")."""
    flat = []
    for record in history:
        entry: dict[str, Any] = {}
        for key, value in record.items():
            if isinstance(value, dict):
                entry.update({f"{key}.{inner}": v for inner, v in value.items()})
            else:
                entry[key] = value
        flat.append(entry)
    return flat


def mean_cosine(features_a: Any, features_b: Any) -> float:
    """The mean cosine between row i of ``features_a`` and row i of ``features_b`` (two embeddings of the
    same images): 1 when two networks map every image the same way, about 0 when unrelated."""
    a, b = np.asarray(features_a, dtype=np.float64), np.asarray(features_b, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape or not len(a):
        raise ValueError(f"features_a and features_b must be [N, D] arrays of the same images, got shapes "
                         f"{a.shape} and {b.shape}")
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return float((a * b).sum(1).mean())


def feature_agreement(net_a: torch.nn.Module, net_b: torch.nn.Module, dataset: ReidDataset, cfg: RunConfig,
                      device: torch.device) -> float:
    """``mean_cosine`` of two networks' L2-normalised features of ``dataset``'s training images, embedded
    as Stage II embeds the target (``mmt.embed_target``)."""
    from mmt_lib.method.mmt import embed_target

    return mean_cosine(*(embed_target([net], dataset, cfg, device).numpy() for net in (net_a, net_b)))

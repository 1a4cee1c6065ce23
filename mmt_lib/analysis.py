"""How good are the pseudo labels, and what do the features look like in 2-D.

MMT's premise is that clustering the target features gives *noisy* hard labels. These functions
measure that noise against the ground-truth identities (which training never sees) so a notebook
can show it shrinking epoch by epoch, and project features to 2-D for the t-SNE / UMAP figures.
Pure functions of arrays, except ``feature_agreement``, which embeds images with two networks to say
how close their feature spaces are (MMT averages them and shares centroids between them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.manifold import TSNE
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

if TYPE_CHECKING:
    import torch

    from mmt_lib.config import RunConfig
    from mmt_lib.data import ReidDataset

OUTLIER = -1
"""Pseudo label DBSCAN gives to images that belong to no cluster; they are left out of training."""


def _check_labels(pseudo: Any, truth: Any) -> tuple[np.ndarray, np.ndarray]:
    pseudo = np.asarray(pseudo)
    truth = np.asarray(truth)
    for name, arr in (("pseudo", pseudo), ("truth", truth)):
        if arr.ndim != 1:
            raise ValueError(f"{name} must be a 1-D array of labels, got shape {arr.shape}")
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{name} must hold integer labels, got dtype {arr.dtype}")
    if pseudo.shape != truth.shape:
        raise ValueError(
            f"pseudo and truth must have one label per image: got {pseudo.shape[0]} pseudo labels "
            f"and {truth.shape[0]} ground-truth identities"
        )
    return pseudo.astype(np.int64), truth.astype(np.int64)


def _contingency(
    pseudo: np.ndarray, truth: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Non-empty cells of the cluster x identity table, without building the dense table.

    Returns (cluster index per image, cluster index per cell, identity per cell, count per cell);
    cluster indices are 0..C-1 in sorted pseudo-label order.
    """
    clusters, cluster_of_image = np.unique(pseudo, return_inverse=True)
    identities, identity_of_image = np.unique(truth, return_inverse=True)
    cell_codes = cluster_of_image.astype(np.int64) * len(identities) + identity_of_image
    cells, counts = np.unique(cell_codes, return_counts=True)
    return cluster_of_image, cells // len(identities), identities[cells % len(identities)], counts


def _majority_identity(pseudo: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per image, the most frequent ground-truth identity in its cluster (ties: smallest identity)."""
    if pseudo.size == 0:
        return truth.copy()
    cluster_of_image, cell_cluster, cell_identity, cell_count = _contingency(pseudo, truth)
    # Sort cells by cluster, then by decreasing count, then by identity: the first cell of each
    # cluster holds its majority identity.
    order = np.lexsort((cell_identity, -cell_count, cell_cluster))
    sorted_cluster = cell_cluster[order]
    first = np.flatnonzero(np.r_[True, sorted_cluster[1:] != sorted_cluster[:-1]])
    majority_per_cluster = cell_identity[order][first]
    return majority_per_cluster[cluster_of_image]


def _pairs(counts: np.ndarray) -> int:
    counts = counts.astype(np.int64)
    return int((counts * (counts - 1) // 2).sum())


def pseudo_label_quality(pseudo: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Score cluster pseudo labels against ground-truth identities (one entry per image).

    ``pseudo`` holds cluster ids with ``-1`` for outliers (DBSCAN); ``truth`` holds identity ids
    (any integers). All scores except ``outlier_fraction`` are computed on the *non-outlier*
    images only, the ones that epoch trains on. Keys:

    - ``num_clusters``: number of distinct pseudo labels other than -1.
    - ``outlier_fraction``: share of all images whose pseudo label is -1.
    - ``nmi``: normalized mutual information between pseudo labels and identities
      (scikit-learn, arithmetic normalisation); 1 = the same partition up to renaming.
    - ``ari``: adjusted Rand index (scikit-learn); 1 = same partition, about 0 = chance.
    - ``pairwise_precision``: of all unordered image pairs put in the same cluster, the share
      that are the same identity (1.0 if no cluster holds two images: no wrong pair was made).
    - ``pairwise_recall``: of all unordered image pairs of the same identity, the share put in the
      same cluster (1.0 if no identity has two images).
    - ``pairwise_f1``: harmonic mean of the two above (0 when both are 0).
    - ``wrong_majority_fraction``: share of images whose cluster's most frequent identity is not
      their own, i.e. 1 - cluster purity: the fraction of training labels that point at the wrong
      person even under the most charitable cluster-to-identity matching. Independent of how ties
      for the majority are broken.

    With no non-outlier image, every score but the first two is NaN. Pair counts come from the
    cluster x identity contingency counts (sum of n*(n-1)/2), so memory is O(N), never O(N^2).
    """
    pseudo, truth = _check_labels(pseudo, truth)
    kept = pseudo != OUTLIER
    pseudo_kept, truth_kept = pseudo[kept], truth[kept]
    num_clusters = int(np.unique(pseudo_kept).size)
    outlier_fraction = float((~kept).mean()) if pseudo.size else float("nan")
    if pseudo_kept.size == 0:
        nan = float("nan")
        return {
            "num_clusters": num_clusters,
            "outlier_fraction": outlier_fraction,
            "nmi": nan,
            "ari": nan,
            "pairwise_precision": nan,
            "pairwise_recall": nan,
            "pairwise_f1": nan,
            "wrong_majority_fraction": nan,
        }

    _, _, _, cell_count = _contingency(pseudo_kept, truth_kept)
    same_both = _pairs(cell_count)
    same_cluster = _pairs(np.unique(pseudo_kept, return_counts=True)[1])
    same_identity = _pairs(np.unique(truth_kept, return_counts=True)[1])
    precision = same_both / same_cluster if same_cluster else 1.0
    recall = same_both / same_identity if same_identity else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    wrong = _majority_identity(pseudo_kept, truth_kept) != truth_kept
    return {
        "num_clusters": num_clusters,
        "outlier_fraction": outlier_fraction,
        "nmi": float(normalized_mutual_info_score(truth_kept, pseudo_kept)),
        "ari": float(adjusted_rand_score(truth_kept, pseudo_kept)),
        "pairwise_precision": float(precision),
        "pairwise_recall": float(recall),
        "pairwise_f1": float(f1),
        "wrong_majority_fraction": float(wrong.mean()),
    }


def noisy_samples(pseudo: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Boolean mask of images with a misleading pseudo label, for highlighting in plots.

    True for outliers (-1) and for images whose cluster's majority identity (ties: smallest
    identity id) is not their own. Among non-outliers its mean is ``wrong_majority_fraction``.
    """
    pseudo, truth = _check_labels(pseudo, truth)
    noisy = pseudo == OUTLIER
    kept = ~noisy
    noisy[kept] = _majority_identity(pseudo[kept], truth[kept]) != truth[kept]
    return noisy


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
    from mmt_lib.mmt import embed_target

    return mean_cosine(*(embed_target([net], dataset, cfg, device).numpy() for net in (net_a, net_b)))

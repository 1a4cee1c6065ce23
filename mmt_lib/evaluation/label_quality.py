"""How noisy are the pseudo labels: scores of a labelling against the true identities.

MMT's premise is that clustering the target features gives *noisy* hard labels. These functions
measure that noise against the ground-truth identities (which training never sees), so that Stage II
can log it epoch by epoch and a notebook can show it shrinking. Pure functions of arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

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

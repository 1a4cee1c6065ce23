"""Pseudo-label quality on hand-built cases with known answers, and reproducible 2-D embeddings."""

import sys
from itertools import combinations

import numpy as np
import pytest

from mmt_lib.evaluation.label_quality import noisy_samples, pseudo_label_quality
from mmt_lib.figures.analysis import embed_2d

KEYS = {
    "num_clusters", "outlier_fraction", "nmi", "ari", "pairwise_precision", "pairwise_recall",
    "pairwise_f1", "wrong_majority_fraction",
}


def brute_force_pairs(pseudo: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    kept = np.flatnonzero(pseudo != -1)
    same_cluster = same_identity = both = 0
    for i, j in combinations(kept, 2):
        c, t = pseudo[i] == pseudo[j], truth[i] == truth[j]
        same_cluster += c
        same_identity += t
        both += c and t
    return both / same_cluster, both / same_identity


def test_perfect_clustering_scores_one_under_renamed_labels():
    truth = np.array([3, 3, 3, 7, 7, 9, 9, 9, 9])
    pseudo = np.array([1, 1, 1, 0, 0, 2, 2, 2, 2])
    q = pseudo_label_quality(pseudo, truth)
    assert set(q) == KEYS
    assert q["num_clusters"] == 3
    assert q["outlier_fraction"] == 0.0
    for key in ("nmi", "ari", "pairwise_precision", "pairwise_recall", "pairwise_f1"):
        assert q[key] == pytest.approx(1.0), key
    assert q["wrong_majority_fraction"] == 0.0
    assert not noisy_samples(pseudo, truth).any()


def test_all_in_one_cluster_has_full_recall_and_known_precision():
    truth = np.array([0, 0, 0, 1, 1, 2])  # same-identity pairs: 3 + 1 + 0 = 4 of C(6, 2) = 15
    q = pseudo_label_quality(np.zeros(6, dtype=int), truth)
    assert q["num_clusters"] == 1
    assert q["pairwise_recall"] == 1.0
    assert q["pairwise_precision"] == pytest.approx(4 / 15)
    assert q["pairwise_f1"] == pytest.approx(2 * (4 / 15) / (1 + 4 / 15))
    assert q["ari"] == pytest.approx(0.0)
    assert q["wrong_majority_fraction"] == pytest.approx(3 / 6)  # majority identity 0 holds 3 of 6


def test_singleton_clusters_have_full_precision_and_zero_recall():
    truth = np.array([0, 0, 1, 1, 1, 2])
    q = pseudo_label_quality(np.arange(6), truth)
    assert q["num_clusters"] == 6
    assert q["pairwise_precision"] == 1.0
    assert q["pairwise_recall"] == 0.0
    assert q["pairwise_f1"] == 0.0
    assert q["wrong_majority_fraction"] == 0.0  # each image is its own cluster's majority


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pairwise_scores_match_brute_force_enumeration(seed):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 8, size=120) * 10 + 5  # non-contiguous identity ids
    pseudo = rng.integers(-1, 6, size=120)  # includes outliers
    precision, recall = brute_force_pairs(pseudo, truth)
    q = pseudo_label_quality(pseudo, truth)
    assert q["pairwise_precision"] == pytest.approx(precision, abs=1e-12)
    assert q["pairwise_recall"] == pytest.approx(recall, abs=1e-12)
    assert q["pairwise_f1"] == pytest.approx(2 * precision * recall / (precision + recall))


def test_outliers_are_excluded_from_every_score_but_their_fraction():
    truth = np.array([0, 0, 1, 1, 2, 2, 0, 1])
    pseudo = np.array([5, 5, 6, 6, 7, 7, -1, -1])
    q = pseudo_label_quality(pseudo, truth)
    assert q["outlier_fraction"] == pytest.approx(2 / 8)
    assert q["num_clusters"] == 3
    for key in ("nmi", "ari", "pairwise_precision", "pairwise_recall", "wrong_majority_fraction"):
        expected = 0.0 if key == "wrong_majority_fraction" else 1.0
        assert q[key] == pytest.approx(expected), key
    assert noisy_samples(pseudo, truth).tolist() == [False] * 6 + [True, True]


def test_all_outliers_gives_nan_scores():
    q = pseudo_label_quality(np.full(4, -1), np.array([0, 0, 1, 1]))
    assert q["num_clusters"] == 0
    assert q["outlier_fraction"] == 1.0
    assert np.isnan(q["nmi"]) and np.isnan(q["pairwise_precision"])
    assert noisy_samples(np.full(4, -1), np.array([0, 0, 1, 1])).all()


def test_wrong_majority_by_hand():
    # cluster 0: ids [4, 4, 4, 9] -> majority 4, image 3 is wrong
    # cluster 1: ids [9, 9, 2]    -> majority 9, image 6 is wrong
    # cluster 2: ids [2, 5]       -> tie, broken towards the smaller id 2: image 8 is wrong
    pseudo = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, -1])
    truth = np.array([4, 4, 4, 9, 9, 9, 2, 2, 5, 4])
    q = pseudo_label_quality(pseudo, truth)
    assert q["wrong_majority_fraction"] == pytest.approx(3 / 9)
    noisy = noisy_samples(pseudo, truth)
    assert np.flatnonzero(noisy).tolist() == [3, 6, 8, 9]
    assert noisy[pseudo != -1].mean() == pytest.approx(q["wrong_majority_fraction"])


def test_bad_labels_are_rejected_with_the_parameter_named():
    with pytest.raises(ValueError, match="one label per image"):
        pseudo_label_quality(np.zeros(3, dtype=int), np.zeros(4, dtype=int))
    with pytest.raises(ValueError, match="truth must hold integer"):
        pseudo_label_quality(np.zeros(3, dtype=int), np.zeros(3))
    with pytest.raises(ValueError, match="pseudo must be a 1-D"):
        noisy_samples(np.zeros((3, 1), dtype=int), np.zeros(3, dtype=int))


def _blobs(n_per: int = 20, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=8.0, size=(3, 16))
    return np.concatenate([c + rng.normal(size=(n_per, 16)) for c in centres]).astype(np.float32)


def test_tsne_embedding_shape_and_determinism():
    features = _blobs()
    a = embed_2d(features, "tsne", seed=3)
    b = embed_2d(features, "tsne", seed=3)
    assert a.shape == (60, 2)
    assert np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)


def test_tsne_keeps_separated_clusters_apart():
    points = embed_2d(_blobs(), "tsne", seed=0)
    labels = np.repeat(np.arange(3), 20)
    centres = np.stack([points[labels == k].mean(0) for k in range(3)])
    spread = max(np.linalg.norm(points[labels == k] - centres[k], axis=1).mean() for k in range(3))
    gaps = [np.linalg.norm(centres[i] - centres[j]) for i, j in combinations(range(3), 2)]
    assert min(gaps) > 2 * spread


def test_umap_embedding_shape_and_determinism():
    pytest.importorskip("umap")
    features = _blobs()
    a = embed_2d(features, "umap", seed=3)
    b = embed_2d(features, "umap", seed=3)
    assert a.shape == (60, 2)
    np.testing.assert_allclose(a, b)


def test_unknown_method_and_bad_features_are_rejected():
    with pytest.raises(ValueError, match="'tsne' or 'umap'"):
        embed_2d(_blobs(), "pca")
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        embed_2d(np.zeros(10), "tsne")


def test_umap_missing_raises_import_error_with_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "umap", None)  # makes `import umap` fail
    with pytest.raises(ImportError, match="pip install umap-learn"):
        embed_2d(_blobs(), "umap")

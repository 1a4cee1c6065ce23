"""Pseudo labels against dense textbook versions written here and against scikit-learn."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from reference import sequential_jaccard, textbook_eps, textbook_jaccard
from sklearn.cluster import DBSCAN, KMeans

from mmt_lib.evaluation.evaluate import squared_euclidean
from mmt_lib.method.pseudo_labels import (average_features, cluster_centroids, dbscan, dbscan_eps, jaccard_distance,
                                          kmeans, relabel)


def clustered(seed: int, n: int = 240, n_ids: int = 40, dim: int = 16, noise: float = 0.8) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_ids, dim))
    ids = rng.integers(0, n_ids, n)
    return F.normalize(torch.from_numpy(centres[ids] + noise * rng.normal(size=(n, dim))).float(), dim=1)


@pytest.mark.parametrize("seed,k1,k2", [(0, 20, 6), (1, 10, 1), (2, 7, 4)])
def test_jaccard_matches_textbook(seed, k1, k2):
    x = clustered(seed)
    ref = textbook_jaccard(squared_euclidean(x, x).numpy(), k1, k2)
    jac = jaccard_distance(x, k1=k1, k2=k2)
    assert isinstance(jac, sp.csr_matrix) and jac.shape == ref.shape
    dense = np.ones_like(ref)
    coo = jac.tocoo()
    dense[coo.row, coo.col] = coo.data
    np.testing.assert_allclose(dense, ref, atol=1e-5)
    assert (jac.data < 1).all()
    np.testing.assert_array_equal(jac.diagonal(), 0)
    stored = np.zeros(ref.shape, dtype=bool)
    stored[coo.row, coo.col] = True
    assert stored.diagonal().all()  # explicit zeros on the diagonal
    assert (ref[~stored] > 1 - 1e-6).all() and (ref[stored & ~np.eye(len(ref), dtype=bool)] < 1).all()
    if k1 <= 10:
        assert stored.mean() < 0.35  # really sparse


def test_a_point_without_neighbours_still_gets_its_explicit_zero_diagonal():
    from mmt_lib.evaluation.rerank import jaccard_block

    # V of 4 points: 0 and 1 share member 0, 2 has no member at all, 3 shares member 3 with 1.
    v = sp.csr_matrix(np.array([[1.0, 0, 0, 0], [0.5, 0, 0, 0.5], [0, 0, 0, 0], [0, 0, 0, 1.0]], np.float32))
    v_cols = v.tocsc()
    v_cols.sort_indices()
    block = jaccard_block(v, v_cols, slice(1, 4), zero_diagonal=True)
    np.testing.assert_array_equal(np.diff(block.indptr), [3, 1, 2])
    np.testing.assert_array_equal(block.indices, [0, 1, 3, 2, 1, 3])
    third = 1 - 0.5 / 1.5  # m = 0.5 between a half-weight member and a full one
    np.testing.assert_allclose(block.data, [third, 0, third, 0, third, 0], rtol=1e-6)
    without = jaccard_block(v, v_cols, slice(1, 4))
    assert without[1].nnz == 0 and without[0, 0] == pytest.approx(third)


@pytest.mark.parametrize("rows,columns,zero_diagonal", [
    (slice(0, 300), None, True), (slice(70, 201), None, False), (slice(None, 130), slice(100, 300), False),
    (slice(-40, None), slice(0, 300), True)])
def test_jaccard_block_is_exact_to_the_bit_on_any_range_of_rows_and_columns(rows, columns, zero_diagonal):
    from mmt_lib.evaluation.rerank import jaccard_block, k_reciprocal_encoding, nearest_neighbours, query_expansion

    x = clustered(3, n=300)
    neighbours = nearest_neighbours(x, 11)
    v = query_expansion(k_reciprocal_encoding(x, neighbours, 10), neighbours, 4)
    v_cols = v.tocsc()
    v_cols.sort_indices()
    got = jaccard_block(v, v_cols, rows, columns, zero_diagonal=zero_diagonal)
    want = sequential_jaccard(v.toarray(), range(300)[rows], range(300)[columns or slice(None)], zero_diagonal)
    for name, g, w in zip(("indptr", "indices", "data"), (got.indptr, got.indices, got.data), want):
        np.testing.assert_array_equal(g, w, err_msg=name)
    assert got.nnz > 10 * got.shape[0]  # enough overlaps for the check to mean something


def test_jaccard_block_refuses_empty_or_strided_ranges():
    from mmt_lib.evaluation.rerank import jaccard_block

    v = sp.csr_matrix(np.eye(4, dtype=np.float32))
    with pytest.raises(ValueError, match="rows must be a non-empty slice"):
        jaccard_block(v, v.tocsc(), slice(3, 3))
    with pytest.raises(ValueError, match="columns must be a non-empty slice"):
        jaccard_block(v, v.tocsc(), slice(0, 4), slice(0, 4, 2))
    with pytest.raises(ValueError, match="float32"):
        jaccard_block(v.astype(np.float64), v.tocsc(), slice(0, 4))


def test_jaccard_rejects_bad_parameters():
    x = clustered(0, n=20)
    with pytest.raises(ValueError, match="k1"):
        jaccard_distance(x, k1=20)
    with pytest.raises(ValueError, match="k2"):
        jaccard_distance(x, k1=5, k2=7)
    with pytest.raises(ValueError, match="features"):
        jaccard_distance(np.zeros(5), k1=2)


def _dense(jac: sp.csr_matrix) -> np.ndarray:
    out = np.ones(jac.shape, dtype=np.float32)
    coo = jac.tocoo()
    out[coo.row, coo.col] = coo.data
    return out


@pytest.mark.parametrize("rho", [1.6e-3, 0.01, 0.3])
def test_dbscan_eps_is_the_dense_definition(rho):
    jac = jaccard_distance(clustered(3), k1=10, k2=3)
    dense = _dense(jac)
    assert dbscan_eps(jac, rho) == pytest.approx(textbook_eps(dense, rho), rel=1e-6)


def test_dbscan_eps_counts_stored_zero_pairs_out_and_unstored_ones_in():
    # Pairs (0,1) stored as exact 0 (excluded), (0,2) at 0.2, (1,2) not stored (1.0), (2,3) at 0.5 ...
    dense = np.ones((4, 4), dtype=np.float32)
    np.fill_diagonal(dense, 0)
    dense[0, 1] = dense[1, 0] = 0
    dense[0, 2] = dense[2, 0] = 0.2
    dense[2, 3] = dense[3, 2] = 0.5
    rows, cols = np.nonzero(dense < 1)
    jac = sp.csr_matrix((dense[rows, cols], (rows, cols)), shape=(4, 4))
    assert jac.nnz == 10  # explicit zeros kept (diagonal and the (0, 1) pair)
    for rho in (0.2, 0.5, 0.7, 1.0):
        assert dbscan_eps(jac, rho) == pytest.approx(textbook_eps(dense, rho))
    with pytest.raises(ValueError, match="rho"):
        dbscan_eps(jac, 0.01)


def test_dbscan_on_sparse_equals_dense():
    jac = jaccard_distance(clustered(4, noise=0.5), k1=10, k2=3)
    eps = dbscan_eps(jac, 0.02)
    labels = dbscan(jac, eps, min_samples=4)
    ref = DBSCAN(eps=eps, min_samples=4, metric="precomputed").fit_predict(_dense(jac))
    np.testing.assert_array_equal(labels, ref)
    assert labels.max() >= 3 and (labels == -1).any()
    with pytest.raises(ValueError, match="eps"):
        dbscan(jac, 1.0)
    with pytest.raises(ValueError, match="CSR"):
        dbscan(_dense(jac), eps)


@pytest.mark.parametrize("rho,min_samples", [(0.02, 4), (0.05, 2), (0.1, 6)])
def test_dbscan_drops_far_entries_without_changing_labels(rho, min_samples):
    """Same labels as scikit-learn on the whole sparse matrix, border points included."""
    jac = jaccard_distance(clustered(5, noise=0.6), k1=10, k2=3)
    eps = dbscan_eps(jac, rho)
    assert (jac.data > eps).mean() > 0.5
    ref = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit_predict(jac)
    np.testing.assert_array_equal(dbscan(jac, eps, min_samples=min_samples), ref)


def _inertia(x: np.ndarray, labels: np.ndarray, centroids: np.ndarray) -> float:
    return float(((x - centroids[labels]) ** 2).sum())


@pytest.mark.parametrize("use_faiss", [True, False])
def test_kmeans_inertia_close_to_sklearn(use_faiss, monkeypatch):
    if not use_faiss:
        monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss now fails: torch fallback
    x = clustered(5, n=400, n_ids=40, dim=16, noise=1.0)
    labels, centroids = kmeans(x, 25, seed=0)
    assert labels.shape == (400,) and labels.dtype == np.int64 and centroids.shape == (25, 16)
    ours = _inertia(x.numpy(), labels, centroids.numpy())
    ref = KMeans(n_clusters=25, random_state=0).fit(x.numpy()).inertia_
    assert ours <= ref * 1.01
    # Labels are the nearest centroid of each point.
    np.testing.assert_array_equal(labels, squared_euclidean(x, centroids).argmin(1).numpy())
    again, _ = kmeans(x.numpy(), 25, seed=0)
    np.testing.assert_array_equal(again, labels)


def test_kmeans_rejects_bad_k():
    with pytest.raises(ValueError, match="k must be"):
        kmeans(clustered(0, n=10), 11, seed=0)


def test_relabel_makes_ids_contiguous_and_keeps_outliers():
    out = relabel(np.array([7, -1, 3, 7, 12, -1]))
    np.testing.assert_array_equal(out, [1, -1, 0, 1, 2, -1])
    with pytest.raises(ValueError, match="integer"):
        relabel(np.array([0.5, 1.0]))


def test_cluster_centroids_are_normalised_means_in_label_order():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 4.0], [0.0, 2.0]])
    c = cluster_centroids(x, np.array([1, 0, -1, 1]))
    torch.testing.assert_close(c, torch.tensor([[0.0, 1.0], [0.5, 1.0]]) / torch.tensor([[1.0], [1.25**0.5]]))
    with pytest.raises(ValueError, match="relabel"):
        cluster_centroids(x, np.array([0, 2, 2, -1]))


def test_average_features_renormalises():
    a = F.normalize(torch.randn(5, 8), dim=1)
    b = F.normalize(torch.randn(5, 8), dim=1)
    out = average_features(a, b)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(5))
    torch.testing.assert_close(out, F.normalize(a + b, dim=1))
    with pytest.raises(ValueError, match="same shape"):
        average_features(a, b[:4])


def test_numba_runs_on_its_own_work_queue_not_a_second_openmp_runtime():
    """numba's OpenMP layer beside torch's slowed every later torch call of a DBSCAN run tenfold."""
    import os
    import subprocess
    from pathlib import Path

    code = ("import numba, torch; from mmt_lib.method.pseudo_labels import jaccard_distance; "
            "jaccard_distance(torch.randn(60, 8), k1=5, k2=2); print(numba.threading_layer())")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1], check=True)
    assert out.stdout.strip().splitlines()[-1] == "workqueue"

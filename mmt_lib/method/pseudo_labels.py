"""Pseudo labels for Stage II: feature averaging, k-means, k-reciprocal Jaccard + DBSCAN, centroids.

Each epoch clusters the whole target training set, so these steps must be fast and bounded in
memory: the Jaccard distances are a sparse matrix (pairs not stored are at distance 1, see
``rerank``), and k-means runs faiss (or a torch fallback) for a fixed number of Lloyd iterations
instead of scikit-learn's ten restarts.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from sklearn.cluster import DBSCAN

from mmt_lib.evaluation.evaluate import check_features
from mmt_lib.evaluation.rerank import jaccard_block, k_reciprocal_encoding, nearest_neighbours, query_expansion


def average_features(features_a: torch.Tensor, features_b: torch.Tensor) -> torch.Tensor:
    """Mean of the two mean nets' features, L2-normalised again (the mean of unit vectors is shorter)."""
    if features_a.shape != features_b.shape:
        raise ValueError(
            f"features_a and features_b must have the same shape, got {tuple(features_a.shape)} "
            f"and {tuple(features_b.shape)}"
        )
    return F.normalize((features_a.float() + features_b.float()) / 2, dim=1)


def jaccard_distance(features: torch.Tensor | np.ndarray, k1: int = 20, k2: int = 6) -> sp.csr_matrix:
    """k-reciprocal Jaccard distances as CSR: every pair below 1 stored, diagonal stored as 0.

    Same values as the dense textbook algorithm (conventions in ``rerank``); a pair that is not
    stored is at distance exactly 1. Working memory is O(N k1 k2) for the encoding plus one float64
    row of N per thread; the result itself holds every pair that shares a k-reciprocal member (a few
    thousand per row on Market-sized synthetic data, against N per row for the dense matrix).
    """
    x = check_features(features, "features")
    n = x.shape[0]
    if k1 < 1 or k1 + 1 > n:
        raise ValueError(f"k1 must be in [1, N - 1] = [1, {n - 1}], got {k1}")
    if not 1 <= k2 <= k1 + 1:
        raise ValueError(f"k2 must be in [1, k1 + 1] = [1, {k1 + 1}], got {k2}")
    neighbours = nearest_neighbours(x, k1 + 1)
    v = query_expansion(k_reciprocal_encoding(x, neighbours, k1), neighbours, k2)
    v_cols = v.tocsc()
    v_cols.sort_indices()
    return jaccard_block(v, v_cols, slice(0, n), zero_diagonal=True)


def _check_jaccard(jaccard: sp.csr_matrix) -> None:
    if not sp.issparse(jaccard) or jaccard.format != "csr" or jaccard.shape[0] != jaccard.shape[1]:
        raise ValueError(f"jaccard must be a square scipy.sparse CSR matrix, got {type(jaccard).__name__}")


def dbscan_eps(jaccard: sp.csr_matrix, rho: float = 1.6e-3) -> float:
    """Mean of the smallest `rho` share of the non-zero pairwise distances (fixed at the first epoch).

    Exactly the reference's definition on its dense matrix: the population is every pair i < j whose
    distance is not 0, pairs not stored (distance 1) included; the count taken is round(rho * size)
    with numpy's round (half to even).
    """
    _check_jaccard(jaccard)
    if not 0.0 < rho <= 1.0:
        raise ValueError(f"rho must be in (0, 1], got {rho}")
    n = jaccard.shape[0]
    # Pass over blocks of rows keeping only the candidates for the smallest values: the count taken
    # is at most round(rho * n (n - 1) / 2) whatever the number of stored zeros.
    top_max = int(np.round(rho * (n * (n - 1) // 2)))
    if top_max == 0:
        raise ValueError(f"rho={rho} selects no pair out of {n * (n - 1) // 2}: raise rho or use more samples")
    zeros_stored, smallest = 0, []
    step = max(1, (1 << 24) // max(1, jaccard.nnz // n))  # rows per pass: about 16M stored entries
    for s in range(0, n, step):
        block = jaccard[s : s + step]
        rows = np.repeat(np.arange(s, s + block.shape[0]), np.diff(block.indptr))
        vals = block.data[block.indices > rows]
        zeros_stored += int(np.count_nonzero(vals == 0))
        vals = vals[vals != 0]
        smallest.append(np.partition(vals, top_max - 1)[:top_max] if 0 < top_max < len(vals) else vals)
    nonzero = np.concatenate(smallest).astype(np.float64)
    population = n * (n - 1) // 2 - zeros_stored
    top = int(np.round(rho * population))
    if top == 0:
        raise ValueError(f"rho={rho} selects no pair out of {population}: raise rho or use more samples")
    taken = np.partition(nonzero, top - 1)[:top] if top <= len(nonzero) else nonzero
    ones = top - len(taken)
    return float((taken.sum() + ones * 1.0) / top)


def dbscan(jaccard: sp.csr_matrix, eps: float, min_samples: int = 4) -> np.ndarray:
    """DBSCAN on the sparse Jaccard matrix; labels 0..K-1, outliers -1.

    scikit-learn treats stored entries as the only candidate neighbours, which is exact here because
    every unstored pair is at distance 1 > eps. Entries beyond eps (about 99.7% of them on
    Market-sized data) are dropped first: scikit-learn would copy and sort them all only to filter
    them out (4.9 s against 0.2 s at N = 12,936). Its sort is stable, so the kept entries reach it
    in the same order and the labels are the same.
    """
    _check_jaccard(jaccard)
    if not 0.0 < eps < 1.0:
        raise ValueError(f"eps must be in (0, 1) for a sparse Jaccard matrix, got {eps}")
    if min_samples < 1:
        raise ValueError(f"min_samples must be >= 1, got {min_samples}")
    close = jaccard.data <= eps
    indptr = np.concatenate(([0], np.cumsum(close)))[jaccard.indptr]
    graph = sp.csr_matrix((jaccard.data[close], jaccard.indices[close], indptr), shape=jaccard.shape)
    labels = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit_predict(graph)
    return labels.astype(np.int64)


def relabel(labels: np.ndarray) -> np.ndarray:
    """Make cluster ids contiguous 0..K-1 in order of first appearance of their value; -1 stays -1."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got shape {labels.shape} dtype {labels.dtype}")
    if (labels < -1).any():
        raise ValueError("labels must be >= -1 (-1 marks outliers)")
    out = np.full(labels.shape, -1, dtype=np.int64)
    kept = labels >= 0
    _, new = np.unique(labels[kept], return_inverse=True)
    out[kept] = new
    return out


def cluster_centroids(features: torch.Tensor, labels: np.ndarray) -> torch.Tensor:
    """L2-normalised mean feature of clusters 0..K-1 (outliers -1 ignored), to initialise classifiers."""
    x = check_features(features, "features")
    labels = np.asarray(labels)
    if labels.shape != (x.shape[0],):
        raise ValueError(f"labels must have shape ({x.shape[0]},) to match features, got {labels.shape}")
    kept = labels >= 0
    if not kept.any():
        raise ValueError("labels has no cluster (all -1)")
    k = int(labels.max()) + 1
    counts = np.bincount(labels[kept], minlength=k)
    if (counts == 0).any():
        raise ValueError(f"cluster ids must be contiguous 0..{k - 1}; missing {np.flatnonzero(counts == 0)[:5]} (call relabel)")
    idx = torch.from_numpy(labels[kept].astype(np.int64)).to(x.device)
    sums = torch.zeros((k, x.shape[1]), device=x.device).index_add_(0, idx, x[torch.from_numpy(kept).to(x.device)])
    return F.normalize(sums / torch.from_numpy(counts).to(x.device, torch.float32)[:, None], dim=1)


def kmeans(
    features: torch.Tensor | np.ndarray, k: int, seed: int, niter: int = 30
) -> tuple[np.ndarray, torch.Tensor]:
    """k-means with k-means++ seeding and `niter` Lloyd iterations: (labels [N] int64, centroids [k, D]).

    faiss runs the iterations when it is importable (on the GPU when the features are on one and
    faiss has GPU support); otherwise torch does, on the features' device. Centroids come back on
    the features' device (CPU for numpy input), unnormalised; a centroid may end with no member.
    """
    x = check_features(features, "features")
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}] (the number of features), got {k}")
    if niter < 1:
        raise ValueError(f"niter must be >= 1, got {niter}")
    init = _kmeans_plus_plus(x, k, seed)
    try:
        import faiss
    except ImportError:
        return _lloyd_torch(x, init, niter)
    return _lloyd_faiss(faiss, x, init, seed, niter)


def _kmeans_plus_plus(x: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """Greedy k-means++ seeding (2 + log k trials per centre, as scikit-learn) in torch."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    n = x.shape[0]
    trials = 2 + int(np.log(k))
    sq = (x * x).sum(1)
    first = int(torch.randint(n, (1,), generator=gen))
    centres = [first]
    closest = (sq + sq[first] - 2 * x @ x[first]).clamp_(min=0)
    for _ in range(1, k):
        probs = closest.double().cpu()
        total = float(probs.sum())
        if total <= 0:
            cand = torch.randint(n, (trials,), generator=gen)
        else:
            cand = torch.multinomial(probs / total, trials, replacement=True, generator=gen)
        cand = cand.to(x.device)
        d = (sq[None, :] + sq[cand, None] - 2 * x[cand] @ x.T).clamp_(min=0)
        new_closest = torch.minimum(closest[None, :], d)
        best = int(torch.argmin(new_closest.double().sum(1)))
        centres.append(int(cand[best]))
        closest = new_closest[best]
    return x[torch.tensor(centres, device=x.device)].clone()


def _assign(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    d = (centroids * centroids).sum(1)[None, :] - 2 * x @ centroids.T
    return d.argmin(1)


def _lloyd_torch(x: torch.Tensor, centroids: torch.Tensor, niter: int) -> tuple[np.ndarray, torch.Tensor]:
    k = centroids.shape[0]
    for _ in range(niter):
        labels = _assign(x, centroids)
        counts = torch.bincount(labels, minlength=k)
        sums = torch.zeros_like(centroids).index_add_(0, labels, x)
        filled = counts > 0
        centroids = torch.where(filled[:, None], sums / counts.clamp(min=1)[:, None], centroids)
    return _assign(x, centroids).cpu().numpy().astype(np.int64), centroids


def _lloyd_faiss(faiss, x: torch.Tensor, init: torch.Tensor, seed: int, niter: int) -> tuple[np.ndarray, torch.Tensor]:
    n, d = x.shape
    k = init.shape[0]
    on_gpu = x.is_cuda and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    km = faiss.Kmeans(
        d, k, niter=niter, seed=seed % 2**31, gpu=on_gpu, max_points_per_centroid=n, min_points_per_centroid=1, verbose=False
    )
    x_np = np.ascontiguousarray(x.cpu().numpy())
    km.train(x_np, init_centroids=np.ascontiguousarray(init.cpu().numpy()))
    _, labels = km.index.search(x_np, 1)
    return labels[:, 0].astype(np.int64), torch.from_numpy(km.centroids.copy()).to(x.device)

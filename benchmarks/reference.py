"""Dense textbook k-reciprocal encoding (Zhong et al., CVPR 2017), shared by the benchmark and the tests.

Written loop for loop as the algorithm is described (docs/method.md), with no code from mmt_lib's fast versions, so that it checks them
independently. Every function holds N x N matrices: for small inputs and for measuring the reference.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

Distance = Callable[[int, np.ndarray], np.ndarray]


def k_reciprocal_weights(initial_rank: np.ndarray, distance: Distance, k1: int) -> np.ndarray:
    """V: row i spreads exp(-d) weights, summing to 1, over i's expanded k-reciprocal neighbours.

    `distance(i, idx)` gives the distances from i to the rows idx: a dense matrix's row in the tests,
    computed from the features in the benchmark to keep one N x N matrix fewer.
    """
    n = len(initial_rank)

    def reciprocal(i: int, k: int) -> np.ndarray:
        forward = initial_rank[i, : k + 1]
        return forward[np.where(initial_rank[forward, : k + 1] == i)[0]]

    v = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        r = reciprocal(i, k1)
        expansion = r
        for c in r:
            h = reciprocal(c, int(np.around(k1 / 2.0)))
            if len(np.intersect1d(h, r)) > 2.0 / 3 * len(h):
                expansion = np.append(expansion, h)
        expansion = np.unique(expansion)
        w = np.exp(-distance(i, expansion))
        v[i, expansion] = w / w.sum()
    return v


def query_expansion(v: np.ndarray, initial_rank: np.ndarray, k2: int) -> np.ndarray:
    """Each row replaced by the mean of its k2 nearest rows (itself included); k2 = 1 leaves V as it is."""
    if k2 == 1:
        return v
    return np.stack([v[initial_rank[i, :k2]].mean(0) for i in range(len(v))])


def jaccard_rows(v: np.ndarray, n_rows: int) -> np.ndarray:
    """Jaccard distance of the first n_rows rows of V to every row: 1 - sum(min) / sum(max), at least 0."""
    jac = np.zeros((n_rows, len(v)), dtype=np.float32)
    for i in range(n_rows):
        m = np.minimum(v[i], v).sum(1)
        jac[i] = 1 - m / (2 - m)
    return np.maximum(jac, 0)


def sequential_jaccard(v: np.ndarray, rows: range, columns: range, zero_diagonal: bool):
    """CSR arrays (indptr, indices, data) of the Jaccard distances of V's `rows` to its `columns`.

    The overlaps are float64 sums taken member by member in increasing order, as the fast version
    adds them, so the two agree to the bit; pairs whose float32 distance is 1 are left out.
    """
    indptr, indices, data = [0], [], []
    cols = np.array(columns)
    for i in rows:
        m = np.zeros(len(cols))
        for k in np.flatnonzero(v[i]):
            m += np.minimum(v[i, k], v[cols, k]).astype(np.float64)
        dist = np.maximum(1.0 - m / (2.0 - m), 0.0).astype(np.float32)
        keep = dist < 1
        if zero_diagonal:
            keep |= cols == i
            dist[cols == i] = 0
        indices.extend(np.flatnonzero(keep))
        data.extend(dist[keep])
        indptr.append(len(indices))
    return np.array(indptr), np.array(indices), np.array(data, dtype=np.float32)


def textbook_jaccard(dist: np.ndarray, k1: int = 20, k2: int = 6) -> np.ndarray:
    """The dense N x N Jaccard distance from an N x N matrix of squared Euclidean distances."""
    initial_rank = np.argsort(dist, axis=1, kind="stable")
    v = k_reciprocal_weights(initial_rank, lambda i, idx: dist[i, idx], k1)
    return jaccard_rows(query_expansion(v, initial_rank, k2), len(dist))


def textbook_rerank(dist: np.ndarray, n_query: int, k1: int = 20, k2: int = 6,
                    lambda_value: float = 0.3) -> np.ndarray:
    """Zhong et al.'s re-ranked query x gallery distance from the squared distances of [query; gallery].

    As their code: each column divided by its maximum, then transposed.
    """
    original = np.transpose(dist / np.max(dist, axis=0))
    initial_rank = np.argsort(original, axis=1, kind="stable")
    v = k_reciprocal_weights(initial_rank, lambda i, idx: original[i, idx], k1)
    jac = jaccard_rows(query_expansion(v, initial_rank, k2), n_query)
    final = jac * (1 - lambda_value) + original[:n_query] * lambda_value
    return final[:, n_query:]


def textbook_eps(dense: np.ndarray, rho: float = 1.6e-3) -> float:
    """DBSCAN's eps as the reference computes it: mean of the smallest `rho` share of the non-zero upper-triangle distances."""
    tri = np.triu(dense, 1)
    tri = np.sort(tri[np.nonzero(tri)], axis=None)
    return float(tri[: np.round(rho * tri.size).astype(int)].mean())

"""k-reciprocal encoding (Zhong et al., CVPR 2017) in sparse form, and re-ranked evaluation.

The textbook code holds several dense N x N matrices (distances, their argsort, V, the query-expanded
V, the Jaccard distances): tens of GB at MSMT17 scale. Every one of them is sparse or only needed
in a few columns, so here:
- the k nearest neighbours come from blocks of the (symmetric) distance matrix, each block computed
  once and used for its rows and its columns: memory O(N k + block^2);
- V and its query expansion are scipy CSR matrices with O(N k1 k2) entries;
- the Jaccard distance of a block of rows is built only for the pairs that share a member (all
  other pairs are at distance exactly 1).

Conventions, shared by the DBSCAN pseudo labels (``pseudo_labels.jaccard_distance``) and the
test-time re-ranking here:
- the base distance is the squared Euclidean distance, as in the evaluation protocol;
- the neighbour set N(i, k) is i itself plus its k nearest other points (the first k + 1 columns
  of the ranking, as in Zhong et al.'s code; the MMT reference's faiss path searches only k1
  columns, one fewer);
- R(i, k) = members j of N(i, k) with i in N(j, k); R(i, k1) is expanded by R(c, round(k1/2)) of
  each member c when more than 2/3 of that half set lies in R(i, k1) (numpy's round, half to even);
- members are weighted by exp(-d(i, j) * scale_i), normalised to sum 1 (scale_i = 1 for the pseudo
  labels; 1 / max_j d(i, j) for re-ranking, as Zhong et al.'s code does with the distances it is
  given, which it first squares: feed it Euclidean distances to get these numbers);
- query expansion replaces V_i by the mean of V over N(i, k2 - 1), i.e. the k2 first columns;
- Jaccard(i, j) = 1 - m / (2 - m), m = sum_k min(V_ik, V_jk) (rows of V sum to 1), clipped at 0.

The result depends on the order of neighbours at exactly equal distance, in the textbook too: one
tie at rank k1 + 1 ordered the other way (an unstable argsort against this top-k) moved 14k of 9M
Jaccard entries by up to 0.007 on synthetic data with N = 3000. The tests compare against a
stable argsort.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
import torch

from mmt_lib.evaluation.evaluate import ArrayLike, check_query_gallery, evaluate_distance_blocks, squared_euclidean
from mmt_lib.runtime.compiled import numba, torch_threads

_KNN_BLOCK = 2048
_ROW_CHUNK = 2048


class Neighbours(NamedTuple):
    """k nearest neighbours of every row among all rows (itself included), nearest first."""

    distances: torch.Tensor  # [N, k] float32 squared Euclidean
    indices: torch.Tensor  # [N, k] int64
    row_max: torch.Tensor  # [N] largest distance of each row to any row


def _merge(best_d: torch.Tensor, best_i: torch.Tensor, cand_d: torch.Tensor, cand_i: torch.Tensor, k: int):
    d = torch.cat([best_d, cand_d], dim=1)
    i = torch.cat([best_i, cand_i], dim=1)
    d, order = torch.topk(d, k, dim=1, largest=False, sorted=True)
    return d, torch.gather(i, 1, order)


def nearest_neighbours(features: torch.Tensor, k: int, block: int = _KNN_BLOCK) -> Neighbours:
    """Exact k nearest neighbours by squared Euclidean distance, in O(N k + block^2) memory.

    Only the upper triangle of block pairs is multiplied: the N x N product dominates the cost and
    is symmetric, so each block serves its rows and, transposed, its columns.
    """
    x = features.float()
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}] (the number of features), got {k}")
    sq = (x * x).sum(1)
    best_d = torch.full((n, k), float("inf"), device=x.device)
    best_i = torch.zeros((n, k), dtype=torch.long, device=x.device)
    row_max = torch.zeros(n, device=x.device)
    starts = list(range(0, n, block))
    for a in starts:
        a_end = min(a + block, n)
        for b in starts:
            if b < a:
                continue
            b_end = min(b + block, n)
            d = squared_euclidean(x[a:a_end], x[b:b_end], sq[b:b_end])
            kr = min(k, b_end - b)
            vals, idx = torch.topk(d, kr, dim=1, largest=False, sorted=False)
            best_d[a:a_end], best_i[a:a_end] = _merge(best_d[a:a_end], best_i[a:a_end], vals, idx + b, k)
            row_max[a:a_end] = torch.maximum(row_max[a:a_end], d.amax(1))
            if b != a:
                kc = min(k, a_end - a)
                vals, idx = torch.topk(d, kc, dim=0, largest=False, sorted=False)
                best_d[b:b_end], best_i[b:b_end] = _merge(best_d[b:b_end], best_i[b:b_end], vals.T, idx.T + a, k)
                row_max[b:b_end] = torch.maximum(row_max[b:b_end], d.amax(0))
    return Neighbours(best_d, best_i, row_max)


def _reciprocal_mask(rank: np.ndarray, rows: np.ndarray, width: int) -> np.ndarray:
    """mask[r, m]: rows[r] is among the first `width` columns of rank[rank[rows[r], m]]."""
    forward = rank[rows, :width]
    backward = rank[forward, :width]
    return (backward == rows[:, None, None]).any(axis=2)


def k_reciprocal_encoding(
    features: torch.Tensor,
    neighbours: Neighbours,
    k1: int,
    scale: torch.Tensor | None = None,
) -> sp.csr_matrix:
    """The sparse matrix V: row i holds the weights of i's expanded k-reciprocal set."""
    x = features.float()
    rank = neighbours.indices.cpu().numpy()
    n = rank.shape[0]
    if rank.shape[1] < k1 + 1:
        raise ValueError(f"neighbours must hold at least k1 + 1 = {k1 + 1} columns, got {rank.shape[1]}")
    half = int(np.around(k1 / 2.0))
    x_np = np.ascontiguousarray(x.detach().cpu().numpy())  # the sets are built on the CPU, features on the GPU too
    known_d = neighbours.distances[:, : k1 + 1].cpu().numpy()
    # Half sets of every point: H(c) = R(c, half), as masks over rank[c, :half+1].
    in_half = _reciprocal_mask(rank, np.arange(n), half + 1)
    scale_np = None if scale is None else scale.double().cpu().numpy()
    out_rows, out_cols, out_vals = [], [], []
    for s in range(0, n, _ROW_CHUNK):
        rows = np.arange(s, min(s + _ROW_CHUNK, n))
        forward = rank[rows, : k1 + 1]  # [c, k1+1]
        in_r = _reciprocal_mask(rank, rows, k1 + 1)  # R(i, k1) as a mask over `forward`
        cand = forward.reshape(-1)
        cand_half = rank[cand, : half + 1].reshape(len(rows), k1 + 1, half + 1)
        cand_in_h = in_half[cand].reshape(len(rows), k1 + 1, half + 1)
        r_members = np.where(in_r, forward, -1)
        in_both = (cand_half[..., None] == r_members[:, None, None, :]).any(axis=3) & cand_in_h
        size_h = cand_in_h.sum(axis=2)
        accept = in_r & (in_both.sum(axis=2) > 2.0 / 3.0 * size_h)
        expansion = np.where(accept[..., None] & cand_in_h, cand_half, -1).reshape(len(rows), -1)
        members = np.sort(np.concatenate([r_members, expansion], axis=1), axis=1)
        keep = members >= 0
        keep[:, 1:] &= members[:, 1:] != members[:, :-1]
        r_idx, slot = np.nonzero(keep)
        i_glob = rows[r_idx]
        j_glob = members[r_idx, slot]
        # Most members are among i's own neighbours, whose distances are known; compute the rest.
        hit = forward[r_idx] == j_glob[:, None]
        known = hit.any(axis=1)
        d_np = known_d[i_glob, hit.argmax(axis=1)].astype(np.float64)
        todo = np.flatnonzero(~known)
        with torch_threads():
            d_np[todo] = _pair_distances(x_np, i_glob[todo], j_glob[todo])
        if scale is not None:
            d_np *= scale_np[i_glob]
        # Softmax of -d within each row (rows are contiguous runs of r_idx).
        counts = np.bincount(r_idx, minlength=len(rows))
        starts = (np.cumsum(counts) - counts)[counts > 0]
        counts = counts[counts > 0]
        row_min = np.minimum.reduceat(d_np, starts)
        w = np.exp(-(d_np - np.repeat(row_min, counts)))
        w /= np.repeat(np.add.reduceat(w, starts), counts)
        out_rows.append(i_glob)
        out_cols.append(j_glob)
        out_vals.append(w.astype(np.float32))
    rows_all = np.concatenate(out_rows)
    return sp.csr_matrix(
        (np.concatenate(out_vals), (rows_all, np.concatenate(out_cols))), shape=(n, n), dtype=np.float32
    )


@numba.njit(parallel=True, cache=True)
def _pair_distances(x, ii, jj):
    """Squared Euclidean distance of each pair (ii[p], jj[p]) of rows of x, in float64, read in place:
    gathering the rows first (as tensor indexing does) costs more in fresh memory than the sums."""
    out = np.empty(len(ii), dtype=np.float64)
    for p in numba.prange(len(ii)):
        a, b = x[ii[p]], x[jj[p]]
        total = 0.0
        for d in range(x.shape[1]):
            diff = np.float64(a[d]) - np.float64(b[d])
            total += diff * diff
        out[p] = total
    return out


def query_expansion(v: sp.csr_matrix, neighbours: Neighbours, k2: int) -> sp.csr_matrix:
    """Replace each row of V by the mean of V over the row's k2 first neighbours (itself first)."""
    if k2 == 1:
        return v
    rank = neighbours.indices.cpu().numpy()
    n = rank.shape[0]
    if not 1 <= k2 <= rank.shape[1]:
        raise ValueError(f"k2 must be in [1, {rank.shape[1]}] (the neighbours computed), got {k2}")
    avg = sp.csr_matrix(
        (np.full(n * k2, 1.0 / k2, dtype=np.float32), (np.repeat(np.arange(n), k2), rank[:, :k2].ravel())),
        shape=(n, n),
    )
    out = (avg @ v).tocsr()
    out.sort_indices()
    return out


def jaccard_block(
    v: sp.csr_matrix,
    v_cols: sp.csc_matrix,
    rows: slice,
    columns: slice | None = None,
    zero_diagonal: bool = False,
) -> sp.csr_matrix:
    """Jaccard distances of `rows` (to `columns`, default all) as CSR, pairs at distance 1 left out.

    Row i's overlaps m_ij = sum_k min(V_ik, V_jk) are summed over i's members k and, through V's
    column index (``v_cols``, V in CSC form with sorted indices), over the other rows j sharing k;
    compiled, rows in parallel on ``torch.get_num_threads()`` threads. With ``zero_diagonal`` the
    pair (i, i) is stored as an explicit 0 even for a point without any k-reciprocal neighbour.
    """
    first, last = _contiguous(rows, v.shape[0], "rows")
    lo, hi = (0, v.shape[1]) if columns is None else _contiguous(columns, v.shape[1], "columns")
    if v.dtype != np.float32 or v_cols.dtype != np.float32:
        raise ValueError(f"V must be float32 (as k_reciprocal_encoding makes it), got {v.dtype} and {v_cols.dtype}")
    n_rows = last - first
    args = (v.indptr, v.indices, v.data, v_cols.indptr, v_cols.indices, v_cols.data, first, n_rows, lo, hi,
            zero_diagonal)
    with torch_threads():
        indptr = np.zeros(n_rows + 1, dtype=np.int64)
        _jaccard_rows(*args, indptr, np.empty(0, np.int32), np.empty(0, np.float32), True)
        np.cumsum(indptr, out=indptr)
        indices = np.empty(int(indptr[-1]), dtype=np.int32)
        data = np.empty(int(indptr[-1]), dtype=np.float32)
        _jaccard_rows(*args, indptr, indices, data, False)
    return sp.csr_matrix((data, indices, indptr), shape=(n_rows, hi - lo))


def _contiguous(part: slice, n: int, name: str) -> tuple[int, int]:
    start, stop, step = part.indices(n)
    if step != 1 or start >= stop:
        raise ValueError(f"{name} must be a non-empty slice of 0..{n} with step 1, got {part}")
    return start, stop


_ROWS_PER_TASK = 64


@numba.njit(parallel=True, cache=True)
def _jaccard_rows(v_indptr, v_indices, v_data, c_indptr, c_indices, c_data, first, n_rows, lo, hi,
                  zero_diagonal, out_indptr, out_indices, out_data, count_only):
    """Count (``count_only``: into out_indptr[r + 1]) or write row r's stored pairs at out_indptr[r].

    The overlaps are summed in float64 in the order of k, then turned into a float32 distance
    1 - m / (2 - m) clipped at 0; a pair whose float32 distance is 1 is not stored.
    """
    n_cols = hi - lo
    for task in numba.prange((n_rows + _ROWS_PER_TASK - 1) // _ROWS_PER_TASK):
        acc = np.zeros(n_cols, dtype=np.float64)
        for r in range(task * _ROWS_PER_TASK, min((task + 1) * _ROWS_PER_TASK, n_rows)):
            i = first + r
            for p in range(v_indptr[i], v_indptr[i + 1]):
                a = v_data[p]
                k = v_indices[p]
                for q in range(c_indptr[k], c_indptr[k + 1]):
                    j = c_indices[q]
                    if lo <= j < hi:
                        b = c_data[q]
                        acc[j - lo] += np.float64(a if a < b else b)
            pos = 0 if count_only else out_indptr[r]
            stored = 0
            diagonal = i - lo if zero_diagonal else -1
            for j in range(n_cols):
                m = acc[j]
                if m == 0.0 and j != diagonal:
                    continue
                acc[j] = 0.0
                if j == diagonal:
                    dist = np.float32(0.0)
                else:
                    dist = np.float32(max(1.0 - m / (2.0 - m), 0.0))
                    if not dist < 1.0:
                        continue
                if not count_only:
                    out_indices[pos + stored] = j
                    out_data[pos + stored] = dist
                stored += 1
            if count_only:
                out_indptr[r + 1] = stored


def rerank_blocks(
    query_feats: torch.Tensor,
    gallery_feats: torch.Tensor,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    chunk_size: int = 256,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Re-ranked query x gallery distances, one block of queries at a time: (first query, [c, G]).

    final = (1 - lambda) * Jaccard + lambda * d / max_j d(q, j), over the union of queries and gallery
    (Zhong et al.). Memory: the sparse encoding plus one dense block of c x G.
    """
    if not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"lambda_value must be in [0, 1], got {lambda_value}")
    if k1 < 1 or k2 < 1 or k2 > k1 + 1:
        raise ValueError(f"need k1 >= 1 and 1 <= k2 <= k1 + 1, got k1={k1}, k2={k2}")
    q = query_feats.float()
    g = gallery_feats.float()
    n_q, n_g = q.shape[0], g.shape[0]
    x = torch.cat([q, g])
    neighbours = nearest_neighbours(x, k1 + 1)
    row_max = neighbours.row_max.clamp(min=torch.finfo(torch.float32).tiny)
    v = k_reciprocal_encoding(x, neighbours, k1, scale=1.0 / row_max)
    v = query_expansion(v, neighbours, k2)
    v_cols = v.tocsc()
    v_cols.sort_indices()
    g_sq = (g * g).sum(1)
    for s in range(0, n_q, chunk_size):
        e = min(s + chunk_size, n_q)
        jac = jaccard_block(v, v_cols, slice(s, e), slice(n_q, n_q + n_g))
        dense = np.ones(jac.shape, dtype=np.float32)
        coo = jac.tocoo()
        dense[coo.row, coo.col] = coo.data
        dense = torch.from_numpy(dense)

        orig = squared_euclidean(q[s:e], g, g_sq) / row_max[s:e, None]
        yield s, (1.0 - lambda_value) * dense.to(q.device) + lambda_value * orig


def evaluate_reranked(
    query_feats: ArrayLike,
    gallery_feats: ArrayLike,
    query_pids: ArrayLike,
    gallery_pids: ArrayLike,
    query_cams: ArrayLike,
    gallery_cams: ArrayLike,
    topk: Sequence[int] = (1, 5, 10),
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    chunk_size: int = 256,
) -> dict:
    """``evaluate_features``'s metrics after k-reciprocal re-ranking, `chunk_size` queries at a time."""
    q, g = check_query_gallery(query_feats, gallery_feats)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    blocks = rerank_blocks(q, g, k1, k2, lambda_value, chunk_size)
    return evaluate_distance_blocks(blocks, query_pids, gallery_pids, query_cams, gallery_cams, topk)

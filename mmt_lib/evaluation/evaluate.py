"""Retrieval evaluation: feature extraction, mAP / CMC / mINP, optionally after k-reciprocal re-ranking.

Why no sort: the reference sorts a dense query x gallery matrix (about 19 GB and minutes at MSMT17
scale). A true match's rank only needs how many wrong matches are closer, so each block of queries
is scored against the whole gallery, the query's few true-match distances are sorted, and every
wrong match is placed among them by binary search: O(G log P) per query, memory O(block x G).

Protocol (the paper's, as in docs/method.md): squared Euclidean distance; gallery entries with the query's identity *and*
camera are ignored; queries left without a true match are skipped. AP is scikit-learn's
``average_precision_score`` on the remaining list (ties between distances handled as it does, as
one group). CMC and mINP count ties against the query: a wrong match at the same distance as a true
match ranks before it. Without ties all of these equal the textbook per-query loop.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch

from mmt_lib.runtime.compiled import numba, torch_threads
from mmt_lib.runtime.progress import tqdm

ArrayLike = np.ndarray | torch.Tensor
_BLOCK_ELEMENTS = {"cpu": 1 << 26, "other": 1 << 24}
"""query x gallery entries scored at once: 256 MB of distances on the CPU, whose compiled ranking
makes no temporaries; 64 MB elsewhere, where the tensor ranking makes about 14 bytes per entry."""


def squared_euclidean(a: ArrayLike, b: ArrayLike, b_sq: torch.Tensor | None = None) -> torch.Tensor:
    """Squared Euclidean distances [len(a), len(b)] as float32 on a's device (|a|^2 + |b|^2 - 2ab, >= 0).

    `b_sq` (the squared norms of b's rows) saves recomputing them when b is scored block by block.
    """
    a_t = torch.as_tensor(a).float()
    b_t = torch.as_tensor(b).float().to(a_t.device)
    if a_t.ndim != 2 or b_t.ndim != 2 or a_t.shape[1] != b_t.shape[1]:
        raise ValueError(f"need two [N, D] matrices with the same D, got {tuple(a_t.shape)} and {tuple(b_t.shape)}")
    if b_sq is None:
        b_sq = (b_t * b_t).sum(1)
    d = a_t @ b_t.T
    d.mul_(-2).add_((a_t * a_t).sum(1)[:, None]).add_(b_sq[None, :])
    return d.clamp_(min=0)


def extract_features(
    model: torch.nn.Module,
    loader: Iterable,
    device: torch.device | str = "cpu",
    amp_dtype: torch.dtype | None = None,
    progress: bool = True,
    desc: str = "features",
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Embed every image of `loader` (yielding images, pids, camids, indices) with the model in eval mode.

    Returns (features [N, D] float32 on the CPU, pids, camids). The model's train/eval mode is
    restored afterwards, so a trainer can call this mid-epoch.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    feats, pids, cams = [], [], []
    try:
        with torch.inference_mode():
            for images, pid, cam, _ in tqdm(loader, desc=desc, disable=not progress, leave=False):
                with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    out = model(images.to(device, non_blocking=True))
                feats.append(out.float().cpu())
                pids.append(torch.as_tensor(pid).cpu().numpy())
                cams.append(torch.as_tensor(cam).cpu().numpy())
    finally:
        model.train(was_training)
    if not feats:
        raise ValueError("loader yielded no batch: nothing to extract features from")
    return torch.cat(feats), np.concatenate(pids).astype(np.int64), np.concatenate(cams).astype(np.int64)


def check_features(x: ArrayLike, name: str, device: torch.device | None = None) -> torch.Tensor:
    """`x` as a finite float32 [N, D] tensor (on `device` if given), or a ValueError naming it."""
    t = torch.as_tensor(x)
    if t.ndim != 2 or t.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty [N, D] matrix, got shape {tuple(t.shape)}")
    t = t.float().to(device) if device is not None else t.float()
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return t


def check_query_gallery(query_feats: ArrayLike, gallery_feats: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Both feature sets as finite float32 tensors on the query's device, of one dimension, or a ValueError."""
    q = check_features(query_feats, "query_feats")
    g = check_features(gallery_feats, "gallery_feats", q.device)
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"query_feats and gallery_feats differ in dimension: {q.shape[1]} vs {g.shape[1]}")
    return q, g


def _ids(x: ArrayLike, n: int, name: str, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if t.shape != (n,) or t.is_floating_point():
        raise ValueError(f"{name} must be {n} integers (one per feature row), got shape {tuple(t.shape)} dtype {t.dtype}")
    return t.to(device=device, dtype=torch.long)


def _rank_statistics(
    dist: torch.Tensor, q_pids: torch.Tensor, g_pids: torch.Tensor, q_cams: torch.Tensor, g_cams: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per query of the block: (AP, 0-based rank of the first true match, INP, has a true match).

    The same numbers two ways: a compiled loop on the CPU (one pass over each row, no temporaries),
    tensor operations elsewhere (the GPU runs them in parallel over the whole block).
    """
    if dist.device.type == "cpu":
        return _rank_statistics_compiled(dist, q_pids, g_pids, q_cams, g_cams)
    return _rank_statistics_tensors(dist, q_pids, g_pids, q_cams, g_cams)


def _rank_statistics_compiled(
    dist: torch.Tensor, q_pids: torch.Tensor, g_pids: torch.Tensor, q_cams: torch.Tensor, g_cams: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``_rank_statistics`` on the CPU: numpy views of the block handed to the compiled ``_rank_rows``."""
    c = dist.shape[0]
    ap, inp = np.zeros(c), np.zeros(c)
    first = np.zeros(c, dtype=np.int64)
    valid = np.zeros(c, dtype=np.bool_)
    as_np = [t.contiguous().numpy() for t in (q_pids, g_pids, q_cams, g_cams)]
    with torch_threads():
        _rank_rows(dist.detach().float().contiguous().numpy(), *as_np, ap, first, inp, valid)
    return torch.from_numpy(ap), torch.from_numpy(first), torch.from_numpy(inp), torch.from_numpy(valid)


@numba.njit(parallel=True, cache=True)
def _rank_rows(dist, q_pids, g_pids, q_cams, g_cams, ap, first, inp, valid):
    """Row i's true-match distances are sorted; each wrong match at a distance <= the last one is
    placed among them by binary search into hist[b] (b true matches strictly closer), and AP, the
    first rank and INP follow from the cumulative counts, with the tie rules of the module docstring."""
    n_g = dist.shape[1]
    for i in numba.prange(dist.shape[0]):
        pid, cam = q_pids[i], q_cams[i]
        n_pos = 0
        for j in range(n_g):
            if g_pids[j] == pid and g_cams[j] != cam:
                n_pos += 1
        if n_pos == 0:
            continue
        pos = np.empty(n_pos, dtype=np.float32)
        p = 0
        for j in range(n_g):
            if g_pids[j] == pid and g_cams[j] != cam:
                pos[p] = dist[i, j]
                p += 1
        pos.sort()
        last = pos[n_pos - 1]
        hist = np.zeros(n_pos, dtype=np.int64)
        for j in range(n_g):
            d = dist[i, j]
            if d > last or g_pids[j] == pid:
                continue
            lo, hi = 0, n_pos - 1
            while lo < hi:
                mid = (lo + hi) // 2
                if pos[mid] >= d:
                    hi = mid
                else:
                    lo = mid + 1
            hist[lo] += 1
        tie_end = np.empty(n_pos, dtype=np.int64)  # true matches at distance <= pos[b], ties included
        tie_end[n_pos - 1] = n_pos
        for b in range(n_pos - 2, -1, -1):
            tie_end[b] = tie_end[b + 1] if pos[b + 1] == pos[b] else b + 1
        total = 0.0
        wrong = 0
        for b in range(n_pos):
            wrong += hist[b]
            total += tie_end[b] / (tie_end[b] + wrong)
            if b == 0:
                first[i] = wrong
        ap[i] = total / n_pos
        inp[i] = n_pos / (n_pos + wrong)
        valid[i] = True


def _rank_statistics_tensors(
    dist: torch.Tensor, q_pids: torch.Tensor, g_pids: torch.Tensor, q_cams: torch.Tensor, g_cams: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``_rank_statistics`` as whole-block tensor operations: true-match distances sorted per row, every
    other entry bucketed among them by ``searchsorted``, counts accumulated by ``scatter_add_``."""
    dist = dist.float()  # the sorted true-match table below is float32: compare like with like
    c = dist.shape[0]
    same_id = q_pids[:, None] == g_pids[None, :]
    positive = same_id & (q_cams[:, None] != g_cams[None, :])
    n_pos = positive.sum(1)
    valid = n_pos > 0
    p_max = int(n_pos.max()) if c else 0
    if p_max == 0:
        zeros = torch.zeros(c, dtype=torch.float64, device=dist.device)
        return zeros, torch.zeros(c, dtype=torch.long, device=dist.device), zeros, valid
    # Sorted true-match distances of each query, padded with +inf: [c, p_max].
    rows, cols = positive.nonzero(as_tuple=True)
    pos_d = dist[rows, cols]
    order = torch.argsort(pos_d, stable=True)
    order = order[torch.argsort(rows[order], stable=True)]
    rows, pos_d = rows[order], pos_d[order]
    row_start = torch.cumsum(n_pos, 0) - n_pos
    slot = torch.arange(len(rows), device=dist.device) - row_start[rows]
    sorted_pos = torch.full((c, p_max), float("inf"), device=dist.device)
    sorted_pos[rows, slot] = pos_d
    # Wrong matches: bucket b = number of true matches strictly closer; it counts for true match j iff b <= j.
    # Same-identity entries go to bucket p_max, which counts for none.
    bucket = torch.searchsorted(sorted_pos, dist, side="left").masked_fill_(same_id, p_max)
    hist = torch.zeros((c, p_max + 1), dtype=torch.long, device=dist.device)
    hist.scatter_add_(1, bucket, torch.ones((1, 1), dtype=torch.long, device=dist.device).expand_as(bucket))
    neg_before = hist[:, :p_max].cumsum(1)  # wrong matches at distance <= each true match
    pos_before = torch.searchsorted(sorted_pos, sorted_pos, side="right")  # true matches at distance <= it
    in_row = torch.arange(p_max, device=dist.device)[None, :] < n_pos[:, None]
    precision = pos_before.double() / (pos_before + neg_before).double()
    ap = torch.where(in_row, precision, 0.0).sum(1) / n_pos.clamp(min=1)
    first_rank = neg_before[:, 0]
    last = (n_pos - 1).clamp(min=0)
    inp = n_pos.double() / (n_pos + neg_before.gather(1, last[:, None])[:, 0]).double()
    return ap, first_rank, inp, valid


def evaluate_distance_blocks(
    blocks: Iterable[tuple[int, torch.Tensor]],
    query_pids: ArrayLike,
    gallery_pids: ArrayLike,
    query_cams: ArrayLike,
    gallery_cams: ArrayLike,
    topk: Sequence[int] = (1, 5, 10),
) -> dict:
    """Metrics from query x gallery distances given block by block as (first query row, [c, G]).

    The blocks must cover every query once; any distance works (re-ranked ones included, +-inf
    too), but not NaN, which has no place in a ranking.
    """
    _check_topk(topk)
    aps, firsts, inps, valids = [], [], [], []
    n_q = len(query_pids)
    covered = 0
    ids = None
    for start, dist in blocks:
        end = start + dist.shape[0]
        if ids is None:
            n_g, dev = dist.shape[1], dist.device
            ids = (
                _ids(query_pids, n_q, "query_pids", dev),
                _ids(gallery_pids, n_g, "gallery_pids", dev),
                _ids(query_cams, n_q, "query_cams", dev),
                _ids(gallery_cams, n_g, "gallery_cams", dev),
            )
        qp, gp, qc, gc = ids
        if torch.isnan(dist.sum()) and torch.isnan(dist).any():  # the sum is NaN whenever an entry is
            raise ValueError(f"the distance block of query rows {start}..{end - 1} contains NaN")
        ap, first, inp, valid = _rank_statistics(dist, qp[start:end], gp, qc[start:end], gc)
        covered += end - start
        aps.append(ap[valid].cpu())
        firsts.append(first[valid].cpu())
        inps.append(inp[valid].cpu())
        valids.append(valid.cpu())
    if covered != n_q:
        raise ValueError(f"the distance blocks cover {covered} query rows, expected {n_q}")
    n_valid = int(torch.cat(valids).sum())
    if n_valid == 0:
        raise ValueError("no query has a true match in the gallery (same identity, other camera): nothing to evaluate")
    first = torch.cat(firsts)
    return {
        "mAP": float(torch.cat(aps).mean()),
        "mINP": float(torch.cat(inps).mean()),
        "cmc": {int(k): float((first < k).double().mean()) for k in topk},
        "num_valid_queries": n_valid,
    }


def _check_topk(topk: Sequence[int]) -> None:
    if not topk or any(int(k) < 1 for k in topk):
        raise ValueError(f"topk must be a non-empty sequence of positive ranks, got {topk}")


def evaluate_features(
    query_feats: ArrayLike,
    gallery_feats: ArrayLike,
    query_pids: ArrayLike,
    gallery_pids: ArrayLike,
    query_cams: ArrayLike,
    gallery_cams: ArrayLike,
    topk: Sequence[int] = (1, 5, 10),
    chunk_size: int | None = None,
) -> dict:
    """mAP, mINP and CMC ({k: value}) as fractions in [0, 1], plus num_valid_queries.

    Runs on the device of `query_feats` (numpy means CPU), `chunk_size` queries at a time (default:
    about 64M query x gallery entries per block on the CPU, 16M elsewhere), so memory is bounded
    whatever the gallery size.
    """
    q, g = check_query_gallery(query_feats, gallery_feats)
    blocks = distance_blocks(q, g, chunk_size)
    return evaluate_distance_blocks(blocks, query_pids, gallery_pids, query_cams, gallery_cams, topk)


def distance_blocks(
    q: torch.Tensor, g: torch.Tensor, chunk_size: int | None = None
) -> Iterator[tuple[int, torch.Tensor]]:
    """(first query row, squared distances [c, G]) for `chunk_size` queries at a time.

    The default block holds about 64M query x gallery entries on the CPU and 16M elsewhere
    (``_BLOCK_ELEMENTS``), so memory stays bounded whatever the gallery size.
    """
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    budget = _BLOCK_ELEMENTS["cpu" if q.device.type == "cpu" else "other"]
    step = chunk_size or max(1, budget // g.shape[0])
    g_sq = (g * g).sum(1)
    for s in range(0, q.shape[0], step):
        yield s, squared_euclidean(q[s : s + step], g, g_sq)

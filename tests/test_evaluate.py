"""Evaluation and re-ranking against textbook per-query loops written here, on random and adversarial data."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from reference import textbook_rerank
from sklearn.metrics import average_precision_score

from mmt_lib.evaluation.evaluate import (_rank_statistics_compiled, _rank_statistics_tensors, evaluate_distance_blocks,
                                          evaluate_features, extract_features, squared_euclidean)
from mmt_lib.evaluation.rerank import evaluate_reranked, rerank_blocks


def reference_metrics(dist: np.ndarray, qp, gp, qc, gc, topk=(1, 5, 10)) -> dict:
    """The textbook loop: drop same-id-same-camera entries, skip queries without a true match.

    AP is scikit-learn's; CMC and INP rank a tied wrong match before the true match.
    """
    aps, inps, firsts = [], [], []
    for i in range(dist.shape[0]):
        keep = ~((gp == qp[i]) & (gc == qc[i]))
        d, y = dist[i, keep], gp[keep] == qp[i]
        if not y.any():
            continue
        aps.append(average_precision_score(y, -d.astype(np.float64)))
        ranked = y[np.lexsort((y, d))]
        hits = np.flatnonzero(ranked)
        firsts.append(hits[0])
        inps.append(len(hits) / (hits[-1] + 1))
    firsts = np.array(firsts)
    return {
        "mAP": float(np.mean(aps)),
        "mINP": float(np.mean(inps)),
        "cmc": {k: float(np.mean(firsts < k)) for k in topk},
        "num_valid_queries": len(aps),
    }


def assert_same(ours: dict, ref: dict, tol: float = 1e-9) -> None:
    assert ours["num_valid_queries"] == ref["num_valid_queries"]
    assert ours["mAP"] == pytest.approx(ref["mAP"], abs=tol)
    assert ours["mINP"] == pytest.approx(ref["mINP"], abs=tol)
    assert ours["cmc"].keys() == ref["cmc"].keys()
    for k in ref["cmc"]:
        assert ours["cmc"][k] == pytest.approx(ref["cmc"][k], abs=tol)


def random_split(seed: int, n_q=40, n_g=300, n_ids=30, dim=16, n_cams=3):
    """Clustered features, some identities absent from the gallery, some with a single image."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_ids, dim))
    gp = rng.integers(0, n_ids - 5, n_g)  # identities n_ids-5.. never in the gallery
    gp[:3] = n_ids + np.arange(3)  # single-image gallery identities
    qp = rng.integers(0, n_ids, n_q)
    gf = F.normalize(torch.from_numpy(centres[np.minimum(gp, n_ids - 1)] + rng.normal(size=(n_g, dim))).float(), dim=1)
    qf = F.normalize(torch.from_numpy(centres[qp] + rng.normal(size=(n_q, dim))).float(), dim=1)
    return qf, gf, qp, gp, rng.integers(0, n_cams, n_q), rng.integers(0, n_cams, n_g)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference_loop_on_random_data(seed):
    qf, gf, qp, gp, qc, gc = random_split(seed)
    ref = reference_metrics(squared_euclidean(qf, gf).numpy(), qp, gp, qc, gc)
    assert 0 < ref["num_valid_queries"] < len(qp)  # some queries really are skipped
    assert_same(evaluate_features(qf, gf, qp, gp, qc, gc), ref)


def test_ap_equals_sklearn_without_ties_and_known_values():
    # One query, gallery ranked: wrong, right, wrong, right -> AP = (1/2 + 2/4) / 2 = 0.5.
    qf = torch.tensor([[0.0]])
    gf = torch.tensor([[1.0], [2.0], [3.0], [4.0], [0.5]])
    gp = np.array([9, 1, 9, 1, 1])
    gc = np.array([0, 0, 0, 0, 5])  # the closest true match shares the query's camera: ignored
    out = evaluate_features(qf, gf, [1], gp, [5], gc, topk=(1, 2, 3))
    assert out["mAP"] == pytest.approx(0.5)
    assert out["cmc"] == {1: 0.0, 2: 1.0, 3: 1.0}
    assert out["mINP"] == pytest.approx(2 / 4)


def test_chunk_sizes_and_input_types_agree():
    qf, gf, qp, gp, qc, gc = random_split(3)
    one = evaluate_features(qf, gf, qp, gp, qc, gc, chunk_size=len(qp))
    for chunk in (1, 7):
        assert evaluate_features(qf.numpy(), gf.numpy(), qp, gp, qc, gc, chunk_size=chunk) == one
    assert evaluate_features(qf, gf, torch.from_numpy(qp), torch.from_numpy(gp), qc, gc) == one


def test_ties_follow_sklearn_ap_and_pessimistic_ranks():
    # Small integer features make many distances exactly equal (and exactly computed).
    rng = np.random.default_rng(5)
    qf = torch.from_numpy(rng.integers(0, 2, (30, 3))).float()
    gf = torch.from_numpy(rng.integers(0, 2, (120, 3))).float()
    qp, gp = rng.integers(0, 4, 30), rng.integers(0, 4, 120)
    qc, gc = rng.integers(0, 2, 30), rng.integers(0, 2, 120)
    dist = squared_euclidean(qf, gf).numpy()
    assert len(np.unique(dist)) <= 4
    assert_same(evaluate_features(qf, gf, qp, gp, qc, gc, chunk_size=4), reference_metrics(dist, qp, gp, qc, gc))


def test_queries_without_match_are_skipped_and_all_missing_is_an_error():
    qf, gf = torch.eye(3), torch.eye(3)
    out = evaluate_features(qf, gf, [0, 1, 2], [0, 1, 5], [0, 0, 0], [1, 0, 1], topk=(1,))
    assert out["num_valid_queries"] == 1  # query 1 only finds itself in its own camera; 2 is absent
    assert out["mAP"] == 1.0 and out["cmc"] == {1: 1.0}
    with pytest.raises(ValueError, match="no query has a true match"):
        evaluate_features(qf, gf, [0, 1, 2], [0, 1, 2], [0, 0, 0], [0, 0, 0])


def test_bad_inputs_are_named():
    qf, gf, qp, gp, qc, gc = random_split(0)
    with pytest.raises(ValueError, match="gallery_pids"):
        evaluate_features(qf, gf, qp, gp[:-1], qc, gc)
    with pytest.raises(ValueError, match="differ in dimension"):
        evaluate_features(qf, gf[:, :5], qp, gp, qc, gc)
    bad = qf.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="query_feats"):
        evaluate_features(bad, gf, qp, gp, qc, gc)
    with pytest.raises(ValueError, match="topk"):
        evaluate_features(qf, gf, qp, gp, qc, gc, topk=(0,))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_inputs_give_the_cpu_result():
    qf, gf, qp, gp, qc, gc = random_split(4)
    cpu = evaluate_features(qf, gf, qp, gp, qc, gc)
    gpu = evaluate_features(qf.cuda(), gf.cuda(), qp, gp, qc, gc)
    assert_same(gpu, cpu, tol=1e-6)


@pytest.mark.parametrize("k1,k2", [(20, 6), (7, 1), (5, 3)])
def test_rerank_matches_textbook(k1, k2):
    qf, gf, qp, gp, qc, gc = random_split(6, n_q=25, n_g=150)
    x = torch.cat([qf, gf])
    ref = textbook_rerank(squared_euclidean(x, x).numpy(), len(qf), k1, k2)
    ours = torch.cat([d for _, d in rerank_blocks(qf, gf, k1, k2, 0.3, chunk_size=8)]).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    expected = reference_metrics(ours, qp, gp, qc, gc)
    assert_same(evaluate_reranked(qf, gf, qp, gp, qc, gc, k1=k1, k2=k2, chunk_size=6), expected)
    assert expected["mAP"] != reference_metrics(squared_euclidean(qf, gf).numpy(), qp, gp, qc, gc)["mAP"]


def test_distance_blocks_must_cover_every_query():
    qf, gf, qp, gp, qc, gc = random_split(0)
    d = squared_euclidean(qf, gf)
    with pytest.raises(ValueError, match="cover"):
        evaluate_distance_blocks([(0, d[:10])], qp, gp, qc, gc)


def test_any_distance_signs_and_ties_in_blocks_match_the_reference_loop():
    """Re-ranked or user distances may be negative, -0.0 or tied: ordering must still be exact."""
    _, _, qp, gp, qc, gc = random_split(3)
    rng = np.random.default_rng(3)
    d = rng.integers(-6, 7, size=(len(qp), len(gp))).astype(np.float32) / 4
    d[d == 0] = -0.0
    blocks = [(s, torch.from_numpy(d[s : s + 7])) for s in range(0, len(qp), 7)]
    assert_same(evaluate_distance_blocks(blocks, qp, gp, qc, gc), reference_metrics(d, qp, gp, qc, gc))


@pytest.mark.parametrize("seed", [0, 1])
def test_compiled_cpu_ranking_equals_the_tensor_ranking_the_gpu_runs(seed):
    """The CPU's compiled loop and the GPU's tensor operations must give the same numbers, ties included."""
    rng = np.random.default_rng(seed)
    n_q, n_g = 50, 400
    qp, gp = rng.integers(0, 12, n_q), rng.integers(0, 10, n_g)  # queries of identities 10, 11 have no match
    qc, gc = rng.integers(0, 2, n_q), rng.integers(0, 2, n_g)  # many same-identity-same-camera junk entries
    tied = rng.integers(-3, 4, size=(n_q, n_g)).astype(np.float32) / 2
    tied[tied == 0] = -0.0
    for dist in (torch.from_numpy(tied), torch.rand(n_q, n_g)):
        ids = [torch.from_numpy(x) for x in (qp, gp, qc, gc)]
        compiled = _rank_statistics_compiled(dist, *ids)
        tensors = _rank_statistics_tensors(dist, *ids)
        assert torch.equal(compiled[3], tensors[3]) and 0 < int(compiled[3].sum()) < n_q
        valid = compiled[3]
        torch.testing.assert_close(compiled[0][valid], tensors[0][valid], rtol=0, atol=1e-12)
        assert torch.equal(compiled[1][valid], tensors[1][valid])
        torch.testing.assert_close(compiled[2][valid], tensors[2][valid], rtol=0, atol=1e-12)


def test_infinite_distances_rank_last_and_nan_is_refused():
    """A true match at +inf still counts, ignored same-camera entries never do; NaN has no rank."""
    gp, gc = np.array([0, 0, 0, 1]), np.array([1, 1, 0, 1])  # gallery entry 2 shares the query's camera
    qp, qc = np.array([0]), np.array([0])
    d = np.array([[1.0, np.inf, 0.5, 2.0]], dtype=np.float32)
    # Ranked: true (1.0), wrong (2.0), true (inf): AP = (1/1 + 2/3) / 2, INP = 2/3.
    expected = {"mAP": 5 / 6, "mINP": 2 / 3, "cmc": {1: 1.0, 5: 1.0, 10: 1.0}, "num_valid_queries": 1}
    assert_same(evaluate_distance_blocks([(0, torch.from_numpy(d))], qp, gp, qc, gc), expected)
    ids = [torch.from_numpy(x) for x in (qp, gp, qc, gc)]
    ap, first, inp, _ = _rank_statistics_tensors(torch.from_numpy(d), *ids)
    assert (float(ap[0]), int(first[0]), float(inp[0])) == pytest.approx((5 / 6, 0, 2 / 3))
    d[0, 3] = np.nan
    with pytest.raises(ValueError, match="query rows 0..0 contains NaN"):
        evaluate_distance_blocks([(0, torch.from_numpy(d))], qp, gp, qc, gc)


def test_distance_blocks_that_require_grad_are_evaluated():
    qf, gf, qp, gp, qc, gc = random_split(5)
    d = squared_euclidean(qf, gf)
    expected = evaluate_distance_blocks([(0, d)], qp, gp, qc, gc)
    assert_same(evaluate_distance_blocks([(0, d.clone().requires_grad_())], qp, gp, qc, gc), expected)


def test_two_threads_may_evaluate_at_once():
    """numba's work queue aborts the whole process when two threads enter it together."""
    code = (
        "import threading, torch; from mmt_lib.evaluation.evaluate import evaluate_features\n"
        "q, g = torch.randn(40, 8), torch.randn(300, 8)\n"
        "qp, gp, qc, gc = torch.randint(5, (40,)), torch.randint(5, (300,)), torch.randint(2, (40,)), torch.randint(2, (300,))\n"
        "run = lambda: [evaluate_features(q, g, qp, gp, qc, gc, chunk_size=4) for _ in range(30)]\n"
        "threads = [threading.Thread(target=run) for _ in range(3)]\n"
        "[t.start() for t in threads]; [t.join() for t in threads]; print('done')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "done" in proc.stdout, proc.stderr[-2000:]


class _Embed(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 3)
        self.drop = torch.nn.Dropout(0.5)

    def forward(self, x):
        return F.normalize(self.drop(self.lin(x)), dim=1)


def test_extract_features_in_eval_mode_and_restores_mode():
    torch.manual_seed(0)
    model = _Embed().train()
    images = torch.randn(10, 4)
    loader = [(images[:6], torch.arange(6), torch.zeros(6, dtype=torch.long), torch.arange(6)),
              (images[6:], torch.arange(6, 10), torch.ones(4, dtype=torch.long), torch.arange(6, 10))]
    feats, pids, cams = extract_features(model, loader, progress=False)
    assert model.training
    model.eval()
    torch.testing.assert_close(feats, model(images).detach())
    assert feats.dtype == torch.float32 and feats.device.type == "cpu"
    np.testing.assert_array_equal(pids, np.arange(10))
    np.testing.assert_array_equal(cams, [0] * 6 + [1] * 4)
    extract_features(model, loader, progress=False)
    assert not model.training
    with pytest.raises(ValueError, match="no batch"):
        extract_features(model, [], progress=False)

"""Time and peak memory of evaluation, re-ranking, Jaccard + DBSCAN and k-means, ours against straightforward references.

Each case runs in its own subprocess; after its inputs are made the peak RSS count is reset, so the
table prints the peak RSS during the step (inputs and imported libraries included) and, in
parentheses, its growth over the RSS at the start of the step. Features are synthetic
(identity centres + camera shift + low-rank and isotropic noise, L2-normalised, 2048-d) at the
sizes of Market-1501 and MSMT17.

    python benchmarks/bench_eval_cluster.py            # full run (several minutes, ~10 GB RAM at most)
    python benchmarks/bench_eval_cluster.py --tiny     # smoke check, well under a minute

Our compiled (numba) kernels are loaded by a tiny call before the timed step: loading them starts
numba's thread pool, a once-per-process cost (about 0.3 s) printed apart as "+ load".

References: evaluation = dense distance matrix, full argsort, per-query loop with scikit-learn's
average_precision_score (as the MMT reference); Jaccard = the dense textbook algorithm with its
per-row loops; k-means = scikit-learn KMeans with 10 restarts (the reference's setting).
Skipped on purpose: the dense Jaccard at MSMT17 scale (about 27 GB) and the dense re-ranking
(several N x N matrices); the MSMT17-scale reference evaluation (about 20 GB) runs on a tenth of the
queries and its time and step memory are scaled by 10 (marked "est.").
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reference import k_reciprocal_weights, query_expansion, textbook_eps  # noqa: E402

from mmt_lib.evaluation.evaluate import (  # noqa: E402
    distance_blocks,
    evaluate_features,
    squared_euclidean,
)
from mmt_lib.evaluation.rerank import evaluate_reranked, nearest_neighbours  # noqa: E402
from mmt_lib.method.pseudo_labels import dbscan, dbscan_eps, jaccard_distance, kmeans  # noqa: E402

SCALES = {
    # name: (train images, query, gallery, test identities, train identities)
    "market": (12_936, 3_368, 15_913, 750, 751),
    "msmt": (32_621, 11_659, 82_161, 3_060, 1_041),
    "tiny": (1_000, 200, 1_000, 80, 80),
}
DIM = 2048
TINY_DIM = 128


def synthetic(n: int, n_ids: int, dim: int, seed: int) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Clustered unit features with overlap: identity centre + camera shift + low-rank + isotropic noise."""
    gen = torch.Generator().manual_seed(seed)
    pids = torch.randint(n_ids, (n,), generator=gen)
    cams = torch.randint(6, (n,), generator=gen)
    centres = torch.randn(n_ids, dim, generator=gen)
    cam_shift = 0.6 * torch.randn(6, dim, generator=gen)
    basis = torch.randn(64, dim, generator=gen) * (1.5 / 64**0.5)
    hard = 0.5 + torch.rand(n, 1, generator=gen)
    x = centres[pids] + cam_shift[cams]
    x += hard * (torch.randn(n, 64, generator=gen) @ basis)
    x += 0.8 * torch.randn(n, dim, generator=gen)
    return F.normalize(x, dim=1), pids.numpy(), cams.numpy()


def split(scale: str, dim: int):
    _, n_q, n_g, n_ids, _ = SCALES[scale]
    feats, pids, cams = synthetic(n_q + n_g, n_ids, dim, seed=1)
    return feats[:n_q], feats[n_q:], pids[:n_q], pids[n_q:], cams[:n_q], cams[n_q:]


def reference_eval(qf, gf, qp, gp, qc, gc, topk=(1, 5, 10)) -> dict:
    """The reference's algorithm: dense distances, full argsort, per-query loop."""
    from sklearn.metrics import average_precision_score

    dist = squared_euclidean(qf, gf).numpy()
    indices = np.argsort(dist, axis=1)
    matches = gp[indices] == qp[:, None]
    aps, inps, firsts = [], [], []
    for i in range(len(qp)):
        valid = (gp[indices[i]] != qp[i]) | (gc[indices[i]] != qc[i])
        y_true = matches[i, valid]
        if not y_true.any():
            continue
        aps.append(average_precision_score(y_true, -dist[i][indices[i]][valid]))
        hits = np.flatnonzero(y_true)
        firsts.append(hits[0])
        inps.append(len(hits) / (hits[-1] + 1))
    firsts = np.array(firsts)
    return {"mAP": float(np.mean(aps)), "mINP": float(np.mean(inps)),
            "cmc": {k: float(np.mean(firsts < k)) for k in topk}, "num_valid_queries": len(aps)}


def reference_jaccard(x: torch.Tensor, k1: int = 20, k2: int = 6) -> np.ndarray:
    """The dense textbook algorithm with the reference's inverted index for the last step (several N x N matrices)."""
    x_np = x.numpy()
    initial_rank = np.argsort(squared_euclidean(x, x).numpy(), axis=1)
    v = k_reciprocal_weights(initial_rank, lambda i, idx: ((x_np[idx] - x_np[i]) ** 2).sum(1), k1)
    v = query_expansion(v, initial_rank, k2)
    del initial_rank
    n = len(v)
    inv_index = [np.flatnonzero(v[:, i]) for i in range(n)]
    jac = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        temp_min = np.zeros(n, dtype=np.float32)
        nonzero = np.flatnonzero(v[i])
        for k in nonzero:
            rows = inv_index[k]
            temp_min[rows] += np.minimum(v[i, k], v[rows, k])
        jac[i] = 1 - temp_min / (2 - temp_min)
    np.maximum(jac, 0, out=jac)
    return jac


def rss_mb() -> float:
    """Peak RSS of this process in MB since start, or since the last reset_peak()."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _current_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return rss_mb()


def reset_peak() -> None:
    """Start the peak RSS count again (Linux), so that making the inputs does not count as the step's peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def product_seconds(a: torch.Tensor, b: torch.Tensor) -> float:
    """Time of the float32 distance product alone, in the evaluation's blocks: what any exact method pays."""
    t = time.perf_counter()
    for _ in distance_blocks(a, b):
        pass
    return time.perf_counter() - t


def knn_seconds(x: torch.Tensor, k1: int = 20) -> float:
    """Time of the exact k-nearest-neighbour search alone (the symmetric N x N product) inside the Jaccard step."""
    t = time.perf_counter()
    nearest_neighbours(x, k1 + 1)
    return time.perf_counter() - t


def load_compiled() -> float:
    """Seconds to load our compiled kernels (and numba's thread pool) by running them on a tiny input."""
    t = time.perf_counter()
    x, pids, cams = synthetic(64, 8, 16, seed=0)
    evaluate_features(x[:16], x[16:], pids[:16], pids[16:], cams[:16], cams[16:])
    jaccard_distance(x, k1=5, k2=2)
    return time.perf_counter() - t


def run_case(step: str, impl: str, scale: str, tiny: bool) -> dict:
    """One measurement, in this process: inputs first, then the timed step."""
    dim = TINY_DIM if tiny else DIM
    out: dict = {"step": step, "impl": impl, "scale": scale}
    if impl == "ours" and step != "kmeans":
        out["load_seconds"] = load_compiled()
    part = None  # (name, timer, inputs): the share of the step that no exact method avoids
    if step in ("eval", "rerank"):
        qf, gf, qp, gp, qc, gc = split(scale, dim)
        factor = 1
        if impl == "reference" and scale == "msmt":
            factor = 10
            qf, qp, qc = qf[::factor], qp[::factor], qc[::factor]
        reset_peak()
        base = _current_mb()
        t = time.perf_counter()
        if step == "rerank":
            res = evaluate_reranked(qf, gf, qp, gp, qc, gc)
        elif impl == "ours":
            res = evaluate_features(qf, gf, qp, gp, qc, gc)
        else:
            res = reference_eval(qf.numpy(), gf.numpy(), qp, gp, qc, gc)
        out["seconds"] = (time.perf_counter() - t) * factor
        out["estimated"] = factor > 1
        out["result"] = f"mAP {res['mAP']:.6f} top1 {res['cmc'][1]:.6f} mINP {res['mINP']:.6f}"
        if step == "eval" and impl == "ours":
            part = ("fp32 distance product", product_seconds, (qf, gf))
    elif step == "jaccard":
        n, _, _, _, n_ids = SCALES[scale]
        x, _, _ = synthetic(n, n_ids, dim, seed=2)
        reset_peak()
        base = _current_mb()
        t = time.perf_counter()
        if impl == "ours":
            jac = jaccard_distance(x)
            out["seconds"] = time.perf_counter() - t
            out["jaccard_peak_mb"] = rss_mb()
            t = time.perf_counter()
            eps = dbscan_eps(jac)
            labels = dbscan(jac, eps)
            checksum = float((1.0 - jac.data.astype(np.float64)).sum())
            part = ("exact kNN", knn_seconds, (x,))
        else:
            dense = reference_jaccard(x)
            out["seconds"] = time.perf_counter() - t
            out["jaccard_peak_mb"] = rss_mb()
            t = time.perf_counter()
            from sklearn.cluster import DBSCAN

            eps = textbook_eps(dense)
            labels = DBSCAN(eps=eps, min_samples=4, metric="precomputed").fit_predict(dense)
            checksum = float((1.0 - dense.astype(np.float64)).sum())
        out["dbscan_seconds"] = time.perf_counter() - t
        n_clusters = int(labels.max()) + 1
        out["result"] = (f"sum(1-J) {checksum:.2f} eps {eps:.6f} clusters {n_clusters} "
                         f"outliers {int((labels == -1).sum())}")
    elif step == "kmeans":
        n, _, _, _, n_ids = SCALES[scale]
        x, _, _ = synthetic(n, n_ids, dim, seed=3)
        k = 50 if tiny else 500
        reset_peak()
        base = _current_mb()
        t = time.perf_counter()
        if impl == "ours":
            labels, centroids = kmeans(x, k, seed=0)
            centroids = centroids.numpy()
        else:
            from sklearn.cluster import KMeans

            km = KMeans(n_clusters=k, n_init=10, random_state=0).fit(x.numpy())
            labels, centroids = km.labels_, km.cluster_centers_
        out["seconds"] = time.perf_counter() - t
        inertia = float(((x.numpy().astype(np.float64) - centroids[labels]) ** 2).sum())
        out["result"] = f"inertia {inertia:.3f} (K={k})"
    else:
        raise ValueError(f"unknown step {step!r}")
    out["load_avg_1min"] = os.getloadavg()[0]  # other processes on the machine slow every timing
    out["peak_mb"] = rss_mb()
    out["step_mb"] = (out["peak_mb"] - base) * (10 if out.get("estimated") else 1)
    if part is not None:  # timed after the memory reading, which it must not change
        out["part"] = [part[0], part[1](*part[2])]
    return out


STEPS = ("eval", "rerank", "jaccard", "kmeans")


def plan(tiny: bool) -> list[tuple[str, str, str]]:
    if tiny:
        return [(s, i, "tiny") for s in ("eval", "jaccard", "kmeans") for i in ("ours", "reference")] + [
            ("rerank", "ours", "tiny")]
    return [
        ("eval", "ours", "market"), ("eval", "reference", "market"),
        ("eval", "ours", "msmt"), ("eval", "reference", "msmt"),
        ("rerank", "ours", "market"),
        ("jaccard", "ours", "market"), ("jaccard", "reference", "market"),
        ("jaccard", "ours", "msmt"),
        ("kmeans", "ours", "market"), ("kmeans", "reference", "market"),
    ]


def table(rows: list[dict]) -> str:
    lines = ["| step | scale | ours: s | ours: peak RSS MB (step) | reference: s | reference: peak RSS MB (step) | speed-up | ours: result | reference: result |",
             "|---|---|---|---|---|---|---|---|---|"]
    keyed = {(r["step"], r["scale"], r["impl"]): r for r in rows}
    for step, scale in dict.fromkeys((r["step"], r["scale"]) for r in rows):
        o, r = keyed.get((step, scale, "ours")), keyed.get((step, scale, "reference"))

        def cells(x):
            if x is None:
                return "skipped", "skipped", ""
            est = " (est.)" if x.get("estimated") else ""
            extra = f" (of which {x['part'][0]} {x['part'][1]:.2f})" if "part" in x else ""
            if "dbscan_seconds" in x:
                extra += f" + DBSCAN {x['dbscan_seconds']:.2f}"
            if "load_seconds" in x:
                extra += f" + load {x['load_seconds']:.2f}"
            mem = f"{x['peak_mb']:.0f} ({x['step_mb']:.0f}){est}"
            if "jaccard_peak_mb" in x:
                mem += f"; Jaccard step alone {x['jaccard_peak_mb']:.0f}"
            return f"{x['seconds']:.2f}{extra}{est}", mem, x["result"]

        os_, om, ores = cells(o)
        rs, rm, rres = cells(r)
        speed = f"{r['seconds'] / o['seconds']:.1f}x" if o and r else ""
        lines.append(f"| {step} | {scale} | {os_} | {om} | {rs} | {rm} | {speed} | {ores} | {rres} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="small sizes, for a smoke check")
    parser.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS), help="only these steps")
    parser.add_argument("--case", nargs=3, metavar=("STEP", "IMPL", "SCALE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(*args.case, tiny=args.tiny)))
        return
    rows = []
    print(f"torch threads: {torch.get_num_threads()}", flush=True)
    for case in (c for c in plan(args.tiny) if c[0] in args.steps):
        cmd = [sys.executable, __file__, "--case", *case] + (["--tiny"] if args.tiny else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{case} failed:\n{proc.stderr[-2000:]}", flush=True)
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(table(rows))


if __name__ == "__main__":
    main()

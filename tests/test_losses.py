"""Each loss against a straightforward re-computation with explicit loops over anchors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mmt_lib.method.losses import (hard_example_indices, label_smooth_cross_entropy, pairwise_distance,
                                    soft_cross_entropy, soft_softmax_triplet, softmax_triplet)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _dist(a: torch.Tensor, b: torch.Tensor) -> float:
    return math.sqrt(sum((float(x) - float(y)) ** 2 for x, y in zip(a, b)))


def _mine(features: torch.Tensor, labels: list[int]) -> list[tuple[int, int]]:
    """Hardest positive (self included) and hardest negative of every anchor, by brute force."""
    n = len(labels)
    out = []
    for i in range(n):
        pos = max((j for j in range(n) if labels[j] == labels[i]), key=lambda j: _dist(features[i], features[j]))
        neg = min((j for j in range(n) if labels[j] != labels[i]), key=lambda j: _dist(features[i], features[j]))
        out.append((pos, neg))
    return out


LABELS = [0, 0, 0, 1, 1, 2, 2, 2, 3, 3]


@pytest.fixture
def feats() -> torch.Tensor:
    return torch.randn(len(LABELS), 6, generator=_gen(0), dtype=torch.float64)


def test_label_smoothing_matches_manual_formula() -> None:
    logits = torch.randn(5, 4, generator=_gen(1), dtype=torch.float64)
    targets = torch.tensor([0, 3, 1, 1, 2])
    eps, k = 0.1, 4
    expected = 0.0
    for i in range(5):
        denom = sum(math.exp(float(v)) for v in logits[i])
        for c in range(k):
            q = (1 - eps) * (c == int(targets[i])) + eps / k
            expected -= q * math.log(math.exp(float(logits[i, c])) / denom)
    expected /= 5
    assert label_smooth_cross_entropy(logits, targets, eps=eps).item() == pytest.approx(expected, rel=1e-10)


def test_label_smoothing_zero_eps_is_plain_cross_entropy() -> None:
    logits = torch.randn(6, 7, generator=_gen(2))
    targets = torch.tensor([0, 6, 3, 2, 2, 5])
    assert torch.allclose(label_smooth_cross_entropy(logits, targets, eps=0.0), F.cross_entropy(logits, targets))


def test_label_smoothing_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="eps"):
        label_smooth_cross_entropy(torch.zeros(2, 3), torch.tensor([0, 1]), eps=1.0)
    with pytest.raises(ValueError, match="targets"):
        label_smooth_cross_entropy(torch.zeros(2, 3), torch.tensor([0, 1, 2]))


def test_soft_cross_entropy_matches_manual_and_spares_teacher() -> None:
    student = torch.randn(4, 5, generator=_gen(3), dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(4, 5, generator=_gen(4), dtype=torch.float64, requires_grad=True)
    expected = 0.0
    for i in range(4):
        zs = [math.exp(float(v)) for v in student[i].detach()]
        zt = [math.exp(float(v)) for v in teacher[i].detach()]
        expected -= sum(zt[k] / sum(zt) * math.log(zs[k] / sum(zs)) for k in range(5))
    expected /= 4
    loss = soft_cross_entropy(student, teacher)
    assert loss.item() == pytest.approx(expected, rel=1e-10)
    loss.backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_soft_cross_entropy_is_minimised_by_the_teacher_distribution() -> None:
    teacher = torch.randn(3, 4, generator=_gen(5))
    other = torch.randn(3, 4, generator=_gen(6))
    assert soft_cross_entropy(teacher + 2.0, teacher) < soft_cross_entropy(other, teacher)


def test_pairwise_distance_is_euclidean_not_squared(feats: torch.Tensor) -> None:
    d = pairwise_distance(feats)
    assert torch.allclose(d, torch.cdist(feats, feats), atol=1e-6)


def test_pairwise_distance_stays_float32_under_autocast() -> None:
    features = torch.randn(8, 64, generator=_gen(11)) + 5.0
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        d = pairwise_distance(features)
    assert d.dtype == torch.float32
    assert torch.allclose(d, pairwise_distance(features), atol=1e-5)


def test_mining_matches_brute_force(feats: torch.Tensor) -> None:
    pos, neg = hard_example_indices(pairwise_distance(feats), torch.tensor(LABELS))
    assert list(zip(pos.tolist(), neg.tolist())) == _mine(feats, LABELS)


def test_singleton_anchor_is_its_own_positive() -> None:
    features = torch.randn(5, 3, generator=_gen(7))
    labels = torch.tensor([0, 0, 1, 1, 2])
    pos, _ = hard_example_indices(pairwise_distance(features), labels)
    assert pos[4] == 4
    assert (pos[:4] != torch.arange(4)).all()


def test_mining_needs_two_labels() -> None:
    with pytest.raises(ValueError, match="two different labels"):
        softmax_triplet(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))


def test_softmax_triplet_matches_softplus_loop(feats: torch.Tensor) -> None:
    expected = 0.0
    for i, (p, n) in enumerate(_mine(feats, LABELS)):
        d_ap, d_an = _dist(feats[i], feats[p]), _dist(feats[i], feats[n])
        softplus = math.log1p(math.exp(d_ap - d_an))
        assert softplus == pytest.approx(-math.log(math.exp(d_an) / (math.exp(d_ap) + math.exp(d_an))))
        expected += softplus
    expected /= len(LABELS)
    assert softmax_triplet(feats, torch.tensor(LABELS)).item() == pytest.approx(expected, rel=1e-7)


def test_softmax_triplet_gradients_are_finite_with_duplicates() -> None:
    base = torch.randn(3, 4, generator=_gen(8))
    features = torch.cat([base, base]).requires_grad_(True)
    softmax_triplet(features, torch.tensor([0, 1, 2, 0, 1, 2])).backward()
    assert torch.isfinite(features.grad).all()


def _soft_triplet_loop(student: torch.Tensor, teacher: torch.Tensor, labels: list[int]) -> float:
    total = 0.0
    for i, (p, n) in enumerate(_mine(student, labels)):
        s = [_dist(student[i], student[p]), _dist(student[i], student[n])]
        t = [_dist(teacher[i], teacher[p]), _dist(teacher[i], teacher[n])]
        q = [math.exp(v) / sum(math.exp(u) for u in t) for v in t]
        log_p = [v - math.log(sum(math.exp(u) for u in s)) for v in s]
        total -= q[0] * log_p[0] + q[1] * log_p[1]
    return total / len(labels)


def test_soft_softmax_triplet_matches_loop_with_student_mining(feats: torch.Tensor) -> None:
    teacher = torch.randn(feats.shape, generator=_gen(9), dtype=torch.float64)
    assert _mine(teacher, LABELS) != _mine(feats, LABELS), "teacher must mine differently for this test to bite"
    loss = soft_softmax_triplet(feats, teacher, torch.tensor(LABELS))
    assert loss.item() == pytest.approx(_soft_triplet_loop(feats, teacher, LABELS), rel=1e-7)
    teacher_mined = _soft_triplet_loop(teacher, teacher, LABELS)
    assert loss.item() != pytest.approx(teacher_mined, rel=1e-3)


def test_soft_softmax_triplet_sends_no_gradient_to_teacher(feats: torch.Tensor) -> None:
    student = feats.clone().requires_grad_(True)
    teacher = torch.randn(feats.shape, generator=_gen(10), dtype=torch.float64, requires_grad=True)
    soft_softmax_triplet(student, teacher, torch.tensor(LABELS)).backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_soft_softmax_triplet_with_confident_teacher_approaches_hard_loss(feats: torch.Tensor) -> None:
    """A teacher certain of every triplet (q = [0, 1]) turns Eq. 8 into Eq. 6."""
    labels = torch.tensor(LABELS)
    teacher = torch.zeros_like(feats)
    for i, label in enumerate(LABELS):
        teacher[i, label] = 100.0
    assert soft_softmax_triplet(feats, teacher, labels).item() == pytest.approx(
        softmax_triplet(feats, labels).item(), rel=1e-6
    )

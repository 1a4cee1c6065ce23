"""The paper's losses, one function per equation; each returns the mean over the mini-batch.

Notation: ``z`` logits, ``f`` the pre-BatchNorm pooled features, ``y`` (pseudo) labels,
``d(a, b) = ||f_a - f_b||`` the Euclidean distance (not squared). In every "soft" loss the
teacher's tensors are detached: a mean teacher (or a peer) supplies targets, never receives
gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def label_smooth_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, eps: float = 0.1) -> torch.Tensor:
    """Cross-entropy against label-smoothed one-hot targets (hard classification loss).

    L_id = (1/N) sum_i sum_k -q_ik * log p_k(x_i),  q_ik = (1 - eps) * [k == y_i] + eps / K,
    with p = softmax(z) over the K classes.
    """
    _check_logits(logits, "logits")
    if targets.shape != logits.shape[:1]:
        raise ValueError(f"targets must have shape ({logits.shape[0]},), got {tuple(targets.shape)}")
    if not 0.0 <= eps < 1.0:
        raise ValueError(f"eps must be in [0, 1), got {eps}")
    log_probs = F.log_softmax(logits, dim=1)
    num_classes = logits.shape[1]
    q = torch.full_like(log_probs, eps / num_classes)
    q.scatter_(1, targets.long().unsqueeze(1), 1.0 - eps + eps / num_classes)
    return (-q * log_probs).sum(dim=1).mean()


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Soft classification loss: the student matches the teacher's class distribution.

    L_sid = (1/N) sum_i sum_k -softmax(z_teacher)_ik * log softmax(z_student)_ik,
    the teacher detached and no temperature.
    """
    _check_logits(student_logits, "student_logits")
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(
            f"teacher_logits shape {tuple(teacher_logits.shape)} != student_logits shape "
            f"{tuple(student_logits.shape)}"
        )
    q = F.softmax(teacher_logits.detach(), dim=1)
    return (-q * F.log_softmax(student_logits, dim=1)).sum(dim=1).mean()


def pairwise_distance(features: torch.Tensor) -> torch.Tensor:
    """Euclidean distances between all rows, sqrt(clamp(d^2, 1e-12)) so the diagonal has no NaN grad.

    Computed in at least float32 with autocast off: ||a||^2 + ||b||^2 - 2ab cancels badly in bf16,
    and the trainers call the losses inside their autocast region.
    """
    if features.dim() != 2:
        raise ValueError(f"features must be (N, D), got shape {tuple(features.shape)}")
    with torch.autocast(device_type=features.device.type, enabled=False):
        x = features.to(torch.promote_types(features.dtype, torch.float32))
        sq = x.pow(2).sum(dim=1, keepdim=True)
        d2 = sq + sq.t() - 2.0 * x @ x.t()
        return d2.clamp(min=1e-12).sqrt()


def hard_example_indices(dist: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch-hard mining: per anchor, the farthest same-label and the nearest other-label sample.

    The anchor itself counts as a positive (at distance ~0), so it is chosen only when it has no
    other positive in the batch. Every anchor needs at least one negative.
    """
    n = dist.shape[0]
    if dist.shape != (n, n) or targets.shape != (n,):
        raise ValueError(
            f"dist must be (N, N) and targets (N,), got {tuple(dist.shape)} and {tuple(targets.shape)}"
        )
    same = targets.unsqueeze(0) == targets.unsqueeze(1)
    if not bool((~same).any(dim=1).all()):
        raise ValueError("triplet mining needs at least two different labels in the batch")
    pos = dist.masked_fill(~same, float("-inf")).argmax(dim=1)
    neg = dist.masked_fill(same, float("inf")).argmin(dim=1)
    return pos, neg


def _triplet_logits(dist: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """(N, 2) matrix [d(i, p_i), d(i, n_i)], the two "logits" of the softmax-triplet."""
    return torch.stack((dist.gather(1, pos.unsqueeze(1)), dist.gather(1, neg.unsqueeze(1))), dim=1).squeeze(2)


def softmax_triplet(features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Hard softmax-triplet loss (Eq. 6), batch-hard mined, no margin.

    T_i = exp(d(i, n_i)) / (exp(d(i, p_i)) + exp(d(i, n_i))),
    L_tri = (1/N) sum_i BCE(T_i, 1) = (1/N) sum_i -log T_i = (1/N) sum_i softplus(d(i, p_i) - d(i, n_i)),
    with p_i the hardest positive and n_i the hardest negative of anchor i.
    """
    dist = pairwise_distance(features)
    pos, neg = hard_example_indices(dist, targets)
    return -F.log_softmax(_triplet_logits(dist, pos, neg), dim=1)[:, 1].mean()


def soft_softmax_triplet(
    student_features: torch.Tensor, teacher_features: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """Soft softmax-triplet loss (Eq. 8): the student's triplet matches the teacher's.

    L_stri = (1/N) sum_i BCE(T_i(student), T_i(teacher))
           = (1/N) sum_i sum_j -q_ij * log softmax([d(i, p_i), d(i, n_i)])_j,
    q_i = softmax([d'(i, p_i), d'(i, n_i)]) from the teacher's features (detached), where p_i and
    n_i are mined on the *student's* distances so that both sides compare the same triplet.
    """
    if teacher_features.shape != student_features.shape:
        raise ValueError(
            f"teacher_features shape {tuple(teacher_features.shape)} != student_features shape "
            f"{tuple(student_features.shape)}"
        )
    dist = pairwise_distance(student_features)
    pos, neg = hard_example_indices(dist, targets)
    with torch.no_grad():
        q = F.softmax(_triplet_logits(pairwise_distance(teacher_features.detach()), pos, neg), dim=1)
    return (-q * F.log_softmax(_triplet_logits(dist, pos, neg), dim=1)).sum(dim=1).mean()


def _check_logits(logits: torch.Tensor, name: str) -> None:
    if logits.dim() != 2 or logits.shape[1] < 1:
        raise ValueError(f"{name} must be (N, K) with K >= 1, got shape {tuple(logits.shape)}")

"""The mean teacher: a temporal average of a student's parameters.

E^(t)[theta] = alpha_t * E^(t-1)[theta] + (1 - alpha_t) * theta,  alpha_t = min(1 - 1/(t + 1), max_alpha).

The ramp 1 - 1/(t + 1) makes the average an arithmetic mean of the first iterates (alpha_0 = 0
copies the student) before settling at ``max_alpha``. Only parameters are averaged: as in the
reference code the mean nets run in train mode and keep their own BatchNorm running statistics.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def create_mean_teacher(student: nn.Module) -> nn.Module:
    """A deep copy of ``student`` whose parameters never receive gradients.

    SyncBatchNorm layers keep their student's process group: a group is a handle on live
    communicators, shared, never copied.
    """
    groups = {id(m.process_group): m.process_group for m in student.modules()
              if isinstance(m, nn.SyncBatchNorm) and m.process_group is not None}
    teacher = copy.deepcopy(student, memo=groups)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def ema_alpha(step: int, max_alpha: float = 0.999) -> float:
    """alpha_t = min(1 - 1/(t + 1), max_alpha) for global iteration ``step`` = t >= 0."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if not 0.0 <= max_alpha < 1.0:
        raise ValueError(f"max_alpha must be in [0, 1), got {max_alpha}")
    return min(1.0 - 1.0 / (step + 1), max_alpha)


@torch.no_grad()
def update_mean_teacher(teacher: nn.Module, student: nn.Module, step: int, max_alpha: float = 0.999) -> float:
    """theta_teacher <- alpha * theta_teacher + (1 - alpha) * theta_student; returns alpha.

    Parameters are paired by name and order; buffers (BatchNorm running statistics) are left alone.
    """
    alpha = ema_alpha(step, max_alpha)
    t_params = list(teacher.named_parameters())
    s_params = list(student.named_parameters())
    if [n for n, _ in t_params] != [n for n, _ in s_params]:
        raise ValueError(
            f"teacher and student have different parameters ({len(t_params)} vs {len(s_params)}); "
            "a mean teacher must be a copy of its student"
        )
    for (name, t), (_, s) in zip(t_params, s_params):
        if t.shape != s.shape:
            raise ValueError(
                f"parameter {name!r}: teacher shape {tuple(t.shape)} != student shape {tuple(s.shape)}"
            )
        t.mul_(alpha).add_(s.detach(), alpha=1.0 - alpha)
    return alpha

"""The mean-teacher update against its formula, step by step."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmt_lib.method.teachers import create_mean_teacher, ema_alpha, update_mean_teacher


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))


def _params(net: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in net.parameters()]


def test_create_mean_teacher_is_an_independent_frozen_copy() -> None:
    student = _net(0)
    teacher = create_mean_teacher(student)
    for s, t in zip(student.parameters(), teacher.parameters()):
        assert torch.equal(s, t) and s.data_ptr() != t.data_ptr()
        assert s.requires_grad and not t.requires_grad


@pytest.mark.parametrize(("step", "alpha"), [(0, 0.0), (1, 0.5), (3, 0.75), (999, 0.999), (50_000, 0.999)])
def test_alpha_schedule(step: int, alpha: float) -> None:
    assert ema_alpha(step) == pytest.approx(alpha)


def test_step_zero_copies_the_student() -> None:
    student, teacher = _net(0), _net(1)
    assert update_mean_teacher(teacher, student, step=0) == 0.0
    for s, t in zip(student.parameters(), teacher.parameters()):
        assert torch.equal(s, t)


def test_update_follows_the_formula_over_several_steps() -> None:
    student, teacher = _net(0), _net(1)
    gen = torch.Generator().manual_seed(2)
    for step in (1, 2, 7, 5000):
        with torch.no_grad():
            for p in student.parameters():
                p.add_(torch.randn(p.shape, generator=gen))
        before = _params(teacher)
        alpha = update_mean_teacher(teacher, student, step=step, max_alpha=0.999)
        assert alpha == pytest.approx(min(1 - 1 / (step + 1), 0.999))
        for b, s, t in zip(before, student.parameters(), teacher.parameters()):
            assert torch.allclose(t, alpha * b + (1 - alpha) * s.detach(), atol=1e-6)
            assert not torch.equal(t, b)


def test_buffers_stay_the_teachers_own() -> None:
    student, teacher = _net(0), _net(1)
    student[1].running_mean.fill_(3.0)
    student[1].num_batches_tracked.fill_(7)
    teacher_buffers = [b.clone() for b in teacher.buffers()]
    update_mean_teacher(teacher, student, step=0)
    for old, new in zip(teacher_buffers, teacher.buffers()):
        assert torch.equal(old, new)


def test_update_records_no_autograd_history() -> None:
    student = _net(0)
    teacher = create_mean_teacher(student)
    update_mean_teacher(teacher, student, step=5)
    assert all(p.grad_fn is None and not p.requires_grad for p in teacher.parameters())


def test_mismatched_networks_are_rejected() -> None:
    student = _net(0)
    wider = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8 * 6 * 6, 5))
    with pytest.raises(ValueError, match="shape"):
        update_mean_teacher(wider, student, step=1)
    with pytest.raises(ValueError, match="different parameters"):
        update_mean_teacher(nn.Linear(2, 2), student, step=1)


def test_bad_schedule_arguments() -> None:
    with pytest.raises(ValueError, match="step"):
        ema_alpha(-1)
    with pytest.raises(ValueError, match="max_alpha"):
        ema_alpha(3, max_alpha=1.0)


def test_mean_teacher_shares_the_students_syncbn_process_group(tmp_path):
    """A BatchNorm group over some of the ranks is a live handle: copied, it would raise."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        group = dist.new_group([0])
        student = nn.Sequential(nn.Conv2d(3, 4, 1), nn.SyncBatchNorm(4, process_group=group))
        teacher = create_mean_teacher(student)
        assert teacher[1].process_group is group
        assert teacher[1].weight is not student[1].weight
        assert not any(p.requires_grad for p in teacher.parameters())
    finally:
        dist.destroy_process_group()

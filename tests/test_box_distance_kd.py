"""Box KD without shared DFL bins (YOLO26 reg_max=1 students/teachers, or different reg_max): decoded distances."""

import pytest
import torch

from detkd.losses.localization import decode_boxes, distance_kd_loss, expected_distances


def _anchors(a: int) -> torch.Tensor:
    return torch.stack([torch.arange(a, dtype=torch.float32) + 0.5, torch.full((a,), 3.5)], -1)  # (A, 2) grid units


def test_expected_distances_of_a_dfl_head_and_a_direct_head():
    logits = torch.full((1, 1, 4 * 4), -1e4)
    logits.view(1, 1, 4, 4)[..., 2] = 0.0  # all the mass on bin 2
    assert torch.allclose(expected_distances(logits, 4), torch.full((1, 1, 4), 2.0))
    direct = torch.tensor([[[1.0, 2.0, 3.0, 4.0]]])
    assert torch.equal(expected_distances(direct, 1), direct)  # reg_max = 1: the head predicts distances


def test_zero_when_a_direct_student_matches_a_dfl_teacher():
    torch.manual_seed(0)
    b, a, r = 2, 6, 16
    teacher = torch.randn(b, a, 4 * r)
    student = expected_distances(teacher, r).clone()  # a YOLO26 head predicting exactly the teacher's distances
    w = torch.rand(b, a)
    loss = distance_kd_loss(student, teacher, w, _anchors(a), student_reg_max=1, teacher_reg_max=r)
    assert loss.item() == pytest.approx(0.0, abs=1e-5)


def test_hand_computed_l1_and_iou():
    """One anchor at (0.5, 3.5): teacher ltrb (1,1,1,1) = a 2×2 box; student (1,1,3,1) = 4×2 box around it.
    L1 = mean(|0|,|0|,|2|,|0|) = 0.5; IoU = 4/8 = 0.5, so 1 − IoU = 0.5; loss = 1.0."""
    t = torch.tensor([[[1.0, 1.0, 1.0, 1.0]]])
    s = torch.tensor([[[1.0, 1.0, 3.0, 1.0]]])
    loss = distance_kd_loss(s, t, torch.ones(1, 1), _anchors(1), 1, 1)
    assert loss.item() == pytest.approx(1.0, abs=1e-4)


def test_gradients_reach_only_the_student_and_weights_select_anchors():
    torch.manual_seed(1)
    s = torch.rand(1, 3, 4 * 16, requires_grad=True)
    t = (torch.rand(1, 3, 4) * 3 + 0.5).requires_grad_(True)  # a YOLO26 teacher that could take a gradient
    w = torch.tensor([[1.0, 0.0, 0.0]], requires_grad=True)  # and weights that could
    distance_kd_loss(s, t, w, _anchors(3), student_reg_max=16, teacher_reg_max=1).backward()
    assert s.grad[0, 0].abs().sum() > 0 and s.grad[0, 1:].abs().sum() == 0  # zero-weight anchors get nothing
    assert t.grad is None and w.grad is None


def test_decode_boxes_matches_ultralytics_bbox_decode():
    from types import SimpleNamespace

    from ultralytics.utils.loss import v8DetectionLoss

    torch.manual_seed(2)
    dist = torch.randn(2, 5, 4 * 16)
    anchors = _anchors(5)
    ours = decode_boxes(dist, anchors, 16)
    fake = SimpleNamespace(use_dfl=True, proj=torch.arange(16, dtype=torch.float32))
    theirs = v8DetectionLoss.bbox_decode(fake, anchors, dist)
    assert torch.allclose(ours, theirs, atol=1e-5)

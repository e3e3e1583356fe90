"""DistillationLoss on real YOLOv8 heads: zero when student == teacher, gradients to student and adapters only."""

from __future__ import annotations

from copy import deepcopy

import pytest
import torch

from detkd.config import KDConfig
from detkd.engine.criterion import KD_LOSS_NAMES, DistillationLoss
from detkd.engine.guard import ALIGN_ITEMS
from detkd.models.adapters import FeatureAdapters
from detkd.models.teacher import FrozenTeacher, feature_channels


def _student(nc=2):
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils import DEFAULT_CFG

    torch.manual_seed(0)
    m = DetectionModel("yolov8n.yaml", nc=nc, verbose=False)
    m.args = DEFAULT_CFG  # loss gains (box, cls, dfl)
    return m


def _batch(img):
    return {
        "img": img,
        "cls": torch.tensor([[0.0], [1.0], [0.0]]),
        "bboxes": torch.tensor([[0.5, 0.5, 0.4, 0.4], [0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.5]]),
        "batch_idx": torch.tensor([0.0, 1.0, 1.0]),
    }


def _criterion(student, teacher_model, **kd):
    teacher = FrozenTeacher(teacher_model, torch.device("cpu"))
    ch = feature_channels(student)
    adapters = FeatureAdapters(ch, teacher.channels, with_generators=kd.get("feat_method") == "mgd")
    if ch == teacher.channels and kd.get("feat_method") != "mgd":
        adapters.set_identity_()
    return DistillationLoss(student.init_criterion(), teacher, adapters, KDConfig(teacher="t.yaml", **kd)), adapters


@pytest.mark.parametrize("feat_method, cls_mode", [("cwd", "bce"), ("mse", "kl")])
def test_kd_terms_are_zero_when_student_equals_teacher(feat_method, cls_mode):
    student = _student()
    crit, _ = _criterion(student, deepcopy(student), feat_method=feat_method, cls_mode=cls_mode, box_iou=1.0)
    student.eval()  # same BN statistics as the (eval-mode) teacher → identical outputs
    img = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        loss, items = crit(student(img), _batch(img))
    names = list(items)
    assert names[3:6] == list(KD_LOSS_NAMES) and names[6:] == list(ALIGN_ITEMS)
    for k in KD_LOSS_NAMES:
        assert items[k].item() == pytest.approx(0.0, abs=1e-6), k
    assert loss.shape == (6,) and loss[:3].sum() > 0  # the detection loss itself is untouched


def test_gradients_reach_student_and_adapters_never_teacher():
    student = _student()
    from ultralytics.nn.tasks import DetectionModel

    teacher_model = DetectionModel("yolov8s.yaml", nc=2, verbose=False)
    crit, adapters = _criterion(student, teacher_model, feat_method="cwd")
    before = {k: v.clone() for k, v in crit.teacher.model.state_dict().items()}
    student.train()
    img = torch.rand(2, 3, 64, 64)
    loss, items = crit(student(img), _batch(img))
    assert all(items[k] > 0 for k in KD_LOSS_NAMES)
    loss.sum().backward()
    assert all(p.grad is not None for p in adapters.parameters())
    head = student.model[-1]
    assert head.cv3[0][-1].weight.grad.abs().sum() > 0 and head.cv2[0][-1].weight.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in crit.teacher.model.parameters())
    after = crit.teacher.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_disabled_terms_are_exact_zero_and_skip_the_teacher():
    student = _student()
    crit, _ = _criterion(student, deepcopy(student), cls_kd=0.0, box_kd=0.0, feat_kd=0.0)
    calls = []
    crit.teacher = lambda img: calls.append(1)
    img = torch.rand(1, 3, 64, 64)
    batch = _batch(img)
    batch = {**batch, "cls": batch["cls"][:1], "bboxes": batch["bboxes"][:1], "batch_idx": batch["batch_idx"][:1]}
    _, items = crit(student(img), batch)
    assert not calls and all(items[k].item() == 0.0 for k in KD_LOSS_NAMES)


def test_schedule_scales_terms():
    student = _student()
    from ultralytics.nn.tasks import DetectionModel

    crit, _ = _criterion(student, DetectionModel("yolov8s.yaml", nc=2, verbose=False), schedule="linear")
    student.eval()
    img = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        preds = student(img)
        crit.progress = 0.0
        _, full = crit(preds, _batch(img))
        crit.progress = 0.75
        _, late = crit(preds, _batch(img))
    for k in ("cls_kd", "box_kd", "feat_kd"):
        assert late[k].item() == pytest.approx(0.25 * full[k].item(), rel=1e-5)


def test_criterion_is_never_copied_or_pickled():
    student = _student()
    crit, _ = _criterion(student, deepcopy(student))
    student.criterion = crit
    assert deepcopy(student).criterion is None  # EMA / NaN-recovery copies build their own plain criterion
    import pickle

    with pytest.raises(TypeError, match="never serialized"):
        pickle.dumps(crit)

"""Issue 24 hardening of the KD machinery: the ensemble's confidence under ``kl`` (4), the logged detection loss with
unlabelled-only batches (8), the loss balancer under DDP and resume (21), the verified weights' memory (19)."""

from __future__ import annotations

import pytest
import torch

from detkd.config import KDConfig
from detkd.engine.criterion import DistillationLoss
from detkd.models.ensemble import TeacherEnsemble
from detkd.models.teacher import FrozenTeacher
from test_criterion import _batch, _student

BACKGROUND_LOGIT = -8.5  # σ(-8.5) ≈ 0.0002: a teacher that sees nothing anywhere


# --------------------------------------------------------------------- 4: the ensemble's confidence under kl
def _background_teacher(seed: int) -> FrozenTeacher:
    """A YOLOv8-n teacher whose class logits are BACKGROUND_LOGIT at every anchor (zero last class conv + bias)."""
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(seed)
    net = DetectionModel("yolov8n.yaml", nc=2, verbose=False)
    with torch.no_grad():
        for branch in net.model[-1].cv3:
            branch[-1].weight.zero_()
            branch[-1].bias.fill_(BACKGROUND_LOGIT)
    return FrozenTeacher(net, torch.device("cpu"))


def _background_criterion(tmp_path, cls_mode: str, **kd) -> DistillationLoss:
    ensemble = TeacherEnsemble([_background_teacher(0), _background_teacher(1)], cls_mode=cls_mode)
    config = KDConfig(teacher=["a.yaml", "b.yaml"], cls_mode=cls_mode, feat_kd=0.0, unlabeled=str(tmp_path), **kd)
    return DistillationLoss(_student().init_criterion(), ensemble, None, config)


@pytest.mark.parametrize("cls_mode", ["bce", "kl"])
def test_background_teachers_give_no_confidence_in_either_cls_mode(tmp_path, cls_mode):
    """Two teachers that see nothing: every anchor weight that reads the teacher's confidence stays ≈ σ(-8.5), under
    kl as under bce (kl's log of the mean softmax is ≥ log(1/C) and gave σ(log p̄) ≥ 1/(C+1) = 0.33)."""
    from ultralytics.utils.tal import make_anchors

    img = torch.rand(2, 3, 64, 64)
    batch = _batch(img)
    crit = _background_criterion(tmp_path, cls_mode)
    out = crit.teacher(img)
    a = out.scores.shape[1]
    points, strides = make_anchors([f for f in out.feats], crit.dense.stride, 0.5)
    for weighting in ("teacher", "union", "verified"):
        crit.kd.anchor_weighting = weighting
        w = crit.anchor_weights(out, batch, torch.zeros(2, a, dtype=torch.bool), points, strides)
        assert w.mean().item() < 1e-3, (weighting, w.mean().item())
    from detkd.engine.unlabeled import teacher_confidence_weights
    from detkd.losses.weighting import confidence_logits

    unl = teacher_confidence_weights(torch.ones(2, a), confidence_logits(out), torch.tensor([True, False]))
    assert unl[1].mean().item() == pytest.approx(torch.sigmoid(torch.tensor(BACKGROUND_LOGIT)).item(), rel=1e-3)


@pytest.mark.parametrize("cls_mode", ["bce", "kl"])
def test_background_teachers_pseudo_label_nothing(tmp_path, cls_mode):
    """A background image with the default pseudo-label threshold: no pseudo-label, so no box loss (kl gave 300)."""
    crit = _background_criterion(tmp_path, cls_mode, cls_kd=0.0, box_kd=0.0)
    student = _student()
    student.eval()
    img = torch.rand(1, 3, 64, 64)
    empty = {"img": img, "cls": torch.zeros(0, 1), "bboxes": torch.zeros(0, 4), "batch_idx": torch.zeros(0),
             "labeled": torch.tensor([False])}
    with torch.no_grad():
        loss, _ = crit(student(img), empty)
    assert loss[0].item() == 0.0 and loss[2].item() == 0.0  # box and DFL: no target was made


def test_kl_ensemble_keeps_log_mean_softmax_for_the_kl_target():
    """The softmax KL target is unchanged (log p̄); the confidence is the members' mean sigmoid."""
    torch.manual_seed(0)
    ensemble = TeacherEnsemble([_background_teacher(0), _background_teacher(1)], cls_mode="kl", weights=[1, 3])
    out = ensemble(torch.rand(1, 3, 64, 64))
    members = [m(torch.rand(1, 3, 64, 64)).scores for m in ensemble.members]
    assert torch.allclose(out.scores.exp().sum(-1), torch.ones(1, out.scores.shape[1]), atol=1e-5)
    expect = 0.25 * members[0].sigmoid() + 0.75 * members[1].sigmoid()
    assert torch.allclose(out.conf_logits.sigmoid(), expect, atol=1e-6)


# ---------------------------------------------------------- 8: the logged detection loss, unlabelled-only batches
def test_labeled_batch_mean_skips_unlabelled_only_batches():
    """The detection items' epoch mean counts the batches that had labelled images only; other items keep
    Ultralytics' mean over every batch."""
    from detkd.engine.unlabeled import LabeledBatchMean

    mean = LabeledBatchMean(("box_loss",))
    tloss = None
    for i, (box, kd, labeled) in enumerate([(6.0, 1.0, True), (0.0, 3.0, False), (4.0, 2.0, True)]):
        items = {"box_loss": torch.tensor(box), "cls_kd": torch.tensor(kd)}
        tloss = items if tloss is None else {k: (tloss[k] * i + v) / (i + 1) for k, v in items.items()}  # Ultralytics
        tloss = mean.update(items, labeled, tloss)
    assert float(tloss["box_loss"]) == pytest.approx(5.0) and float(tloss["cls_kd"]) == pytest.approx(2.0)
    mean.reset()
    assert float(mean.update({"box_loss": torch.tensor(0.0)}, False, {"box_loss": torch.tensor(0.0)})["box_loss"]) == 0


@pytest.mark.slow
def test_logged_detection_loss_is_not_diluted_by_unlabelled_only_batches(tmp_path, shapes_yaml, teacher_pt):
    """--unlabeled-ratio 0.75, --pseudo-conf off, batch 4: some batches hold unlabelled images only (detection loss 0).
    results.csv's train/box_loss etc. are the mean over the batches with labelled images, not over every batch."""
    import csv

    from conftest import TINY_TRAIN
    from detkd.engine.trainer import DistillationTrainer
    from test_unlabeled import _write_images

    _write_images(tmp_path / "frames", 6, size=(96, 96))
    kd = KDConfig(teacher=teacher_pt, validate_teacher=False, unlabeled=str(tmp_path / "frames"), unlabeled_ratio=0.75,
                  pseudo_conf="off", feat_kd=0.0)
    trainer = DistillationTrainer(overrides=dict(model="yolov8n.yaml", data=shapes_yaml, project=str(tmp_path),
                                                 name="dil", **{**TINY_TRAIN, "epochs": 1, "batch": 4}), kd=kd)
    seen = []  # (this batch's loss items, whether it had labelled images: its detection cls loss is then > 0)
    trainer.add_callback("on_train_batch_end", lambda t: seen.append(
        ({k: float(v) for k, v in t.loss_items.items()}, float(t.loss_items["cls_loss"]) > 0)))
    trainer.train()
    labeled = [items for items, flag in seen if flag]
    assert 0 < len(labeled) < len(seen), "the run must mix labelled and unlabelled-only batches"
    with open(trainer.csv) as f:
        row = {k.strip(): float(v) for k, v in next(csv.DictReader(f)).items()}
    for name in ("box_loss", "cls_loss", "dfl_loss"):
        expect = sum(items[name] for items in labeled) / len(labeled)
        assert row[f"train/{name}"] == pytest.approx(expect, abs=2e-5), name
    expect_kd = sum(items["cls_kd"] for items, _ in seen) / len(seen)  # KD covers every batch: mean over all
    assert row["train/cls_kd"] == pytest.approx(expect_kd, abs=2e-5)

"""The recipe's building blocks: verified anchor weighting (hand-computed values and invariances)."""

import json
import math

import pytest
import torch

from detkd.losses.weighting import verified_weights


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _case():
    """One image, 3 anchors, 2 classes; GT: one box of class 0 at (0,0,10,10) plus one padding slot."""
    gt_boxes = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 0.0, 0.0]]])
    gt_labels = torch.tensor([[[0.0], [0.0]]])
    gt_mask = gt_boxes.sum(2, keepdim=True) > 0
    boxes = torch.tensor([[[0.0, 0.0, 10.0, 10.0],     # exact box
                           [0.0, 0.0, 10.0, 5.0],      # half the box: IoU 0.5
                           [20.0, 20.0, 30.0, 30.0]]])  # elsewhere: IoU 0
    return boxes, gt_labels, gt_boxes, gt_mask


def test_verified_weights_hand_computed():
    boxes, gt_labels, gt_boxes, gt_mask = _case()
    logits = torch.tensor([[[_logit(0.9), _logit(0.1)],   # right class, right box
                            [_logit(0.5), _logit(0.99)],  # labelled class at 0.5, half box
                            [_logit(0.99), _logit(0.99)]]])  # confident where nothing is labelled
    w = verified_weights(logits, boxes, gt_labels, gt_boxes, gt_mask)
    assert w.shape == (1, 3)
    assert w[0, 0].item() == pytest.approx(0.9, abs=1e-5)
    assert w[0, 1].item() == pytest.approx(0.5 * 0.5, abs=1e-5)  # the wrong class' 0.99 does not count
    assert w[0, 2].item() == pytest.approx(0.0, abs=1e-6)  # a teacher false positive gets no weight


def test_verified_weights_padding_and_empty_images():
    boxes, gt_labels, gt_boxes, gt_mask = _case()
    logits = torch.full((1, 3, 2), 10.0)
    # the padding slot (0,0,0,0) of class 0 would give IoU 0 anyway; make it overlap to prove the mask is used
    gt_boxes_pad = gt_boxes.clone()
    gt_boxes_pad[0, 1] = torch.tensor([20.0, 20.0, 30.0, 30.0])
    w = verified_weights(logits, boxes, gt_labels, gt_boxes_pad, gt_mask)
    assert w[0, 2].item() == pytest.approx(0.0, abs=1e-6)
    empty = verified_weights(logits, boxes, gt_labels[:, :0], gt_boxes[:, :0], gt_mask[:, :0])
    assert torch.equal(empty, torch.zeros(1, 3))


def test_verified_weights_invariant_to_box_units():
    """Scaling boxes and ground truth together (grid units vs pixels) leaves the weights unchanged."""
    boxes, gt_labels, gt_boxes, gt_mask = _case()
    logits = torch.randn(1, 3, 2)
    w1 = verified_weights(logits, boxes, gt_labels, gt_boxes, gt_mask)
    w8 = verified_weights(logits, boxes * 8, gt_labels, gt_boxes * 8, gt_mask)
    assert torch.allclose(w1, w8, atol=1e-6)


# ------------------------------------------------------------------------------------------------ balancing
from detkd.losses.balance import LossBalancer  # noqa: E402


def test_balancer_matches_detection_loss_magnitude():
    """First batch: a balanced term equals the detection loss (EMA starts at the first value), gradient keeps its
    direction: d(L')/dθ = D/L · dL/dθ."""
    bal = LossBalancer()
    theta = torch.tensor(2.0, requires_grad=True)
    raw = 3.0 * theta**2  # 12
    bal.observe_detection(torch.tensor(6.0))
    out = bal("cls_kd", raw)
    assert out.item() == pytest.approx(6.0)
    out.backward()
    assert theta.grad.item() == pytest.approx(6.0 / 12.0 * 12.0)  # D/L · dL/dθ = 0.5 · 6θ


def test_balancer_invariances_and_running_average():
    """Scaling the detection loss by s scales the balanced term by s; scaling the raw term changes nothing."""
    def run(det_scale, kd_scale):
        bal, outs = LossBalancer(momentum=0.5), []
        for det, kd in [(4.0, 1.0), (2.0, 3.0), (5.0, 2.0)]:
            bal.observe_detection(torch.tensor(det * det_scale))
            outs.append(bal("box_kd", torch.tensor(kd * kd_scale)).item())
        return outs

    base = run(1.0, 1.0)
    assert run(10.0, 1.0) == pytest.approx([10 * v for v in base])
    assert run(1.0, 7.0) == pytest.approx(base)
    # by hand, momentum 0.5: D̄ = 4, 3, 4;  K̄ = 1, 2, 2;  L' = L·D̄/K̄ = 4, 4.5, 4
    assert base == pytest.approx([4.0, 4.5, 4.0])


def test_balancer_needs_the_detection_loss_first():
    with pytest.raises(RuntimeError, match="observe_detection"):
        LossBalancer()("cls_kd", torch.tensor(1.0))


# ------------------------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_distill_with_verified_weighting_and_balance(tmp_path, shapes_yaml, teacher_pt):
    """verified anchors + balance + a decaying schedule train end to end; the logged KD terms are shares of the
    detection loss (balance: each ≈ its weight × the running detection loss)."""
    import csv

    from conftest import TINY_TRAIN
    from detkd.config import KDConfig
    from detkd.engine.trainer import DistillationTrainer

    kd = KDConfig(teacher=teacher_pt, anchor_weighting="verified", balance="detection", schedule="cosine",
                  cls_kd=0.5, box_kd=0.5, feat_kd=0.0, validate_teacher=False)
    trainer = DistillationTrainer(overrides=dict(model="yolov8n.yaml", data=shapes_yaml, project=str(tmp_path),
                                                 name="verified", **TINY_TRAIN), kd=kd)
    seen = {}

    def grab(t):
        from ultralytics.utils.torch_utils import unwrap_model

        bal = unwrap_model(t.model).criterion.balancer
        seen.update({k: float(v) for k, v in bal.running.items()})

    trainer.add_callback("on_train_epoch_end", grab)
    trainer.train()
    assert set(seen) == {"detection", "cls_kd", "box_kd"} and all(v > 0 for v in seen.values())
    guard = json.loads((trainer.save_dir / "kd_guard.json").read_text())  # the KD guard ran every epoch
    assert len(guard["history"]["kd_align_cls"]) == 2
    with open(trainer.csv) as f:
        rows = [{k.strip(): float(v) for k, v in r.items()} for r in csv.DictReader(f)]
    first = rows[0]
    det = first["train/box_loss"] + first["train/cls_loss"] + first["train/dfl_loss"]
    for col in ("train/cls_kd", "train/box_kd"):
        assert 0 < first[col] < 5 * 0.5 * det, col  # same order as half the detection loss, never runaway
    assert first["train/feat_kd"] == 0.0
    for col in ("train/kd_align_cls", "train/kd_align_box"):  # diagnostics: cosines, logged, not in the loss
        assert -1.0 <= first[col] <= 1.0 and first[col] != 0.0, col


# ------------------------------------------------------------------------------------------------ guard
from detkd.engine.guard import KDGuard, gradient_alignment  # noqa: E402


def test_gradient_alignment_hand_computed():
    """Linear losses: the gradients are the coefficient vectors, so the cosines are known exactly."""
    scores = torch.randn(2, 3, 5, requires_grad=True)
    boxes = torch.randn(2, 8, 5, requires_grad=True)
    a, b = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    c = torch.randn(2, 8, 5)
    det = torch.stack([(boxes * c).sum(), (scores * a).sum(), (boxes * c).sum() * 0.5])  # box, cls, dfl
    kd = {"cls_kd": (scores * b).sum(), "box_kd": -(boxes * c).sum(), "feat_kd": torch.zeros(())}
    out = gradient_alignment(det, kd, scores, boxes)
    expected = (a.flatten() @ b.flatten()) / (a.norm() * b.norm())
    assert out["kd_align_cls"].item() == pytest.approx(expected.item(), abs=1e-5)
    assert out["kd_align_box"].item() == pytest.approx(-1.0, abs=1e-5)  # KD exactly against the labels
    assert scores.grad is None and boxes.grad is None  # a probe: nothing accumulates into .grad
    kd_off = {"cls_kd": torch.zeros(()), "box_kd": torch.zeros(()), "feat_kd": torch.zeros(())}
    off = gradient_alignment(det, kd_off, scores, boxes)
    assert off["kd_align_cls"].item() == 0.0 and off["kd_align_box"].item() == 0.0  # a disabled term: 0


def test_guard_warns_once_after_patience_and_only_for_active_terms(tmp_path):
    guard = KDGuard(threshold=0.0, patience=3)
    seq = [0.3, -0.1, -0.2, 0.1, -0.1, -0.2, -0.3, -0.4]
    warnings = []
    for epoch, v in enumerate(seq, 1):
        msgs = guard.update(epoch, {"kd_align_cls": torch.tensor(v), "kd_align_box": torch.tensor(v)},
                            {"cls": True, "box": False})
        warnings += [(epoch, m) for m in msgs]
    assert [e for e, _ in warnings] == [7]  # 3 negative epochs in a row first at epoch 7; box is off: silent
    assert "cls KD term" in warnings[0][1] and "-0.20, -0.30" in warnings[0][1]
    saved = json.loads(guard.save(tmp_path).read_text())
    assert saved["warned"] == {"kd_align_cls": 7} and len(saved["history"]["kd_align_box"]) == len(seq)

"""Several teachers as one ensemble teacher: combination math on tiny tensors and real (tiny) YOLO heads."""

from __future__ import annotations

import math

import pytest
import torch

from detkd.losses.localization import expected_distances
from detkd.losses.logit import binary_kl_with_logits, softmax_kl_with_logits
from detkd.models.ensemble import TeacherEnsemble, combine_boxes, combine_scores, normalise_weights
from detkd.models.teacher import FrozenTeacher


def _teacher(cfg: str, seed: int, nc: int = 3) -> FrozenTeacher:
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(seed)
    return FrozenTeacher(DetectionModel(cfg, nc=nc, verbose=False), torch.device("cpu"))


def test_weights_are_normalised_and_checked():
    assert normalise_weights(None, 2) == [0.5, 0.5]
    assert normalise_weights([3, 1], 2) == [0.75, 0.25]
    for bad in ([1.0], [-1, 2], [0, 0]):
        with pytest.raises(ValueError):
            normalise_weights(bad, 2)


def test_scores_are_the_mean_probability_by_hand():
    t1, t2 = torch.tensor([[[0.0]]]), torch.tensor([[[math.log(9.0)]]])  # σ = 0.5 and 0.9
    assert combine_scores([t1, t2], [0.5, 0.5], "bce").sigmoid().item() == pytest.approx(0.7)
    assert combine_scores([t1, t2], [0.75, 0.25], "bce").sigmoid().item() == pytest.approx(0.6)
    a, b = torch.tensor([[[0.0, 0.0]]]), torch.tensor([[[math.log(3.0), 0.0]]])  # softmax (.5,.5) and (.75,.25)
    assert combine_scores([a, b], [0.5, 0.5], "kl").softmax(-1).flatten().tolist() == pytest.approx([0.625, 0.375])


@pytest.mark.parametrize("mode", ["bce", "kl"])
def test_target_mean_has_the_gradient_of_the_summed_losses(mode):
    """Σ_k w_k KL(p_k ‖ q) and KL(p̄ ‖ q) differ by a constant: identical gradients for the student (T = 1)."""
    torch.manual_seed(0)
    kl = binary_kl_with_logits if mode == "bce" else softmax_kl_with_logits
    teachers, w = [torch.randn(2, 5, 4) * 3, torch.randn(2, 5, 4) * 3], [0.3, 0.7]
    s1 = torch.randn(2, 5, 4, requires_grad=True)
    s2 = s1.detach().clone().requires_grad_(True)
    sum(wk * kl(s1, t).sum() for wk, t in zip(w, teachers)).backward()
    kl(s2, combine_scores(teachers, w, mode)).sum().backward()
    torch.testing.assert_close(s1.grad, s2.grad, atol=1e-4, rtol=1e-4)


def test_dfl_bins_mix_per_side_and_mixed_heads_average_distances():
    torch.manual_seed(0)
    z1, z2 = torch.randn(1, 3, 4 * 16), torch.randn(1, 3, 4 * 16)
    mixed, r = combine_boxes([z1, z2], [16, 16], [0.5, 0.5])
    expect = 0.5 * z1.view(1, 3, 4, 16).softmax(-1) + 0.5 * z2.view(1, 3, 4, 16).softmax(-1)
    assert r == 16 and torch.allclose(mixed.view(1, 3, 4, 16).softmax(-1), expect, atol=1e-6)
    d26 = torch.rand(1, 3, 4) * 5  # a reg_max = 1 head predicts distances
    dist, r = combine_boxes([z1, d26], [16, 1], [0.25, 0.75])
    assert r == 1 and torch.allclose(dist, 0.25 * expected_distances(z1, 16) + 0.75 * d26)


@pytest.mark.parametrize("mode", ["bce", "kl"])
def test_the_ensemble_applies_its_weights_in_member_order(mode):
    """Two different teachers weighted 1 : 3 on one image: scores, confidence and DFL bins are the weighted means
    written out here (identical teachers, as in the tests below, cannot show whether the weights are applied)."""
    a, b = _teacher("yolov8n.yaml", 0), _teacher("yolov8n.yaml", 1)
    with torch.no_grad():  # random init gives every teacher about the same scores and bins: make b's differ
        for cls_branch, box_branch in zip(b.model.model[-1].cv3, b.model.model[-1].cv2):
            cls_branch[-1].bias.copy_(torch.tensor([1.0, -2.0, 0.5]))
            box_branch[-1].bias.copy_(torch.randn_like(box_branch[-1].bias))
    img = torch.rand(1, 3, 64, 64)
    oa, ob, out = a(img), b(img), TeacherEnsemble([a, b], weights=[1, 3], cls_mode=mode)(img)
    mean_sigmoid = 0.25 * oa.scores.sigmoid() + 0.75 * ob.scores.sigmoid()
    torch.testing.assert_close(out.conf_logits.sigmoid(), mean_sigmoid, atol=1e-5, rtol=1e-4)
    if mode == "kl":
        torch.testing.assert_close(out.scores.exp(), 0.25 * oa.scores.softmax(-1) + 0.75 * ob.scores.softmax(-1),
                                   atol=1e-5, rtol=1e-4)
    else:
        torch.testing.assert_close(out.scores.sigmoid(), mean_sigmoid, atol=1e-5, rtol=1e-4)
    r, n = a.reg_max, oa.boxes.shape[1]
    bins = 0.25 * oa.boxes.view(1, n, 4, r).softmax(-1) + 0.75 * ob.boxes.view(1, n, 4, r).softmax(-1)
    torch.testing.assert_close(out.boxes.view(1, n, 4, r).softmax(-1), bins, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(oa.scores, ob.scores, atol=0.1) and not torch.allclose(oa.boxes, ob.boxes, atol=0.1)


def test_two_identical_teachers_are_one_teacher():
    one = _teacher("yolov8n.yaml", 0)
    pair = TeacherEnsemble([one, _teacher("yolov8n.yaml", 0)], cls_mode="bce")
    img = torch.rand(2, 3, 64, 64)
    single, both = one(img), pair(img)
    torch.testing.assert_close(both.scores, single.scores, atol=1e-4, rtol=1e-4)
    r = one.reg_max
    torch.testing.assert_close(both.boxes.view(2, -1, 4, r).softmax(-1), single.boxes.view(2, -1, 4, r).softmax(-1))
    for f1, f2 in zip(single.feats, both.feats):  # features: each teacher's channels, side by side
        assert f2.shape[1] == 2 * f1.shape[1] and torch.equal(f2[:, : f1.shape[1]], f1)
    assert pair.channels == [2 * c for c in one.channels] and pair.reg_max == r == 16 and pair.nc == 3


def test_a_yolov8_and_a_yolo26_teacher_give_decoded_distances():
    v8, y26 = _teacher("yolov8n.yaml", 0), _teacher("yolo26n.yaml", 1)
    pair = TeacherEnsemble([v8, y26], weights=[1, 3])
    out = pair(torch.rand(1, 3, 64, 64))
    assert pair.reg_max == 1 and out.boxes.shape[-1] == 4 and pair.weights == [0.25, 0.75]
    assert out.scores.shape == v8(torch.rand(1, 3, 64, 64)).scores.shape


# ------------------------------------------------------------------ ensemble_rule='losses' in the criterion
def _loss_setup(teacher_cfgs, rule, weights=None):
    """A YOLOv8-n student, its criterion against the teachers (one: that teacher; several: an ensemble), a batch."""
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils import DEFAULT_CFG

    from detkd.config import KDConfig
    from detkd.engine.criterion import DistillationLoss

    torch.manual_seed(0)
    student = DetectionModel("yolov8n.yaml", nc=3, verbose=False)
    student.args = DEFAULT_CFG
    members = [_teacher(cfg, seed) for cfg, seed in teacher_cfgs]
    teacher = members[0] if len(members) == 1 else TeacherEnsemble(members, weights)
    kd = KDConfig(teacher=[f"t{i}.yaml" for i in range(len(members))] if len(members) > 1 else "t.yaml",
                  teacher_weights=weights if len(members) > 1 else None, feat_kd=0.0, ensemble_rule=rule)
    crit = DistillationLoss(student.init_criterion(), teacher, None, kd)
    img = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))  # the same image in every setup
    batch = {"img": img, "cls": torch.tensor([[0.0], [1.0], [2.0]]),
             "bboxes": torch.tensor([[0.5, 0.5, 0.4, 0.4], [0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.5]]),
             "batch_idx": torch.tensor([0.0, 1.0, 1.0])}
    return student, crit, batch


def _kd_items(student, crit, batch):
    with torch.no_grad():
        _, items = crit(student(batch["img"]), batch)
    return {k: items[k].item() for k in ("cls_kd", "box_kd")}


def test_losses_rule_with_two_identical_teachers_is_one_teacher():
    single = _kd_items(*_loss_setup([("yolov8n.yaml", 0)], "targets"))
    both = _kd_items(*_loss_setup([("yolov8n.yaml", 0), ("yolov8n.yaml", 0)], "losses"))
    assert single["cls_kd"] > 0 and single["box_kd"] > 0
    assert both == pytest.approx(single, rel=1e-5)


def test_losses_rule_is_the_weighted_sum_of_per_teacher_losses():
    """Σ_k w_k · KD(student, teacher k), each teacher with its own anchor weights and box path: a YOLOv8 teacher
    (LD on its DFL bins) and a YOLO26 teacher (decoded distances) at weights 0.25 / 0.75."""
    cfgs = [("yolov8n.yaml", 0), ("yolo26n.yaml", 1)]
    alone = [_kd_items(*_loss_setup([c], "targets")) for c in cfgs]
    summed = _kd_items(*_loss_setup(cfgs, "losses", weights=[1, 3]))
    for k in ("cls_kd", "box_kd"):
        assert summed[k] == pytest.approx(0.25 * alone[0][k] + 0.75 * alone[1][k], rel=1e-5), k
    combined = _kd_items(*_loss_setup(cfgs, "targets", weights=[1, 3]))  # the default rule differs here
    assert combined["box_kd"] != pytest.approx(summed["box_kd"], rel=1e-3)
    _, crit, _ = _loss_setup(cfgs, "losses", weights=[1, 3])
    assert any("ensemble_rule=losses" in line and "(ld, distance)" in line for line in crit.describe())


def test_ensemble_rule_is_checked():
    from detkd.config import KDConfig
    from detkd.errors import ConfigError

    with pytest.raises(ConfigError, match="ensemble_rule='mean' is not one of targets, losses"):
        KDConfig(ensemble_rule="mean")

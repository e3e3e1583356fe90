"""KD losses against hand-computed values and their defining properties."""

from __future__ import annotations

import math

import pytest
import torch

from detkd.losses.feature import (MGD_ALPHA, boxes_to_masks, cwd_loss, feature_kd_loss, mgd_keep_masks, mgd_loss,
                                  mse_loss)
from detkd.losses.localization import box_iou_kd_loss, decode_boxes, dfl_kl, localization_kd_loss
from detkd.losses.logit import binary_kl_with_logits, classification_kd_loss, softmax_kl_with_logits
from detkd.losses.schedule import schedule_factor
from detkd.losses.weighting import anchor_weights
from detkd.models.adapters import FeatureAdapters

LN3 = math.log(3.0)
# p = (0.25, 0.75) vs q = (0.5, 0.5):  KL = 0.25 ln(0.5) + 0.75 ln(1.5)
KL_QUARTER_VS_HALF = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)


def test_binary_kl_hand_value():
    # teacher logit ln3 -> p = 0.75 ; student logit 0 -> q = 0.5
    kl = binary_kl_with_logits(torch.tensor([0.0]), torch.tensor([LN3]))
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert kl.item() == pytest.approx(expected, abs=1e-6)


def test_binary_kl_temperature_hand_value():
    # T = 2: p = sigmoid(ln3 / 2) = sqrt3 / (1 + sqrt3), q = sigmoid(0) = 0.5
    p = math.sqrt(3) / (1 + math.sqrt(3))
    expected = p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5)
    kl = binary_kl_with_logits(torch.tensor([0.0]), torch.tensor([LN3]), temperature=2.0)
    assert kl.item() == pytest.approx(expected, abs=1e-6)


def test_softmax_kl_hand_value_and_temperature_scaling():
    s, t = torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, LN3]])
    assert softmax_kl_with_logits(s, t).item() == pytest.approx(KL_QUARTER_VS_HALF, abs=1e-6)
    # classification_kd_loss multiplies by T^2 (Hinton): value at T=2 is 4 * KL(softmax(t/2) || softmax(s/2))
    p = math.sqrt(3) / (1 + math.sqrt(3))
    kl_t2 = (1 - p) * math.log((1 - p) / 0.5) + p * math.log(p / 0.5)
    w = torch.ones(1, 1)
    loss = classification_kd_loss(s[None], t[None], w, mode="kl", temperature=2.0)
    assert loss.item() == pytest.approx(4 * kl_t2, abs=1e-6)


def test_classification_kd_weighting_selects_anchors():
    # two anchors: anchor 0 disagrees, anchor 1 agrees; weight only anchor 1 -> zero loss
    s = torch.tensor([[[0.0], [2.0]]])
    t = torch.tensor([[[LN3], [2.0]]])
    assert classification_kd_loss(s, t, torch.tensor([[0.0, 1.0]])).item() == 0.0
    bce_kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert classification_kd_loss(s, t, torch.tensor([[1.0, 0.0]])).item() == pytest.approx(bce_kl, abs=1e-6)
    # weights 1 and 1 -> mean of (bce_kl, 0)
    assert classification_kd_loss(s, t, torch.ones(1, 2)).item() == pytest.approx(bce_kl / 2, abs=1e-6)


@pytest.mark.parametrize("mode", ["bce", "kl"])
def test_classification_kd_zero_when_equal_and_grad_to_student_only(mode):
    torch.manual_seed(0)
    t = torch.randn(2, 7, 3)
    s = t.clone().requires_grad_(True)
    teacher = t.clone().requires_grad_(True)  # even if it could take a gradient, it must not get one
    w = torch.rand(2, 7)
    loss = classification_kd_loss(s, teacher, w, mode=mode, temperature=3.0)
    assert loss.item() == pytest.approx(0.0, abs=1e-7)
    (classification_kd_loss(s * 0.5, teacher, w, mode=mode)).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert teacher.grad is None


def test_unknown_modes_raise():
    with pytest.raises(ValueError, match="unknown classification KD mode"):
        classification_kd_loss(torch.zeros(1, 1, 1), torch.zeros(1, 1, 1), torch.ones(1, 1), mode="xx")
    with pytest.raises(ValueError, match="unknown feature KD method"):
        feature_kd_loss([torch.zeros(1, 1, 2, 2)], [torch.zeros(1, 1, 2, 2)], lambda x: x, method="xx")
    with pytest.raises(ValueError, match="unknown anchor weighting"):
        anchor_weights(torch.zeros(1, 1, 1), torch.zeros(1, 1, dtype=torch.bool), "xx")


def test_dfl_kl_hand_value():
    # reg_max = 2; every side: teacher bins (0, ln3) -> (.25, .75), student (0, 0) -> (.5, .5)
    t = torch.tensor([0.0, LN3]).repeat(4).view(1, 1, 8)
    s = torch.zeros(1, 1, 8)
    assert dfl_kl(s, t, reg_max=2).item() == pytest.approx(KL_QUARTER_VS_HALF, abs=1e-6)
    loss = localization_kd_loss(s, t, torch.ones(1, 1), reg_max=2, temperature=1.0)
    assert loss.item() == pytest.approx(KL_QUARTER_VS_HALF, abs=1e-6)


def test_localization_kd_zero_when_equal_and_temperature_scaled():
    torch.manual_seed(0)
    t = torch.randn(2, 5, 4 * 16)
    w = torch.rand(2, 5)
    assert localization_kd_loss(t.clone(), t, w, reg_max=16, temperature=4.0).item() == pytest.approx(0, abs=1e-6)
    # by hand at T = 2 (reg_max 2, every side): teacher (0, ln3) -> softmax((0, ln3) / 2) = (1, sqrt3) / (1 + sqrt3),
    # student (0, 0) -> (.5, .5); LD = T^2 * KL(p || q) (the same on the four sides)
    p = math.sqrt(3) / (1 + math.sqrt(3))
    expected = 4 * ((1 - p) * math.log((1 - p) / 0.5) + p * math.log(p / 0.5))
    t2, s2 = torch.tensor([0.0, LN3]).repeat(4).view(1, 1, 8), torch.zeros(1, 1, 8)
    assert localization_kd_loss(s2, t2, torch.ones(1, 1), reg_max=2, temperature=2.0).item() == \
        pytest.approx(expected, abs=1e-6)
    # weights: anchor 0 holds that KL at T=2, anchor 1 is identical (KL 0): weights (1, 3) -> a quarter of it
    both_s, both_t = torch.cat([s2, t2], 1), torch.cat([t2, t2], 1)
    assert localization_kd_loss(both_s, both_t, torch.tensor([[1.0, 3.0]]), 2, 2.0).item() == \
        pytest.approx(expected / 4, abs=1e-6)


def test_decoded_box_iou_term():
    anchors = torch.tensor([[4.5, 4.5]])
    dist = torch.randn(1, 1, 64)
    boxes = decode_boxes(dist, anchors, 16)
    assert boxes.shape == (1, 1, 4)
    assert box_iou_kd_loss(boxes, boxes.clone(), torch.ones(1, 1)).item() == pytest.approx(0.0, abs=1e-6)
    # disjoint boxes -> 1 - IoU = 1
    a = torch.tensor([[[0.0, 0.0, 1.0, 1.0]]])
    b = torch.tensor([[[2.0, 2.0, 3.0, 3.0]]])
    assert box_iou_kd_loss(a, b, torch.ones(1, 1)).item() == pytest.approx(1.0, abs=1e-6)


def test_cwd_hand_value():
    # one channel, two positions: teacher (0, ln3) -> spatial softmax (.25, .75); student uniform (.5, .5)
    t = torch.tensor([0.0, LN3]).view(1, 1, 1, 2)
    s = torch.zeros(1, 1, 1, 2)
    assert cwd_loss(s, t, tau=1.0).item() == pytest.approx(KL_QUARTER_VS_HALF, abs=1e-6)
    # tau = 2: tau^2 * KL at temperature 2
    p = math.sqrt(3) / (1 + math.sqrt(3))
    expected = 4 * ((1 - p) * math.log((1 - p) / 0.5) + p * math.log(p / 0.5))
    assert cwd_loss(s, t, tau=2.0).item() == pytest.approx(expected, abs=1e-6)


def test_mse_masked_hand_value():
    s = torch.zeros(1, 2, 1, 2)
    t = torch.tensor([[[[1.0, 3.0]], [[1.0, 3.0]]]])
    assert mse_loss(s, t).item() == pytest.approx((1 + 9 + 1 + 9) / 4)
    mask = torch.tensor([[[[1.0, 0.0]]]])  # only the first position counts
    assert mse_loss(s, t, mask).item() == pytest.approx(1.0)


@pytest.mark.parametrize("method", ["mse", "cwd"])
def test_feature_kd_zero_with_identity_adapters(method):
    torch.manual_seed(0)
    feats = [torch.randn(2, c, s, s) for c, s in ((8, 8), (16, 4), (32, 2))]
    adapters = FeatureAdapters([8, 16, 32], [8, 16, 32]).set_identity_()
    loss = feature_kd_loss([f.clone() for f in feats], feats, adapters, method=method, tau=2.0)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_feature_kd_gradients_reach_student_and_adapters_only():
    torch.manual_seed(0)
    student = [torch.randn(2, 4, 4, 4, requires_grad=True)]
    teacher = [torch.randn(2, 6, 4, 4, requires_grad=True)]
    for method in ("mse", "cwd", "mgd"):
        adapters = FeatureAdapters([4], [6], with_generators=method == "mgd")  # as the trainer builds them
        student[0].grad = None
        feature_kd_loss(student, teacher, adapters, method=method).backward()  # a teacher that could take one
        assert student[0].grad is not None and student[0].grad.abs().sum() > 0
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in adapters.parameters())  # every one
        assert teacher[0].grad is None


def _hand_mgd_adapters(levels: int = 1) -> FeatureAdapters:
    """1 → 1 channel MGD adapters with known weights: A(x) = 2x + 1, G(y) = 3·relu(y) (3×3 convs, centre tap only)."""
    adapters = FeatureAdapters([1] * levels, [1] * levels, with_generators=True)
    with torch.no_grad():
        for align, gen in zip(adapters.align, adapters.generators):
            align.weight.fill_(2.0)
            align.bias.fill_(1.0)
            for conv, w in ((gen[0], 1.0), (gen[2], 3.0)):
                conv.weight.zero_()
                conv.weight[0, 0, 1, 1] = w
                conv.bias.zero_()
    return adapters


MGD_S = torch.tensor([[[[1.0, -1.0], [0.5, -2.0]]]])  # (1, 1, 2, 2): A(S) = [[3, -1], [2, -3]]
MGD_T = torch.tensor([[[[8.0, 1.0], [6.0, 2.0]]]])


def test_mgd_generation_inside_the_adapters_by_hand():
    adapters = _hand_mgd_adapters()
    keep = [torch.tensor([[[[1.0, 0.0], [1.0, 1.0]]]])]
    # A(S)·K = [[3, 0], [2, -3]]  ->  G = 3·relu(.) = [[9, 0], [6, 0]]
    generated = adapters([MGD_S], keep)[0]
    assert generated.tolist() == [[[[9.0, 0.0], [6.0, 0.0]]]]
    # squared errors vs T: 1, 1, 0, 4 -> summed over C·H·W (6), times the paper's alpha = 2e-5, / B
    assert MGD_ALPHA == 2e-5
    assert mgd_loss(generated, MGD_T).item() == pytest.approx(2e-5 * 6.0)
    assert mgd_loss(generated, MGD_T, alpha=1.0).item() == pytest.approx(6.0)
    two = torch.cat([generated, generated]), torch.cat([MGD_T, MGD_T])
    assert mgd_loss(*two, alpha=1.0).item() == pytest.approx(6.0)  # averaged over the batch, not summed
    with pytest.raises(ValueError, match="keep mask"):
        adapters([MGD_S])  # generators without masks: refused, not silently unmasked
    with pytest.raises(ValueError, match="without MGD generators"):
        FeatureAdapters([1], [1])([MGD_S], keep)


def test_mgd_masks_and_reconstructs_and_sums_levels():
    adapters = _hand_mgd_adapters(levels=2)
    # mask ratio 0: nothing masked -> G(A(S)) = [[9, 0], [6, 0]] (relu(-1) = 0 where the hand mask dropped the cell)
    one_level = 2e-5 * 6.0
    assert feature_kd_loss([MGD_S], [MGD_T], adapters, "mgd", mgd_ratio=0.0).item() == pytest.approx(one_level)
    # two levels: the paper adds them (a second level with squared errors 4·1 at (1, 1, 2, 2) -> + 2e-5 * 4)
    s2, t2 = torch.zeros(1, 1, 2, 2), torch.full((1, 1, 2, 2), 4.0)  # A = 1, G = 3 -> errors 1 each
    assert feature_kd_loss([MGD_S, s2], [MGD_T, t2], adapters, "mgd", mgd_ratio=0.0).item() == pytest.approx(
        one_level + 2e-5 * 4.0)
    # mask ratio ~1: everything masked -> the generator sees zeros -> G = 0, error against T alone
    assert feature_kd_loss([MGD_S], [MGD_T], adapters, "mgd", mgd_ratio=0.999999).item() == pytest.approx(
        2e-5 * (64 + 1 + 36 + 4))
    torch.manual_seed(0)
    keep = mgd_keep_masks([torch.zeros(64, 3, 16, 16)], mask_ratio=0.65)[0]
    assert keep.shape == (64, 1, 16, 16) and set(keep.unique().tolist()) <= {0.0, 1.0}
    assert keep.mean().item() == pytest.approx(0.35, abs=0.02)  # kept with probability 1 - lambda


def test_identity_adapters_need_equal_channels():
    with pytest.raises(ValueError, match="equal"):
        FeatureAdapters([4], [8]).set_identity_()


def test_anchor_weights_modes():
    t = torch.tensor([[[0.0, -10.0], [LN3, 0.0], [-20.0, -20.0]]])  # max prob: .5, .75, ~0
    fg = torch.tensor([[False, False, True]])
    assert torch.allclose(anchor_weights(t, fg, "teacher"), torch.tensor([[0.5, 0.75, 0.0]]), atol=1e-6)
    assert torch.equal(anchor_weights(t, fg, "assigned"), torch.tensor([[0.0, 0.0, 1.0]]))
    assert torch.allclose(anchor_weights(t, fg, "union"), torch.tensor([[0.5, 0.75, 1.0]]), atol=1e-6)


def test_schedules():
    assert schedule_factor("constant", 0.7) == 1.0
    assert schedule_factor("linear", 0.0) == 1.0
    assert schedule_factor("linear", 0.5) == pytest.approx(0.5)
    assert schedule_factor("linear", 1.0, final=0.2) == pytest.approx(0.2)
    assert schedule_factor("cosine", 0.5) == pytest.approx(0.5)
    assert schedule_factor("cosine", 1.0, final=0.1) == pytest.approx(0.1)
    assert schedule_factor("cosine", 0.25) > schedule_factor("linear", 0.25)  # cosine keeps KD longer early on
    with pytest.raises(ValueError):
        schedule_factor("step", 0.5)


def test_boxes_to_masks():
    # one box covering the left half of image 1 (normalized xywh)
    boxes = torch.tensor([[0.25, 0.5, 0.5, 1.0]])
    masks = boxes_to_masks(boxes, torch.tensor([1.0]), batch_size=2, shapes=[(4, 4), (2, 2)])
    assert masks[0].shape == (2, 1, 4, 4)
    assert masks[0][0].sum() == 0  # image 0 has no boxes
    assert torch.equal(masks[0][1, 0], torch.tensor([[1.0, 1, 0, 0]] * 4))
    assert torch.equal(masks[1][1, 0], torch.tensor([[1.0, 0]] * 2))

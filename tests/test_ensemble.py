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

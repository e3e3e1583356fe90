"""The recipe's building blocks: verified anchor weighting (hand-computed values and invariances)."""

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

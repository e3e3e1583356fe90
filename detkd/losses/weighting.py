"""Which anchors the logit and localization KD terms look at.

A 640-px YOLOv8 image has 8400 anchors and a handful of objects, so an unweighted mean over anchors is dominated
by background where teacher and student both say "nothing" — the useful signal drowns. detkd weights anchor a by

* ``teacher``:  w = max_c σ(t_ac)                 — the teacher's confidence (dark knowledge where it sees objects,
                                                   including ones the labels missed or the student mislocalizes);
* ``assigned``: w = 1[a ∈ student's TAL foreground] — the anchors the student's own task-aligned assigner trains;
* ``union``:    w = max(teacher, assigned)         — both, so assigned anchors always count fully and confident
                                                   teacher anchors add soft weight;
* ``verified``: w = max_g σ(t_{a,c_g}) · IoU(b^t_a, g) over the image's ground-truth boxes g (class c_g) — the
                teacher is imitated where it is *right*: its score for the labelled class times how well its box
                covers the labelled object. Anchors where the teacher is confident about nothing that is labelled
                (its false positives) and labelled objects it misses or mislocates get little weight; near-object
                anchors the student's assigner leaves out still count when the teacher is right there.
                Needs labels: on images without ground truth every weight is 0.

Weights are detached (they select, they are not trained) and shaped (B, A).
"""

from __future__ import annotations

import torch

ANCHOR_WEIGHTINGS = ("union", "teacher", "assigned", "verified")


def confidence_logits(teacher) -> torch.Tensor:
    """The teacher's per-class confidence as sigmoid-space logits (B, A, C): σ of them is its confidence.

    The one way every consumer (anchor weights, ``verified``, unlabelled-image weights, pseudo-labels) reads a
    teacher's confidence. A single teacher's class logits are that; an ensemble gives its own ``conf_logits`` (the
    logit of its members' mean σ), since its ``scores`` under ``kl`` are log p̄ of a softmax, not a confidence.
    """
    conf = getattr(teacher, "conf_logits", None)
    return teacher.scores if conf is None else conf


def anchor_weights(teacher_logits: torch.Tensor, fg_mask: torch.Tensor | None, mode: str = "union") -> torch.Tensor:
    """Anchor weights (B, A) from teacher logits (B, A, C) and the student's foreground mask (B, A) bool.

    ``verified`` needs boxes and labels: use :func:`verified_weights`.
    """
    teacher_conf = teacher_logits.detach().float().sigmoid().amax(-1)
    if mode == "teacher" or fg_mask is None:
        return teacher_conf
    assigned = fg_mask.to(teacher_conf.dtype)
    if mode == "assigned":
        return assigned
    if mode == "union":
        return torch.maximum(teacher_conf, assigned)
    raise ValueError(f"unknown anchor weighting '{mode}' (expected one of {ANCHOR_WEIGHTINGS})")


VERIFIED_GT_CHUNK = 32  # ground-truth boxes per IoU pass: (B, A, 32) temporaries instead of (B, A, N)


def verified_weights(
    teacher_logits: torch.Tensor,
    teacher_boxes: torch.Tensor,
    gt_labels: torch.Tensor,
    gt_boxes: torch.Tensor,
    gt_mask: torch.Tensor,
    gt_chunk: int | None = VERIFIED_GT_CHUNK,
    known: torch.Tensor | None = None,
) -> torch.Tensor:
    """w_a = max_g σ(t_{a,c_g}) · IoU(b^t_a, g): how right the teacher is at each anchor (B, A), in [0, 1].

    The max over ground-truth boxes runs over chunks of ``gt_chunk`` boxes (None: all at once), so the IoU
    temporaries are (B, A, gt_chunk), not (B, A, N): ~110 MB each at 640 px, batch 16 and 200 boxes in a mosaic, about
    a dozen of them (``benchmarks/kd_memory.py``). The result is the same to the last bit.

    Args:
        teacher_logits: (B, A, C) class logits (sigmoid-space: see :func:`confidence_logits`).
        teacher_boxes: (B, A, 4) decoded xyxy boxes, in the same units as ``gt_boxes``.
        gt_labels: (B, N, 1) class index of each ground-truth slot (Ultralytics' padded targets).
        gt_boxes: (B, N, 4) xyxy ground-truth boxes.
        gt_mask: (B, N, 1) which slots hold a real box (padding is 0).
        known: (C,) bool, the classes the teacher has a score for (None: all). A label of another class verifies
            nothing (a teacher with other classes: :mod:`detkd.models.class_map`) and adds no weight; otherwise its
            near-zero score would, after the KD terms divide by Σw, put all the weight on those anchors whenever no
            label of a known class is in the batch.
    """
    b, a, _ = teacher_logits.shape
    n = gt_boxes.shape[1]
    weights = teacher_logits.new_zeros(b, a).float()
    if known is not None:
        gt_mask = gt_mask & known.to(gt_labels.device)[gt_labels.long()]
    if n == 0:
        return weights
    probs = teacher_logits.detach().float().sigmoid()
    boxes = teacher_boxes.detach().float().unsqueeze(2)  # (B, A, 1, 4)
    step = n if gt_chunk is None else max(int(gt_chunk), 1)
    for start in range(0, n, step):
        end = min(start + step, n)
        part = _verified_scores(probs, boxes, gt_labels[:, start:end], gt_boxes[:, start:end], gt_mask[:, start:end])
        weights = torch.maximum(weights, part.amax(-1))
    return weights


def _verified_scores(probs, boxes, gt_labels, gt_boxes, gt_mask) -> torch.Tensor:
    """σ(t_{a,c_g}) · IoU(b^t_a, g) for k ground-truth boxes (B, A, k), padding slots 0.

    Shapes: probs (B, A, C) probabilities, boxes (B, A, 1, 4) teacher xyxy, gt_labels (B, k, 1), gt_boxes (B, k, 4),
    gt_mask (B, k, 1)."""
    from ultralytics.utils import metrics

    b, a, _ = probs.shape
    k = gt_boxes.shape[1]
    cls_prob = probs.gather(2, gt_labels.long().view(b, 1, k).expand(b, a, k))  # teacher score for each box's class
    iou = metrics.bbox_iou(boxes, gt_boxes.float().unsqueeze(1), xywh=False).squeeze(-1).clamp(min=0.0)  # (B, A, k)
    return cls_prob * iou * gt_mask.view(b, 1, k).float()

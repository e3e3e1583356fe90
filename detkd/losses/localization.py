"""Localization distillation (LD, Zheng et al. CVPR 2022) on YOLOv8's DFL bin distributions.

YOLOv8 predicts each box side (left, top, right, bottom distance from the anchor) as a discrete distribution over
R = ``reg_max`` bins (the DFL head, logits of shape (B, 4·R, A)). LD distils the teacher's *distribution*, which
carries its localization uncertainty, not just its expected value:

    P_t = softmax(z_t / T),  P_s = softmax(z_s / T)        over the R bins of each side
    L_ld = T² · Σ_{b,a} w_ba · (1/4) Σ_side KL(P_t ‖ P_s) / Σ_{b,a} w_ba

with anchor weights w on the valuable localization region (assigned anchors and/or where the teacher is confident).
Optionally an IoU term on decoded boxes: L_iou = Σ w·(1 − IoU(box_s, box_t)) / Σ w, boxes decoded with
Ultralytics' own DFL expectation and ``dist2bbox``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from detkd.losses.logit import weighted_mean


def dfl_kl(student_dist: torch.Tensor, teacher_dist: torch.Tensor, reg_max: int, temperature: float = 1.0):
    """Per-anchor mean-over-sides KL between bin distributions.

    Args:
        student_dist, teacher_dist: DFL logits (B, A, 4·R).
    Returns:
        (B, A) tensor of KL(P_t ‖ P_s) averaged over the 4 sides.
    """
    b, a, _ = student_dist.shape
    log_q = F.log_softmax(student_dist.view(b, a, 4, reg_max) / temperature, dim=-1)
    log_p = F.log_softmax(teacher_dist.view(b, a, 4, reg_max) / temperature, dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean(-1)


def localization_kd_loss(
    student_dist: torch.Tensor, teacher_dist: torch.Tensor, weights: torch.Tensor, reg_max: int, temperature: float = 1.0
) -> torch.Tensor:
    """Anchor-weighted LD (scalar). Shapes: dists (B, A, 4·R), weights (B, A)."""
    return weighted_mean(dfl_kl(student_dist, teacher_dist, reg_max, temperature), weights) * temperature**2


def decode_boxes(dist: torch.Tensor, anchor_points: torch.Tensor, reg_max: int) -> torch.Tensor:
    """DFL logits (B, A, 4·R) → xyxy boxes (B, A, 4) in grid units (multiply by stride for pixels)."""
    from ultralytics.utils.tal import dist2bbox

    b, a, _ = dist.shape
    proj = torch.arange(reg_max, dtype=dist.dtype, device=dist.device)
    ltrb = dist.view(b, a, 4, reg_max).softmax(-1).matmul(proj)
    return dist2bbox(ltrb, anchor_points, xywh=False)


def box_iou_kd_loss(student_boxes: torch.Tensor, teacher_boxes: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ w·(1 − IoU) / Σ w with xyxy boxes (B, A, 4) (Ultralytics' bbox_iou)."""
    from ultralytics.utils.metrics import bbox_iou

    iou = bbox_iou(student_boxes, teacher_boxes, xywh=False).squeeze(-1)
    return weighted_mean(1.0 - iou, weights)

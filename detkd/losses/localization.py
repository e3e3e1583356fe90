"""Localization distillation (LD, Zheng et al. CVPR 2022) on YOLOv8's DFL bin distributions.

YOLOv8 predicts each box side (left, top, right, bottom distance from the anchor) as a discrete distribution over
R = ``reg_max`` bins (the DFL head, logits of shape (B, 4·R, A)). LD distils the teacher's *distribution*, which
carries its localization uncertainty, not just its expected value:

    P_t = softmax(z_t / T),  P_s = softmax(z_s / T)        over the R bins of each side
    L_ld = T² · Σ_{b,a} w_ba · (1/4) Σ_side KL(P_t ‖ P_s) / Σ_{b,a} w_ba

with anchor weights w on the valuable localization region (assigned anchors and/or where the teacher is confident).
Optionally an IoU term on decoded boxes: L_iou = Σ w·(1 − IoU(box_s, box_t)) / Σ w, boxes decoded with
Ultralytics' own DFL expectation and ``dist2bbox``.

**Without shared bins** (teacher and student ``reg_max`` differ, or either is 1 — YOLO26 predicts the four
distances directly), bins cannot be compared; what both models predict is the expected distance of each side from
the anchor, in stride (grid) units: d = Σ_k k·softmax(z)_k for a DFL head, d = z for a ``reg_max = 1`` head. Then

    L_dist = Σ_{b,a} w_ba · (1/4) Σ_side |d_s − d_t| / Σ w   +   Σ w·(1 − IoU(box_s, box_t)) / Σ w

(L1 in stride units, so one unit is one grid cell at every level; plus the IoU of the decoded boxes, which weighs
sides by the object's size). A DFL teacher's expected distances are the target of a YOLO26 student, and back.
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
    """Anchor-weighted LD (scalar). Shapes: dists (B, A, 4·R), weights (B, A). The teacher's bins and the weights
    are targets: detached here."""
    per_anchor = dfl_kl(student_dist, teacher_dist.detach(), reg_max, temperature)
    return weighted_mean(per_anchor, weights.detach()) * temperature**2


def expected_distances(dist: torch.Tensor, reg_max: int) -> torch.Tensor:
    """Box logits (B, A, 4·R) → expected left/top/right/bottom distances (B, A, 4) in grid units.

    DFL heads (R > 1): Σ_k k·softmax(z)_k per side; ``reg_max = 1`` heads (YOLO26) predict the distances directly.
    """
    if reg_max <= 1:
        return dist
    b, a, _ = dist.shape
    proj = torch.arange(reg_max, dtype=dist.dtype, device=dist.device)
    return dist.view(b, a, 4, reg_max).softmax(-1).matmul(proj)


def decode_boxes(dist: torch.Tensor, anchor_points: torch.Tensor, reg_max: int) -> torch.Tensor:
    """Box logits (B, A, 4·R) → xyxy boxes (B, A, 4) in grid units (multiply by stride for pixels)."""
    from ultralytics.utils.tal import dist2bbox

    return dist2bbox(expected_distances(dist, reg_max), anchor_points, xywh=False)


def distance_kd_loss(
    student_dist: torch.Tensor,
    teacher_dist: torch.Tensor,
    weights: torch.Tensor,
    anchor_points: torch.Tensor,
    student_reg_max: int,
    teacher_reg_max: int,
) -> torch.Tensor:
    """Box KD on decoded distances when bins are not shared (scalar): weighted L1 in grid units + (1 − IoU).

    Shapes: dists (B, A, 4·R_s) and (B, A, 4·R_t), weights (B, A), anchor_points (A, 2) in grid units. The teacher's
    distances and the weights are targets: detached here.
    """
    teacher_dist, weights = teacher_dist.detach(), weights.detach()
    from ultralytics.utils.tal import dist2bbox

    d_s = expected_distances(student_dist, student_reg_max)
    d_t = expected_distances(teacher_dist, teacher_reg_max)
    l1 = weighted_mean((d_s - d_t).abs().mean(-1), weights)
    iou = box_iou_kd_loss(dist2bbox(d_s, anchor_points, xywh=False), dist2bbox(d_t, anchor_points, xywh=False), weights)
    return l1 + iou


def box_iou_kd_loss(student_boxes: torch.Tensor, teacher_boxes: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ w·(1 − IoU) / Σ w with xyxy boxes (B, A, 4) (Ultralytics' bbox_iou); the teacher's boxes and the weights
    are targets (detached here)."""
    from ultralytics.utils.metrics import bbox_iou

    teacher_boxes, weights = teacher_boxes.detach(), weights.detach()
    iou = bbox_iou(student_boxes, teacher_boxes, xywh=False).squeeze(-1)
    return weighted_mean(1.0 - iou, weights)

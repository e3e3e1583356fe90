"""The training criterion: the student's own YOLOv8 detection loss plus the weighted distillation terms.

It wraps Ultralytics' ``v8DetectionLoss`` (task-aligned assigner, CIoU + DFL + BCE — all reused, nothing copied)
and is installed as the student's ``criterion``, the one extension point Ultralytics' training loop calls
(``model(batch) → model.loss(batch) → criterion(preds, batch)``). Under DDP this runs inside the DDP-wrapped
student's forward, so gradient synchronisation works unchanged.

Returned loss vector (each already × batch size, as Ultralytics expects), and the logged columns:
``box_loss, cls_loss, dfl_loss`` (detection) then ``cls_kd, box_kd, feat_kd``.
"""

from __future__ import annotations

import torch

from detkd.config import KDConfig
from detkd.engine.guard import gradient_alignment
from detkd.losses.balance import LossBalancer
from detkd.losses.feature import boxes_to_masks, feature_kd_loss
from detkd.losses.localization import box_iou_kd_loss, decode_boxes, localization_kd_loss
from detkd.losses.logit import classification_kd_loss
from detkd.losses.schedule import schedule_factor
from detkd.losses.weighting import anchor_weights, verified_weights
from detkd.models.teacher import FrozenTeacher, split_head_outputs

KD_LOSS_NAMES = ("cls_kd", "box_kd", "feat_kd")


class DistillationLoss:
    """Detection loss + KD terms. Not an ``nn.Module`` and never copied or saved with the student."""

    def __init__(self, detection_loss, teacher: FrozenTeacher, adapters, kd: KDConfig):
        self.det = detection_loss  # ultralytics.utils.loss.v8DetectionLoss of the student
        self.teacher = teacher
        self.adapters = adapters  # FeatureAdapters (or its DDP wrapper) or None when feat_kd == 0
        self.kd = kd
        self.progress = 0.0  # epoch / epochs, set by the trainer each epoch
        self.balancer = LossBalancer() if kd.balance == "detection" else None

    # ------------------------------------------------------------------------------------------ weights
    def term_weights(self) -> dict[str, float]:
        """Current weight of each KD term after the schedule."""
        f = schedule_factor(self.kd.schedule, self.progress, self.kd.schedule_final)
        return {"cls_kd": self.kd.cls_kd * f, "box_kd": self.kd.box_kd * f, "feat_kd": self.kd.feat_kd * f}

    def needs_teacher(self) -> bool:
        return any(v > 0 for v in self.term_weights().values())

    # ------------------------------------------------------------------------------------------ forward
    def __call__(self, preds, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raw = self.det.parse_output(preds)
        assigned, det_loss, items = self.det.get_assigned_targets_and_loss(raw, batch)
        fg_mask, anchor_points, stride_tensor = assigned[0], assigned[3], assigned[4]
        batch_size = raw["boxes"].shape[0]
        if self.balancer is not None:
            self.balancer.observe_detection(det_loss.sum())
        kd_terms = self.distillation_terms(split_head_outputs(raw), batch, fg_mask, anchor_points, stride_tensor)
        items.update({k: v.detach() for k, v in kd_terms.items()})
        items.update(gradient_alignment(det_loss, kd_terms, raw["scores"], raw["boxes"]))  # diagnostics, not losses
        total = torch.cat([det_loss, torch.stack([kd_terms[k] for k in KD_LOSS_NAMES]).to(det_loss.dtype)])
        return total * batch_size, items

    def distillation_terms(self, student, batch, fg_mask, anchor_points, stride_tensor=None) -> dict[str, torch.Tensor]:
        """Weighted KD terms (scalars) for one batch; a disabled term is an exact 0 (and costs nothing)."""
        w = self.term_weights()
        zero = student.scores.new_zeros(()).float()
        terms = dict.fromkeys(KD_LOSS_NAMES, zero)
        if not self.needs_teacher():
            return terms
        teacher = self.teacher(batch["img"])
        if teacher.scores.shape != student.scores.shape:
            raise RuntimeError(f"teacher/student head shapes differ: {tuple(teacher.scores.shape)} vs "
                               f"{tuple(student.scores.shape)} (strides or classes changed after the checks?)")
        weights = self.anchor_weights(teacher, batch, fg_mask, anchor_points, stride_tensor)
        if w["cls_kd"] > 0:
            terms["cls_kd"] = self.weighted("cls_kd", w, classification_kd_loss(
                student.scores.float(), teacher.scores, weights, self.kd.cls_mode, self.kd.cls_temperature))
        if w["box_kd"] > 0:
            reg_max = self.det.reg_max
            ld = localization_kd_loss(student.boxes.float(), teacher.boxes, weights, reg_max, self.kd.box_temperature)
            if self.kd.box_iou > 0:
                s_box = decode_boxes(student.boxes.float(), anchor_points, reg_max)
                t_box = decode_boxes(teacher.boxes, anchor_points, reg_max)
                ld = ld + self.kd.box_iou * box_iou_kd_loss(s_box, t_box, weights)
            terms["box_kd"] = self.weighted("box_kd", w, ld)
        if w["feat_kd"] > 0:
            masks = None
            if self.kd.feat_method == "mse" and self.kd.feat_fg_mask:
                masks = boxes_to_masks(batch["bboxes"], batch["batch_idx"], batch["img"].shape[0],
                                       [f.shape[-2:] for f in teacher.feats])
            terms["feat_kd"] = self.weighted("feat_kd", w, feature_kd_loss(
                student.feats, teacher.feats, self.adapters, self.kd.feat_method, self.kd.feat_temperature,
                masks, self.kd.mgd_mask_ratio))
        return terms

    def weighted(self, name: str, weights: dict[str, float], raw: torch.Tensor) -> torch.Tensor:
        """weight × raw term, or weight × raw balanced against the detection loss (``balance='detection'``)."""
        return weights[name] * (self.balancer(name, raw) if self.balancer is not None else raw)

    def anchor_weights(self, teacher, batch, fg_mask, anchor_points, stride_tensor) -> torch.Tensor:
        """(B, A) anchor weights of the logit and box terms (see :mod:`detkd.losses.weighting`)."""
        if self.kd.anchor_weighting != "verified":
            return anchor_weights(teacher.scores, fg_mask, self.kd.anchor_weighting)
        gt_labels, gt_boxes = self.ground_truth(batch, teacher.scores.shape[0])
        t_boxes = decode_boxes(teacher.boxes, anchor_points, self.det.reg_max) * stride_tensor  # px, xyxy
        return verified_weights(teacher.scores, t_boxes, gt_labels, gt_boxes, gt_boxes.sum(2, keepdim=True) > 0)

    def ground_truth(self, batch, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Labels (B, N, 1) and xyxy pixel boxes (B, N, 4) of the batch, padded per image (Ultralytics' format)."""
        img_hw = torch.tensor(batch["img"].shape[2:], device=self.det.device, dtype=torch.float32)
        targets = torch.cat((batch["batch_idx"].view(-1, 1), batch["cls"].view(-1, 1), batch["bboxes"]), 1)
        targets = self.det.preprocess(targets.to(self.det.device), batch_size, scale_tensor=img_hw[[1, 0, 1, 0]])
        return targets.split((1, 4), 2)

    # ------------------------------------------------------------------------- Ultralytics compatibility
    def update(self) -> None:
        """Per-epoch hook the trainer calls on criteria that have it (E2E losses); forwarded."""
        if hasattr(self.det, "update"):
            self.det.update()

    def __deepcopy__(self, memo):
        """Copies of the student (EMA, NaN recovery) get no criterion: they build a plain one when needed."""
        return None

    def __getstate__(self):
        raise TypeError("DistillationLoss is training-only state (it holds the teacher) and is never serialized.")

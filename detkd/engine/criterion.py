"""The training criterion: the student's own YOLOv8 detection loss plus the weighted distillation terms.

It wraps Ultralytics' ``v8DetectionLoss`` (task-aligned assigner, CIoU + DFL + BCE — all reused, nothing copied),
or ``E2ELoss`` for end-to-end students (YOLO26/YOLOv10),
and is installed as the student's ``criterion``, the one extension point Ultralytics' training loop calls
(``model(batch) → model.loss(batch) → criterion(preds, batch)``). Under DDP this runs inside the DDP-wrapped
student's forward, so gradient synchronisation works unchanged.

Returned loss vector (each already × batch size, as Ultralytics expects), and the logged columns:
``box_loss, cls_loss, dfl_loss`` (detection) then ``cls_kd, box_kd, feat_kd``.

Batches with unlabelled images (``batch['labeled']``, from ``--unlabeled``): the detection loss covers the labelled
images only (or the teacher's pseudo-labels), KD all images — see :mod:`detkd.engine.unlabeled`.
"""

from __future__ import annotations

import torch

from detkd.config import PSEUDO_CONF_DEFAULT, KDConfig
from detkd.engine.guard import ALIGN_ITEMS, AlignmentProbe
from detkd.engine.unlabeled import (labeled_flags, pseudo_label_targets, scatter_rows, select_images, select_targets,
                                    teacher_confidence_weights)
from detkd.losses.balance import LossBalancer
from detkd.losses.feature import boxes_to_masks, feature_kd_loss
from detkd.losses.localization import (box_iou_kd_loss, decode_boxes, distance_kd_loss,
                                       localization_kd_loss)
from detkd.losses.logit import classification_kd_loss
from detkd.losses.schedule import schedule_factor
from detkd.losses.weighting import anchor_weights, confidence_logits, verified_weights
from detkd.models.class_map import class_mask_of, confidence_mask_of
from detkd.models.teacher import FrozenTeacher, split_head_outputs

KD_LOSS_NAMES = ("cls_kd", "box_kd", "feat_kd")


def box_kd_path(student_reg_max: int, teacher_reg_max: int) -> str:
    """``ld`` when both heads have the same DFL bins (reg_max > 1), else ``distance`` (decoded box distances)."""
    return "ld" if student_reg_max == teacher_reg_max and student_reg_max > 1 else "distance"


class DistillationLoss:
    """Detection loss + KD terms. Not an ``nn.Module`` and never copied or saved with the student.

    End-to-end students (YOLO26, YOLOv10: ``E2ELoss`` = a one-to-many and a one-to-one ``v8DetectionLoss``) keep
    Ultralytics' own mix of the two detection losses. KD goes on the one-to-many branch (dense, it trains the
    backbone and neck), with the usual anchor weighting; and on the one-to-one branch — which sees detached
    features, so it only shapes that head — with weight ``one2one_kd`` on the anchors its top-1 assigner picks.
    """

    def __init__(self, detection_loss, teacher: FrozenTeacher, adapters, kd: KDConfig):
        self.det = detection_loss  # v8DetectionLoss, or E2ELoss for end-to-end students
        self.end2end = hasattr(detection_loss, "one2one")
        self.dense = detection_loss.one2many if self.end2end else detection_loss  # trains the backbone
        self.teacher = teacher
        self.adapters = adapters  # FeatureAdapters (or its DDP wrapper) or None when feat_kd == 0
        self.kd = kd
        self.progress = 0.0  # epoch / epochs, set by the trainer each epoch
        self.balancer = LossBalancer() if kd.balance == "detection" else None
        self.alignment = AlignmentProbe()  # the KD guard's gradient cosines, per batch (engine/guard.py)
        self.term_scales = dict.fromkeys(KD_LOSS_NAMES, 1.0)  # the KD guard's (--kd-guard adapt, engine/guard.py)
        self.last_batch_labeled = True  # the last batch had a detection loss (labelled images or pseudo-labels)
        self.old_class_targets = None  # --keep-teacher-classes: the teacher's targets (engine/incremental.py)
        self.student_reg_max = int(self.dense.reg_max)
        self.box_path = box_kd_path(self.student_reg_max, teacher.reg_max)

    def _distance_path_notes(self) -> str:
        """What the decoded-distance box KD does not do: a DFL teacher's distances end at its last bin, and the LD
        settings (``box_iou``, ``box_temperature``) given for it change nothing (1-IoU is always in, at weight 1)."""
        from dataclasses import fields

        notes = []
        t = self.teacher.reg_max
        if t > 1:
            notes.append(f"the teacher's distances stop at {t - 1} grid cells (its last DFL bin), so its targets "
                         f"for larger boxes are shorter")
        default = {f.name: f.default for f in fields(KDConfig)}
        unused = [f"{flag} {getattr(self.kd, name):g}" for name, flag in (("box_iou", "box_iou"),
                                                                          ("box_temperature", "box_temp"))
                  if getattr(self.kd, name) != default[name]]
        if unused:
            notes.append(f"{', '.join(unused)} appl{'ies' if len(unused) == 1 else 'y'} to LD on shared bins only: "
                         f"not used here")
        return "".join(f"; {n}" for n in notes)

    def describe(self) -> list[str]:
        """Which path each KD term takes for this teacher/student pair (printed at start)."""
        s, t = self.student_reg_max, self.teacher.reg_max
        box = (f"LD: KL on shared DFL bins (reg_max {s})" if self.box_path == "ld" else
               f"decoded distances: L1 in grid units + 1-IoU (teacher reg_max {t}, student reg_max {s}: no shared bins)"
               + self._distance_path_notes())
        lines = [f"cls_kd: {self.kd.cls_mode} on the class logits", f"box_kd: {box}",
                 f"feat_kd: {self.kd.feat_method} on the neck features through 1x1 adapters"]
        if self.end2end:
            lines.append(f"end-to-end student: KD on the one-to-many branch (trains backbone and neck) + "
                         f"{self.kd.one2one_kd:g} x cls/box KD on the one-to-one branch at its top-1 anchors "
                         f"(that branch sees detached features)"
                         + ("; each branch's KD follows E2ELoss's o2m/o2o weights" if self.kd.e2e_schedule else ""))
        members = getattr(self.teacher, "members", None)
        if members:  # several teachers distilled as one ensemble (models/ensemble.py)
            w = ", ".join(f"{x:.2f}" for x in self.teacher.weights)
            feats = f"features side by side ({'+'.join(str(m.channels[0]) for m in members)} channels at P3)"
            if self.kd.ensemble_rule == "losses":
                paths = ", ".join(box_kd_path(s, m.reg_max) for m in members)
                lines.append(f"{len(members)} teachers (weights {w}), ensemble_rule=losses: logit and box KD = "
                             f"sum_k w_k x KD(student, teacher k), each with its own anchor weights and box path "
                             f"({paths}); {feats}")
            else:
                lines.append(f"{len(members)} teachers as one ensemble (weights {w}): mean class probabilities, "
                             + ("mixed DFL bins" if self.teacher.reg_max > 1 else "mean decoded distances")
                             + f", {feats}")
        if self.teacher.end_to_end:
            lines.append("end-to-end teacher: its one-to-many outputs are the dense targets")
        return lines

    # ------------------------------------------------------------------------------------------ weights
    def term_weights(self) -> dict[str, float]:
        """Current weight of each KD term after the schedule."""
        f = schedule_factor(self.kd.schedule, self.progress, self.kd.schedule_final)
        return {"cls_kd": self.kd.cls_kd * f, "box_kd": self.kd.box_kd * f, "feat_kd": self.kd.feat_kd * f}

    def needs_teacher(self) -> bool:
        """The teacher runs on this step: a KD term is on, or it pseudo-labels unlabelled images."""
        return self.kd.pseudo_threshold is not None or any(v > 0 for v in self.term_weights().values())

    # ------------------------------------------------------------------------------------------ forward
    def __call__(self, preds, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        from ultralytics.utils.tal import make_anchors

        raw = self.dense.parse_output(preds)
        dense_raw, o2o_raw = (raw["one2many"], raw["one2one"]) if self.end2end else (raw, None)
        batch_size = dense_raw["boxes"].shape[0]
        anchor_points, stride_tensor = make_anchors(dense_raw["feats"], self.dense.stride, 0.5)
        labeled = labeled_flags(batch, batch_size, dense_raw["boxes"].device)  # None: every image labelled
        teacher = self.teacher(batch["img"]) if self.needs_teacher() else None
        det_batch, keep = batch, labeled
        if labeled is not None and self.kd.pseudo_threshold is not None:  # unlabelled images get the teacher's boxes
            t_boxes = decode_boxes(teacher.boxes, anchor_points, self.teacher.reg_max) * stride_tensor
            det_batch, keep = pseudo_label_targets(batch, labeled, t_boxes, confidence_logits(teacher),
                                                   self.kd.pseudo_threshold), None
        if self.old_class_targets is not None:  # the teacher labels its classes that the data does not
            det_batch = self.old_class_targets(det_batch, labeled, teacher, anchor_points, stride_tensor)
        fg_mask, o2o_fg, det_loss, items = self.detection_loss(dense_raw, o2o_raw, det_batch, keep)
        self.last_batch_labeled = keep is None or bool(keep.any())  # (detection_loss synced on keep.any() already)
        if self.balancer is not None:
            self.balancer.observe_detection(det_loss.sum(), self.last_batch_labeled)
        student = split_head_outputs(dense_raw)
        kd_batch = batch if self.old_class_targets is None else det_batch  # the teacher's targets are labels there
        kd_terms = self.distillation_terms(student, kd_batch, fg_mask, anchor_points, stride_tensor,
                                           one2one=None if o2o_raw is None else (split_head_outputs(o2o_raw), o2o_fg),
                                           teacher=teacher, labeled=labeled)
        align = self.alignment(det_loss, kd_terms, dense_raw["scores"], dense_raw["boxes"], dense_raw["feats"])
        kd_terms = {k: v * self.term_scales[k] for k, v in kd_terms.items()}  # the guard's scales (1: untouched)
        items.update({k: v.detach() for k, v in kd_terms.items()})
        items.update(align)  # diagnostics, measured on the terms before their scales
        total = torch.cat([det_loss, torch.stack([kd_terms[k] for k in KD_LOSS_NAMES]).to(det_loss.dtype)])
        return total * batch_size, items

    def detection_loss(self, dense_raw, o2o_raw, batch, keep=None):
        """Ultralytics' detection loss (end-to-end: o2m·L_o2m + o2o·L_o2o, items from the one-to-one branch) on the
        images ``keep`` (B,) bool, all when None (see :mod:`detkd.engine.unlabeled`).

        Returns (fg_mask (B, A), one-to-one fg_mask (B, A) or None, loss (3,), items).
        """
        if keep is not None and not bool(keep.any()):  # only unlabelled images: no detection loss, KD only
            scores = dense_raw["scores"]
            fg = torch.zeros(scores.shape[0], scores.shape[-1], dtype=torch.bool, device=scores.device)
            loss = scores.sum() * 0.0 + torch.zeros(3, device=scores.device)  # in the graph, every parameter used
            return fg, None if o2o_raw is None else fg, loss, dict(zip(self.dense.loss_names, loss.detach()))
        if keep is not None:
            dense_raw, o2o_raw = select_images(dense_raw, keep), select_images(o2o_raw, keep)
            batch = select_targets(batch, keep)
        assigned, loss, items = self.dense.get_assigned_targets_and_loss(dense_raw, batch)
        fg, o2o_fg = assigned[0], None
        if o2o_raw is not None:
            o2o_assigned, o2o_loss, items = self.det.one2one.get_assigned_targets_and_loss(o2o_raw, batch)
            loss, o2o_fg = loss * self.det.o2m + o2o_loss * self.det.o2o, o2o_assigned[0]
        if keep is not None:
            fg, o2o_fg = scatter_rows(fg, keep), None if o2o_fg is None else scatter_rows(o2o_fg, keep)
        return fg, o2o_fg, loss, items

    def distillation_terms(self, student, batch, fg_mask, anchor_points, stride_tensor=None,
                           one2one=None, teacher=None, labeled=None) -> dict[str, torch.Tensor]:
        """Weighted KD terms (scalars) for one batch; a disabled term is an exact 0 (and costs nothing).

        ``one2one``: (HeadOutputs, fg_mask) of an end-to-end student's one-to-one branch, or None.
        ``teacher``: the teacher's outputs on this batch when already computed. ``labeled``: (B,) bool, None when
        every image is labelled; unlabelled images' anchors are weighted by the teacher's confidence.
        """
        w = self.term_weights()
        zero = student.scores.new_zeros(()).float()
        terms = dict.fromkeys(KD_LOSS_NAMES, zero)
        if not any(v > 0 for v in w.values()):
            return terms
        teacher = teacher if teacher is not None else self.teacher(batch["img"])
        if teacher.scores.shape != student.scores.shape:
            raise RuntimeError(f"teacher/student head shapes differ: {tuple(teacher.scores.shape)} vs "
                               f"{tuple(student.scores.shape)} (strides or classes changed after the checks?)")
        raw = {}
        for share, t_out, t_reg, known in self.loss_teachers(teacher):
            part = self.teacher_terms(student, t_out, t_reg, batch, fg_mask, anchor_points, stride_tensor, one2one,
                                      labeled, w, known)
            raw = {k: raw.get(k, 0.0) + share * v for k, v in part.items()}
        for name, value in raw.items():
            terms[name] = self.weighted(name, w, value)
        if w["feat_kd"] > 0:
            masks = None
            if self.kd.feat_method == "mse" and self.kd.feat_fg_mask:
                masks = self.foreground_masks(batch, teacher, labeled, anchor_points, stride_tensor)
            terms["feat_kd"] = self.weighted("feat_kd", w, feature_kd_loss(
                student.feats, teacher.feats, self.adapters, self.kd.feat_method, self.kd.feat_temperature,
                masks, self.kd.mgd_mask_ratio))
        return terms

    def foreground_masks(self, batch, teacher, labeled, anchor_points, stride_tensor) -> list[torch.Tensor]:
        """``feat_fg_mask``'s (B, 1, H, W) mask per level: the cells inside the labels' boxes; on unlabelled images
        (``labeled`` False) inside the teacher's detections at the pseudo-label threshold (its default when
        pseudo-labels are off) — they have no label, and an empty mask would leave them no feature KD."""
        if labeled is not None and stride_tensor is not None:
            t_boxes = decode_boxes(teacher.boxes, anchor_points, self.teacher.reg_max) * stride_tensor
            batch = pseudo_label_targets(batch, labeled, t_boxes, confidence_logits(teacher),
                                         self.kd.pseudo_threshold or PSEUDO_CONF_DEFAULT)
        return boxes_to_masks(batch["bboxes"], batch["batch_idx"], batch["img"].shape[0],
                              [f.shape[-2:] for f in teacher.feats])

    def loss_teachers(self, teacher) -> list[tuple[float, object, int, torch.Tensor | None]]:
        """(share, outputs, reg_max, classes with a confidence) of each teacher the logit and box KD losses are taken
        against: the teacher (or the ensemble's combined outputs) once, or with ``ensemble_rule='losses'`` every
        member with its weight — L = Σ_k w_k · L(student, teacher k) (see :mod:`detkd.models.ensemble`)."""
        if teacher.members and self.kd.ensemble_rule == "losses":
            return [(w, out, m.reg_max, confidence_mask_of(m)) for w, out, m in
                    zip(self.teacher.weights, teacher.members, self.teacher.members)]
        return [(1.0, teacher, self.teacher.reg_max, confidence_mask_of(self.teacher))]

    def teacher_terms(self, student, teacher, t_reg, batch, fg_mask, anchor_points, stride_tensor, one2one, labeled,
                      w, known=None) -> dict[str, torch.Tensor]:
        """Unweighted logit and box KD against one teacher's outputs: its anchor weights, the one-to-many branch and,
        for end-to-end students, the one-to-one branch (E2E weights when ``e2e_schedule``)."""
        weights = self.anchor_weights(teacher, batch, fg_mask, anchor_points, stride_tensor, t_reg, known)
        if labeled is not None:
            weights = teacher_confidence_weights(weights, confidence_logits(teacher), labeled)
        if self.old_class_targets is not None:  # incremental: where the teacher sees its unlabelled classes
            weights = self.old_class_targets.anchor_weights(weights, teacher)
        raw = self.head_terms(student, teacher, weights, anchor_points, w, t_reg)
        if one2one is not None:
            o2m_w, o2o_w = (self.det.o2m, self.det.o2o) if self.kd.e2e_schedule else (1.0, 1.0)
            raw = {k: o2m_w * v for k, v in raw.items()}
            if self.kd.one2one_kd > 0:
                o2o_student, o2o_fg = one2one
                o2o = self.head_terms(o2o_student, teacher, o2o_fg.float(), anchor_points, w, t_reg)
                raw = {k: raw[k] + o2o_w * self.kd.one2one_kd * o2o[k] for k in raw}
        return raw

    def head_terms(self, student, teacher, weights, anchor_points, w, t_reg=None) -> dict[str, torch.Tensor]:
        """Unweighted logit and box KD of one head branch against the teacher's dense outputs (active terms);
        ``t_reg``: that teacher's reg_max (default: the teacher's)."""
        out = {}
        if w["cls_kd"] > 0:
            out["cls_kd"] = classification_kd_loss(student.scores.float(), teacher.scores, weights, self.kd.cls_mode,
                                                   self.kd.cls_temperature, class_mask_of(self.teacher))
        if w["box_kd"] > 0:
            out["box_kd"] = self.box_term(student.boxes.float(), teacher.boxes, weights, anchor_points, t_reg)
        return out

    def box_term(self, s_boxes, t_boxes, weights, anchor_points, t_reg=None) -> torch.Tensor:
        """LD on shared DFL bins (+ optional IoU), or decoded-distance KD when the bins are not shared."""
        s_reg, t_reg = self.student_reg_max, self.teacher.reg_max if t_reg is None else t_reg
        if box_kd_path(s_reg, t_reg) == "distance":
            return distance_kd_loss(s_boxes, t_boxes, weights, anchor_points, s_reg, t_reg)
        ld = localization_kd_loss(s_boxes, t_boxes, weights, s_reg, self.kd.box_temperature)
        if self.kd.box_iou > 0:
            s_box, t_box = decode_boxes(s_boxes, anchor_points, s_reg), decode_boxes(t_boxes, anchor_points, t_reg)
            ld = ld + self.kd.box_iou * box_iou_kd_loss(s_box, t_box, weights)
        return ld

    def weighted(self, name: str, weights: dict[str, float], raw: torch.Tensor) -> torch.Tensor:
        """weight × raw term, or weight × raw balanced against the detection loss (``balance='detection'``)."""
        return weights[name] * (self.balancer(name, raw) if self.balancer is not None else raw)

    def anchor_weights(self, teacher, batch, fg_mask, anchor_points, stride_tensor, t_reg=None,
                       known=None) -> torch.Tensor:
        """(B, A) anchor weights of the logit and box terms (see :mod:`detkd.losses.weighting`); ``known`` (C,) bool:
        the classes the teacher has a confidence for (``verified`` reads only those labels; None: the teacher's)."""
        if self.kd.anchor_weighting != "verified":
            return anchor_weights(confidence_logits(teacher), fg_mask, self.kd.anchor_weighting)
        conf = confidence_logits(teacher)
        gt_labels, gt_boxes = self.ground_truth(batch, conf.shape[0])
        t_reg = self.teacher.reg_max if t_reg is None else t_reg
        t_boxes = decode_boxes(teacher.boxes, anchor_points, t_reg) * stride_tensor  # px, xyxy
        known = confidence_mask_of(self.teacher) if known is None else known
        return verified_weights(conf, t_boxes, gt_labels, gt_boxes, gt_boxes.sum(2, keepdim=True) > 0, known=known)

    def ground_truth(self, batch, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Labels (B, N, 1) and xyxy pixel boxes (B, N, 4) of the batch, padded per image (Ultralytics' format)."""
        img_hw = torch.tensor(batch["img"].shape[2:], device=self.dense.device, dtype=torch.float32)
        targets = torch.cat((batch["batch_idx"].view(-1, 1), batch["cls"].view(-1, 1), batch["bboxes"]), 1)
        targets = self.dense.preprocess(targets.to(self.dense.device), batch_size, scale_tensor=img_hw[[1, 0, 1, 0]])
        return targets.split((1, 4), 2)

    def label_items(self) -> tuple[str, ...]:
        """The logged items that need labelled images (0 on a batch of unlabelled images only): the detection loss
        and the KD/label gradient alignment."""
        return (*self.dense.loss_names, *ALIGN_ITEMS)

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

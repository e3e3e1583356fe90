"""Which anchors the logit and localization KD terms look at.

A 640-px YOLOv8 image has 8400 anchors and a handful of objects, so an unweighted mean over anchors is dominated
by background where teacher and student both say "nothing" — the useful signal drowns. detkd weights anchor a by

* ``teacher``:  w = max_c σ(t_ac)                 — the teacher's confidence (dark knowledge where it sees objects,
                                                   including ones the labels missed or the student mislocalizes);
* ``assigned``: w = 1[a ∈ student's TAL foreground] — the anchors the student's own task-aligned assigner trains;
* ``union`` (default): w = max(teacher, assigned)    — both, so assigned anchors always count fully and confident
                                                   teacher anchors add soft weight.

Weights are detached (they select, they are not trained) and shaped (B, A).
"""

from __future__ import annotations

import torch

ANCHOR_WEIGHTINGS = ("union", "teacher", "assigned")


def anchor_weights(teacher_logits: torch.Tensor, fg_mask: torch.Tensor | None, mode: str = "union") -> torch.Tensor:
    """Anchor weights (B, A) from teacher logits (B, A, C) and the student's foreground mask (B, A) bool."""
    teacher_conf = teacher_logits.detach().float().sigmoid().amax(-1)
    if mode == "teacher" or fg_mask is None:
        return teacher_conf
    assigned = fg_mask.to(teacher_conf.dtype)
    if mode == "assigned":
        return assigned
    if mode == "union":
        return torch.maximum(teacher_conf, assigned)
    raise ValueError(f"unknown anchor weighting '{mode}' (expected one of {ANCHOR_WEIGHTINGS})")

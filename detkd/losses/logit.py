"""Classification-logit distillation for per-class sigmoid detectors (YOLOv8) and the classic softmax KD.

Notation: B images, A anchors (all levels concatenated), C classes; ``s``/``t`` are student/teacher logits of
shape (B, A, C); ``w`` (B, A) are non-negative anchor weights (see :mod:`detkd.losses.weighting`).

``bce`` (sigmoid-aware, the default). YOLOv8 scores are C independent sigmoids, not a softmax, so the natural
per-class target is a Bernoulli: p = σ(t/T), q = σ(s/T) and

    KL_bin(p‖q) = p·log(p/q) + (1−p)·log((1−p)/(1−q))                                  (per anchor, per class)
    L_bce = T² · Σ_{b,a} w_ba Σ_c KL_bin(p_bac ‖ q_bac) / Σ_{b,a} w_ba

KL_bin equals the soft-target BCE(q; p) minus the teacher's entropy H(p): same gradient, but exactly 0 when the
student matches the teacher.

``kl`` (Hinton). Softmax over classes with temperature T:

    L_kl = T² · Σ_{b,a} w_ba · KL(softmax(t/T) ‖ softmax(s/T)) / Σ_{b,a} w_ba

With one class a softmax is constant, so ``kl`` carries no signal when C = 1 (use ``bce``).
The T² factor keeps gradient magnitudes comparable across temperatures (Hinton et al., 2015).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def binary_kl_with_logits(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0):
    """Element-wise KL(Bern(σ(t/T)) ‖ Bern(σ(s/T))), any shape, computed stably from logits."""
    s = student_logits / temperature
    t = teacher_logits / temperature
    p = torch.sigmoid(t)
    # log σ(x) = -softplus(-x),  log(1-σ(x)) = -softplus(x)
    log_p, log_1mp = -F.softplus(-t), -F.softplus(t)
    log_q, log_1mq = -F.softplus(-s), -F.softplus(s)
    return p * (log_p - log_q) + (1 - p) * (log_1mp - log_1mq)


def softmax_kl_with_logits(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0):
    """KL(softmax(t/T) ‖ softmax(s/T)) over the last dim; returns shape ``logits.shape[:-1]``."""
    log_q = F.log_softmax(student_logits / temperature, dim=-1)
    log_p = F.log_softmax(teacher_logits / temperature, dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def weighted_mean(per_anchor: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ w·x / Σ w over (B, A); 0 when all weights are 0."""
    return (per_anchor * weights).sum() / weights.sum().clamp(min=1e-9)


def classification_kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    weights: torch.Tensor,
    mode: str = "bce",
    temperature: float = 1.0,
    class_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Anchor-weighted class-score distillation (scalar). Shapes: logits (B, A, C), weights (B, A).

    ``class_mask`` (C,) bool: only these classes are distilled (a teacher with other classes covers the student's
    classes it maps to, :mod:`detkd.models.class_map`): ``bce`` sums over them, ``kl`` takes both softmaxes over them.
    The teacher's logits and the weights are targets: no gradient reaches them (detached here).
    """
    teacher_logits, weights = teacher_logits.detach(), weights.detach()
    if class_mask is not None and not bool(class_mask.all()):
        keep = class_mask.to(student_logits.device).nonzero().view(-1)
        student_logits, teacher_logits = student_logits.index_select(-1, keep), teacher_logits.index_select(-1, keep)
    if mode == "bce":
        per_anchor = binary_kl_with_logits(student_logits, teacher_logits, temperature).sum(-1)
    elif mode == "kl":
        per_anchor = softmax_kl_with_logits(student_logits, teacher_logits, temperature)
    else:
        raise ValueError(f"unknown classification KD mode '{mode}' (expected 'bce' or 'kl')")
    return weighted_mean(per_anchor, weights) * temperature**2

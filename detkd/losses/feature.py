"""Neck-feature imitation at P3/P4/P5 (the Detect head's inputs).

Student features S_l (B, C_s, H, W) pass through a learned adapter (:mod:`detkd.models.adapters`, 1×1 conv
C_s→C_t) before they are compared with the teacher's T_l (B, C_t, H, W). ``mse`` and ``cwd`` return the mean over
levels; ``mgd`` the sum over levels, as its paper does.

* ``mse``  — L = mean_{b,c,h,w} (A(S) − T)²; with a foreground mask M (B, 1, H, W) from the ground-truth boxes
             L = Σ M·(A(S) − T)² / (C·Σ M)  (imitate where objects are, as in FitNets/FGFI).
* ``cwd``  — channel-wise distillation (Shu et al., ICCV 2021): each channel becomes a spatial distribution
             φ(x_c) = softmax(x_c / τ) over H·W, and
             L = τ² / (B·C) · Σ_{b,c} KL(φ(T_bc) ‖ φ(A(S)_bc)).
             It makes the student attend to the same salient regions per channel, ignoring absolute scale.
* ``mgd``  — masked generative distillation (Yang et al., ECCV 2022): random spatial mask K (B, 1, H, W), each cell
             kept with probability 1 − λ; a small generator G (conv3×3-ReLU-conv3×3) must *reconstruct* the
             teacher feature from the masked aligned student one. At the paper's scale (its code: MSE with
             ``reduction='sum'`` / B, times α, one loss per level, levels added):
             L = α · Σ_l (1/B) Σ_{b,c,h,w} (G(A(S_l)·K_l) − T_l)²,   α = 2·10⁻⁵ (``MGD_ALPHA``, the paper's value
             for detection; λ = 0.65 its default too). So ``feat_kd = 1`` *is* the paper's α, and the term grows
             with C·H·W: for a 640-px YOLOv8-s teacher (C·H·W = 819 200, 409 600, 204 800 at P3–P5) it is
             16.4·e₃ + 8.2·e₄ + 4.1·e₅ for per-element mean squared errors e_l, 12–50× per level what detkd's
             earlier mgd (a mean over C·H·W, then over levels: (e₃ + e₄ + e₅)/3) gave. An old weight converts as
             w_new = w_old / (α · Σ_l C_l·H_l·W_l) when the levels' errors are alike (÷ 28.7 in that example).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FEATURE_METHODS = ("mse", "cwd", "mgd")


def mse_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """(Masked) mean squared error. student/teacher (B, C, H, W), mask (B, 1, H, W) in {0, 1} or None."""
    if mask is None:
        return F.mse_loss(student, teacher)
    sq = (student - teacher).pow(2) * mask
    return sq.sum() / (mask.sum() * student.shape[1]).clamp(min=1.0)


def cwd_loss(student: torch.Tensor, teacher: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """Channel-wise distillation: τ²·mean_{b,c} KL(softmax_hw(T/τ) ‖ softmax_hw(S/τ))."""
    b, c, h, w = student.shape
    log_q = F.log_softmax(student.reshape(b * c, h * w) / tau, dim=1)
    log_p = F.log_softmax(teacher.reshape(b * c, h * w) / tau, dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(1).mean() * tau**2


def mgd_keep_masks(feats: list[torch.Tensor], mask_ratio: float = 0.65) -> list[torch.Tensor]:
    """MGD's random spatial masks K, one (B, 1, H, W) per level of ``feats``: 1 (kept) with probability 1 − λ."""
    return [(torch.rand(f.shape[0], 1, *f.shape[2:], device=f.device) >= mask_ratio).float() for f in feats]


MGD_ALPHA = 2e-5  # MGD's α for detection (Yang et al. 2022): the weight of its summed squared error


def mgd_loss(generated: torch.Tensor, teacher: torch.Tensor, alpha: float = MGD_ALPHA) -> torch.Tensor:
    """MGD for one level at the paper's scale: α · Σ_{b,c,h,w} (G(A(S)·K) − T)² / B.

    generated, teacher: (B, C, H, W). Summed over channels and positions (not averaged), averaged over the batch.
    """
    return alpha * (generated - teacher).pow(2).sum() / generated.shape[0]


def boxes_to_masks(bboxes: torch.Tensor, batch_idx: torch.Tensor, batch_size: int, shapes: list[tuple[int, int]]):
    """Binary foreground masks, one (B, 1, H, W) per level: cells whose centre lies inside a ground-truth box.

    Args:
        bboxes: (N, 4) normalized xywh ground-truth boxes (Ultralytics batch format).
        batch_idx: (N,) image index of each box.
        shapes: [(H, W)] per level.
    """
    masks = []
    for h, w in shapes:
        m = torch.zeros(batch_size, 1, h, w, device=bboxes.device)
        if len(bboxes):
            ys = (torch.arange(h, device=bboxes.device) + 0.5) / h
            xs = (torch.arange(w, device=bboxes.device) + 0.5) / w
            x0, y0 = bboxes[:, 0] - bboxes[:, 2] / 2, bboxes[:, 1] - bboxes[:, 3] / 2
            x1, y1 = bboxes[:, 0] + bboxes[:, 2] / 2, bboxes[:, 1] + bboxes[:, 3] / 2
            inside = ((ys[None, :, None] >= y0[:, None, None]) & (ys[None, :, None] <= y1[:, None, None])
                      & (xs[None, None, :] >= x0[:, None, None]) & (xs[None, None, :] <= x1[:, None, None]))  # (N,H,W)
            idx = batch_idx.long().view(-1)
            m[:, 0].index_put_((idx,), inside.float(), accumulate=True)
            m.clamp_(max=1.0)
        masks.append(m)
    return masks


def feature_kd_loss(
    student_feats: list[torch.Tensor],
    teacher_feats: list[torch.Tensor],
    adapters,
    method: str = "cwd",
    tau: float = 1.0,
    masks: list[torch.Tensor] | None = None,
    mgd_ratio: float = 0.65,
) -> torch.Tensor:
    """The chosen imitation loss between adapted student and teacher features: mean over levels for ``mse`` and
    ``cwd``, sum over levels for ``mgd`` (the paper's scale, see the module doc).

    ``adapters`` is a :class:`~detkd.models.adapters.FeatureAdapters` or its DDP wrapper: it is only called, so every
    parameter (alignment, MGD generators) runs inside its forward. The teacher's features are targets: detached here.
    """
    teacher_feats = [t.detach() for t in teacher_feats]
    if method not in FEATURE_METHODS:
        raise ValueError(f"unknown feature KD method '{method}' (expected one of {FEATURE_METHODS})")
    if method == "mgd":  # masking and generation run inside the adapters' forward (see models/adapters.py)
        generated = adapters(student_feats, mgd_keep_masks(student_feats, mgd_ratio))
        return torch.stack([mgd_loss(g.float(), t.float()) for g, t in zip(generated, teacher_feats)]).sum()
    aligned = adapters(student_feats)
    losses = []
    for i, (s, t) in enumerate(zip(aligned, teacher_feats)):
        s, t = s.float(), t.float()
        if method == "mse":
            losses.append(mse_loss(s, t, None if masks is None else masks[i]))
        else:
            losses.append(cwd_loss(s, t, tau))
    return torch.stack(losses).mean()

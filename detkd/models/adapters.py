"""Learned adapters that map student neck features to the teacher's channel width.

One 1×1 convolution per level (C_s → C_t). For MGD each level also gets a generator (conv3×3-ReLU-conv3×3 on C_t)
that reconstructs the teacher feature from the masked student one. Adapters are trained with the student (their
own optimizer parameter group), saved beside the checkpoint for resume (``weights/kd_adapters.pt``), and never
part of the student checkpoint or any export.

Everything that has parameters runs inside :meth:`FeatureAdapters.forward` (alignment, and for MGD masking +
generation), so under multi-GPU training the torch DDP wrapper the trainer puts around the adapters sees every
parameter used in its forward: gradients are all-reduced without ``find_unused_parameters``. Loss code calls the
module (or its wrapper); it never reaches into ``.align`` or ``.generators``.
"""

from __future__ import annotations

import torch
from torch import nn


class FeatureAdapters(nn.Module):
    """Per-level student→teacher channel adapters (and MGD generators when ``with_generators``)."""

    def __init__(self, student_channels: list[int], teacher_channels: list[int], with_generators: bool = False):
        super().__init__()
        if len(student_channels) != len(teacher_channels):
            raise ValueError("student and teacher must have the same number of feature levels")
        self.align = nn.ModuleList(nn.Conv2d(cs, ct, kernel_size=1) for cs, ct in zip(student_channels, teacher_channels))
        self.generators = (
            nn.ModuleList(
                nn.Sequential(nn.Conv2d(ct, ct, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(ct, ct, 3, padding=1))
                for ct in teacher_channels
            )
            if with_generators
            else None
        )

    def forward(self, feats: list[torch.Tensor], keep: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """Align each level, and with MGD generators reconstruct the teacher feature from the masked aligned one.

        Args:
            feats: per level (B, C_s, H, W) student features.
            keep: MGD only (required with generators, refused without): per level (B, 1, H, W) keep masks K in {0, 1}.

        Returns:
            per level (B, C_t, H, W): the aligned features A(S), or with generators G(A(S)·K).
        """
        aligned = [conv(f) for conv, f in zip(self.align, feats)]
        if self.generators is None:
            if keep is not None:
                raise ValueError("keep masks given to adapters built without MGD generators")
            return aligned
        if keep is None or len(keep) != len(aligned):
            raise ValueError("adapters with MGD generators need one keep mask (B, 1, H, W) per level")
        return [gen(a * k.to(a.dtype)) for gen, a, k in zip(self.generators, aligned, keep)]

    @torch.no_grad()
    def set_identity_(self) -> "FeatureAdapters":
        """Make every adapter the identity (requires C_s == C_t); used to check losses vanish on equal features."""
        for conv in self.align:
            if conv.in_channels != conv.out_channels:
                raise ValueError("identity adapters need equal student and teacher channels")
            conv.weight.zero_()
            conv.weight[:, :, 0, 0].copy_(torch.eye(conv.in_channels))
            conv.bias.zero_()
        return self

"""The frozen teacher: loaded once, never trained, run as fast as the hardware allows.

``FrozenTeacher`` wraps an Ultralytics ``DetectionModel``:

* every parameter has ``requires_grad=False``, the module is in ``eval()`` (BatchNorm uses running stats);
* forward runs under ``torch.no_grad()`` (not ``inference_mode``: its outputs are targets inside the student's
  autograd graph, which inference tensors cannot be);
* on CUDA it is optimised for inference: Conv+BN fused, FP16 weights, channels_last memory format
  (see ``benchmarks/kd_overhead.py`` for the measured speed-up).

It returns what distillation needs, in FP32: DFL logits (B, A, 4·R), class logits (B, A, C) and the neck
features (the Detect head's inputs, P3/P4/P5).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class HeadOutputs:
    """Raw (pre-sigmoid, pre-softmax) head outputs of one forward pass, anchors concatenated over levels."""

    boxes: torch.Tensor  # (B, A, 4·reg_max) DFL logits
    scores: torch.Tensor  # (B, A, nc) class logits
    feats: list[torch.Tensor]  # per level (B, C_l, H_l, W_l), the Detect head's inputs


def split_head_outputs(preds) -> HeadOutputs:
    """Normalise Ultralytics head outputs (train dict, (y, dict) eval tuple, end-to-end two-branch dict)."""
    if isinstance(preds, (tuple, list)):
        preds = preds[1]
    if "one2many" in preds:  # end-to-end heads (YOLOv10/26): the dense one-to-many branch is the one to imitate
        preds = preds["one2many"]
    return HeadOutputs(
        boxes=preds["boxes"].permute(0, 2, 1), scores=preds["scores"].permute(0, 2, 1), feats=list(preds["feats"])
    )


def detect_head(model):
    """The model's Detect head (last layer)."""
    return model.model[-1]


def feature_channels(model) -> list[int]:
    """Channels of the Detect head's inputs, read from its first box-branch convolutions (no forward pass)."""
    head = detect_head(model)
    return [int(branch[0].conv.in_channels) for branch in head.cv2]


class FrozenTeacher:
    """A frozen, inference-optimised teacher (not an ``nn.Module``: it is never part of the trained model)."""

    def __init__(self, model, device: torch.device):
        self.model = model.to(device).float().eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.device = device
        self.half = False
        self.channels_last = False

    def optimize(self, half: bool = True) -> "FrozenTeacher":
        """Fuse Conv+BN; on CUDA also FP16 (if ``half``) and channels_last."""
        if hasattr(self.model, "fuse") and not self.model.is_fused():
            self.model = self.model.fuse(verbose=False)
        if self.device.type == "cuda":
            self.channels_last = True
            self.model = self.model.to(memory_format=torch.channels_last)
            if half:
                self.half = True
                self.model = self.model.half()
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        return self

    @torch.no_grad()
    def __call__(self, img: torch.Tensor) -> HeadOutputs:
        """img (B, 3, H, W) float in [0, 1] → FP32 :class:`HeadOutputs`."""
        x = img.half() if self.half else img.float()
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=self.device.type, enabled=False):
            out = split_head_outputs(self.model(x))
        return HeadOutputs(out.boxes.float(), out.scores.float(), [f.float() for f in out.feats])

    # ---------------------------------------------------------------------------------------------- facts
    @property
    def nc(self) -> int:
        return int(detect_head(self.model).nc)

    @property
    def reg_max(self) -> int:
        return int(detect_head(self.model).reg_max)

    @property
    def strides(self) -> list[float]:
        return [float(s) for s in detect_head(self.model).stride]

    @property
    def channels(self) -> list[int]:
        return feature_channels(self.model)

    @property
    def names(self) -> dict:
        return dict(getattr(self.model, "names", {}) or {})

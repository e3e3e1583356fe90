"""KD terms balanced against the student's own detection loss, so one weight means the same on every dataset.

The raw KD terms and YOLO's detection loss have magnitudes that depend on the data (objects per image, classes,
box sizes) in different ways: the same ``--cls-kd 1`` can be a whisper on one dataset and drown the labels on
another. With balancing on, term k enters the loss as

    L_k' = w_k · (D̄ / K̄_k) · L_k

where L_k is the raw term of this batch, D̄ and K̄_k are exponential moving averages (no gradient) of the detection
loss D = box + cls + dfl (Ultralytics' gains applied) and of L_k. The gradient keeps L_k's direction; its size
follows the detection loss, so ``w_k = 0.5`` means "about half as large as the detection loss", whatever the data.
Scaling the detection loss by s scales every balanced term by s; scaling a raw KD term by s leaves it unchanged.
"""

from __future__ import annotations

import torch

BALANCE_MODES = ("none", "detection")


class LossBalancer:
    """Running magnitudes of the detection loss and each KD term; rescales raw terms to the detection loss."""

    def __init__(self, momentum: float = 0.9, eps: float = 1e-8):
        self.momentum = momentum
        self.eps = eps
        self.running: dict[str, torch.Tensor] = {}  # on the loss' device: no host sync per batch

    def _update(self, name: str, value: torch.Tensor) -> torch.Tensor:
        v = value.detach().float()
        prev = self.running.get(name)
        self.running[name] = v if prev is None else self.momentum * prev + (1 - self.momentum) * v
        return self.running[name]

    def observe_detection(self, det_total: torch.Tensor) -> None:
        """Record this batch's detection loss (a scalar: box + cls + dfl with gains)."""
        self._update("detection", det_total)

    def __call__(self, name: str, raw: torch.Tensor) -> torch.Tensor:
        """raw (scalar, with gradient) → raw · D̄ / K̄_name; call :meth:`observe_detection` first each batch."""
        k = self._update(name, raw)
        detection = self.running.get("detection")
        if detection is None:
            raise RuntimeError("LossBalancer: observe_detection() must be called before balancing a KD term")
        return raw * (detection / k.clamp(min=self.eps))

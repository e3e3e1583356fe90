"""KD terms balanced against the student's own detection loss, so one weight means the same on every dataset.

The raw KD terms and YOLO's detection loss have magnitudes that depend on the data (objects per image, classes,
box sizes) in different ways: the same ``--cls-kd 1`` can be a whisper on one dataset and drown the labels on
another. With balancing on, term k enters the loss as

    L_k' = w_k · (D̄ / K̄_k) · L_k

where L_k is the raw term of this batch, D̄ and K̄_k are exponential moving averages (no gradient) of the detection
loss D = box + cls + dfl (Ultralytics' gains applied) and of L_k. The gradient keeps L_k's direction; its size
follows the detection loss, so ``w_k = 0.5`` means "about half as large as the detection loss", whatever the data.
Scaling the detection loss by s scales every balanced term by s; scaling a raw KD term by s leaves it unchanged.

* Batches with no labelled image (``--unlabeled``, soft KD only) have no detection loss: they leave D̄ as it is (a
  0 there would pull it down, and KD with it). Before the first labelled batch a balanced term is 0.
* A KD term of exactly 0 (no anchor to distil on: e.g. ``verified`` weights on a batch without a box of a class the
  teacher knows) leaves K̄_k as it is, for the same reason.
* Under DDP each batch's D and L_k are averaged over the ranks (one all_reduce each; D over the ranks that had
  labelled images) before the moving averages, so every rank scales KD alike; on one process nothing is reduced.
* :meth:`LossBalancer.state_dict` is saved with each checkpoint (``engine/checkpoints.py``): a resume continues the
  running scale instead of restarting it.
"""

from __future__ import annotations

import torch

BALANCE_MODES = ("none", "detection")


def _distributed_world() -> int:
    """The number of DDP ranks, 1 without an initialised process group."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _sum_across_ranks(values: torch.Tensor) -> torch.Tensor:
    """values (K,) → their sum over the DDP ranks (a new tensor; ``values`` itself on one process)."""
    if _distributed_world() == 1:
        return values
    import torch.distributed as dist

    total = values.clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


class LossBalancer:
    """Running magnitudes of the detection loss and each KD term; rescales raw terms to the detection loss."""

    def __init__(self, momentum: float = 0.9, eps: float = 1e-8):
        self.momentum = momentum
        self.eps = eps
        self.running: dict[str, torch.Tensor] = {}  # on the loss' device: no host sync per batch
        self.observed = False  # observe_detection() was called (maybe before any labelled batch)

    def _average(self, name: str, value: torch.Tensor) -> torch.Tensor:
        """Fold this batch's value (a scalar, already reduced over ranks) into the moving average of ``name``."""
        prev = self.running.get(name)
        prev = None if prev is None else prev.to(value.device)  # restored from a checkpoint: on the CPU
        self.running[name] = value if prev is None else self.momentum * prev + (1 - self.momentum) * value
        return self.running[name]

    def _average_magnitude(self, name: str, raw: torch.Tensor) -> torch.Tensor:
        """K̄_name after this batch: a raw term of exactly 0 (no anchor to distil on) is no magnitude and leaves it
        as it was (the first non-zero value starts it); under DDP the mean over the ranks with a non-zero term. No
        host sync."""
        total, count = _sum_across_ranks(torch.stack([raw, (raw != 0).float()]))
        now = total / count.clamp(min=1.0)
        prev = self.running.get(name)
        prev = now if prev is None else prev.to(now.device)  # restored from a checkpoint: on the CPU
        blended = torch.where(prev > 0, self.momentum * prev + (1 - self.momentum) * now, now)
        self.running[name] = torch.where(count > 0, blended, prev)
        return self.running[name]

    def observe_detection(self, det_total: torch.Tensor, labeled: bool = True) -> None:
        """Record this batch's detection loss (a scalar: box + cls + dfl with gains); ``labeled`` False: the batch had
        no labelled image (its 0 is not a magnitude). Under DDP: the mean over the ranks with labelled images."""
        self.observed = True
        v = det_total.detach().float()
        if _distributed_world() == 1:
            if labeled:
                self._average("detection", v)
            return
        flag = torch.ones((), device=v.device) if labeled else torch.zeros((), device=v.device)
        total, count = _sum_across_ranks(torch.stack([v * flag, flag]))
        if float(count) > 0:  # host sync, DDP only: whether any rank had labelled images
            self._average("detection", total / count)

    def __call__(self, name: str, raw: torch.Tensor) -> torch.Tensor:
        """raw (scalar, with gradient) → raw · D̄ / K̄_name; call :meth:`observe_detection` first each batch."""
        if not self.observed:
            raise RuntimeError("LossBalancer: observe_detection() must be called before balancing a KD term")
        k = self._average_magnitude(name, raw.detach().float())
        detection = self.running.get("detection")
        if detection is None:  # no labelled batch yet: no magnitude to scale to
            return raw * 0.0
        return raw * (detection.to(k.device) / k.clamp(min=self.eps))

    # ------------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """The running magnitudes (CPU floats) and settings, saved with each checkpoint."""
        return {"momentum": self.momentum, "eps": self.eps,
                "running": {k: float(v) for k, v in self.running.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Continue from saved running magnitudes (moved to the loss' device at their next update)."""
        self.momentum, self.eps = float(state["momentum"]), float(state["eps"])
        self.running = {k: torch.tensor(float(v)) for k, v in state["running"].items()}

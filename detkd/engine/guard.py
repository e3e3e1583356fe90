"""Is distillation working with the labels or against them? A cheap check, every batch.

The student's own detection loss D is what it is finally judged by (its labels); the KD terms pull it toward the
teacher. Where the teacher is right, both pull the same way; where the teacher disagrees with the labels, KD pulls
the student's predictions against them. The direction of each pull on the student's *head outputs* is cheap to
measure (two small autograd calls on the loss graph only, no extra pass through the network):

    align_cls = cos(∂D_cls/∂s, ∂L_cls_kd/∂s)      s: class logits (B, C, A)
    align_box = cos(∂(D_box + D_dfl)/∂z, ∂L_box_kd/∂z)      z: box (DFL) logits (B, 4·R, A)

+1: KD pushes exactly where the labels do; 0: unrelated directions; < 0: KD works against the labels. They are
logged per epoch as ``train/kd_align_cls`` and ``train/kd_align_box`` (0 when that term is off) in results.csv.

:class:`KDGuard` watches them: when an active term stays below ``threshold`` for ``patience`` epochs in a row, it
warns once in the log — the teacher disagrees with the labels and its imitation is likely costing accuracy — and
records the verdict in ``kd_guard.json`` beside ``results.csv`` (``detkd compare`` shows it).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

ALIGN_ITEMS = ("kd_align_cls", "kd_align_box")
HEADER_NAMES = {"kd_align_cls": "align_cls", "kd_align_box": "align_box"}  # fit the progress bar's 11-wide columns


def _cosine(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor:
    if a is None or b is None:
        return torch.zeros(())
    a, b = a.detach().float().flatten(), b.detach().float().flatten()
    return (a @ b) / (a.norm() * b.norm()).clamp(min=1e-12)


def _grad(loss: torch.Tensor, wrt: torch.Tensor) -> torch.Tensor | None:
    if not (loss.requires_grad and wrt.requires_grad):
        return None
    return torch.autograd.grad(loss, wrt, retain_graph=True, allow_unused=True)[0]


def gradient_alignment(det_loss: torch.Tensor, kd_terms: dict[str, torch.Tensor], scores: torch.Tensor,
                       boxes: torch.Tensor) -> dict[str, torch.Tensor]:
    """Cosines between detection and KD gradients on the head outputs (see the module doc).

    Args:
        det_loss: (3,) box, cls, dfl detection losses of this batch (with gains).
        kd_terms: weighted KD terms by name (``cls_kd``, ``box_kd``, ...).
        scores: the student's class logits, boxes: its box logits, as they left the head (in the graph).
    """
    if not torch.is_grad_enabled():
        return {k: torch.zeros(()) for k in ALIGN_ITEMS}
    cls = _cosine(_grad(det_loss[1], scores), _grad(kd_terms["cls_kd"], scores))
    box = _cosine(_grad(det_loss[0] + det_loss[2], boxes), _grad(kd_terms["box_kd"], boxes))
    return {"kd_align_cls": cls.to(det_loss.device), "kd_align_box": box.to(det_loss.device)}


class KDGuard:
    """Warns when an active KD term works against the labels for ``patience`` epochs in a row (once per term)."""

    def __init__(self, threshold: float = 0.0, patience: int = 3):
        self.threshold = threshold
        self.patience = patience
        self.history: dict[str, list[float]] = {k: [] for k in ALIGN_ITEMS}
        self.warned: dict[str, int] = {}  # item -> epoch of the warning

    def update(self, epoch: int, tloss: dict, active: dict[str, bool]) -> list[str]:
        """Record one epoch's mean alignments; return the warnings raised now."""
        messages = []
        for item in ALIGN_ITEMS:
            if item not in (tloss or {}):
                continue
            self.history[item].append(float(tloss[item]))
            term = "cls" if item.endswith("cls") else "box"
            recent = self.history[item][-self.patience:]
            if (active.get(term) and item not in self.warned and len(recent) == self.patience
                    and all(v < self.threshold for v in recent)):
                self.warned[item] = epoch
                messages.append(
                    f"the {term} KD term has pulled the student against its labels for {self.patience} epochs "
                    f"(gradient cosine {', '.join(f'{v:+.2f}' for v in recent)}): the teacher disagrees with your "
                    f"labels there, and imitating it is likely costing accuracy. Try --anchor-weighting verified "
                    f"(imitate the teacher only where it is right), a decaying --kd-schedule, or --{term}-kd 0; "
                    f"`detkd compare` measures it against a baseline.")
        return messages

    def summary(self) -> dict:
        return {"threshold": self.threshold, "patience": self.patience, "history": self.history,
                "warned": self.warned}

    def save(self, folder: Path) -> Path:
        path = Path(folder) / "kd_guard.json"
        path.write_text(json.dumps(self.summary(), indent=2))
        return path

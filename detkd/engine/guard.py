"""Is distillation working with the labels or against them? A cheap check, every batch — and, on request, a reaction.

The student's own detection loss D is what it is finally judged by (its labels); the KD terms pull it toward the
teacher. Where the teacher is right, both pull the same way; where the teacher disagrees with the labels, KD pulls
the student against them. The direction of each pull is measured where the term acts (autograd calls on the loss and
head graph only, no extra pass through the network):

    align_cls  = cos(∂D_cls/∂s, ∂L_cls_kd/∂s)               s: class logits (B, C, A)
    align_box  = cos(∂(D_box + D_dfl)/∂z, ∂L_box_kd/∂z)     z: box (DFL) logits (B, 4·R, A)
    align_feat = cos(∂D/∂F, ∂L_feat_kd/∂F)                  F: the neck features, the Detect head's inputs: every
                                                              level (B, C_l, H_l, W_l) flattened, concatenated

+1: KD pushes exactly where the labels do; 0: unrelated directions; < 0: KD works against the labels. ∂D/∂F goes back
through the head's convolutions only (not the network); ∂L_feat/∂F through the adapters. Each cosine is taken on the
term before the guard's scale (below), so a term scaled to 0 is still watched. They are logged per epoch as
``train/kd_align_cls``, ``train/kd_align_box`` and ``train/kd_align_feat`` (0 when that term is off) in results.csv.

:class:`KDGuard` watches them per epoch. When an active term stays below ``threshold`` for ``patience`` epochs in a
row, it warns once in the log — the teacher disagrees with the labels there and its imitation is likely costing
accuracy — and records it in ``kd_guard.json`` beside ``results.csv`` (``detkd compare`` shows it). Mode
(``KDConfig.guard``, ``--kd-guard``):

* ``warn`` (default): that is all; the loss is never changed.
* ``adapt``: the term's weight is also scaled: halved after ``patience`` epochs below the threshold and again after
  each further such epoch, 0 after :data:`CUT_STEPS` cuts (1, 1/2, 1/4, 1/8, 0); each epoch at or above the
  threshold restores one step (x2, from 0 to 1/8). A single bad epoch after a restore does not cut again: that takes
  ``patience`` in a row. The scale each epoch trained with is logged as ``train/kd_scale_cls|box|feat`` in
  results.csv, each change is printed once, and the guard's state is saved with every checkpoint, so a resume
  continues with the same scales.

The criterion only multiplies each weighted term by its scale (``DistillationLoss.term_scales``).
"""

from __future__ import annotations

import json
import math
from copy import deepcopy
from pathlib import Path

import torch

TERMS = ("cls", "box", "feat")
ALIGN_ITEMS = tuple(f"kd_align_{t}" for t in TERMS)  # loss items (per batch, the epoch mean in results.csv)
SCALE_ITEMS = tuple(f"kd_scale_{t}" for t in TERMS)  # results.csv columns (per epoch)
KD_TERM_OF = {"cls": "cls_kd", "box": "box_kd", "feat": "feat_kd"}  # the criterion's name of each term
TERM_NAMES = {"cls": "cls KD", "box": "box KD", "feat": "feature KD"}
HEADER_NAMES = {item: item[len("kd_"):] for item in ALIGN_ITEMS}  # fit the progress bar's 11-wide columns
GUARD_MODES = ("warn", "adapt")
CUT_STEPS = 4  # adapt: a term's weight goes 1, 1/2, 1/4, 1/8, then 0
FEAT_EVERY = 4  # align_feat is measured on every 4th batch (see AlignmentProbe)


def scale_of(cuts: int, steps: int = CUT_STEPS) -> float:
    """The weight multiplier after ``cuts`` cuts: halved each time, 0 after ``steps``."""
    return 0.0 if cuts >= steps else 0.5 ** cuts


def _cosine(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor:
    if a is None or b is None:
        return torch.zeros(())
    a, b = a.detach().float().flatten(), b.detach().float().flatten()
    return (a @ b) / (a.norm() * b.norm()).clamp(min=1e-12)


def _grad(loss: torch.Tensor, wrt: torch.Tensor | list[torch.Tensor]) -> torch.Tensor | None:
    """∂loss/∂wrt, flattened (a list: every tensor's gradient flattened and concatenated, 0 where unused); None when
    ``loss`` does not depend on it."""
    tensors = list(wrt) if isinstance(wrt, (list, tuple)) else [wrt]
    if not (loss.requires_grad and all(t.requires_grad for t in tensors)):
        return None
    grads = torch.autograd.grad(loss, tensors, retain_graph=True, allow_unused=True)
    if all(g is None for g in grads):
        return None
    return torch.cat([(torch.zeros_like(t) if g is None else g).flatten() for g, t in zip(grads, tensors)])


def _alignment(det: torch.Tensor, kd: torch.Tensor, wrt) -> torch.Tensor:
    """cos(∂det/∂wrt, ∂kd/∂wrt); 0 when the KD term is off (the detection gradient is then not computed)."""
    g_kd = _grad(kd, wrt)
    return torch.zeros(()) if g_kd is None else _cosine(_grad(det, wrt), g_kd)


def gradient_alignment(det_loss: torch.Tensor, kd_terms: dict[str, torch.Tensor], scores: torch.Tensor,
                       boxes: torch.Tensor, feats: list[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Cosines between detection and KD gradients where each term acts (see the module doc).

    Args:
        det_loss: (3,) box, cls, dfl detection losses of this batch (with gains).
        kd_terms: weighted KD terms by name (``cls_kd``, ``box_kd``, ``feat_kd``), before the guard's scales.
        scores: the student's class logits, boxes: its box logits, as they left the head (in the graph).
        feats: the student's neck features, the head's inputs (in the graph); None: ``kd_align_feat`` is 0.
    """
    if not torch.is_grad_enabled():
        return {k: torch.zeros(()) for k in ALIGN_ITEMS}
    cls = _alignment(det_loss[1], kd_terms["cls_kd"], scores)
    box = _alignment(det_loss[0] + det_loss[2], kd_terms["box_kd"], boxes)
    feat = torch.zeros(()) if feats is None else _alignment(det_loss.sum(), kd_terms["feat_kd"], feats)
    return {k: v.to(det_loss.device) for k, v in zip(ALIGN_ITEMS, (cls, box, feat))}


class AlignmentProbe:
    """:func:`gradient_alignment` as the criterion calls it, once per training batch.

    ``align_feat`` costs a backward through the head's convolutions and the adapters: about ten times the two others
    together, 9 to 15% of a KD step on a 2-core CPU (measured: docs/recipe.md, "The KD guard"). It is measured on
    batches 0, n, 2n, ... of each epoch (``feat_every`` = n) and its last value held in between, so the epoch mean in
    results.csv is a sample-and-hold mean (each measured batch stands for the n - 1 after it).
    """

    def __init__(self, feat_every: int = FEAT_EVERY):
        self.feat_every = feat_every
        self.batches = 0  # training batches seen this epoch
        self.held = torch.zeros(())

    def start_epoch(self) -> None:
        """A new epoch: its first batch is measured (no value held over from the last epoch)."""
        self.batches = 0

    def __call__(self, det_loss: torch.Tensor, kd_terms: dict[str, torch.Tensor], scores: torch.Tensor,
                 boxes: torch.Tensor, feats: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        if not torch.is_grad_enabled():
            return gradient_alignment(det_loss, kd_terms, scores, boxes)
        measure = self.batches % self.feat_every == 0
        self.batches += 1
        out = gradient_alignment(det_loss, kd_terms, scores, boxes, feats if measure else None)
        if measure:
            self.held = out["kd_align_feat"]
        return {**out, "kd_align_feat": self.held}


class KDGuard:
    """Watches each KD term's alignment per epoch: warns once when one works against the labels for ``patience``
    epochs in a row; in ``adapt`` mode also scales its weight down, and back up when it agrees again."""

    def __init__(self, threshold: float = 0.0, patience: int = 3, mode: str = "warn", steps: int = CUT_STEPS):
        if mode not in GUARD_MODES:
            raise ValueError(f"guard mode '{mode}' is not one of {', '.join(GUARD_MODES)}")
        self.mode = mode
        self.threshold = threshold
        self.patience = patience
        self.steps = steps
        self.history: dict[str, list[float]] = {k: [] for k in ALIGN_ITEMS}  # mean alignment per epoch
        self.scale_history: dict[str, list[float]] = {k: [] for k in SCALE_ITEMS}  # the scale each epoch used
        self.warned: dict[str, int] = {}  # item -> epoch of the warning
        self.below = dict.fromkeys(TERMS, 0)  # epochs in a row below the threshold
        self.cuts = dict.fromkeys(TERMS, 0)  # adapt: the scale is scale_of(cuts)
        self.last_epoch: int | None = None
        self._before_last: dict | None = None  # the state before the last epoch's update (an epoch redone)

    # ------------------------------------------------------------------------------------------- scales
    def scales(self) -> dict[str, float]:
        """The scale of each term (``cls``, ``box``, ``feat``) from now on; always 1 in ``warn`` mode."""
        return {t: scale_of(self.cuts[t], self.steps) for t in TERMS}

    def loss_scales(self) -> dict[str, float]:
        """:meth:`scales` by the criterion's term names (``cls_kd``, ...): ``DistillationLoss.term_scales``."""
        return {KD_TERM_OF[t]: s for t, s in self.scales().items()}

    def scale_columns(self) -> dict[str, float]:
        """results.csv columns: the scale each term had during the last epoch recorded (now, before any)."""
        now = self.scales()
        return {f"train/{k}": (h[-1] if h else now[t]) for t, (k, h) in zip(TERMS, self.scale_history.items())}

    # ------------------------------------------------------------------------------------------ updates
    def update(self, epoch: int, tloss: dict, active: dict[str, bool]) -> list[str]:
        """Record one epoch's mean alignments (``tloss``: the epoch's loss items); ``active``: term -> its weight is
        > 0 this epoch. Returns the messages to log now: warnings, and in ``adapt`` mode each change of a scale."""
        if epoch == self.last_epoch and self._before_last is not None:  # the epoch was redone (NaN recovery)
            self.load_state_dict(self._before_last)
        self._before_last, self.last_epoch = self.state_dict(), epoch
        used = self.scales()
        messages = []
        for term, item in zip(TERMS, ALIGN_ITEMS):
            if item not in (tloss or {}):
                continue
            value = float(tloss[item])
            self.history[item].append(value)
            if active.get(term) and math.isfinite(value):  # a NaN epoch is no evidence either way
                messages += self._judge(epoch, term, value)
        for term, k in zip(TERMS, SCALE_ITEMS):
            self.scale_history[k].append(used[term])
        return messages

    def start_epoch(self, epoch: int) -> None:
        """Epoch ``epoch`` (1-based) is about to be trained. When its end was already recorded (Ultralytics' NaN
        recovery discards it and trains it again), forget that record: the redone epoch trains with the scales the
        epoch had, not the ones its discarded run decided."""
        if epoch == self.last_epoch and self._before_last is not None:
            before, self._before_last = self._before_last, None
            self.load_state_dict(before)

    def _judge(self, epoch: int, term: str, value: float) -> list[str]:
        """One epoch of one active term: the streak below the threshold, the warning, the scale (adapt)."""
        item, below = f"kd_align_{term}", value < self.threshold
        self.below[term] = self.below[term] + 1 if below else 0
        flagged = self.below[term] >= self.patience
        messages = []
        if flagged and item not in self.warned:
            self.warned[item] = epoch
            recent = self.history[item][-self.patience:]
            messages.append(self._warning(term, recent))
        if self.mode == "adapt":
            before = self.cuts[term]
            self.cuts[term] = min(before + 1, self.steps) if flagged else before if below else max(before - 1, 0)
            if self.cuts[term] != before:
                messages.append(self._change(epoch, term, scale_of(before, self.steps), value))
        return messages

    def _warning(self, term: str, recent: list[float]) -> str:
        advice = ("Try --feat-kd 0 (feature imitation copies the teacher's neck features everywhere, with no anchor "
                  "weighting to keep it where the teacher is right), a decaying --kd-schedule"
                  + (", or --kd-guard adapt" if self.mode == "warn" else "")
                  if term == "feat" else
                  f"Try --anchor-weighting verified (imitate the teacher only where it is right), a decaying "
                  f"--kd-schedule, or --{term}-kd 0")
        return (f"the {TERM_NAMES[term]} term has pulled the student against its labels for {self.patience} epochs "
                f"(gradient cosine {', '.join(f'{v:+.2f}' for v in recent)}): the teacher disagrees with your "
                f"labels there, and imitating it is likely costing accuracy. {advice}; `detkd compare` measures it "
                f"against a baseline.")

    def _change(self, epoch: int, term: str, before: float, value: float) -> str:
        after = self.scales()[term]
        why = (f"below {self.threshold:g} for {self.below[term]} epochs in a row" if after < before else
               f"back at or above {self.threshold:g}: restored one step per such epoch")
        return (f"KD guard (adapt): {TERM_NAMES[term]} weight scaled x{before:g} -> x{after:g} from epoch {epoch + 1} "
                f"(gradient cosine {value:+.2f} at epoch {epoch}, {why}; --kd-guard warn leaves weights alone).")

    # ------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        """Everything a resume needs, as plain data (saved with each checkpoint: ``engine/checkpoints.py``)."""
        return deepcopy({"mode": self.mode, "threshold": self.threshold, "patience": self.patience,
                         "steps": self.steps, "history": self.history, "scale_history": self.scale_history,
                         "warned": self.warned, "below": self.below, "cuts": self.cuts, "last_epoch": self.last_epoch})

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state`` (the mode stays this guard's: it is the run's KD setting)."""
        state = deepcopy(state)
        self.threshold, self.patience, self.steps = state["threshold"], state["patience"], state["steps"]
        self.history = {k: list(state["history"].get(k, [])) for k in ALIGN_ITEMS}
        self.scale_history = {k: list(state["scale_history"].get(k, [])) for k in SCALE_ITEMS}
        self.warned = {k: int(v) for k, v in state["warned"].items()}
        self.below = {t: int(state["below"].get(t, 0)) for t in TERMS}
        self.cuts = {t: int(state["cuts"].get(t, 0)) if self.mode == "adapt" else 0 for t in TERMS}
        self.last_epoch = state.get("last_epoch")

    def summary(self) -> dict:
        return {"mode": self.mode, "threshold": self.threshold, "patience": self.patience, "history": self.history,
                "warned": self.warned, "scales": self.scales(), "scale_history": self.scale_history}

    def save(self, folder: Path) -> Path:
        path = Path(folder) / "kd_guard.json"
        path.write_text(json.dumps(self.summary(), indent=2))
        return path


def shared_across_ranks(scales: dict[str, float]) -> dict[str, float]:
    """Under DDP, rank 0's scales on every rank (only rank 0's guard judges); unchanged on one process."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return scales
    box = [scales]
    dist.broadcast_object_list(box, src=0)
    return box[0]

"""Several frozen teachers distilled as one: the weighted ensemble is the teacher.

K teachers with weights w_k (Σ w_k = 1) run on the same batch. Their dense outputs are combined into the outputs of
one *ensemble teacher*, the model whose probabilities are the weighted mean of the members' (A anchors, C classes,
R DFL bins):

* class scores, ``bce`` logit KD (independent sigmoids):   p̄_ac = Σ_k w_k σ(t^k_ac),     t̄ = logit(p̄)
* class scores, ``kl`` logit KD (one softmax over C):        p̄_a  = Σ_k w_k softmax(t^k_a), t̄ = log p̄
* confidence (anchor weights, ``verified``, unlabelled-image weights, pseudo-labels), whatever the logit KD:
  c̄_ac = Σ_k w_k σ(t^k_ac), returned as ``conf_logits`` = logit(c̄); a class only some members know (teachers with
  other classes) averages over those members. ``log p̄`` is a softmax target only: a sigmoid
  of it is ≥ 1/(C+1) even where every member sees background, so it is never read as a confidence.
* boxes, all members with the same DFL bins (reg_max R > 1): per side q̄ = Σ_k w_k softmax(z^k), z̄ = log q̄
* boxes otherwise (e.g. YOLOv8 + YOLO26): expected distances d̄ = Σ_k w_k d^k in grid units, returned as a
  ``reg_max = 1`` head (the decoded-distance KD path then applies)
* features: the members' neck features concatenated along channels per level, (B, Σ_k C_k, H, W). One 1×1 adapter
  C_s → Σ_k C_k is exactly one adapter per teacher stacked (each output block sees only its teacher), so each
  teacher's features are imitated through its own adapter; the mean-type losses (cwd, mse) then weight each
  teacher by its share of the channels (mgd sums over channels: each teacher's block counts in full); the teacher
  weights apply to the class and box targets.

Why combine targets rather than sum per-teacher losses (the default, ``ensemble_rule='targets'``): for the KL-type
terms (logit KD at T = 1) the two have the same gradient for the student — Σ_k w_k KL(p^k ‖ q) = KL(p̄ ‖ q) + const,
because the cross-entropy is linear in the target — so averaging targets loses nothing there, and it gives one set
of anchor weights (the ensemble's confidence, or where the ensemble is right for ``verified``) instead of K
competing ones, with the loss code unchanged. Two identical teachers give exactly the single teacher's targets.
The box terms are not linear in their target (the L1 of decoded distances, the LD temperature), and each teacher
may be right at other anchors, so the other rule, ``ensemble_rule='losses'``, is kept to measure against:
L = Σ_k w_k · L(student, teacher k), each member with its own anchor weights and box path (its own DFL bins or
decoded distances); the feature term is the same under both rules (one adapter block per teacher).
"""

from __future__ import annotations

import torch

from detkd.losses.localization import expected_distances
from detkd.models.class_map import ABSENT_LOGIT, confidence_mask_of
from detkd.models.teacher import FrozenTeacher, HeadOutputs

_EPS = 1e-6
ENSEMBLE_RULES = ("targets", "losses")  # one combined teacher, or the weighted sum of per-teacher KD losses


def normalise_weights(weights, n: int) -> list[float]:
    """Teacher weights → non-negative floats summing to 1 (equal weights when None)."""
    if weights is None or len(weights) == 0:
        return [1.0 / n] * n
    if len(weights) != n:
        raise ValueError(f"{len(weights)} teacher weights for {n} teachers: give one weight per --teacher.")
    w = [float(x) for x in weights]
    if any(x < 0 for x in w) or sum(w) <= 0:
        raise ValueError(f"teacher weights {w} must be >= 0 and not all 0.")
    return [x / sum(w) for x in w]


def combine_scores(scores: list[torch.Tensor], weights: list[float], mode: str = "bce",
                   known: list[torch.Tensor | None] | None = None) -> torch.Tensor:
    """Members' class logits [(B, A, C)] → the ensemble's logits (B, A, C) (see the module doc).

    ``known``: per member its classes (C,) bool, None for all (members with other classes: a mapped member has no
    score for a class no class of its maps to). In ``bce`` mode a class's mean runs over the members that know it,
    weights renormalised per class, p̄_c = Σ_k w_k 1[c ∈ k] σ(t^k_c) / Σ_k w_k 1[c ∈ k]: a member without the class
    says nothing about it, not "absent". A class no member knows gets :data:`ABSENT_LOGIT`."""
    if mode == "kl":
        p = sum(w * s.float().softmax(-1) for w, s in zip(weights, scores))
        return p.clamp(min=_EPS).log()
    if known is None or all(k is None for k in known):
        p = sum(w * s.float().sigmoid() for w, s in zip(weights, scores)).clamp(_EPS, 1 - _EPS)
        return torch.logit(p)
    c, device = scores[0].shape[-1], scores[0].device
    share = torch.stack([w * (torch.ones(c, dtype=torch.bool) if k is None else k.cpu()).float()
                         for w, k in zip(weights, known)]).to(device)  # (K, C)
    total = share.sum(0)
    p = sum(s_k * s.float().sigmoid() for s_k, s in zip(share / total.clamp(min=_EPS), scores))
    return torch.logit(p.clamp(_EPS, 1 - _EPS)).masked_fill(total <= 0, ABSENT_LOGIT)


def combine_boxes(boxes: list[torch.Tensor], reg_maxes: list[int], weights: list[float]) -> tuple[torch.Tensor, int]:
    """Members' box outputs [(B, A, 4·R_k)] → (the ensemble's box output, its reg_max) (see the module doc)."""
    r = reg_maxes[0]
    if r > 1 and all(x == r for x in reg_maxes):
        b, a, _ = boxes[0].shape
        q = sum(w * z.float().view(b, a, 4, r).softmax(-1) for w, z in zip(weights, boxes))
        return q.clamp(min=_EPS).log().view(b, a, 4 * r), r
    d = sum(w * expected_distances(z.float(), rk) for w, z, rk in zip(weights, boxes, reg_maxes))
    return d, 1


class TeacherEnsemble:
    """K :class:`FrozenTeacher` members behaving as one teacher (same interface: call, prefetch, optimize, facts)."""

    def __init__(self, members: list[FrozenTeacher], weights=None, cls_mode: str = "bce"):
        if len(members) < 2:
            raise ValueError("an ensemble needs at least two teachers")
        self.members = list(members)
        self.weights = normalise_weights(weights, len(members))
        self.cls_mode = cls_mode
        self.device = members[0].device

    def optimize(self, half: bool = True, cuda_graphs: bool = True) -> "TeacherEnsemble":
        for m in self.members:
            m.optimize(half=half, cuda_graphs=cuda_graphs)
        return self

    def prefetch(self, img: torch.Tensor) -> None:
        for m in self.members:
            m.prefetch(img)

    @torch.no_grad()
    def __call__(self, img: torch.Tensor) -> HeadOutputs:
        return self.combine([m(img) for m in self.members])

    def combine(self, outs: list[HeadOutputs]) -> HeadOutputs:
        """The members' outputs on one batch (in member order) → the ensemble teacher's (see the module doc)."""
        boxes, _ = combine_boxes([o.boxes for o in outs], [m.reg_max for m in self.members], self.weights)
        member_scores = [o.scores for o in outs]
        member_conf = [o.scores if o.conf_logits is None else o.conf_logits for o in outs]  # (mapped members)
        known = [confidence_mask_of(m) for m in self.members]  # a mapped member: the classes it has a score for
        conf = combine_scores(member_conf, self.weights, "bce", known)  # logit of the mean σ: the ensemble's confidence
        scores = conf if self.cls_mode == "bce" else combine_scores(member_scores, self.weights, self.cls_mode)
        feats = [torch.cat(level, dim=1) for level in zip(*(o.feats for o in outs))]
        return HeadOutputs(boxes=boxes, scores=scores, feats=feats, members=outs, conf_logits=conf)

    # ---------------------------------------------------------------------------------------------- facts
    @property
    def model(self):
        """The first member's model (the reference for names and head type)."""
        return self.members[0].model

    @property
    def nc(self) -> int:
        return self.members[0].nc

    @property
    def precision(self) -> str:
        """The members' compute precision (all run on the same device with the same setting)."""
        return self.members[0].precision

    @property
    def end_to_end(self) -> bool:
        """Some member has an end-to-end head (its one-to-many outputs are the targets, as for a single teacher)."""
        return any(m.end_to_end for m in self.members)

    @property
    def reg_max(self) -> int:
        """The members' DFL bins when they all share them, else 1 (the targets are decoded distances)."""
        r = self.members[0].reg_max
        return r if all(m.reg_max == r for m in self.members) else 1

    @property
    def strides(self) -> list[float]:
        return self.members[0].strides

    @property
    def channels(self) -> list[int]:
        return [sum(level) for level in zip(*(m.channels for m in self.members))]

    @property
    def names(self) -> dict:
        return self.members[0].names

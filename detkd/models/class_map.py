"""A class map between a teacher and the student: distil from a teacher trained on other (or more) classes.

Which teacher class teaches which student class (the student's classes are the data's):

* by name, by default: names equal after normalisation (case folded, runs of white space made one space, ends
  stripped: ``" Traffic  Light"`` matches ``"traffic light"``);
* by an explicit map for other names, on top of the name matching (an explicit entry wins for its teacher class)::

      --class-map 'car,truck,bus=vehicle;person=pedestrian'      (CLI, Python, a YAML string)
      class_map: {car: vehicle, truck: vehicle, bus: vehicle, person: pedestrian}   (YAML / Python mapping)

  In the string form every entry is ``teacher[,teacher...]=student``; entries are separated by ``;`` or ``,``
  (a name list ends at its ``=``, so ``a=x,b=y`` and ``a,b=x;c=y`` read as expected). Quote it in a shell (``;``).
  Names holding ``,``, ``;`` or ``=`` need the mapping form.

Several teacher classes may map onto one student class (``car,truck,bus=vehicle``); one teacher class onto two
student classes may not (its score cannot be split). Teacher classes left unmapped are dropped: an object of such a
class is background for the student, nothing to imitate. Student classes no teacher class maps to get no logit KD
(:attr:`ClassMap.student_mask`): the labels alone teach them.

How the teacher's scores of merged classes are combined (anchor a, merged teacher classes k ∈ G(c) of student class c):

* sigmoid scores (``cls_mode=bce``, and every confidence: anchor weights, ``verified``, pseudo-labels): the
  probability that *any* merged class is present, the noisy-OR p_c = 1 − Π_k (1 − σ(t_k)). YOLO's class scores are
  independent per-class presence probabilities, and "a vehicle is here" is the event "a car or a truck or a bus is
  here": under the scores' own independence that is exactly the noisy-OR. It lies between the max (classes fully
  correlated: it would call an anchor where the teacher hesitates between car 0.5 and truck 0.4 a vehicle at 0.5
  only) and the sum (mutually exclusive classes: may exceed 1), stays in [0, 1], and is σ(t) itself for a single
  class (one-to-one classes are copied exactly). Computed in log space: L = Σ_k softplus(t_k) = −log Π_k (1 − p_k),
  logit(p_c) = log(−expm1(−L)) + L.
* softmax scores (``cls_mode=kl``): the classes of a softmax are exclusive, so the merged probability is the sum
  p_c = Σ_k softmax(t)_k, given as the logit logsumexp_k t_k (the student's softmax over its classes renormalises
  over the mapped classes: the teacher's distribution given that the object is one of the student's classes).

Outputs of a mapped teacher: (B, A, C_t) → (B, A, C_s) in the student's class order; student classes without a
teacher class get the logit :data:`ABSENT_LOGIT` (σ ≈ 2e-9: never a confidence, masked out of the logit KD).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from functools import cached_property

import torch
import torch.nn.functional as F

from detkd.errors import ConfigError, IncompatibleModelsError

ABSENT_LOGIT = -20.0  # a student class no teacher class maps to: σ ≈ 2e-9 (finite: masked terms stay 0, not NaN)


def normalise_name(name) -> str:
    """The matching key of a class name: case folded, inner white space one space, ends stripped."""
    return " ".join(str(name).split()).casefold()


def names_list(names) -> list[str]:
    """Class names (a {index: name} dict or a list) → the list in index order."""
    if isinstance(names, dict):
        return [str(names[k]) for k in sorted(names)]
    return [str(x) for x in (names or [])]


# --------------------------------------------------------------------------------------------- the spec
def parse_class_map(spec) -> dict[str, str] | None:
    """A ``--class-map`` value → ``{teacher name: student name}`` in the given order (None/empty: None).

    Accepts the string form (see the module doc), a mapping ``{teacher: student}``, or None. Raises
    :class:`ConfigError` naming the bad entry: an entry without ``=``, an empty name, a teacher class mapped twice.
    """
    if spec is None or spec == "" or spec == {}:
        return None
    if isinstance(spec, dict):
        pairs = [(str(k), _student_name(k, v)) for k, v in spec.items()]
    elif isinstance(spec, str):
        pairs = _parse_string(spec)
    else:
        raise ConfigError(f"class_map={spec!r}: give 'teacher[,teacher]=student;...' (e.g. 'car,truck=vehicle') or "
                          f"a mapping {{teacher: student}}.")
    out: dict[str, str] = {}
    seen: dict[str, str] = {}
    for teacher, student in pairs:
        key = normalise_name(teacher)
        if not key or not normalise_name(student):
            raise ConfigError(f"class_map: empty class name in '{teacher}={student}': write teacher=student.")
        if key in seen:
            raise ConfigError(f"class_map maps teacher class '{teacher}' twice ('{seen[key]}' and '{student}'): a "
                              f"teacher class teaches one student class. Keep one entry for it.")
        seen[key] = student
        out[teacher.strip()] = student.strip()
    return out


def _student_name(teacher, value) -> str:
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise ConfigError(f"class_map entry {teacher!r}: {value!r} is not a class name: map each teacher class to one "
                          f"student class ({{teacher: student}}; several teacher classes may share a student class).")
    return str(value)


def _parse_string(spec: str) -> list[tuple[str, str]]:
    """'a,b=x;c=y' → [(a, x), (b, x), (c, y)]: tokens split at ',' and ';', each '=' ends a list of teacher names."""
    pairs, pending = [], []
    for token in re.split(r"[;,]", spec):
        if not token.strip():
            continue
        if token.count("=") > 1:
            raise ConfigError(f"class_map entry '{token.strip()}' has more than one '=': write "
                              f"teacher[,teacher...]=student, entries separated by ';'.")
        if "=" not in token:
            pending.append(token)
            continue
        teacher, student = token.split("=")
        pairs += [(t, student) for t in (*pending, teacher)]
        pending = []
    if pending:
        raise ConfigError(f"class_map '{spec}': '{','.join(t.strip() for t in pending)}' maps to no student class: "
                          f"end each list of teacher classes with =student, e.g. 'car,truck=vehicle'.")
    return pairs


def format_class_map(mapping: dict[str, str] | None) -> str:
    """``{teacher: student}`` → the string form, teacher classes grouped by student class ('car,truck=vehicle;...')."""
    groups: dict[str, list[str]] = {}
    for teacher, student in (mapping or {}).items():
        groups.setdefault(student, []).append(teacher)
    return ";".join(f"{','.join(ts)}={s}" for s, ts in groups.items())


# ---------------------------------------------------------------------------------------------- the map
@dataclass(frozen=True)
class ClassMap:
    """Teacher class i → student class j pairs (many-to-one allowed), built by :func:`build_class_map`."""

    teacher_names: tuple[str, ...]
    student_names: tuple[str, ...]
    pairs: tuple[tuple[int, int], ...]  # (teacher index, student index), in teacher order
    explicit: frozenset = field(default_factory=frozenset)  # teacher indices mapped by --class-map (not by name)

    @property
    def is_identity(self) -> bool:
        """Same classes in the same order: the teacher's outputs are used as they are (no wrapper)."""
        n = len(self.student_names)
        return len(self.teacher_names) == n and self.pairs == tuple((i, i) for i in range(n))

    def teachers_of(self, student: int) -> list[int]:
        """The teacher classes merged into student class ``student`` (empty: none)."""
        return [t for t, s in self.pairs if s == student]

    @property
    def student_mask(self) -> torch.Tensor:
        """(C_s,) bool: the student classes some teacher class maps to (the classes the logit KD covers)."""
        mask = torch.zeros(len(self.student_names), dtype=torch.bool)
        mask[[s for _, s in self.pairs]] = True
        return mask

    @property
    def unmatched_teacher(self) -> list[str]:
        mapped = {t for t, _ in self.pairs}
        return [n for i, n in enumerate(self.teacher_names) if i not in mapped]

    @property
    def unmatched_student(self) -> list[str]:
        return [n for i, n in enumerate(self.student_names) if not self.teachers_of(i)]

    def describe(self, role: str = "teacher") -> list[str]:
        """The map as printed at start: one line per student class with its teacher class(es), then the unmatched."""
        lines = [f"class map ({role} -> student, {len(self.pairs)} of the {role}'s {len(self.teacher_names)} "
                 f"classes used):"]
        for s, name in enumerate(self.student_names):
            ts = self.teachers_of(s)
            if ts:
                how = "class map" if any(t in self.explicit for t in ts) else "same name"
                merged = " (noisy-OR of their scores)" if len(ts) > 1 else ""
                lines.append(f"  {' + '.join(self.teacher_names[t] for t in ts)} -> {name}  [{how}]{merged}")
        if self.unmatched_student:
            lines.append(f"  student classes with no {role} class (taught by the labels only, no logit KD): "
                         f"{', '.join(self.unmatched_student)}")
        if self.unmatched_teacher:
            rest = self.unmatched_teacher
            lines.append(f"  {role} classes not used (background for the student): {', '.join(rest[:20])}"
                         + (f" ... ({len(rest)} in all)" if len(rest) > 20 else ""))
        return lines

    # -------------------------------------------------------------------------------------- mapping scores
    def map_logits(self, logits: torch.Tensor, mode: str = "bce") -> torch.Tensor:
        """Teacher class logits (..., C_t) → student class logits (..., C_s) (rule per ``mode``: module doc).

        A student class with one teacher class gets that class's logit exactly; with several, their noisy-OR
        (``bce``) or log of summed softmax mass (``kl``); with none, :data:`ABSENT_LOGIT`.
        """
        if logits.shape[-1] != len(self.teacher_names):
            raise RuntimeError(f"teacher scores have {logits.shape[-1]} classes, the class map "
                               f"{len(self.teacher_names)}")
        first, merged, absent = self._plan
        out = logits.index_select(-1, torch.tensor(first, device=logits.device))
        for s, ts in merged:
            group = logits[..., ts]
            out[..., s] = noisy_or_logit(group) if mode == "bce" else torch.logsumexp(group.float(), -1)
        if absent:
            out[..., absent] = ABSENT_LOGIT
        return out

    @cached_property
    def _plan(self) -> tuple[list[int], list[tuple[int, list[int]]], list[int]]:
        """(per student class its first teacher class (0 when none), the merged classes [(student, [teachers])],
        the student classes without a teacher class)."""
        groups = [self.teachers_of(s) for s in range(len(self.student_names))]
        return ([g[0] if g else 0 for g in groups], [(s, g) for s, g in enumerate(groups) if len(g) > 1],
                [s for s, g in enumerate(groups) if not g])

    def map_probabilities(self, probs: torch.Tensor) -> torch.Tensor:
        """Teacher class probabilities (..., C_t) in [0, 1] → student ones (..., C_s): copies, noisy-OR of merged
        classes, 0 where no teacher class maps (for inference outputs, e.g. validating the teacher)."""
        out = probs.new_zeros((*probs.shape[:-1], len(self.student_names)))
        for s in range(len(self.student_names)):
            ts = self.teachers_of(s)
            if len(ts) == 1:
                out[..., s] = probs[..., ts[0]]
            elif ts:
                out[..., s] = 1 - (1 - probs[..., ts]).prod(-1)
        return out

    def map_class_ids(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher class indices (any shape) → (student class indices, kept: the teacher class is mapped)."""
        table = torch.full((len(self.teacher_names),), -1, dtype=torch.long, device=ids.device)
        for t, s in self.pairs:
            table[t] = s
        mapped = table[ids.long().clamp(0, len(self.teacher_names) - 1)]
        return mapped.clamp(min=0), mapped >= 0

    def to_spec(self) -> dict[str, str]:
        """The explicit part as ``{teacher: student}`` (what --class-map said)."""
        return {self.teacher_names[t]: self.student_names[s] for t, s in self.pairs if t in self.explicit}


def noisy_or_logit(logits: torch.Tensor) -> torch.Tensor:
    """logit(1 − Π_k (1 − σ(t_k))) over the last dim, stably: L = Σ_k softplus(t_k), logit = log(−expm1(−L)) + L.

    Shape (..., K) → (...). Equals t for K = 1 (up to rounding)."""
    total = F.softplus(logits.float()).sum(-1).clamp(min=1e-12)
    return torch.log(-torch.expm1(-total)) + total


def identity_map(names) -> ClassMap:
    n = tuple(names_list(names))
    return ClassMap(n, n, tuple((i, i) for i in range(len(n))))


def build_class_map(teacher_names, student_names, spec=None, role: str = "teacher") -> ClassMap:
    """Match the teacher's classes to the student's (the data's): by normalised name, plus ``spec`` (see
    :func:`parse_class_map`). Raises :class:`IncompatibleModelsError` naming both class lists when names collide
    under normalisation on one side, a --class-map name is not a class of its side, or no class is shared."""
    t_names, s_names = names_list(teacher_names), names_list(student_names)
    t_keys = name_index(t_names, f"the {role}'s")
    s_keys = name_index(s_names, "the data's")
    pairs: dict[int, int] = {}
    explicit = set()
    for teacher, student in (parse_class_map(spec) or {}).items():
        t, s = t_keys.get(normalise_name(teacher)), s_keys.get(normalise_name(student))
        if t is None or s is None:
            raise IncompatibleModelsError(_unknown_name(teacher, student, t is None, s is None, t_keys, s_keys,
                                                        t_names, s_names, role))
        pairs[t], _ = s, explicit.add(t)
    for key, t in t_keys.items():
        if t not in pairs and key in s_keys:
            pairs[t] = s_keys[key]
    if not pairs:
        raise IncompatibleModelsError(
            f"the {role} and the data share no class: {role} classes {_show(t_names)}, data classes {_show(s_names)}. "
            f"Map them with --class-map '{role}_name=data_name;...' (e.g. 'car,truck=vehicle'), or use a {role} "
            f"trained on these classes.")
    return ClassMap(tuple(t_names), tuple(s_names), tuple(sorted(pairs.items())), frozenset(explicit))


def name_index(names: list[str], whose: str) -> dict[str, int]:
    """{normalised name: index}; refuses two names equal under normalisation (the match would be ambiguous)."""
    keys: dict[str, int] = {}
    for i, n in enumerate(names):
        k = normalise_name(n)
        if k in keys:
            raise IncompatibleModelsError(
                f"{whose} class names '{names[keys[k]]}' ({keys[k]}) and '{n}' ({i}) are the same name up to case and "
                f"spaces, so classes cannot be matched by name: rename one of them.")
        keys[k] = i
    return keys


def _unknown_name(teacher, student, t_missing, s_missing, t_keys, s_keys, t_names, s_names, role) -> str:
    swapped = normalise_name(teacher) in s_keys and normalise_name(student) in t_keys
    if t_missing and s_missing:
        what = (f"'{teacher}' is not a {role} class and '{student}' not a data class" +
                (f" (the sides are swapped: write {student}={teacher}, {role} class first)" if swapped else ""))
    elif t_missing:
        what = f"'{teacher}' is not a {role} class"
    else:
        what = f"'{student}' is not a data class"
    return (f"--class-map {teacher}={student}: {what}. {role.capitalize()} classes: {_show(t_names)}; data classes: "
            f"{_show(s_names)}.")


def _show(names: list[str], n: int = 12) -> str:
    return ", ".join(names[:n]) + (f" ... ({len(names)} in all)" if len(names) > n else "")


# -------------------------------------------------------------------------------------------- the teacher
class ClassMappedTeacher:
    """A teacher (``FrozenTeacher``) whose class outputs are given in the student's classes (see the module doc).

    ``scores`` (B, A, C_t) → (B, A, C_s) by the ``cls_mode`` rule; ``conf_logits`` (the sigmoid-space confidence read
    by anchor weights, ``verified`` and pseudo-labels) → noisy-OR; boxes and features are unchanged. Every other fact
    and method is the wrapped teacher's (``model``, ``reg_max``, ``strides``, ``channels``, ...).
    """

    def __init__(self, teacher, class_map: ClassMap, cls_mode: str = "bce"):
        self.teacher = teacher
        self.class_map = class_map
        self.cls_mode = cls_mode

    def __getattr__(self, name):
        return getattr(self.__dict__["teacher"], name)

    def optimize(self, half: bool = True, cuda_graphs: bool = True) -> "ClassMappedTeacher":
        self.teacher.optimize(half=half, cuda_graphs=cuda_graphs)
        return self

    def prefetch(self, img: torch.Tensor) -> None:
        self.teacher.prefetch(img)

    @torch.no_grad()
    def __call__(self, img: torch.Tensor):
        return map_head_outputs(self.teacher(img), self.class_map, self.cls_mode)

    @property
    def nc(self) -> int:
        return len(self.class_map.student_names)

    @property
    def names(self) -> dict:
        return dict(enumerate(self.class_map.student_names))

    @property
    def class_mask(self) -> torch.Tensor:
        """(C_s,) bool: the student classes the logit KD covers."""
        return self.class_map.student_mask


def map_head_outputs(out, class_map: ClassMap, cls_mode: str = "bce"):
    """A teacher's :class:`~detkd.models.teacher.HeadOutputs` with scores (and conf_logits) in the student's classes.

    ``scores`` by the ``cls_mode`` rule; ``conf_logits`` by noisy-OR, from the given ones or, when the scores are
    not sigmoid-space (``kl``) and merge classes, from the scores (σ of a logsumexp is not a confidence)."""
    scores = class_map.map_logits(out.scores, cls_mode)
    conf = out.conf_logits
    if conf is not None:
        conf = class_map.map_logits(conf, "bce")
    elif cls_mode != "bce":
        conf = class_map.map_logits(out.scores, "bce")
    return replace(out, scores=scores, conf_logits=conf)


def class_mask_of(teacher) -> torch.Tensor | None:
    """The student classes a teacher covers, (C_s,) bool, or None for all: a mapped teacher's
    :attr:`ClassMap.student_mask`; an ensemble's, the classes every member covers (wrappers forward the facts)."""
    members = getattr(teacher, "members", None)
    if members:
        masks = [m for m in (class_mask_of(x) for x in members) if m is not None]
        return torch.stack(masks).all(0) if masks else None
    return getattr(teacher, "class_mask", None)


def confidence_mask_of(teacher) -> torch.Tensor | None:
    """The student classes a teacher gives a confidence for, (C_s,) bool, or None for all: like :func:`class_mask_of`
    but an ensemble's are the classes *some* member covers (its confidence for a class is the mean over the members
    that know it: :func:`detkd.models.ensemble.combine_scores`)."""
    members = getattr(teacher, "members", None)
    if members:
        masks = [confidence_mask_of(x) for x in members]
        return None if any(m is None for m in masks) else torch.stack(masks).any(0)
    return getattr(teacher, "class_mask", None)


def map_inference_output(y: torch.Tensor, class_map: ClassMap, end2end: bool = False) -> torch.Tensor:
    """A teacher's decoded inference output in the student's classes (to validate it on the data's classes).

    Dense output (B, 4 + C_t [+ extras], A), probabilities → (B, 4 + C_s, A) by :meth:`ClassMap.map_probabilities`;
    end-to-end output (B, N, 6 [+ extras]) of (box, conf, class) → the classes renumbered, detections of unmapped
    classes given confidence 0 (merged classes stay separate detections: they are already top-k picks)."""
    if end2end:
        out = y.clone()
        ids, kept = class_map.map_class_ids(y[..., 5])
        out[..., 5] = ids.to(y.dtype)
        out[..., 4] = y[..., 4] * kept.to(y.dtype)
        return out
    c_t = len(class_map.teacher_names)
    probs = y[:, 4:4 + c_t].transpose(1, 2)  # (B, A, C_t)
    return torch.cat([y[:, :4], class_map.map_probabilities(probs).transpose(1, 2)], 1)

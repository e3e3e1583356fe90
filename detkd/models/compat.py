"""Checks, before any training step, that teacher, student and data can be distilled together.

Every failure raises :class:`~detkd.errors.IncompatibleModelsError` with the problem and the fix.
"""

from __future__ import annotations

from detkd.errors import IncompatibleModelsError
from detkd.models.class_map import ClassMap, build_class_map, identity_map
from detkd.models.teacher import MISSING_ONE2MANY, detect_head, feature_channels


def _names(d) -> list[str]:
    if isinstance(d, dict):
        return [str(d[k]) for k in sorted(d)]
    return [str(x) for x in (d or [])]


def _is_placeholder(names: list[str]) -> bool:
    """Names of a model built from a YAML are just '0', '1', ...; they carry no class meaning."""
    return all(n == str(i) or n == f"class{i}" for i, n in enumerate(names))


def check_head_supported(model, role: str) -> None:
    head = detect_head(model)
    if not all(hasattr(head, a) for a in ("nc", "reg_max", "stride", "cv2", "cv3")):
        raise IncompatibleModelsError(
            f"the {role}'s last layer is {type(head).__name__}, not a YOLO Detect head with box (cv2) and class (cv3) "
            f"branches. detkd distils YOLOv8/v11-style detection models."
        )
    if head.cv2 is None:  # an end-to-end head fused by Ultralytics keeps its one-to-one branch only
        raise IncompatibleModelsError(f"the {role}'s {MISSING_ONE2MANY}")


def is_end_to_end(model) -> bool:
    """YOLO26/YOLOv10 heads have a one-to-one branch: NMS-free inference (Ultralytics runs it with ``nms=False``)."""
    head = model.model[-1] if hasattr(model, "model") and hasattr(model.model, "__getitem__") else None
    return getattr(head, "one2one_cv2", None) is not None


def check_student_head(student) -> None:
    """The student must have a YOLO Detect head (one-to-many, or end-to-end with a one-to-one branch too)."""
    check_head_supported(student, "student")


def teacher_head_notes(head) -> list[str]:
    """Segment/Pose teachers (Detect subclasses) are distilled through their detection outputs only; OBB teachers
    (rotated boxes) are refused."""
    from ultralytics.nn.modules.head import OBB, Pose, Segment

    if isinstance(head, OBB):
        raise IncompatibleModelsError(f"the teacher's head is {type(head).__name__} (rotated boxes): its box outputs "
                                      f"do not describe axis-aligned boxes. Use a detection, segmentation or pose "
                                      f"teacher.")
    unused = "mask coefficients" if isinstance(head, Segment) else "keypoints" if isinstance(head, Pose) else None
    return [f"teacher head: {type(head).__name__} — distilled through its detection outputs (boxes, classes, neck "
            f"features); its {unused} are not used."] if unused else []


def teacher_class_map(teacher, data: dict, spec=None, teacher_from_yaml: bool = False,
                      role: str = "teacher") -> ClassMap:
    """Which of the teacher's classes teach which of the data's (see :mod:`detkd.models.class_map`).

    The identity when the names are the data's (or carry no meaning: a teacher built from a YAML, placeholder names
    '0', '1', ...; then the class counts must agree), whatever ``spec`` says; else matched by name plus ``spec``
    (``--class-map``).
    """
    nc, data_names = int(data["nc"]), _names(data["names"])
    t_nc, t_names = int(detect_head(teacher).nc), _names(getattr(teacher, "names", None))
    if teacher_from_yaml or not t_names or _is_placeholder(t_names):
        if t_nc != nc:
            raise IncompatibleModelsError(
                f"the {role} predicts {t_nc} classes but the data has {nc} ({', '.join(data_names[:8])}"
                f"{', ...' if nc > 8 else ''}) and its class names carry no meaning ({', '.join(t_names[:4])}...). "
                f"Train (or fine-tune) the {role} on this dataset first.")
        return identity_map(data_names)
    if len(t_names) != t_nc:
        raise IncompatibleModelsError(f"the {role} predicts {t_nc} classes but names {len(t_names)}: its class names "
                                      f"do not describe its head. Use the checkpoint its training wrote.")
    if t_names == data_names:  # the data's own classes: nothing to map (a --class-map is for the other teachers,
        return identity_map(data_names)  # e.g. the teacher of an assistant chain or of an ensemble)
    return build_class_map(t_names, data_names, spec, role)


def check_compatibility(teacher, student, data: dict, box_kd: bool = True, teacher_from_yaml: bool = False,
                        roles: tuple[str, str] = ("teacher", "student"), class_map: ClassMap | None = None) -> list[str]:
    """Validate teacher/student/data agreement; returns informational notes. Raises on any mismatch.

    Args:
        teacher, student: Ultralytics ``DetectionModel`` instances (the student already built for ``data``).
        data: Ultralytics dataset dict (``nc``, ``names``).
        box_kd: localization distillation is enabled (then reg_max must match).
        teacher_from_yaml: the teacher was built from a YAML (random init), so it has no class names to check.
        roles: what the messages call the two models, e.g. ``("teacher", "assistant")`` or ``("assistant",
            "student")`` for the links of a teacher-assistant chain.
        class_map: which teacher classes teach which data classes (:func:`teacher_class_map`; None: built here, by
            name). A teacher with other classes than the data's is refused only when no class is shared.
    """
    t, s = roles
    check_head_supported(teacher, t)
    check_head_supported(student, s)
    notes = []
    t_head, s_head = detect_head(teacher), detect_head(student)
    nc = int(data["nc"])

    class_map = class_map or teacher_class_map(teacher, data, teacher_from_yaml=teacher_from_yaml, role=t)
    if not class_map.is_identity:
        notes += class_map.describe(t)
    if int(s_head.nc) != nc:
        raise IncompatibleModelsError(
            f"the {s} predicts {s_head.nc} classes but the data has {nc}: build the {s} for this data "
            f"(pass a model YAML or a checkpoint; detkd sets nc from the data)."
        )
    t_strides, s_strides = [float(x) for x in t_head.stride], [float(x) for x in s_head.stride]
    if len(t_strides) != len(s_strides):
        raise IncompatibleModelsError(
            f"the {t} has {len(t_strides)} feature levels (strides {t_strides}) and the {s} "
            f"{len(s_strides)} ({s_strides}): pick models with the same head levels (e.g. both P3-P5)."
        )
    if t_strides != s_strides:
        raise IncompatibleModelsError(
            f"{t} strides {t_strides} differ from {s} strides {s_strides}: anchors would not line up. "
            f"Use models with the same strides (e.g. a P6 {t} needs a P6 {s})."
        )
    if int(t_head.reg_max) != int(s_head.reg_max) or int(s_head.reg_max) <= 1:
        notes.append(f"{t} reg_max={t_head.reg_max}, {s} reg_max={s_head.reg_max}: no shared DFL bins, so box "
                     f"KD compares decoded box distances (L1 in grid units + 1-IoU) instead of bin distributions.")
    notes += teacher_head_notes(t_head)
    notes.append(f"feature levels: strides {s_strides}, {s} channels {feature_channels(student)} -> "
                 f"{t} channels {feature_channels(teacher)}")
    return notes

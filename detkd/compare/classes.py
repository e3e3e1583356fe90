"""Every row of a comparison scored in the data's classes, when a model's classes are not the data's.

Two cases reach ``detkd compare`` (see docs/classes.md):

* a teacher with other classes (``--class-map``, or matched by name: a COCO-80 teacher for a 3-class dataset): its
  outputs are mapped onto the data's classes as the distillation maps them (copied, merged classes by noisy-OR,
  unmapped teacher classes dropped), so its detections carry the data's category ids;
* ``--keep-teacher-classes``: the distilled students predict the teacher's classes and the data's new ones; scored
  on the data's classes (matched by name), their predictions of classes the data does not label are dropped (the
  split has no ground truth for them). The teacher is scored on its classes that are data classes.

A model is scored on the data classes it predicts (:func:`scored_classes`). When that is not all of them (a teacher
without some data class), its row's AP and AP50 are the mean COCO AP of those classes only — per class, COCOeval
scores each category on its own, so this is exactly COCO AP restricted to them — and its label says how many; the
other COCO stats (AP75, APs/m/l), which need every class, are left out. A class the model cannot predict is never
counted as a 0.

AP per class group (:func:`class_groups`, shown in the report): the data's classes the teacher teaches (through the
map), the new classes (none of the teacher's), all; a model gets a group's AP only when it predicts every class of
the group.
"""

from __future__ import annotations

from detkd.eval.class_groups import group_ap, groups_from_mask
from detkd.models.class_map import ClassMap, map_inference_output, names_list


def data_classes(data_yaml) -> dict:
    """``{'nc', 'names'}`` of a data.yaml (names as Ultralytics gives them)."""
    from ultralytics.utils import YAML

    data = YAML.load(str(data_yaml))
    names = data["names"]
    return {"nc": int(data.get("nc") or len(names)), "names": names}


def model_class_map(weights, data: dict, spec=None, role: str = "model") -> ClassMap | None:
    """How the model in ``weights`` is scored in the data's classes: None when its classes are the data's (also for
    a model YAML, built for the data, and an exported file, exported from such a model); else its
    :class:`~detkd.models.class_map.ClassMap` (by name, plus ``spec``: ``--class-map``). Raises
    :class:`~detkd.errors.IncompatibleModelsError` when it shares no class with the data."""
    from detkd.models.compat import teacher_class_map
    from detkd.models.loading import load_detection_model

    if not str(weights).lower().endswith((".pt", ".pth")):
        return None
    cmap = teacher_class_map(load_detection_model(str(weights), role=role), data, spec, role=role)
    return None if cmap.is_identity else cmap


def in_data_classes(net, cmap: ClassMap):
    """``net`` (a freshly loaded ``DetectionModel``, changed in place) answering in the data's classes: named with
    them, its inference output mapped by :func:`~detkd.models.class_map.map_inference_output` (a forward hook, so
    Ultralytics' validators and COCO evaluation run it as any model)."""
    net.names = dict(enumerate(cmap.student_names))

    def to_data_classes(module, _inputs, output):
        if not isinstance(output, tuple):  # training (raw head outputs) or export mode: not an inference output
            return output
        y, raw = output
        y = y[0] if isinstance(y, (list, tuple)) else y  # Segment: (boxes+classes+masks, protos): boxes and classes
        return map_inference_output(y, cmap, bool(getattr(module, "end2end", False))), raw

    net.register_forward_hook(to_data_classes)
    return net


def scored_classes(cmap: ClassMap | None, names) -> list[str]:
    """The data's classes a model predicts: all of them, or those its class map gives a model class."""
    names = names_list(names)
    return names if cmap is None else [n for n, m in zip(names, cmap.student_mask.tolist()) if m]


def restrict_to(metrics: dict, scored: list[str]) -> dict:
    """``metrics`` (with ``per_class`` AP) of a model that predicts only the classes ``scored``: AP and AP50 over them
    (the full-split values kept as ``AP_all_classes``, ``AP50_all_classes``), the stats that need every class
    (AP75, APs/m/l, AR100) None."""
    over = group_ap(metrics, {"scored": scored})["scored"]
    return {**metrics, "AP_all_classes": metrics.get("AP"), "AP50_all_classes": metrics.get("AP50"),
            "AP": over["AP"], "AP50": over["AP50"], "AP75": None, "APs": None, "APm": None, "APl": None,
            "AR100": None}


def scored_label(label: str, scored: list[str], n_classes: int) -> str:
    """A row's label with the classes it is scored on, when that is not all of the data's."""
    if len(scored) >= n_classes:
        return label
    what = f"{len(scored)} of {n_classes} classes" if scored else "none of the data's classes"
    return f"{label} ({what})"


def class_groups(teacher, data: dict, spec=None, keep_teacher_classes: bool = False) -> dict[str, list[str]] | None:
    """The report's class groups, ``{"teacher's classes", "new classes", "all"}`` (an empty group left out), or
    None when the teacher's classes are the data's and the students predict the data's (nothing to split)."""
    from detkd.errors import IncompatibleModelsError

    if not str(teacher).lower().endswith((".pt", ".pth")):
        return None  # a model YAML teacher is built for the data's classes
    try:
        cmap = model_class_map(teacher, data, spec, role="teacher")
    except IncompatibleModelsError:  # --keep-teacher-classes may add classes to a teacher that has none of these
        if not keep_teacher_classes:
            raise
        return groups_from_mask(data["names"], [False] * len(names_list(data["names"])))
    if cmap is None and not keep_teacher_classes:
        return None
    taught = [True] * len(names_list(data["names"])) if cmap is None else cmap.student_mask.tolist()
    return groups_from_mask(data["names"], taught)


def group_cells(metrics: dict, groups: dict[str, list[str]]) -> dict[str, dict | None]:
    """A row's AP per group (:func:`~detkd.eval.class_groups.group_ap`); None for a group with a class the model does
    not predict, or when the row has no per-class AP."""
    if not metrics.get("per_class"):
        return dict.fromkeys(groups)
    scored = set(metrics["scored_classes"] if "scored_classes" in metrics else metrics["per_class"])
    per_group = group_ap(metrics, groups)
    return {g: per_group[g] if set(members) <= scored else None for g, members in groups.items()}


def ap_over(metrics: dict, scored: list[str] | None) -> float | None:
    """A row's AP over the classes ``scored`` (None: all, its AP); None when it has no per-class AP."""
    if scored is None:
        return metrics.get("AP")
    if not metrics.get("per_class"):
        return None
    return group_ap(metrics, {"scored": scored})["scored"]["AP"]

"""Which of a model's classes is which of the data's when it is scored (``detkd eval``): by name, never silently by
index.

A model's class i is not the data's i-th class just because the counts agree: a model trained with the same classes
in another order, or a ``--keep-teacher-classes`` student (the teacher's classes, then the data's new ones), would be
scored against the wrong categories. The rule (names compared after the class map's normalisation: case folded,
white space collapsed, :func:`~detkd.models.class_map.normalise_name`):

* the model's names are the data's, in the data's order → scored as it is (``same names``);
* every data class is a model class, in another order and/or among more classes → ``by name``: the model's
  inference output is mapped onto the data's classes (:func:`~detkd.models.class_map.map_inference_output`, the map
  :func:`~detkd.models.class_map.build_class_map` builds, as ``detkd compare`` does), so its detections of classes
  the data does not have are dropped before NMS; ``--class-map model_name=data_name`` names classes spelt otherwise;
* some data class is no model class → refused (:class:`~detkd.errors.IncompatibleModelsError`, both lists named):
  COCO AP would count the class the model cannot predict as a 0, or score another class as it;
* the model carries no class names (an export without Ultralytics' metadata, placeholder names ``'0', '1', ...``)
  → ``by index``, as before (the class counts must agree), and said so.
"""

from __future__ import annotations

from dataclasses import dataclass

from detkd.errors import ConfigError, IncompatibleModelsError
from detkd.models.class_map import ClassMap, build_class_map, names_list, normalise_name

SAME, BY_NAME, BY_INDEX = "same names", "by name", "by index"


@dataclass(frozen=True)
class ClassMatch:
    """How a model's classes were matched to the data's: ``how`` (``same names``, ``by name``, ``by index``) and, by
    name, the :class:`~detkd.models.class_map.ClassMap` its outputs go through."""

    how: str
    data_names: tuple[str, ...]
    class_map: ClassMap | None = None

    @property
    def dropped(self) -> list[str]:
        """The model's classes that are no data class (their detections are not scored)."""
        return self.class_map.unmatched_teacher if self.class_map else []

    def describe(self) -> str | None:
        """The one line ``detkd eval`` prints (None when the names are the data's)."""
        if self.how == BY_INDEX:
            return (f"classes matched by index: the model carries no class names (an export without Ultralytics' "
                    f"metadata, or placeholder names), so its class i is scored as the data's i-th class "
                    f"({_show(list(self.data_names))})")
        if self.how == SAME:
            return None
        cmap = self.class_map
        line = f"classes matched by name (model classes: {_show(list(cmap.teacher_names))})"
        if cmap.explicit:
            line += "; --class-map: " + ", ".join(f"{cmap.teacher_names[t]} -> {cmap.student_names[s]}"
                                                  for t, s in cmap.pairs if t in cmap.explicit)
        if self.dropped:
            line += f"; model classes not in the data, dropped: {_show(self.dropped)}"
        return line

    def to_dict(self) -> dict:
        """What ``metrics.json`` keeps: ``{'how', 'dropped', 'model_to_data'}`` (model class → data class names)."""
        pairs = self.class_map.pairs if self.class_map else ()
        names = self.class_map.teacher_names if self.class_map else ()
        return {"how": self.how, "dropped": self.dropped,
                "model_to_data": {names[t]: self.data_names[s] for t, s in pairs}}


def model_class_names(model) -> list[str] | None:
    """The class names a validator's model carries (an Ultralytics ``AutoBackend`` or a ``DetectionModel``), or None
    when it carries none: an exported file without Ultralytics' metadata (``AutoBackend`` then lends it the data's
    names), or placeholder names (``'0', '1', ...``, ``'class0', ...``)."""
    from detkd.models.compat import _is_placeholder

    if getattr(model, "format", "pt") != "pt" and not (getattr(model, "metadata", None) or {}).get("names"):
        return None
    names = names_list(getattr(model, "names", None))
    return None if not names or _is_placeholder(names) else names


def match_classes(model_names, data_names, spec=None) -> ClassMatch:
    """Match ``model_names`` (None: the model has none) to ``data_names`` by the module's rule; ``spec``: a
    ``--class-map`` (see :func:`~detkd.models.class_map.parse_class_map`), ``model_name=data_name``.

    Raises :class:`IncompatibleModelsError` (one line, both class lists) when a data class is no model class, and
    :class:`ConfigError` for a ``--class-map`` given with a model without class names."""
    data = names_list(data_names)
    if model_names is None:
        if spec:
            raise ConfigError("--class-map: the model carries no class names (an export without Ultralytics' "
                              "metadata, or placeholder names), so there is nothing to map; its classes are scored "
                              "by index.")
        return ClassMatch(BY_INDEX, tuple(data))
    model = names_list(model_names)
    same = [normalise_name(n) for n in model] == [normalise_name(n) for n in data]
    cmap = build_class_map(model, data, spec, role="model") if spec or not same else None  # a bad map: refused
    if same and (cmap is None or all(t == s for t, s in cmap.pairs)):
        return ClassMatch(SAME, tuple(data))
    if cmap.unmatched_student:
        raise IncompatibleModelsError(
            f"the model does not predict the data's {', '.join(repr(n) for n in cmap.unmatched_student)} (model "
            f"classes: {_show(model)}; data classes: {_show(data)}): evaluate it on the data it was trained on, or a "
            f"model trained on these classes; a model class spelt otherwise is named with --class-map "
            f"'model_name=data_name'.")
    return ClassMatch(BY_NAME, tuple(data), cmap)


def _show(names: list[str], n: int = 12) -> str:
    return ", ".join(names[:n]) + (f" ... ({len(names)} in all)" if len(names) > n else "")

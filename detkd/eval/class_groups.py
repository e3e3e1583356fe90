"""AP per class group: how a model does on the teacher's classes, on the new classes, and on all of them.

A group's AP is the mean of its classes' COCO AP over the classes that have ground truth in the evaluated split
(the per-class AP :func:`detkd.eval.metrics.coco_box_metrics` already computes); COCO's own AP is exactly this mean
over all classes, so the group ``all`` reproduces it. A class without ground truth counts in no group's mean.

Groups are given by name (``old=cat,dog new=bird``: CLI ``detkd eval --class-groups``, Python a mapping
``{group: [class, ...]}``; class names matched like the class map, case and spaces ignored) or derived from a
teacher's class list (:func:`groups_from_teacher`: "teacher's classes", "new classes", "all").
"""

from __future__ import annotations

from detkd.errors import ConfigError
from detkd.models.class_map import names_list, normalise_name

ALL = "all"


def parse_class_groups(spec, class_names) -> dict[str, list[str]]:
    """``['old=a,b', 'new=c']`` (or ``'old=a,b;new=c'``, or ``{group: [names]}``) → ``{group: [class names]}`` in the
    data's spelling and order, plus ``all``. Raises :class:`ConfigError` naming the unknown class, an empty or
    repeated group."""
    names = names_list(class_names)
    keys = {normalise_name(n): n for n in names}
    groups: dict[str, list[str]] = {}
    for group, members in _group_items(spec):
        if not group or group in groups:
            raise ConfigError(f"--class-groups: group '{group}' is {'empty-named' if not group else 'given twice'}: "
                              f"write NAME=class,class (one entry per group).")
        unknown = [m for m in members if normalise_name(m) not in keys]
        if unknown or not members:
            raise ConfigError(f"--class-groups {group}: " + (f"'{unknown[0]}' is not a class of the data"
                                                             if unknown else "no class given")
                              + f" (classes: {', '.join(names)}).")
        wanted = {normalise_name(m) for m in members}
        groups[group] = [n for n in names if normalise_name(n) in wanted]
    groups.setdefault(ALL, names)
    return groups


def _group_items(spec) -> list[tuple[str, list[str]]]:
    if isinstance(spec, dict):
        return [(str(g).strip(), [str(m).strip() for m in (ms if isinstance(ms, (list, tuple)) else [ms])])
                for g, ms in spec.items()]
    items = spec.split(";") if isinstance(spec, str) else list(spec or [])
    out = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--class-groups '{item}': expected NAME=class,class (e.g. old=cat,dog new=bird).")
        group, members = item.split("=", 1)
        out.append((group.strip(), [m.strip() for m in members.split(",") if m.strip()]))
    return out


def groups_from_teacher(teacher_names, class_names) -> dict[str, list[str]]:
    """The data's classes split by a teacher's class list (names matched case/space-insensitively):
    ``{"teacher's classes": [...], "new classes": [...], "all": [...]}`` (an empty group is left out)."""
    names = names_list(class_names)
    known = {normalise_name(n) for n in names_list(teacher_names)}
    return groups_from_mask(names, [normalise_name(n) in known for n in names])


def groups_from_mask(class_names, taught: list[bool]) -> dict[str, list[str]]:
    """``{"teacher's classes": the classes with ``taught`` True, "new classes": the others, "all"}`` (an empty group
    is left out), e.g. from a class map's :attr:`~detkd.models.class_map.ClassMap.student_mask`."""
    names = names_list(class_names)
    groups = {"teacher's classes": [n for n, t in zip(names, taught) if t],
              "new classes": [n for n, t in zip(names, taught) if not t]}
    return {**{g: ms for g, ms in groups.items() if ms}, ALL: names}


def per_class_from_ultralytics(det_metrics, class_names) -> dict:
    """Ultralytics' validation metrics (``DetMetrics``) → the ``per_class`` / ``per_class_AP50`` /
    ``per_class_instances`` entries :func:`group_ap` reads (None for a class without ground truth: Ultralytics'
    mAP50-95 is the mean over the others, as COCO's)."""
    names = names_list(class_names)
    box = det_metrics.box
    ap, ap50 = dict.fromkeys(names), dict.fromkeys(names)
    for i, c in enumerate(getattr(box, "ap_class_index", None) if getattr(box, "ap_class_index", None) is not None
                          else []):
        ap[names[int(c)]], ap50[names[int(c)]] = float(box.ap[i]), float(box.ap50[i])
    counts = det_metrics.nt_per_class if getattr(det_metrics, "nt_per_class", None) is not None else []
    return {"per_class": ap, "per_class_AP50": ap50,
            "per_class_instances": {names[c]: int(n) for c, n in enumerate(counts) if c < len(names)}}


def group_ap(metrics: dict, groups: dict[str, list[str]]) -> dict[str, dict]:
    """``{group: {'AP', 'AP50': mean over the group's classes with ground truth (None if none has any),
    'classes': n, 'classes_with_gt': k, 'instances': n}}`` from a metrics dict with ``per_class`` AP."""
    ap, ap50 = metrics.get("per_class") or {}, metrics.get("per_class_AP50") or {}
    inst = metrics.get("per_class_instances") or {}
    out = {}
    for group, members in groups.items():
        scored = [m for m in members if ap.get(m) is not None]
        out[group] = {"AP": _mean([ap[m] for m in scored]), "AP50": _mean([ap50.get(m) for m in scored]),
                      "classes": len(members), "classes_with_gt": len(scored),
                      "instances": sum(int(inst.get(m, 0)) for m in members)}
    return out


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def format_group_table(per_group: dict[str, dict]) -> str:
    """One row per group: classes (with ground truth), instances, AP, AP50."""
    width = max(12, *(len(g) for g in per_group)) + 2
    lines = [f"{'class group':<{width}}{'classes':>9}{'instances':>11}{'AP':>8}{'AP50':>8}"]
    for group, m in per_group.items():
        classes = f"{m['classes_with_gt']}/{m['classes']}" if m["classes_with_gt"] != m["classes"] else m["classes"]
        lines.append(f"{group:<{width}}{classes!s:>9}{m['instances']:>11}{_fmt(m['AP']):>8}{_fmt(m['AP50']):>8}")
    return "\n".join(lines)


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def resolve_groups(class_names, spec=None, teacher=None) -> dict[str, list[str]] | None:
    """The groups to report: from ``spec`` (see :func:`parse_class_groups`), or split by ``teacher`` (a checkpoint
    path or its class names, see :func:`groups_from_teacher`); None when neither is given."""
    if spec and teacher is not None:
        raise ConfigError("give the class groups either by name (--class-groups) or from a teacher "
                          "(--groups-from-teacher), not both.")
    if spec:
        return parse_class_groups(spec, class_names)
    if teacher is None:
        return None
    if isinstance(teacher, (str, bytes)) or hasattr(teacher, "__fspath__"):
        from detkd.models.loading import load_detection_model

        teacher = load_detection_model(str(teacher), role="teacher").names
    return groups_from_teacher(teacher, class_names)


def add_class_groups(metrics: dict, spec=None, teacher=None, verbose: bool = True) -> dict | None:
    """Add ``class_groups`` (:func:`group_ap`) to an :func:`~detkd.eval.coco_eval.evaluate_coco` result, in place and
    in its ``metrics.json`` (beside its ``detections_json``); print the table when ``verbose``. Returns the groups'
    numbers, or None when no group is asked for."""
    import json
    from pathlib import Path

    groups = resolve_groups(list(metrics.get("per_class") or {}), spec, teacher)
    if groups is None:
        return None
    metrics["class_groups"] = per_group = group_ap(metrics, groups)
    metrics["class_group_members"] = groups
    saved = Path(str(metrics.get("detections_json", ""))).parent / "metrics.json"
    if metrics.get("detections_json") and saved.is_file():
        saved.write_text(json.dumps({**json.loads(saved.read_text()), "class_groups": per_group,
                                     "class_group_members": groups}, indent=1))
    if verbose:
        print(format_group_table(per_group))
    return per_group

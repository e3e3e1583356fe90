"""Teacher-assistant chains: teacher → assistant → student, for teacher/student gaps too large to distil directly.

A YOLOv8-L teacher has ~14× the parameters of a YOLOv8-n student; published detector distillation pairs models
one size apart (M→S→T), and the LD paper proposes a teacher assistant for larger gaps. One call runs both stages
with identical training settings:

1. **assistant**: ``assistant`` (e.g. ``yolov8s.yaml``) distilled from ``teacher``;
2. **student**: ``student`` distilled from the assistant's ``best.pt`` (``from_both=True``: from the assistant and
   the teacher as a two-teacher ensemble, see :mod:`detkd.models.ensemble`).

Layout under ``<project>/<name>/``: ``assistant/`` and ``student/`` (Ultralytics run folders, each with the
fingerprint it was started with in ``chain_stage.json``) and ``chain.json`` (what each finished stage produced).

Both links (teacher → assistant, assistant → student) are checked before any stage trains. Each stage is resumable
on its own, and only with the settings it was started with (its fingerprint: model, teacher and data files by
SHA-256, KD settings, training arguments, as ``detkd compare`` keys its runs; see :mod:`detkd.engine.fingerprint`):
a finished stage is reused (its ``best.pt`` is the next stage's teacher), an interrupted one continues from its
``weights/last.pt``. A stage made with other settings is retrained in a fresh folder, the old one kept as
``<stage>.old-<timestamp>``; a retrained assistant is a new teacher, so the student stage is retrained too.
"""

from __future__ import annotations

import json
from pathlib import Path

from detkd.engine.checkpoints import run_state
from detkd.engine.fingerprint import (diff, holds_a_run, kd_signature, model_id, normal, read_json, same_settings,
                                     set_aside, with_unlabeled)

STAGES = ("assistant", "student")
MARKER = "chain.json"
STAGE_RECORD = "chain_stage.json"  # in each stage folder: the fingerprint the stage was started with
# Training arguments that change where or how fast a stage runs, not what it learns: left out of its fingerprint.
RUN_ONLY_ARGS = {"device", "workers", "project", "name", "exist_ok", "plots", "verbose", "cache"}


def distill_via_assistant(teacher, assistant, student="yolov8n.yaml", data=None, kd=None, from_both: bool = False,
                          project: str = "runs/detect", name: str = "chain", log=print, **train_args) -> dict:
    """Train ``assistant`` from ``teacher``, then ``student`` from the assistant (or both); see the module doc.

    Returns ``{'assistant': RunResult | Path, 'student': RunResult}`` (a reused stage gives its best.pt path).
    """
    from detkd.api import distill, resolve_data
    from detkd.config import KDConfig
    from detkd.models.loading import resolve_model_path

    resolve_model_path(assistant, role="assistant")  # a missing student must not cost the assistant's training first
    resolve_model_path(student, role="student")
    data_yaml = resolve_data(data)
    kd_fields = {k: v for k, v in (KDConfig.coerce(kd) if kd is not None else KDConfig()).to_dict().items()
                 if k != "teacher"}
    check_chain(teacher, assistant, student, data_yaml, box_kd=float(kd_fields.get("box_kd", 1.0)) > 0)
    root = Path(project) / name
    root.mkdir(parents=True, exist_ok=True)
    marker = root / MARKER
    record = read_json(marker) or {}
    results: dict = {}
    stage_teacher = teacher
    for i, (stage, model) in enumerate(zip(STAGES, (assistant, student)), 1):
        run_dir = root / stage
        if stage == "student" and from_both:
            stage_teacher = [stage_teacher, teacher]
        fp = stage_fingerprint(model, stage_teacher, data_yaml, kd_fields, train_args)
        state, weights = stage_state(run_dir, fp)
        if state == "finished":
            log(f"[chain {i}/2] {stage}: finished before, reusing {weights} (same settings)")
            results[stage] = weights
        else:
            if state == "changed":
                why = changed_settings(run_dir, fp)
                log(f"[chain {i}/2] {stage}: settings changed since the run in {run_dir} ({why}): retraining; the "
                    f"old run is kept in {set_aside(run_dir)}")
            for later in STAGES[i - 1:]:  # this stage's record, and those learnt from it, describe old runs now
                record.pop(later, None)
            marker.write_text(json.dumps(record, indent=1))
            what = f"resuming from {weights}" if state == "interrupted" else f"training {model}"
            log(f"[chain {i}/2] {stage}: {what}, distilled from {stage_teacher}")
            if state == "interrupted":
                run = distill(resume=str(weights))
            else:
                run_dir.mkdir(parents=True, exist_ok=True)
                (run_dir / STAGE_RECORD).write_text(json.dumps({"fingerprint": fp}, indent=1))
                run = distill(teacher=stage_teacher, student=model, data=data, kd=kd, project=str(root),
                              name=stage, exist_ok=True, **train_args)
            results[stage], weights = run, run.best
            record[stage] = {"model": str(model), "teacher": str(stage_teacher), "best": str(weights),
                             "metrics": run.metrics, "learnt_from": "teacher" if stage == "assistant" else
                             "assistant + teacher" if from_both else "assistant"}
            marker.write_text(json.dumps(record, indent=1))
        stage_teacher = str(weights)
    return results


def stage_fingerprint(model, teacher, data_yaml: str, kd_fields: dict, train_args: dict) -> dict:
    """What a stage's result depends on: the model it trains and its teacher(s) (file hashes, or a bundled config's
    name), the data.yaml's hash, the KD settings (:func:`~detkd.engine.fingerprint.kd_signature`), the unlabelled
    images (:func:`~detkd.engine.fingerprint.unlabeled_id`) and the training arguments (device, workers, ... left
    out)."""
    fp = {"model": model_id(model), "teacher": model_id(teacher), "data": model_id(data_yaml),
          "kd": kd_signature(kd_fields), "train_args": {k: v for k, v in train_args.items() if k not in RUN_ONLY_ARGS}}
    return normal(with_unlabeled(fp, kd_fields))


def stage_state(run_dir: Path, fp: dict) -> tuple[str, Path | None]:
    """Where a stage stands for the settings ``fp``: ('finished', best.pt) or ('interrupted', last.pt) when it was
    started with ``fp``; ('changed', None) when its folder holds a run made with other (or unrecorded) settings;
    else ('new', None)."""
    state, weights = run_state(run_dir)
    started = read_json(run_dir / STAGE_RECORD) or {}
    if state in {"finished", "interrupted"} and same_settings(started.get("fingerprint"), fp):
        return state, weights
    return ("changed", None) if holds_a_run(run_dir) else ("new", None)


def changed_settings(run_dir: Path, fp: dict) -> str:
    """What differs between ``fp`` and the settings the stage in ``run_dir`` was started with."""
    before = (read_json(run_dir / STAGE_RECORD) or {}).get("fingerprint")
    return diff(before, fp) if before else "no record of the settings it was trained with"


def check_chain(teacher, assistant, student, data_yaml: str, box_kd: bool = True) -> None:
    """Both links of the chain can be distilled (classes, head, strides, reg_max) — before any stage trains."""
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils import YAML

    from detkd.models.loading import YAML_SUFFIXES, load_detection_model

    data = YAML.load(data_yaml)
    nc = int(data.get("nc") or len(data["names"]))
    teacher_net = load_detection_model(str(teacher), role="teacher", nc=nc)
    student_net = DetectionModel(load_detection_model(str(student), role="student", nc=nc).yaml, nc=nc, verbose=False)
    check_chain_links(teacher_net, assistant, student_net, {"nc": nc, "names": data["names"]}, box_kd=box_kd,
                      teacher_from_yaml=str(teacher).lower().endswith(YAML_SUFFIXES))


def check_chain_links(teacher_net, assistant, student_net, data: dict, box_kd: bool, teacher_from_yaml: bool) -> None:
    """teacher → assistant and assistant → student (the assistant built fresh for ``data``), each message naming the
    models by their role in the chain. Raises IncompatibleModelsError."""
    from ultralytics.nn.tasks import DetectionModel

    from detkd.models.compat import check_compatibility
    from detkd.models.loading import load_detection_model

    nc, names = int(data["nc"]), data["names"]
    assistant_net = DetectionModel(load_detection_model(str(assistant), role="assistant", nc=nc).yaml, nc=nc,
                                   verbose=False)
    assistant_net.names = names if isinstance(names, dict) else dict(enumerate(names))
    check_compatibility(teacher_net, assistant_net, data, box_kd=box_kd, teacher_from_yaml=teacher_from_yaml,
                        roles=("teacher", "assistant"))
    check_compatibility(assistant_net, student_net, data, box_kd=box_kd, teacher_from_yaml=True,
                        roles=("assistant", "student"))


def chain_summary(root) -> str:
    """The finished chain under ``root`` as a table: per stage its model, what it learnt from, val mAP and best.pt."""
    record = read_json(Path(root) / MARKER) or {}
    rows = [f"  {'stage':<10} {'model':<16} {'learnt from':<20} {'mAP50-95':>8} {'mAP50':>7}  best.pt"]
    for stage in STAGES:
        r = record.get(stage)
        if r:
            m = r.get("metrics") or {}
            rows.append(f"  {stage:<10} {Path(r['model']).name:<16} {r.get('learnt_from', '?'):<20} "
                        f"{m.get('mAP50-95', float('nan')):>8.4f} {m.get('mAP50', float('nan')):>7.4f}  {r['best']}")
    return "\n".join(rows)

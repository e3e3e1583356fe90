"""Teacher-assistant chains: teacher → assistant → student, for teacher/student gaps too large to distil directly.

A YOLOv8-L teacher has ~14× the parameters of a YOLOv8-n student; published detector distillation pairs models
one size apart (M→S→T), and the LD paper proposes a teacher assistant for larger gaps. One call runs both stages
with identical training settings:

1. **assistant**: ``assistant`` (e.g. ``yolov8s.yaml``) distilled from ``teacher``;
2. **student**: ``student`` distilled from the assistant's ``best.pt`` (``from_both=True``: from the assistant and
   the teacher as a two-teacher ensemble, see :mod:`detkd.models.ensemble`).

Layout under ``<project>/<name>/``: ``assistant/`` and ``student/`` (Ultralytics run folders) and ``chain.json``
(what each finished stage produced). Each stage is resumable on its own: a finished stage is reused (its
``best.pt`` is the next stage's teacher), an interrupted one continues from its ``weights/last.pt``.
"""

from __future__ import annotations

import json
from pathlib import Path

from detkd.engine.checkpoints import run_state

STAGES = ("assistant", "student")
MARKER = "chain.json"


def distill_via_assistant(teacher, assistant, student="yolov8n.yaml", data=None, kd=None, from_both: bool = False,
                          project: str = "runs/detect", name: str = "chain", log=print, **train_args) -> dict:
    """Train ``assistant`` from ``teacher``, then ``student`` from the assistant (or both); see the module doc.

    Returns ``{'assistant': RunResult | Path, 'student': RunResult}`` (a reused stage gives its best.pt path).
    """
    from detkd.api import distill
    from detkd.models.loading import resolve_model_path

    resolve_model_path(assistant, role="assistant")  # a missing student must not cost the assistant's training first
    resolve_model_path(student, role="student")
    root = Path(project) / name
    root.mkdir(parents=True, exist_ok=True)
    marker = root / MARKER
    record = json.loads(marker.read_text()) if marker.is_file() else {}
    results: dict = {}
    stage_teacher = teacher
    for i, (stage, model) in enumerate(zip(STAGES, (assistant, student)), 1):
        run_dir = root / stage
        state, weights = run_state(run_dir)
        if stage == "student" and from_both:
            stage_teacher = [stage_teacher, teacher]
        if state == "finished":
            log(f"[chain {i}/2] {stage}: finished before, reusing {weights}")
            results[stage] = weights
        else:
            what = f"resuming from {weights}" if state == "interrupted" else f"training {model}"
            log(f"[chain {i}/2] {stage}: {what}, distilled from {stage_teacher}")
            if state == "interrupted":
                run = distill(resume=str(weights))
            else:
                run = distill(teacher=stage_teacher, student=model, data=data, kd=kd, project=str(root),
                              name=stage, exist_ok=True, **train_args)
            results[stage], weights = run, run.best
            record[stage] = {"model": str(model), "teacher": str(stage_teacher), "best": str(weights),
                             "metrics": run.metrics, "learnt_from": "teacher" if stage == "assistant" else
                             "assistant + teacher" if from_both else "assistant"}
            marker.write_text(json.dumps(record, indent=1))
        stage_teacher = str(weights)
    return results


def chain_summary(root) -> str:
    """The finished chain under ``root`` as a table: per stage its model, what it learnt from, val mAP and best.pt."""
    record = json.loads((Path(root) / MARKER).read_text()) if (Path(root) / MARKER).is_file() else {}
    rows = [f"  {'stage':<10} {'model':<16} {'learnt from':<20} {'mAP50-95':>8} {'mAP50':>7}  best.pt"]
    for stage in STAGES:
        r = record.get(stage)
        if r:
            m = r.get("metrics") or {}
            rows.append(f"  {stage:<10} {Path(r['model']).name:<16} {r.get('learnt_from', '?'):<20} "
                        f"{m.get('mAP50-95', float('nan')):>8.4f} {m.get('mAP50', float('nan')):>7.4f}  {r['best']}")
    return "\n".join(rows)

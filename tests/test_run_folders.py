"""Where runs land: a relative ``project`` is relative to the current folder, as detkd's docs, the chain's
``chain.json`` and ``compare`` assume — not under Ultralytics' ``runs_dir`` setting (which nested it as
``<runs_dir>/detect/runs/detect/NAME``)."""

from __future__ import annotations

from conftest import TINY_TRAIN
from detkd.config import KDConfig


def test_a_relative_project_lands_under_the_current_folder(tmp_path, monkeypatch, shapes_yaml, teacher_pt):
    from detkd.engine.baseline import StudentTrainer
    from detkd.engine.trainer import DistillationTrainer

    monkeypatch.chdir(tmp_path)
    args = dict(model="yolov8n.yaml", data=shapes_yaml, project="runs/detect", **TINY_TRAIN)
    baseline = StudentTrainer(overrides={**args, "name": "base"})
    distilled = DistillationTrainer(overrides={**args, "name": "kd"},
                                    kd=KDConfig(teacher=teacher_pt, validate_teacher=False))
    assert baseline.save_dir == tmp_path / "runs" / "detect" / "base"
    assert distilled.save_dir == tmp_path / "runs" / "detect" / "kd"

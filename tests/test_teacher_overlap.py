"""The teacher one batch ahead on CPU (engine/teacher_overlap.py): same outputs and same training as the inline
teacher, outputs used only for the input they were computed on, off with one flag."""

from __future__ import annotations

import csv

import pytest
import torch

from conftest import TINY_TRAIN
from detkd.config import KDConfig
from detkd.engine.teacher_overlap import TeacherLookahead, TeacherOverlap, teacher_input
from detkd.engine.trainer import DistillationTrainer
from detkd.models.teacher import FrozenTeacher


def _teacher():
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    return FrozenTeacher(DetectionModel("yolov8n.yaml", nc=3, verbose=False), torch.device("cpu")).optimize()


def test_outputs_started_ahead_equal_the_inline_teacher_and_serve_only_their_input():
    teacher = _teacher()
    overlap = TeacherOverlap(teacher)
    raw = (torch.rand(2, 3, 64, 64) * 255).to(torch.uint8)
    started_on = teacher_input(raw)
    future = overlap.start(started_on)
    img = raw.float() / 255  # what Ultralytics' preprocess_batch hands the model: another tensor, same values
    overlap.expect(img, started_on, future)
    out, ref = overlap(img), teacher(img)
    assert overlap.hits == 1
    for a, b in zip((out.boxes, out.scores, *out.feats), (ref.boxes, ref.scores, *ref.feats)):
        assert torch.equal(a, b)
    other = torch.rand(2, 3, 64, 64)  # another input (e.g. resized): the teacher runs inline on it
    overlap.expect(other, started_on, overlap.start(started_on))
    torch.testing.assert_close(overlap(other).scores, teacher(other).scores)
    assert overlap.hits == 1 and overlap.nc == teacher.nc  # facts are the wrapped teacher's
    overlap.close()


def test_an_ensemble_started_ahead_member_by_member_equals_the_inline_ensemble():
    from ultralytics.nn.tasks import DetectionModel

    from detkd.models.ensemble import TeacherEnsemble

    torch.manual_seed(1)
    second = FrozenTeacher(DetectionModel("yolo26n.yaml", nc=3, verbose=False), torch.device("cpu")).optimize()
    ensemble = TeacherEnsemble([_teacher(), second], [0.7, 0.3])
    overlap = TeacherOverlap(ensemble)
    img = torch.rand(2, 3, 64, 64)
    started = overlap.start(img.clone())
    assert len(started) == 2  # one per member, side by side
    overlap.expect(img, img.clone(), started)
    out, ref = overlap(img), ensemble(img)
    assert overlap.hits == 1
    for a, b in zip((out.boxes, out.scores, out.conf_logits, *out.feats),
                    (ref.boxes, ref.scores, ref.conf_logits, *ref.feats)):
        assert torch.equal(a, b)
    overlap.close()


def test_lookahead_starts_each_batch_before_the_previous_one_is_handed_out():
    events = []
    loader = TeacherLookahead([{"i": 0}, {"i": 1}, {"i": 2}], lambda b: events.append(("start", b["i"])))
    for batch in loader:
        events.append(("step", batch["i"]))
    assert events == [("start", 0), ("start", 1), ("step", 0), ("start", 2), ("step", 1), ("step", 2)]
    assert len(loader) == 3


def _losses(trainer) -> list[dict]:
    with open(trainer.csv) as f:
        return [{k.strip(): float(v) for k, v in row.items() if k.strip().startswith("train/")}
                for row in csv.DictReader(f)]


@pytest.mark.slow
def test_training_with_the_teacher_ahead_equals_training_with_it_inline(tmp_path, shapes_yaml, teacher_pt):
    runs = {}
    for overlap in (True, False):
        trainer = DistillationTrainer(
            overrides=dict(model="yolov8n.yaml", data=shapes_yaml, project=str(tmp_path), name=f"o{overlap}",
                           val=False, deterministic=True, **TINY_TRAIN),
            kd=KDConfig(teacher=teacher_pt, validate_teacher=False, teacher_overlap=overlap))
        trainer.train()
        runs[overlap] = trainer
    runner = runs[True].teacher_runner
    assert isinstance(runner, TeacherOverlap) and runner.hits == 2 * len(runs[True].train_loader)
    assert runs[False].teacher_runner is runs[False].teacher
    assert _losses(runs[True]) == _losses(runs[False])

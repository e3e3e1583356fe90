"""Teacher validation at start: it leaves the augmentation stream alone, handles seg/pose teachers, and the KD-only
loss items get no (always zero) val/ columns."""

from __future__ import annotations

import csv

import pytest
import torch

from conftest import TINY_TRAIN
from detkd.config import KDConfig
from detkd.engine.baseline import StudentTrainer
from detkd.engine.trainer import DistillationTrainer

pytestmark = pytest.mark.slow

RUN = {**TINY_TRAIN, "epochs": 1}


class _Stop(Exception):
    pass


def _grab_first_batch(trainer, out: dict, stop: bool) -> None:
    """Record the first preprocessed training batch (images, labels) of ``trainer``; optionally stop right there."""
    original = trainer.preprocess_batch

    def grab(batch):
        batch = original(batch)
        if "batch" not in out:
            out["batch"] = {k: batch[k].detach().clone() for k in ("img", "cls", "bboxes", "batch_idx")}
            if stop:
                raise _Stop
        return batch

    trainer.preprocess_batch = grab


@pytest.fixture(scope="module")
def distilled(tmp_path_factory, shapes_yaml, teacher_pt):
    """A 1-epoch distillation run with the teacher validated at start; its first training batch recorded."""
    project = tmp_path_factory.mktemp("kdval")
    trainer = DistillationTrainer(overrides=dict(model="yolov8n.yaml", data=shapes_yaml, project=str(project),
                                                 name="kd", **RUN), kd=KDConfig(teacher=teacher_pt, validate_teacher=True))
    seen: dict = {}
    _grab_first_batch(trainer, seen, stop=False)
    trainer.train()
    return trainer, seen["batch"]


def test_teacher_validation_keeps_the_augmentation_stream(tmp_path, shapes_yaml, distilled):
    trainer, kd_batch = distilled
    assert trainer.teacher_metrics  # the teacher (and the student's start) were validated before training
    baseline = StudentTrainer(overrides=dict(model="yolov8n.yaml", data=shapes_yaml, project=str(tmp_path),
                                             name="base", **RUN))
    seen: dict = {}
    _grab_first_batch(baseline, seen, stop=True)
    with pytest.raises(_Stop):
        baseline.train()
    for k, v in seen["batch"].items():
        assert torch.equal(v, kd_batch[k]), f"first batch '{k}' differs between baseline and distillation"


def test_kd_items_have_train_columns_only(distilled):
    trainer, _ = distilled
    with open(trainer.csv) as f:
        columns = [c.strip() for c in next(csv.reader(f))]
    for name in ("cls_kd", "box_kd", "feat_kd", "kd_align_cls", "kd_align_box"):
        assert f"train/{name}" in columns and f"val/{name}" not in columns, name
    assert {"val/box_loss", "val/cls_loss", "val/dfl_loss"} <= set(columns)  # the detection val losses stay


@pytest.mark.parametrize("teacher, head", [("yolov8n-seg.yaml", "Segment"), ("yolov8n-pose.yaml", "Pose")])
def test_segmentation_and_pose_teachers_are_validated_on_their_detections(tmp_path, monkeypatch, shapes_yaml,
                                                                          teacher, head):
    """A Segment/Pose teacher (a Detect subclass) is scored on its boxes and classes only (its mask coefficients
    or keypoints are not read as classes), named in the notes, and distilled to the end of a run."""
    from ultralytics.utils import nms

    from detkd.models.compat import check_compatibility
    from detkd.models.loading import load_detection_model

    seen = []
    real_nms = nms.non_max_suppression
    monkeypatch.setattr(nms, "non_max_suppression", lambda p, *a, **k: seen.append(p) or real_nms(p, *a, **k))
    trainer = DistillationTrainer(overrides=dict(model="yolov8n.yaml", data=shapes_yaml, project=str(tmp_path),
                                                 name="t", **RUN), kd=KDConfig(teacher=teacher))
    trainer.train()
    nc = trainer.data["nc"]
    inference = [p[0] if isinstance(p, (list, tuple)) else p for p in seen]  # NMS reads (y, raw)[0]
    assert seen and all(isinstance(y, torch.Tensor) and y.shape[1] == 4 + nc for y in inference)
    losses = {k: float(v) for k, v in trainer.tloss.items()}  # last epoch's mean training loss items
    assert trainer.teacher_metrics and all(v == v and abs(v) < float("inf") for v in losses.values()), losses
    assert all(losses[k] > 0 for k in ("cls_kd", "box_kd", "feat_kd")), losses  # the teacher pulled on the student

    net = load_detection_model(teacher, role="teacher", nc=nc)
    net.names = trainer.data["names"]
    notes = check_compatibility(net, trainer.model, trainer.data)
    assert any(f"teacher head: {head} — distilled through its detection outputs" in n for n in notes)


def test_obb_teacher_is_refused():
    from ultralytics.nn.tasks import DetectionModel

    from detkd.errors import IncompatibleModelsError
    from detkd.models.compat import teacher_head_notes
    from detkd.models.teacher import detect_head

    assert teacher_head_notes(detect_head(DetectionModel("yolov8n.yaml", nc=4, verbose=False))) == []
    with pytest.raises(IncompatibleModelsError, match="OBB .*rotated boxes"):
        teacher_head_notes(detect_head(DetectionModel("yolov8n-obb.yaml", nc=4, verbose=False)))


def test_progress_header_columns_stay_apart():
    """Ultralytics prints loss columns 11 characters wide; a 12-character name ('kd_align_cls') ran into its
    neighbours ('feat_kdkd_align_clskd_align_box'). Every header column is its own word, in loss order."""
    from detkd.engine.trainer import DistillationTrainer

    names = ("box_loss", "cls_loss", "dfl_loss", "cls_kd", "box_kd", "feat_kd", "kd_align_cls", "kd_align_box")
    trainer = DistillationTrainer.__new__(DistillationTrainer)  # the header needs only the loss names
    trainer.loss_names = names
    header = trainer.progress_string().split()
    assert len(header) == 4 + len(names), header
    assert header[:2] == ["Epoch", "GPU_mem"] and header[-2:] == ["Instances", "Size"]
    assert header[2:8] == list(names[:6]) and all("align" in h for h in header[8:10])
    assert all(len(h) <= 10 for h in header), header

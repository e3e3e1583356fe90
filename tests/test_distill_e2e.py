"""End-to-end distillation on tiny generated data, CPU: checkpoints, logged KD columns, frozen teacher, resume."""

from __future__ import annotations

import csv

import pytest
import torch

from conftest import TINY_TRAIN, assert_predicts
from detkd.config import KDConfig
from detkd.engine.trainer import ADAPTERS_FILE, DistillationTrainer
from detkd.errors import ConfigError, IncompatibleModelsError
from detkd.eval.metrics import BACKEND_LABEL, resolve_backend

pytestmark = pytest.mark.slow


def _rows(path):
    with open(path) as f:
        return [{k.strip(): v for k, v in row.items()} for row in csv.DictReader(f)]


def test_distill_end_to_end(tmp_path, shapes_yaml, teacher_pt):
    from ultralytics import YOLO

    trainer = DistillationTrainer(
        overrides=dict(model="yolov8n.yaml", data=shapes_yaml, project=str(tmp_path), name="kd", **TINY_TRAIN),
        kd=KDConfig(teacher=teacher_pt, feat_method="cwd"),
    )
    snapshots = {}
    trainer.add_callback("on_train_start", lambda t: snapshots.update(
        before={k: v.clone() for k, v in t.teacher.model.state_dict().items()}))
    trainer.add_callback("on_train_end", lambda t: snapshots.update(after=t.teacher.model.state_dict()))
    trainer.train()

    # the teacher is bit-identical before and after training, and frozen
    assert snapshots["before"].keys() == snapshots["after"].keys()
    assert all(torch.equal(snapshots["before"][k], snapshots["after"][k]) for k in snapshots["before"])
    assert not any(p.requires_grad for p in trainer.teacher.model.parameters())
    assert trainer.teacher_metrics and "mAP50-95" in trainer.teacher_metrics  # "know your teacher" ran

    # KD columns are logged and non-zero
    rows = _rows(trainer.csv)
    assert len(rows) == 2
    for col in ("train/cls_kd", "train/box_kd", "train/feat_kd"):
        assert all(float(r[col]) > 0 for r in rows), col

    # best.pt: student only, loads with plain Ultralytics and predicts
    ckpt = torch.load(trainer.best, map_location="cpu", weights_only=False)
    keys = list(ckpt["model"].state_dict())
    assert not any(("teacher" in k) or ("align" in k) or ("generator" in k) for k in keys)
    from ultralytics.nn.tasks import DetectionModel

    fresh = DetectionModel("yolov8n.yaml", nc=4, verbose=False)
    assert sum(p.numel() for p in ckpt["model"].parameters()) == sum(p.numel() for p in fresh.parameters())
    model = YOLO(str(trainer.best))
    assert_predicts(model)
    assert (trainer.wdir / ADAPTERS_FILE).is_file()  # adapters kept beside, for resume only


def test_resume_reattaches_teacher_and_adapters(tmp_path, shapes_yaml, teacher_pt):
    from detkd.api import distill

    class Interrupt(Exception):
        pass

    def stop_after_first_save(trainer):
        raise Interrupt

    overrides = dict(model="yolov8n.yaml", data=shapes_yaml, project=str(tmp_path), name="r", **TINY_TRAIN)
    trainer = DistillationTrainer(overrides=overrides, kd=KDConfig(teacher=teacher_pt, feat_method="mgd"))
    trainer.add_callback("on_model_save", stop_after_first_save)
    with pytest.raises(Interrupt):
        trainer.train()
    last = trainer.last
    assert last.is_file() and len(_rows(trainer.csv)) == 1
    saved_adapters = torch.load(trainer.wdir / ADAPTERS_FILE, weights_only=True)["adapters"]

    resumed = DistillationTrainer(overrides={"resume": str(last), "model": str(last)})
    assert resumed.kd.teacher == teacher_pt and resumed.kd.feat_method == "mgd"  # settings from the checkpoint
    loaded = {}
    resumed.add_callback("on_train_start", lambda t: loaded.update(
        {k: v.clone() for k, v in t.adapters.state_dict().items()}))
    resumed.train()
    assert resumed.start_epoch == 1 and resumed.teacher is not None
    assert all(torch.equal(loaded[k], saved_adapters[k]) for k in saved_adapters)
    rows = _rows(resumed.csv)
    assert [int(float(r["epoch"])) for r in rows] == [1, 2]
    assert float(rows[1]["train/feat_kd"]) > 0 and float(rows[1]["train/cls_kd"]) > 0

    # the public API refuses, with the reason, what cannot be resumed
    with pytest.raises(ConfigError, match="already finished"):
        distill(resume=str(resumed.last))
    with pytest.raises(ConfigError, match="not found"):
        distill(resume=str(tmp_path / "nope.pt"))


def test_ultralytics_builtin_distill_is_refused(shapes_yaml, teacher_pt, tmp_path):
    with pytest.raises(ConfigError, match="distill_model"):
        DistillationTrainer(overrides=dict(model="yolov8n.yaml", data=shapes_yaml, distill_model=teacher_pt,
                                           project=str(tmp_path)), kd=KDConfig(teacher=teacher_pt))


def test_min_teacher_map_refuses_weak_teacher(shapes_yaml, teacher_pt, tmp_path):
    trainer = DistillationTrainer(
        overrides=dict(model="yolov8n.yaml", data=shapes_yaml, project=str(tmp_path), name="weak", **TINY_TRAIN),
        kd=KDConfig(teacher=teacher_pt, min_teacher_map=0.5))
    with pytest.raises(ConfigError, match=r"teacher scores mAP50-95 0\.\d+ .* below --min-teacher-map 0\.5"):
        trainer.train()


def test_teacher_with_other_class_names_is_refused(shapes_yaml, tmp_path):
    from ultralytics.nn.tasks import DetectionModel

    net = DetectionModel("yolov8n.yaml", nc=4, verbose=False)
    net.names = {0: "cat", 1: "dog", 2: "car", 3: "bus"}
    path = tmp_path / "wrong.pt"
    torch.save({"model": net, "train_args": {}}, path)
    trainer = DistillationTrainer(
        overrides=dict(model="yolov8n.yaml", data=shapes_yaml, project=str(tmp_path), name="names", **TINY_TRAIN),
        kd=KDConfig(teacher=str(path)))
    with pytest.raises(IncompatibleModelsError, match="share no class"):  # (issue 28: a shared class is mapped)
        trainer.train()


def test_cli_errors_are_one_clear_message(capsys, shapes_yaml):
    from detkd.cli import main

    assert main(["distill", "--data", shapes_yaml]) == 2
    assert "--teacher is required" in capsys.readouterr().err
    assert main(["distill", "--teacher", "yolov8s.yaml", "--student", "yolov8x.pt", "--data", shapes_yaml]) == 2
    err = capsys.readouterr().err
    assert "student weights 'yolov8x.pt' not found" in err and "'yolov8x.yaml'" in err and "Traceback" not in err
    assert main(["distill", "--teacher", "missing_teacher.pt", "--data", shapes_yaml]) == 2
    assert "teacher weights 'missing_teacher.pt' not found" in capsys.readouterr().err
    assert main(["distill", "--teacher", "yolov8s.yaml", "--data", shapes_yaml, "--cls-temp", "0"]) == 2
    assert "cls_temperature=0.0 must be > 0" in capsys.readouterr().err


def test_coco_eval_selects_on_official_ap(tmp_path, shapes_yaml, teacher_pt):
    from detkd.api import distill

    run = distill(teacher=teacher_pt, student="yolov8n.yaml", data=shapes_yaml, project=str(tmp_path), name="coco",
                  coco_eval=True, **{**TINY_TRAIN, "epochs": 1})
    header = open(run.results_csv).readline()
    assert "metrics/AP(COCO)" in header and "train/cls_kd" in header
    assert run.metrics["source"] == BACKEND_LABEL[resolve_backend()] and 0.0 <= run.metrics["mAP50-95"] <= 1.0


def test_distill_on_real_coco_data(tmp_path, raccoon):
    """Real photographs in COCO format (../shared/datasets/raccoon, incl. non-RGB images), converted on the fly."""
    from detkd.api import distill

    run = distill(teacher="yolov8s.yaml", student="yolov8n.yaml", data=str(raccoon), project=str(tmp_path),
                  name="raccoon", **{**TINY_TRAIN, "epochs": 1, "batch": 16})
    rows = _rows(run.results_csv)
    assert len(rows) == 1 and float(rows[0]["train/box_kd"]) > 0 and run.best.is_file()

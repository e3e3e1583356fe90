"""Every compatibility error is raised, with a message that names the problem and the fix."""

from __future__ import annotations

import pytest
import torch

from detkd.config import KDConfig
from detkd.errors import ConfigError, IncompatibleModelsError, WeightsNotFoundError
from detkd.models.compat import check_compatibility
from detkd.models.loading import load_detection_model, resolve_model_path

DATA = {"nc": 2, "names": {0: "cat", 1: "dog"}}


def model(cfg="yolov8n.yaml", nc=2, names=None, **yaml_overrides):
    from ultralytics.nn.tasks import DetectionModel, yaml_model_load

    d = yaml_model_load(cfg)
    d.update(yaml_overrides)
    m = DetectionModel(d, nc=nc, verbose=False)
    m.names = names or {i: str(i) for i in range(nc)}
    return m


def test_compatible_pair_passes_and_reports_channels():
    notes = check_compatibility(model("yolov8s.yaml", names=DATA["names"]), model(), DATA)
    assert any("teacher channels [128, 256, 512]" in n and "student channels [64, 128, 256]" in n for n in notes)


def test_teacher_class_count_mismatch():
    with pytest.raises(IncompatibleModelsError, match="teacher predicts 3 classes but the data has 2"):
        check_compatibility(model(nc=3), model(), DATA)


def test_teacher_names_in_another_order_are_mapped_by_name_and_no_shared_class_is_refused():
    teacher = model(names={0: "dog", 1: "cat"})  # issue 28: classes matched by name, no longer refused
    assert "  cat -> cat  [same name]" in check_compatibility(teacher, model(), DATA)
    with pytest.raises(IncompatibleModelsError, match="share no class: teacher classes car, bus, data classes cat, dog"):
        check_compatibility(model(names={0: "car", 1: "bus"}), model(), DATA)


def test_teacher_from_yaml_has_no_names_to_check():
    check_compatibility(model(names={0: "x", 1: "y"}), model(), DATA, teacher_from_yaml=True)


def test_student_class_count_mismatch():
    with pytest.raises(IncompatibleModelsError, match="student predicts 5 classes"):
        check_compatibility(model(names=DATA["names"]), model(nc=5), DATA)


def test_stride_and_level_mismatch():
    with pytest.raises(IncompatibleModelsError, match="feature levels"):
        check_compatibility(model("yolov8n-p6.yaml", names=DATA["names"]), model(), DATA)
    with pytest.raises(IncompatibleModelsError, match="feature levels"):
        check_compatibility(model("yolov8n-p2.yaml", names=DATA["names"]), model(), DATA)


def test_same_number_of_levels_with_other_strides_is_refused():
    # P3-P6 and P2-P5 heads both have four levels: only the strides tell them apart
    with pytest.raises(IncompatibleModelsError, match=r"teacher strides \[8.0, 16.0, 32.0, 64.0\] differ from "
                                                      r"student strides \[4.0, 8.0, 16.0, 32.0\].*P6 student"):
        check_compatibility(model("yolov8n-p6.yaml", names=DATA["names"]), model("yolov8n-p2.yaml"), DATA)


@pytest.mark.parametrize("teacher_cfg,student_cfg", [("yolo26n-p6.yaml", "yolo26n.yaml"),
                                                     ("yolov8n.yaml", "yolo26n-p2.yaml"),
                                                     ("yolo26n-p6.yaml", "yolo26n-p2.yaml")])
def test_yolo26_pairs_with_other_levels_or_strides_are_refused(teacher_cfg, student_cfg):
    with pytest.raises(IncompatibleModelsError, match="feature levels|differ from student strides"):
        check_compatibility(model(teacher_cfg, names=DATA["names"]), model(student_cfg), DATA)


def test_reg_max_mismatch_switches_box_kd_to_decoded_distances():
    teacher = model(names=DATA["names"], reg_max=8)
    notes = check_compatibility(teacher, model(), DATA, box_kd=True)
    assert any("reg_max=8, student reg_max=16: no shared DFL bins" in n and "decoded box distances" in n
               for n in notes)
    assert not any("no shared DFL bins" in n for n in check_compatibility(model(names=DATA["names"]), model(), DATA))


@pytest.mark.parametrize("teacher_cfg,student_cfg", [("yolov8n.yaml", "yolo26n.yaml"), ("yolo11n.yaml", "yolo26n.yaml"),
                                                     ("yolo26n.yaml", "yolo26n.yaml"), ("yolo26n.yaml", "yolov8n.yaml")])
def test_cross_family_pairs_with_the_same_levels_are_accepted(teacher_cfg, student_cfg):
    notes = check_compatibility(model(teacher_cfg, names=DATA["names"]), model(student_cfg), DATA)
    assert any("decoded box distances" in n for n in notes) == ("26" in teacher_cfg + student_cfg)


def test_missing_weights_suggest_yaml(tmp_path):
    with pytest.raises(WeightsNotFoundError, match=r"never downloads.*'yolov8n\.yaml'"):
        resolve_model_path("yolov8n.pt", role="student")
    with pytest.raises(WeightsNotFoundError, match="URL"):
        resolve_model_path("https://example.com/yolov8n.pt")
    with pytest.raises(WeightsNotFoundError, match="config 'nonexistent_model.yaml' not found"):
        resolve_model_path("nonexistent_model.yaml")
    assert resolve_model_path("yolov8l.yaml") == "yolov8l.yaml"


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    from detkd.errors import DetKDError

    bad = tmp_path / "teacher.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(DetKDError, match="could not be read"):
        load_detection_model(bad, role="teacher")


def test_checkpoint_roundtrip_keeps_names(tmp_path):
    m = model(names=DATA["names"])
    path = tmp_path / "t.pt"
    torch.save({"model": m, "train_args": {}}, path)
    loaded = load_detection_model(path, role="teacher")
    assert loaded.names == DATA["names"] and not loaded.training


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"cls_kd": -1}, "cls_kd=-1 must be >= 0"),
        ({"cls_temperature": 0}, "cls_temperature=0 must be > 0"),
        ({"feat_method": "fitnet"}, "feat_method='fitnet' is not one of mse, cwd, mgd"),
        ({"schedule": "step"}, "schedule='step'"),
        ({"min_teacher_map": 2.0}, "in \\[0, 1\\]"),
        ({"min_teacher_map": 0.3, "validate_teacher": False},
         "needs the teacher validated at start: drop --teacher-val false"),
    ],
)
def test_bad_kd_settings(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        KDConfig(**kwargs)


def test_kd_config_yaml_and_unknown_keys(tmp_path):
    f = tmp_path / "kd.yaml"
    f.write_text("kd:\n  cls_kd: 2.0\n  feat_method: mse\ntrain:\n  epochs: 3\n")
    cfg = KDConfig.from_yaml(f, feat_method="mgd")
    assert cfg.cls_kd == 2.0 and cfg.feat_method == "mgd"  # explicit overrides win over the file
    with pytest.raises(ConfigError, match="unknown distillation setting.*cls_weight"):
        KDConfig.from_dict({"cls_weight": 1})
    with pytest.raises(ConfigError, match="not found"):
        KDConfig.from_yaml(tmp_path / "missing.yaml")

"""detkd export: the student alone leaves, ONNX matches torch, the clean .pt loads with YOLO() and predicts."""

from __future__ import annotations

from copy import deepcopy

import numpy as np
import pytest
import torch

from detkd.errors import DetKDError, WeightsNotFoundError

IMGSZ = 64
NC = 2


def _calibrated_student(seed: int = 0):
    """A yolov8n (nc=2) whose outputs vary like a trained model's: BN statistics from real images, class bias raised.

    A freshly initialised YOLO scores every anchor ~1e-4 with near-identical boxes, which would make the NMS comparison
    vacuous; after this, scores spread over ~0.1-0.9 and boxes differ per anchor.
    """
    from ultralytics.nn.tasks import DetectionModel

    from detkd.export.parity import load_parity_images, preprocess

    torch.manual_seed(seed)
    net = DetectionModel("yolov8n.yaml", nc=NC, verbose=False)
    x = preprocess(load_parity_images(), IMGSZ)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None
        net.train()
        net(torch.cat([x, torch.rand(6, 3, IMGSZ, IMGSZ)]))
        net.eval()
        for seq in net.model[-1].cv3:
            seq[-1].bias.add_(6.5)
    net.names = {0: "a", 1: "b"}
    net.task = "detect"
    net.args = {"imgsz": IMGSZ, "task": "detect"}
    return net


@pytest.fixture(scope="module")
def polluted_ckpt(tmp_path_factory):
    """An Ultralytics-style checkpoint whose student carries a teacher and adapters (and extra top-level keys)."""
    from ultralytics.nn.tasks import DetectionModel

    student = _calibrated_student()
    clean = deepcopy(student)
    student.teacher = DetectionModel("yolov8n.yaml", nc=NC, verbose=False)
    student.adapters = torch.nn.ModuleList([torch.nn.Conv2d(64, 128, 1), torch.nn.Conv2d(128, 256, 1)])
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    torch.save({"model": student, "ema": None, "train_args": {"imgsz": IMGSZ},
                "teacher": student.teacher.state_dict(), "epoch": 3}, path)
    return path, clean


def test_onnx_export_is_student_only_and_matches_torch(polluted_ckpt, tmp_path):
    import onnx

    from detkd.export import export_model

    path, clean = polluted_ckpt
    result = export_model(path, format="onnx", imgsz=IMGSZ, output=tmp_path / "student.onnx", verbose=False)
    assert result.path == tmp_path / "student.onnx" and result.path.is_file()
    assert {"teacher", "adapters"} <= set(result.removed)
    n_student = sum(p.numel() for p in clean.parameters())
    assert result.student_params == n_student
    graph = onnx.load(str(result.path)).graph
    names = " ".join(i.name for i in graph.initializer).lower()
    assert "teacher" not in names and "adapter" not in names
    elements = sum(int(np.prod(i.dims)) for i in graph.initializer)
    assert elements <= 1.05 * n_student  # a teacher (another 3.0 M) would roughly double it
    p = result.parity
    assert p.passed and p.detections_agree
    assert p.n_det_torch > 0 and p.n_matched > 0  # detections were really compared
    assert p.max_abs_diff < 1e-2 and p.box_max_abs_diff <= p.box_atol


def test_parity_fails_loudly_when_outputs_differ(polluted_ckpt, tmp_path):
    from detkd.export import export_model
    from detkd.export.parity import check_onnx_parity

    _, clean = polluted_ckpt
    result = export_model(clean, format="onnx", imgsz=IMGSZ, output=tmp_path, parity=False, verbose=False)
    other = deepcopy(clean)
    with torch.no_grad():
        for seq in other.model[-1].cv3:
            seq[-1].bias.add_(0.5)  # scores shift: the file no longer represents this model
    report = check_onnx_parity(clean, result.path, imgsz=IMGSZ, verbose=False)
    assert report.passed
    with pytest.raises(DetKDError, match="does not match the torch model"):
        check_onnx_parity(other, result.path, imgsz=IMGSZ, verbose=False)
    bad = check_onnx_parity(other, result.path, imgsz=IMGSZ, raise_on_fail=False, verbose=False)
    assert not bad.passed and bad.score_max_abs_diff > bad.score_atol


def test_fp16_onnx_export_parity(polluted_ckpt, tmp_path):
    from detkd.export import export_model

    _, clean = polluted_ckpt
    result = export_model(clean, format="onnx", imgsz=IMGSZ, half=True, output=tmp_path, verbose=False)
    assert result.parity.precision == "fp16" and result.parity.passed and result.parity.n_matched > 0


def test_pt_export_loads_with_yolo_and_predicts(polluted_ckpt, tmp_path):
    from ultralytics import YOLO
    from ultralytics.utils.patches import torch_load

    from detkd.export import export_model
    from detkd.export.parity import load_parity_images

    path, clean = polluted_ckpt
    out = export_model(path, format="pt", output=tmp_path / "student.pt").path
    ckpt = torch_load(out, map_location="cpu")
    assert "teacher" not in ckpt
    keys = list(ckpt["model"].state_dict())
    assert keys and all(k.startswith("model.") for k in keys)
    assert not any("teacher" in k or "adapter" in k for k in keys)
    assert sum(p.numel() for p in ckpt["model"].parameters()) == sum(p.numel() for p in clean.parameters())

    results = YOLO(str(out)).predict(load_parity_images()[0], imgsz=IMGSZ, conf=0.25, verbose=False)
    boxes = results[0].boxes
    assert len(boxes) > 0
    assert set(boxes.cls.int().tolist()) <= {0, 1}
    assert results[0].names == {0: "a", 1: "b"}


def test_foreign_tensors_inside_the_layers_are_refused():
    from detkd.export.student import assert_student_only

    net = _calibrated_student()
    assert_student_only(net)
    net.model[0].add_module("adapter", torch.nn.Conv2d(3, 3, 1))
    with pytest.raises(DetKDError, match="non-student"):
        assert_student_only(net)


def test_user_errors_are_clear(tmp_path):
    from detkd.cli import main
    from detkd.export import export_model

    with pytest.raises(DetKDError, match="Choose one of: pt, torchscript, onnx"):
        export_model("yolov8n.yaml", format="tfjsx")
    with pytest.raises(WeightsNotFoundError, match=r"missing_student\.yaml"):
        export_model(tmp_path / "missing_student.pt", format="onnx")
    with pytest.raises(DetKDError, match="multiple of 32"):
        export_model("yolov8n.yaml", format="onnx", imgsz=100)
    assert main(["export", "--model", str(tmp_path / "nope.pt")]) == 2

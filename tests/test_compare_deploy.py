"""Issue 29 item 4: ``detkd compare --deploy`` adds every student run's exported variants (backend x precision) to
the report, report.json and map_vs_fps.png."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from detkd.cli import main


class InstantTrainer:
    """Stands in for StudentTrainer / DistillationTrainer: writes a finished run holding a random-init yolov8n for
    the data's classes (real weights to export), without training."""

    def __init__(self, overrides=None, kd=None, **_):
        from ultralytics.utils import YAML

        self.overrides = dict(overrides or {})
        self.save_dir = Path(self.overrides["project"]) / self.overrides["name"]
        self.wdir = self.save_dir / "weights"
        self.best, self.last, self.csv = self.wdir / "best.pt", self.wdir / "last.pt", self.save_dir / "results.csv"
        self.names = YAML.load(self.overrides["data"])["names"]
        self.metrics = {}

    def add_callback(self, *_):
        pass

    def train(self):
        from ultralytics.nn.tasks import DetectionModel

        torch.manual_seed(0)
        net = DetectionModel("yolov8n.yaml", nc=len(self.names), verbose=False)
        net.names = dict(self.names) if isinstance(self.names, dict) else dict(enumerate(self.names))
        self.wdir.mkdir(parents=True, exist_ok=True)
        for f in (self.best, self.last):
            torch.save({"model": net, "train_args": {}, "epoch": -1}, f)
        self.csv.write_text("epoch\n1\n")


@pytest.fixture
def instant_training(monkeypatch):
    import detkd.engine.baseline as baseline
    import detkd.engine.trainer as trainer

    monkeypatch.setattr(baseline, "StudentTrainer", InstantTrainer)
    monkeypatch.setattr(trainer, "DistillationTrainer", InstantTrainer)


def _argv(teacher, data, project, *extra):
    return ["compare", "--teacher", teacher, "--data", str(data), "--student", "yolov8n.yaml", "--epochs", "1",
            "--imgsz", "64", "--batch", "8", "--device", "cpu", "--workers", "0", "--project", str(project),
            "--name", "dep", "--eval-batch", "8", "--bench-warmup", "1", "--bench-iters", "3", "--bench-time", "0.2",
            *extra]


def test_compare_deploy_adds_each_students_exported_variants(tmp_path, shapes_coco, teacher_pt, instant_training,
                                                             capsys):
    pytest.importorskip("onnxruntime")
    project = tmp_path / "runs"
    assert main(_argv(teacher_pt, shapes_coco, project, "--deploy", "onnx", "--calib-images", "8")) == 0
    printed = capsys.readouterr().out
    out = project / "dep"
    assert "deployment: 2 student runs x onnx:fp32, onnx:int8" in printed, printed
    report = json.loads((out / "report.json").read_text())
    deploy = report["deploy"]
    assert [(r["source"], r["variant"]) for r in deploy] == [
        ("baseline", "onnx:fp32"), ("baseline", "onnx:int8"), ("distilled-detkd", "onnx:fp32"),
        ("distilled-detkd", "onnx:int8")]
    for r in deploy:
        assert Path(r["artefact"]).exists() and r["AP"] is not None and r["fps"] > 0, r
        assert r["delta_AP_vs_torch"] is not None and r["speedup_vs_torch"] > 0
    assert deploy[1]["calibration"]["n"] == 8 and deploy[1]["precision_ran"] == "int8"
    assert [r["kind"] for r in report["rows"]] == ["teacher", "baseline", "distilled"]  # the main table is unchanged
    md = (out / "report.md").read_text()
    assert "## Deployment (exported students)" in md and "| baseline | ONNX Runtime | INT8 |" in md, md
    assert "Fastest deployment:" in md and "calibrated on 8 of 24 training images" in md
    png = (out / "map_vs_fps.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"

    # again: exports, evaluations and timings are reused
    assert main(_argv(teacher_pt, shapes_coco, project, "--deploy", "onnx", "--calib-images", "8")) == 0
    again = capsys.readouterr().out
    assert again.count("[ONNX Runtime FP32]: reused") == 2 and again.count("[ONNX Runtime INT8]: reused") == 2, again


def test_map_vs_fps_points_of_variants_take_their_runs_colour_and_a_variant_marker(tmp_path):
    from detkd.compare.experiment import RunSpec
    from detkd.compare.plots import map_points, plot_map_vs_fps, plot_styles, point_marker

    def run(key, kind, config, ap, fps, label, **kw):
        return RunSpec(key, kind, label, config=config, metrics={"AP": ap}, speed={"fps": fps}, **kw)

    specs = [run("teacher", "teacher", "teacher", 0.6, 10.0, "teacher"),
             run("baseline", "baseline", "baseline", 0.30, 40.0, "baseline"),
             run("distilled-detkd", "distilled", "distilled-detkd", 0.34, 40.0, "distilled: detkd"),
             run("baseline.openvino-int8", "deploy", "baseline.openvino-int8", 0.29, 90.0,
                 "baseline [OpenVINO INT8]", variant="openvino:int8", source="baseline"),
             run("distilled-detkd.openvino-int8", "deploy", "distilled-detkd.openvino-int8", 0.33, 91.0,
                 "distilled: detkd [OpenVINO INT8]", variant="openvino:int8", source="distilled-detkd")]
    pts = map_points(specs)
    assert [p["source_config"] for p in pts[3:]] == ["baseline", "distilled-detkd"]
    cols = [c for c, _ in plot_styles([(p["source_kind"], p["source_config"]) for p in pts])]
    assert cols[3] == cols[1] and cols[4] == cols[2]  # an exported file in its run's colour
    assert point_marker(pts[3]) == "*" and point_marker(pts[1]) == "o"
    assert plot_map_vs_fps(specs, tmp_path / "m.png").stat().st_size > 10_000


@pytest.mark.parametrize("argv, needle", [
    (["--deploy", "tensorrt"], "--deploy 'tensorrt': expected BACKEND[:PRECISION]"),
    (["--deploy", "onnx:fp16"], "--deploy 'onnx:fp16'"),
    (["--calib-images", "8"], "--calib-images calibrates the INT8 files of --deploy"),
    (["--deploy", "--bench-imgsz", "96"], "--deploy exports at --imgsz 64"),
])
def test_compare_deploy_refuses_what_it_cannot_do(argv, needle, tmp_path, shapes_yaml, teacher_pt, capsys):
    assert main(_argv(teacher_pt, shapes_yaml, tmp_path, *argv)) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err


def test_compare_deploy_times_on_the_cpu_only():
    from types import SimpleNamespace

    from detkd.compare.deploy import check_deploy_settings
    from detkd.errors import ConfigError

    with pytest.raises(ConfigError, match="--deploy times ONNX Runtime and OpenVINO on the CPU"):
        check_deploy_settings(SimpleNamespace(bench_device="0", bench_imgsz=None, imgsz=64, calib_images=300))


def test_compare_deploy_without_the_extra_names_it(monkeypatch, tmp_path, shapes_yaml, teacher_pt, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name in {"openvino", "nncf"} else real(name, *a, **k))
    assert main(_argv(teacher_pt, shapes_yaml, tmp_path, "--deploy")) == 2
    assert "pip install -e '.[deploy]'" in capsys.readouterr().err

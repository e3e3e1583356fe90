"""Quantization-aware distillation (``detkd distill --qat``: Ultralytics' ``quantize=8`` training argument).

The student is fine-tuned fake-quantized (NVIDIA ModelOpt, inserted by Ultralytics) with detkd's KD from a float
teacher; the teacher and the adapters never carry a quantizer; checkpoints load with ``YOLO()`` and resume; export
writes the ranges learnt in training (ONNX Q/DQ, OpenVINO FakeQuantize), without the adapters. Tiny generated data
(64 px), CPU.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY_TRAIN, assert_predicts, named_model, save_checkpoint
from detkd.config import KDConfig
from detkd.engine.trainer import DistillationTrainer

needs_modelopt = pytest.mark.skipif(importlib.util.find_spec("modelopt") is None,
                                    reason="nvidia-modelopt not installed (pip install -e '.[deploy]')")


def _quantizers(module) -> list[str]:
    return [n for n, m in module.named_modules() if type(m).__name__ == "TensorQuantizer"]


def _sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _epochs(results_csv) -> list[int]:
    with open(results_csv) as f:
        return [int(float({k.strip(): v for k, v in row.items()}["epoch"])) for row in csv.DictReader(f)]


def _ranges(module) -> dict:
    """Every quantizer range (amax) of ``module``, by name."""
    return {k: v.detach().clone() for k, v in module.state_dict().items() if k.endswith("quantizer._amax")}


@pytest.fixture(scope="module")
def student_pt(tmp_path_factory, shapes_yaml) -> str:
    """A YOLOv8n checkpoint standing for a trained student: random weights, BatchNorm statistics of the images'
    scale (a few forward passes in train mode), so INT8 calibration in eval mode sees realistic activations."""
    net = named_model("yolov8n.yaml", shapes_yaml, seed=1)
    net.train()
    with torch.no_grad():
        for _ in range(10):
            net(torch.rand(8, 3, 64, 64))
    return save_checkpoint(net.eval(), tmp_path_factory.mktemp("student") / "student.pt")


def _qat_trainer(project, name, student_pt, shapes_yaml, teacher_pt, **kw) -> DistillationTrainer:
    return DistillationTrainer(
        overrides=dict(model=student_pt, data=shapes_yaml, project=str(project), name=name, quantize=8,
                       **{**TINY_TRAIN, **kw}),
        kd=KDConfig(teacher=teacher_pt, validate_teacher=False, teacher_half=False))


@pytest.fixture(scope="module")
def qat_run(tmp_path_factory, student_pt, shapes_yaml, teacher_pt):
    """A 2-epoch QAT + KD run; what its teacher, student and adapters looked like at the start and the end."""
    teacher_sha = _sha(teacher_pt)
    trainer = _qat_trainer(tmp_path_factory.mktemp("qat"), "qat", student_pt, shapes_yaml, teacher_pt)
    seen = {}

    def at_start(t):
        seen["teacher_start"] = {k: v.clone() for k, v in t.teacher.model.state_dict().items()}
        seen["student_ranges_start"] = _ranges(t.model)

    trainer.add_callback("on_train_start", at_start)
    trainer.add_callback("on_train_end", lambda t: seen.update(teacher_end=t.teacher.model.state_dict()))
    trainer.train()
    return trainer, seen, teacher_sha


# ----------------------------------------------------------------------------------------------- refusals
def test_qat_without_modelopt_is_one_line_naming_the_deploy_extra(tmp_path, monkeypatch, capsys, shapes_yaml,
                                                                  teacher_pt, student_pt):
    from detkd.cli import main

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "modelopt" else find_spec(name, *a))
    code = main(["distill", "--qat", "--teacher", teacher_pt, "--student", student_pt, "--data", shapes_yaml,
                 "--imgsz", "64", "--epochs", "1", "--device", "cpu", "--project", str(tmp_path), "--name", "q"])
    err = capsys.readouterr().err
    assert code == 2
    assert "nvidia-modelopt" in err and "pip install -e '.[deploy]'" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "q").exists()  # refused before any work: no run folder left


def test_qat_flag_is_ultralytics_quantize_8_and_a_random_init_student_is_refused(tmp_path, capsys, shapes_yaml,
                                                                                 teacher_pt):
    import argparse

    from detkd.cli import main
    from detkd.cli.distill import add_arguments, build_settings

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    _, train = build_settings(parser.parse_args(["--qat", "--teacher", teacher_pt, "--data", shapes_yaml]))
    assert train["quantize"] == 8
    _, train = build_settings(parser.parse_args(["--teacher", teacher_pt, "--data", shapes_yaml]))
    assert "quantize" not in train

    if importlib.util.find_spec("modelopt") is None:
        pytest.skip("nvidia-modelopt not installed: the missing package is reported first")
    code = main(["distill", "--qat", "--teacher", teacher_pt, "--student", "yolov8n.yaml", "--data", shapes_yaml,
                 "--imgsz", "64", "--device", "cpu", "--project", str(tmp_path), "--name", "q"])
    err = capsys.readouterr().err
    assert code == 2 and "--qat fine-tunes a trained student" in err and "Traceback" not in err
    assert not (tmp_path / "q").exists()


# ----------------------------------------------------------------------------------------- training, export
@needs_modelopt
@pytest.mark.slow
def test_qat_distillation_quantizes_the_student_only_and_best_pt_loads_with_yolo(qat_run, teacher_pt):
    from ultralytics import YOLO

    trainer, seen, teacher_sha = qat_run
    assert _quantizers(trainer.model)  # the student trained fake-quantized (Ultralytics' prepare_qat)
    assert seen["student_ranges_start"]  # ... from its first step

    # the teacher: no quantizer, bit-identical over training, its file untouched
    assert _quantizers(trainer.teacher.model) == []
    assert seen["teacher_start"].keys() == seen["teacher_end"].keys()
    assert all(torch.equal(seen["teacher_start"][k], seen["teacher_end"][k]) for k in seen["teacher_start"])
    assert all(v.dtype == torch.float32 for v in seen["teacher_end"].values() if v.is_floating_point())
    assert _sha(teacher_pt) == teacher_sha

    # the adapters: float, no quantizer, saved beside the checkpoint and not in it
    assert trainer.adapters is not None and _quantizers(trainer.adapters) == []
    adapters = torch.load(trainer.wdir / "best_kd_adapters.pt", map_location="cpu", weights_only=True)["adapters"]
    assert adapters and all(v.dtype == torch.float32 for v in adapters.values())

    # KD ran on the quantized student
    with open(trainer.csv) as f:
        rows = [{k.strip(): v for k, v in r.items()} for r in csv.DictReader(f)]
    assert len(rows) == 2 and all(float(r["train/feat_kd"]) > 0 for r in rows)

    # best.pt: Ultralytics' QAT checkpoint (ranges beside the module), student only, loads with YOLO() quantized
    ckpt = torch.load(trainer.best, map_location="cpu", weights_only=False)
    assert ckpt.get("modelopt") and ckpt["modelopt"]["ranges"]
    assert not any(t in k for k in ckpt["model"].state_dict() for t in ("teacher", "align", "generator", "adapter"))
    model = YOLO(str(trainer.best))
    assert _quantizers(model.model)
    assert_predicts(model)


@needs_modelopt
@pytest.mark.slow
def test_a_quantized_checkpoint_is_refused_as_teacher(tmp_path, qat_run, shapes_yaml, student_pt):
    from detkd.errors import ConfigError

    trainer = DistillationTrainer(
        overrides=dict(model=student_pt, data=shapes_yaml, project=str(tmp_path), name="t", **TINY_TRAIN),
        kd=KDConfig(teacher=str(qat_run[0].best), validate_teacher=False))
    with pytest.raises(ConfigError, match="quantization-aware trained"):
        trainer.train()


def _onnx_scales(path) -> list[float]:
    """The scale of every QuantizeLinear of an ONNX graph (per-tensor ones as floats)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return [float(consts[n.input[1]]) for n in graph.node
            if n.op_type == "QuantizeLinear" and n.input[1] in consts and consts[n.input[1]].size == 1]


@needs_modelopt
@pytest.mark.slow
def test_qat_export_writes_the_learnt_ranges_and_no_adapters(tmp_path, qat_run, shapes_yaml):
    import openvino as ov

    from detkd.export.exporter import export_model

    from ultralytics import YOLO

    trainer = qat_run[0]
    learnt = {n: float(m.amax) for n, m in YOLO(str(trainer.best)).model.named_modules()  # the activation ranges
              if type(m).__name__ == "TensorQuantizer" and m.is_enabled and n.endswith("input_quantizer")}
    assert len(learnt) > 20

    # ONNX: Ultralytics' Q/DQ export; every activation range learnt is a QuantizeLinear scale (amax / 127)
    onnx_run = export_model(trainer.best, format="onnx", imgsz=64, output=tmp_path, int8=True, data=shapes_yaml,
                            verbose=False, int8_kwargs=dict(time_budget=0.2, calib_images=4))
    int8 = onnx_run.int8
    assert int8.int8_path == tmp_path / "best_int8.onnx" and int8.calibration.get("qat")
    scales = np.array(_onnx_scales(int8.int8_path))
    for name, amax in learnt.items():
        assert np.isclose(scales, amax / 127, rtol=1e-5).any(), name
    assert _onnx_scales(int8.fp32_path) == []  # the FP32 twin: the same student without its quantizers
    assert int8.graph and int8.measured and int8.ap_int8 is not None  # student-only graph check passed; scored

    # OpenVINO: the same Q/DQ ranges as FakeQuantize (no NNCF calibration), loadable like Ultralytics' export
    ov_run = export_model(trainer.best, format="openvino", imgsz=64, output=tmp_path, int8=True, data=shapes_yaml,
                          verbose=False, int8_kwargs=dict(time_budget=0.2, calib_images=4))
    folder = ov_run.int8.int8_path
    assert folder == tmp_path / "best_int8_openvino_model" and (folder / "metadata.yaml").is_file()
    ops = ov.Core().read_model(str(folder / "best_int8.xml")).get_ops()
    highs = [float(op.input_value(2).get_node().get_data().max()) for op in ops if op.get_type_name() == "FakeQuantize"
             and op.input_value(0).get_node().get_type_name() != "Constant"
             and op.input_value(2).get_node().get_type_name() == "Constant"]
    assert highs and all(np.isclose(highs, amax, rtol=1e-4).any() for amax in learnt.values())
    assert not any(t in op.get_friendly_name().lower() for op in ops for t in ("adapter", "teacher", "align"))
    assert ov_run.int8.ap_int8 is not None

    # a plain OpenVINO export of the QAT checkpoint is that INT8 model too (Ultralytics refuses the format)
    plain = export_model(trainer.best, format="openvino", imgsz=64, output=tmp_path / "plain", parity=False,
                         verbose=False)
    assert plain.path.name == "best_int8_openvino_model"

    # the student alone as a .pt keeps its quantizers and ranges (beside the module, as Ultralytics saves them)
    alone = export_model(trainer.best, format="pt", output=tmp_path / "student.pt", verbose=False).path
    assert _ranges(YOLO(str(alone)).model).keys() == _ranges(YOLO(str(trainer.best)).model).keys() != set()


@needs_modelopt
@pytest.mark.slow
def test_resume_of_a_qat_run_continues_with_its_learnt_ranges(tmp_path, student_pt, shapes_yaml, teacher_pt):
    class Interrupt(Exception):
        pass

    def stop(_):
        raise Interrupt

    first = _qat_trainer(tmp_path, "r", student_pt, shapes_yaml, teacher_pt, val=False)
    first.add_callback("on_model_save", stop)
    with pytest.raises(Interrupt):
        first.train()
    saved = torch.load(first.last, map_location="cpu", weights_only=False)
    assert saved["epoch"] == 0 and saved["modelopt"]
    saved_ranges = saved["modelopt"]["ranges"]

    resumed = DistillationTrainer(overrides=dict(model=str(first.last), resume=str(first.last)))
    seen = {}
    resumed.add_callback("on_train_start", lambda t: seen.update(ranges=_ranges(t.model), start=t.start_epoch))
    resumed.train()
    assert seen["start"] == 1 and _epochs(resumed.csv) == [1, 2]
    # restored from last.pt, not recalibrated: the very ranges saved with it
    assert seen["ranges"].keys() == {k for k in saved_ranges if k.endswith("_amax")}
    assert all(torch.equal(seen["ranges"][k], saved_ranges[k]) for k in seen["ranges"])
    assert _quantizers(resumed.model) and _quantizers(resumed.teacher.model) == []
    final = torch.load(resumed.last, map_location="cpu", weights_only=False)
    assert final["epoch"] == -1 and final["modelopt"]

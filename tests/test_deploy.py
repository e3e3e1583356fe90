"""Issue 29 (deployment): OpenVINO in detkd bench with the precision that really ran, detkd eval of exported
artefacts (ONNX, OpenVINO) with the dataset's own category ids, the deploy extra's missing-package line.

A tiny random-init YOLOv8-n at 64 px with the shapes dataset's 4 classes is exported once per session to ONNX and
OpenVINO. Its class biases are raised so that it detects boxes at the default conf (a random head's priors score
~1e-4), which gives the evaluations something to compare.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

IMGSZ = 64
FAST = {"warmup": 1, "iters": 4, "time_budget": 2.0, "min_iters": 3, "e2e": False}


@pytest.fixture(scope="session")
def tiny_student_pt(tmp_path_factory, shapes_yaml) -> str:
    """A random-init YOLOv8-n with the shapes classes whose class scores sit around 0.1 (so it detects)."""
    from conftest import named_model, save_checkpoint

    net = named_model("yolov8n.yaml", shapes_yaml)
    with torch.no_grad():
        for seq in net.model[-1].cv3:
            seq[-1].bias.fill_(-2.0)  # sigmoid(-2) ~ 0.12, then the random features spread it
    return save_checkpoint(net, tmp_path_factory.mktemp("deploy") / "student.pt")


@pytest.fixture(scope="session")
def exported(tiny_student_pt) -> dict:
    """{'onnx': path, 'openvino': folder} of the tiny student at 64 px, batch 1 (OpenVINO only when installed)."""
    from detkd.export.exporter import export_loaded
    from detkd.export.student import load_student

    net = load_student(tiny_student_pt)[0]
    out = Path(tiny_student_pt).parent
    paths = {"onnx": str(export_loaded(net, "onnx", out, "student", imgsz=IMGSZ, batch=1))}
    try:
        import openvino  # noqa: F401
    except ImportError:
        return paths
    paths["openvino"] = str(export_loaded(net, "openvino", out, "student", imgsz=IMGSZ, batch=1))
    return paths


def _eval(model, data, out):
    from detkd.eval.coco_eval import evaluate_coco

    return evaluate_coco(model, data, split="val", imgsz=IMGSZ, batch=1, conf=0.001, out_dir=out, verbose=False)


# ---------------------------------------------------------------------------------------------------------- bench


def test_bench_runs_openvino_and_names_the_precision_that_ran(tmp_path, capsys):
    """FP32 forced and read back; BF16 measured where this CPU's OpenVINO executes it, else asking for it is refused
    with the reason before anything runs (no backend asked for would run it: a fallback would be timed as BF16)."""
    pytest.importorskip("openvino")
    from detkd.cli import main
    from detkd.deploy.backends import openvino_precisions

    has_bf16 = "bf16" in openvino_precisions()
    out = tmp_path / "bench.json"
    args = ["bench", "--models", "yolov8n.yaml", "--imgsz", str(IMGSZ), "--backend", "torch", "openvino",
            "--no-e2e", "--warmup", "1", "--iters", "3", "--min-iters", "3", "--time-budget", "1", "--json", str(out)]
    if not has_bf16:
        assert main([*args, "--precision", "fp32", "bf16"]) == 2
        assert "OpenVINO bf16 is not executed by this CPU (OpenVINO CPU runs: fp32" in capsys.readouterr().err
        assert not out.exists()
    rc = main([*args, "--precision", "fp32", *(["bf16"] if has_bf16 else [])])
    assert rc == 0
    rows = json.loads(out.read_text())["results"]
    ov = {r["precision"]: r for r in rows if r["backend"] == "openvino"}
    assert ov["fp32"]["status"] == "ok" and ov["fp32"]["executed"] == "fp32"  # forced f32, read back
    assert "INFERENCE_PRECISION_HINT fp32" in ov["fp32"]["executed_detail"]
    assert ov["fp32"]["provider"].startswith("OpenVINO")
    if has_bf16:
        assert ov["bf16"]["status"] == "ok" and ov["bf16"]["executed"] == "bf16"
        assert any("default on this CPU is BF16" in n for n in ov["fp32"]["notes"])
        torch_bf16 = next(r for r in rows if r["backend"] == "torch" and r["precision"] == "bf16")
        assert torch_bf16["status"] == "skipped" and "openvino backend only" in torch_bf16["reason"]
    text = capsys.readouterr().out
    assert "| ran " in text
    assert "fastest for yolov8n.yaml b1: " in text


def test_bench_times_an_exported_artefact_on_its_own_backend(exported):
    pytest.importorskip("openvino")
    from detkd.bench import run_benchmarks

    rows = run_benchmarks([exported["onnx"], exported["openvino"]], imgsz=IMGSZ, backends=["torch"],
                          precisions=["fp32"], progress=False, **FAST)
    assert [(r["backend"], r["precision"], r["executed"], r["status"]) for r in rows] == [
        ("onnxruntime", "fp32", "fp32", "ok"), ("openvino", "fp32", "fp32", "ok")]
    from detkd.errors import DetKDError

    with pytest.raises(DetKDError, match="exported for batch 1 at 64x64 px.*--imgsz 64"):
        from detkd.bench import benchmark_model

        benchmark_model(exported["onnx"], imgsz=96, **FAST)


def test_bench_without_openvino_skips_its_rows_with_the_extra_named(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    from detkd.bench import run_benchmarks
    from detkd.bench.report import format_notes

    rows = run_benchmarks(["yolov8n.yaml"], imgsz=IMGSZ, backends=["torch", "openvino"], progress=False, **FAST)
    assert [(r["backend"], r["status"]) for r in rows] == [("torch", "ok"), ("openvino", "skipped")]
    assert "pip install -e '.[deploy]'" in rows[1]["reason"]
    assert "pip install -e '.[deploy]'" in format_notes(rows)


def test_missing_openvino_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)
    from detkd.deploy.backends import import_openvino, openvino_available
    from detkd.errors import DetKDError

    assert not openvino_available()
    with pytest.raises(DetKDError, match=r"pip install -e '\.\[deploy\]'") as e:
        import_openvino()
    assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------------------------------------- eval


@pytest.fixture(scope="session")
def pt_metrics(tiny_student_pt, shapes_yaml, tmp_path_factory):
    return _eval(tiny_student_pt, shapes_yaml, tmp_path_factory.mktemp("eval_pt"))


def _iou(a, b) -> float:
    """IoU of two COCO [x, y, w, h] boxes."""
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter + 1e-9)


def _detections(metrics) -> list[dict]:
    return json.loads(Path(metrics["detections_json"]).read_text())


@pytest.mark.parametrize("kind", ["onnx", "openvino"])
def test_eval_of_an_exported_artefact_equals_eval_of_the_pt(kind, exported, pt_metrics, shapes_yaml, tmp_path):
    if kind == "openvino":
        pytest.importorskip("openvino")
    assert pt_metrics["n_detections"] > 50  # the fixture's model does detect: the comparison is not 0 == 0
    m = _eval(exported[kind], shapes_yaml, tmp_path)
    ids = {d["category_id"] for d in _detections(m)}
    assert ids and ids <= {1, 2, 3, 4} and ids == {d["category_id"] for d in _detections(pt_metrics)}
    assert {d["image_id"] for d in _detections(m)} == {d["image_id"] for d in _detections(pt_metrics)}
    assert m["AP"] == pytest.approx(pt_metrics["AP"], abs=0.01)
    assert m["AP50"] == pytest.approx(pt_metrics["AP50"], abs=0.02)
    assert abs(m["n_detections"] - pt_metrics["n_detections"]) <= 0.05 * pt_metrics["n_detections"]
    top = sorted(_detections(pt_metrics), key=lambda d: -d["score"])[:20]  # the same boxes, same ids, same scores
    for d in top:
        same = [e for e in _detections(m) if e["image_id"] == d["image_id"] and e["category_id"] == d["category_id"]]
        best = max(same, key=lambda e: _iou(e["bbox"], d["bbox"]))
        assert _iou(best["bbox"], d["bbox"]) > 0.9 and best["score"] == pytest.approx(d["score"], abs=0.02)
    assert m["backend"] == {"onnx": "onnxruntime", "openvino": "openvino"}[kind]
    assert m["precision"] in {"fp32", "bf16"} and m["weights"] == "fp32"


@pytest.mark.parametrize("bad", ["missing.onnx", "garbage.onnx", "folder_openvino_model", "notes.txt"])
def test_eval_of_a_bad_artefact_is_one_line_exit_2(bad, shapes_yaml, tmp_path, capsys):
    from detkd.cli import main

    path = tmp_path / bad
    if bad == "garbage.onnx" or bad == "notes.txt":
        path.write_text("not a model")
    elif bad == "folder_openvino_model":
        path.mkdir()
        (path / "model.xml").write_text("<net/>")  # no .bin beside it
    rc = main(["eval", "--model", str(path), "--data", shapes_yaml, "--imgsz", str(IMGSZ), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("detkd eval: error:") and len(err.splitlines()) == 1, err
    assert bad in err


def test_eval_runs_openvino_in_the_precision_asked_for(exported, shapes_yaml, tmp_path, capsys):
    pytest.importorskip("openvino")
    from detkd.cli import main

    out = tmp_path / "fp32"
    assert main(["eval", "--model", exported["openvino"], "--data", shapes_yaml, "--imgsz", str(IMGSZ),
                 "--batch", "1", "--precision", "fp32", "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["precision"] == "fp32" and "INFERENCE_PRECISION_HINT fp32" in m["precision_detail"]
    assert "openvino, weights fp32, ran fp32" in capsys.readouterr().out
    assert main(["eval", "--model", exported["onnx"], "--data", shapes_yaml, "--precision", "bf16",
                 "--out", str(tmp_path / "x")]) == 2
    assert "--precision applies to OpenVINO models only" in capsys.readouterr().err


def test_openvino_models_without_openvino_name_the_extra(monkeypatch, shapes_yaml, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "openvino", None)
    from detkd.bench import run_benchmarks
    from detkd.cli import main

    folder = tmp_path / "student_openvino_model"
    folder.mkdir()
    (folder / "student.xml").write_text("<net/>")
    (folder / "student.bin").write_bytes(b"")
    assert main(["eval", "--model", str(folder), "--data", shapes_yaml, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install -e '.[deploy]'" in err
    rows = run_benchmarks([str(folder)], imgsz=IMGSZ, progress=False, **FAST)
    assert [(r["backend"], r["status"]) for r in rows] == [("openvino", "skipped")]
    assert "pip install -e '.[deploy]'" in rows[0]["reason"]


def test_fastest_line_compares_a_checkpoint_with_its_exports():
    from detkd.bench.report import fastest_lines

    def row(model, backend, prec, p50, ran=None):
        return {"model": model, "backend": backend, "precision": prec, "executed": ran or prec, "batch": 1,
                "status": "ok", "latency_ms": {"p50": p50}}

    rows = [row("best.pt", "torch", "fp32", 10.0), row("best.pt", "openvino", "fp32", 5.0),
            row("best_int8_openvino_model", "openvino", "int8", 4.0), row("best.onnx", "onnxruntime", "fp32", 8.0),
            row("other.pt", "torch", "fp32", 1.0)]
    assert fastest_lines(rows) == [
        "fastest for best.pt b1: openvino int8 (ran int8, best_int8_openvino_model), p50 4.00 ms = 2.5x torch fp32 "
        "(10.00 ms)"]


def test_a_teachers_checkpoint_and_a_students_export_of_one_file_name_are_not_one_model(tmp_path):
    # runs/teacher/weights/best.pt and runs/student/weights/best_int8_openvino_model: both 'best', other models.
    from detkd.bench.report import fastest_lines
    from detkd.bench.runner import model_families

    teacher = tmp_path / "teacher" / "weights" / "best.pt"
    student_pt = tmp_path / "student" / "weights" / "best.pt"
    student_ov = tmp_path / "student" / "weights" / "best_int8_openvino_model"
    models = [str(teacher), str(student_ov)]
    assert model_families(models, ["best.pt", "best_int8_openvino_model"]) == ["best.pt", "best_int8_openvino_model"]
    both = [str(student_pt), str(student_ov), str(teacher)]
    assert model_families(both, ["student", "best_int8_openvino_model", "teacher"]) == ["student", "student",
                                                                                         "teacher"]

    def row(model, family, backend, prec, p50):
        return {"model": model, "family": family, "backend": backend, "precision": prec, "executed": prec,
                "batch": 1, "status": "ok", "latency_ms": {"p50": p50}}

    rows = [row("best.pt", "best.pt", "torch", "fp32", 40.0),
            row("best_int8_openvino_model", "best_int8_openvino_model", "openvino", "int8", 5.0)]
    assert fastest_lines(rows) == []  # one setting per model: nothing to compare

"""benchmarks/deploy_gain.py: ΔAP, speed-ups, the fastest deployment within the AP drop and the target verdict,
computed and rendered from fabricated measurements (no training, no export)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _deploy_gain():
    sys.path.insert(0, str(BENCH))
    try:
        import deploy_gain
    finally:
        sys.path.remove(str(BENCH))
    return deploy_gain


def _row(backend, precision, ap, p160, p640, ran, detail=""):
    return {"backend": backend, "precision": precision, "AP": ap, "precision_ran": ran, "precision_detail": detail,
            "load_before": [0.2, 0.3, 0.4], "timed": True,
            "timing": {"160": {"p50_ms": p160, "ran": ran, "detail": detail},
                       "640": {"p50_ms": p640, "ran": ran, "detail": detail}}}


MEASURED = {
    "torch_fp32": _row("torch", "fp32", 0.500, 10.0, 100.0, "fp32"),
    "onnx_fp32": _row("ONNX Runtime", "fp32", 0.500, 8.0, 80.0, "fp32"),
    "onnx_int8": _row("ONNX Runtime", "int8", 0.480, 2.0, 20.0, "int8"),  # fastest, but loses 0.02 AP
    "openvino_int8": _row("OpenVINO", "int8", 0.40, 1.0, 10.0, "int8",
                          "OpenVINO CPU: convolutions 63 int8, 1 bf16 (the rest in bf16)"),  # loses 0.1 AP
    "openvino_fp32": _row("OpenVINO", "fp32 (forced)", 0.501, 4.0, 45.0, "fp32"),
    "openvino_default": _row("OpenVINO", "fp32 IR, default", 0.497, 3.0, 52.0, "bf16"),
}


def test_fastest_deployment_keeps_the_ap_and_the_target_is_judged_per_size():
    dg = _deploy_gain()
    rows = dg.table_rows(MEASURED, 160, 640)
    by = {r["variant"]: r for r in rows}
    assert abs(by["onnx_int8"]["delta_AP"] + 0.02) < 1e-9 and by["torch_fp32"]["speedup_train"] == 1.0
    assert by["openvino_int8"]["ran"] == "int8+bf16"  # what its float layers ran in is named
    assert by["openvino_default"]["ran"] == "bf16" and abs(by["openvino_fp32"]["speedup_bench"] - 100 / 45) < 1e-9
    v = dg.verdict(rows, 0.005, 160, 640)
    # INT8 is 5x faster but over the AP budget: never named; at 160 px the BF16 default wins (3.33x, -0.003: met)
    assert v["train"]["variant"] == "openvino_default" and v["train"]["met"]
    assert v["bench"]["variant"] == "openvino_fp32" and v["bench"]["met"]  # 2.22x at 640 px, AP +0.001
    slow = dg.table_rows({**MEASURED, "openvino_fp32": _row("OpenVINO", "fp32 (forced)", 0.501, 6.0, 60.0, "fp32"),
                          "openvino_default": _row("OpenVINO", "fp32 IR, default", 0.49, 3.0, 30.0, "bf16")}, 160, 640)
    v = dg.verdict(slow, 0.005, 160, 640)
    assert v["bench"]["variant"] == "openvino_fp32" and not v["bench"]["met"]  # 1.67x: the target is not met


def test_report_names_machine_sizes_precision_ran_and_the_verdict():
    dg = _deploy_gain()
    args = SimpleNamespace(students=["yolov8n.yaml"], seed=0, batch=16, bench_imgsz=640, calib_images=300,
                           calib_images_640=32, max_drop=0.005, max_load=0.5, iters=100, time_budget=8.0, warmup=10,
                           note="", threads=2)
    state = {"runs": {"raccoon_yolov8n": {"mAP50-95": 0.41, "wall_s": 100.0}},
             "measured": {"raccoon_yolov8n": MEASURED}}
    machine = {"cpu": {"name": "Test CPU", "logical_cores": 2, "physical_cores": 2, "torch_threads": 2},
               "gpus": [], "versions": {"torch": "2", "cuda": None, "cudnn": None, "ultralytics": "8", "onnxruntime": "1"}, "platform": "x", "python": "3"}
    result = dg.build_result(state, [{"tag": "raccoon", "data": "d", "imgsz": 160, "epochs": 40}], args, machine)
    md = dg.render(result)
    assert "## raccoon — yolov8n.yaml" in md and "p50 ms @ 160 px" in md and "p50 ms @ 640 px" in md
    assert "| OpenVINO | fp32 IR, default | bf16 | 0.4970 | -0.0030 | 3.00 | 52.00 | 3.33x | 1.92x |" in md
    assert "Test CPU" in md and "0.20-0.20" in md
    assert "at 160 px: **OpenVINO fp32 IR, default** (ran bf16), 3.33x torch FP32, ΔAP -0.0030 — target" in md
    assert "met in 2 of 2" in md

"""detkd bench: timing primitives, sane and internally consistent numbers on a tiny CPU model, clear user errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from detkd.errors import DetKDError, WeightsNotFoundError

IMGSZ = 64
FAST = {"warmup": 1, "iters": 6, "time_budget": 5.0, "min_iters": 3}


def _check_stats(s: dict) -> None:
    assert s["n"] >= 3
    assert 0 < s["min"] <= s["p50"] <= s["p90"] <= s["p99"] <= s["max"]
    assert s["min"] <= s["mean"] <= s["max"] and s["std"] >= 0


def test_latency_stats_units_and_order():
    from detkd.bench.timing import latency_stats

    s = latency_stats([0.001, 0.002, 0.003, 0.004])  # seconds in, ms out
    assert s["n"] == 4 and s["mean"] == pytest.approx(2.5) and s["p50"] == pytest.approx(2.5)
    assert s["min"] == pytest.approx(1.0) and s["max"] == pytest.approx(4.0)
    assert s["p90"] == pytest.approx(3.7) and s["p99"] == pytest.approx(3.97)
    with pytest.raises(ValueError):
        latency_stats([])


def test_timed_calls_honours_iters_min_iters_and_budget():
    from detkd.bench.timing import pipelined_seconds, timed_calls, warm_up

    calls = []
    cpu = torch.device("cpu")
    assert len(timed_calls(lambda: calls.append(1), cpu, iters=7, time_budget=60)) == 7
    assert len(calls) == 7
    assert len(timed_calls(lambda: None, cpu, iters=1000, time_budget=0.0, min_iters=4)) == 4  # budget spent at once
    assert warm_up(lambda: None, cpu, iters=5, time_budget=60) == 5
    assert warm_up(lambda: None, cpu, iters=5, time_budget=0.0) == 1
    assert pipelined_seconds(lambda: None, cpu, 3) > 0


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_benchmark_tiny_model_on_cpu_is_sane(backend, monkeypatch):
    import detkd.bench.speed as speed
    from detkd.bench import benchmark_model

    pipelined = {}

    def pipelined_seconds(fn, device, n):  # the real loop, its result recorded: no wall-clock comparison below
        pipelined["n"], pipelined["s"] = n, real_pipelined(fn, device, n)
        return pipelined["s"]

    real_pipelined = speed.pipelined_seconds
    monkeypatch.setattr(speed, "pipelined_seconds", pipelined_seconds)
    batch = 2
    r = benchmark_model("yolov8n.yaml", imgsz=IMGSZ, batch=batch, device="cpu", backend=backend, **FAST)
    assert r["status"] == "ok" and r["backend"] == backend and r["device"] == "cpu"
    assert r["provider"] == ("torch-cpu" if backend == "torch" else "CPUExecutionProvider")
    assert r["batch"] == batch and r["imgsz"] == IMGSZ and r["precision"] == "fp32"
    assert 3.0 < r["params_m"] < 3.3  # yolov8n, 80 classes
    assert r["gflops"] > 0 and isinstance(r["threads"], int) and r["threads"] >= 1
    _check_stats(r["latency_ms"])
    _check_stats(r["e2e_ms"])
    # throughput comes from a separate pipelined loop of as many calls as were timed: images / that loop's seconds
    assert pipelined["n"] == r["latency_ms"]["n"]
    assert r["throughput_img_s"] == pytest.approx(batch * pipelined["n"] / pipelined["s"])
    assert r["e2e_throughput_img_s"] == pytest.approx(batch / r["e2e_ms"]["mean"] * 1e3)
    stages = r["e2e_stages_ms"]
    assert set(stages) == {"preprocess", "inference", "postprocess"} and all(v > 0 for v in stages.values())
    assert sum(stages.values()) <= r["e2e_ms"]["max"] * 1.05  # the stages are part of each end-to-end call


def test_grid_skips_or_refuses_fp16_torch_on_cpu(tmp_path):
    from detkd.bench import format_table, machine_info, run_benchmarks, summarize, write_results

    kw = dict(imgsz=IMGSZ, batches=[1], device="cpu", precisions=["both"], backends=["torch"], e2e=False,
              progress=False, **FAST)
    with pytest.raises(DetKDError, match="fp16 with the torch backend needs a CUDA device"):
        run_benchmarks(["yolov8n.yaml"], **kw)
    rows = run_benchmarks(["yolov8n.yaml"], skip_unavailable=True, **kw)
    assert [(r["precision"], r["status"]) for r in rows] == [("fp32", "ok"), ("fp16", "skipped")]
    assert "CUDA" in rows[1]["reason"] and rows[0]["e2e_ms"] is None

    machine = machine_info("cpu")
    table = format_table(rows)
    assert table.count("\n") == 3 and "yolov8n.yaml" in table and "skipped" in table
    js, md = write_results(rows, machine, {"imgsz": IMGSZ}, tmp_path / "r.json", tmp_path / "r.md")
    doc = json.loads(js.read_text())
    assert doc["machine"]["versions"]["torch"] == torch.__version__
    assert doc["machine"]["cpu"]["name"] and doc["results"][0]["latency_ms"]["mean"] > 0
    assert "fp16 with the torch backend" in md.read_text() and "skipped" in summarize(rows, machine)


def test_cli_bench_writes_json(tmp_path, capsys):
    from detkd.cli import main

    out = tmp_path / "bench.json"
    rc = main(["bench", "--models", "yolov8n.yaml", "--imgsz", str(IMGSZ), "--batch", "1", "--no-e2e",
               "--warmup", "1", "--iters", "3", "--min-iters", "3", "--json", str(out)])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert len(doc["results"]) == 1 and doc["settings"]["imgsz"] == IMGSZ
    assert out.with_suffix(".md").is_file()
    assert "| model" in capsys.readouterr().out


def test_user_errors(tmp_path):
    from detkd.bench import benchmark_model, run_benchmarks
    from detkd.cli import main

    with pytest.raises(DetKDError, match="unknown backend 'tensorrt'"):
        benchmark_model("yolov8n.yaml", backend="tensorrt")
    with pytest.raises(WeightsNotFoundError, match=r"ghost\.yaml"):
        run_benchmarks([tmp_path / "ghost.pt"], progress=False)
    with pytest.raises(DetKDError, match="multiple of 32"):
        run_benchmarks(["yolov8n.yaml"], imgsz=100, progress=False)
    with pytest.raises(DetKDError, match="precision 'fp8'"):
        run_benchmarks(["yolov8n.yaml"], precisions=["fp8"], progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(DetKDError, match="CUDA is not available"):
            benchmark_model("yolov8n.yaml", device="0")
    assert main(["bench", "--models", str(tmp_path / "ghost.pt")]) == 2


def test_ort_without_cuda_provider_is_refused_or_labelled(monkeypatch):
    import detkd.bench.speed as speed

    monkeypatch.setattr(speed, "ort_providers", lambda: ["CPUExecutionProvider"])
    gpu = torch.device("cuda:0")
    with pytest.raises(DetKDError, match="no CUDAExecutionProvider.*onnxruntime-gpu.*--ort-cpu-fallback"):
        speed.plan_setting("onnxruntime", gpu, half=False)
    dev, notes = speed.plan_setting("onnxruntime", gpu, half=False, ort_cpu_fallback=True)
    assert dev.type == "cpu" and "ORT on CPU" in notes[0]
    monkeypatch.setattr(speed, "ort_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert speed.plan_setting("onnxruntime", gpu, half=True) == (gpu, [])


def test_synthetic_frames_shape_and_determinism():
    from detkd.bench.speed import synthetic_frames

    a, b = synthetic_frames(2, (48, 80)), synthetic_frames(2, (48, 80))
    assert len(a) == 2 and a[0].shape == (48, 80, 3) and a[0].dtype == np.uint8
    assert all(np.array_equal(x, y) for x, y in zip(a, b)) and not np.array_equal(a[0], a[1])

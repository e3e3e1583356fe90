"""Speed benchmarks: model-only and end-to-end latency/throughput per model, backend, precision and batch size.

    from detkd.bench import run_benchmarks, format_table
    rows = run_benchmarks(["yolov8n.yaml"], imgsz=640, batches=[1, 8], device="cpu", backends=["torch", "onnxruntime"])
    print(format_table(rows))
"""

from detkd.bench.machine import machine_info, machine_tag
from detkd.bench.report import format_table, summarize, write_results
from detkd.bench.runner import run_benchmarks
from detkd.bench.speed import benchmark_model
from detkd.bench.timing import latency_stats

__all__ = ["benchmark_model", "format_table", "latency_stats", "machine_info", "machine_tag", "run_benchmarks",
           "summarize", "write_results"]

"""``detkd bench``: model-only and end-to-end speed of detectors per backend, precision and batch size."""

from __future__ import annotations

import argparse
from datetime import datetime
from pathlib import Path

HELP = ("Benchmark detector speed (model-only and end-to-end latency, throughput) with torch, ONNX Runtime and "
        "OpenVINO, and name the fastest backend x precision per model.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", nargs="+", required=True, metavar="MODEL",
                   help="checkpoints (.pt) or model YAMLs (yolov8n.yaml: random init, fine for speed); exported .onnx "
                        "or *_openvino_model/ folders (e.g. INT8 exports) are timed as they are on their own backend")
    p.add_argument("--imgsz", type=int, default=640, help="square input size in pixels (multiple of 32)")
    p.add_argument("--batch", type=int, nargs="+", default=[1], help="batch sizes")
    p.add_argument("--device", default="cpu", help="'cpu' or a CUDA index such as 0")
    p.add_argument("--half", action="store_true", help="FP16 only (shortcut for --precision fp16)")
    p.add_argument("--precision", nargs="+", default=None, metavar="P",
                   help="fp32, fp16, bf16 (OpenVINO), int8 (exported INT8 models) or both (= fp32 fp16) (default "
                        "fp32; --half means fp16). The precision that really ran is the 'ran' column")
    p.add_argument("--backend", nargs="+", default=["torch"], metavar="B",
                   help="torch, onnxruntime, openvino (needs pip install -e '.[deploy]') or all")
    p.add_argument("--warmup", type=int, default=10, help="warm-up calls per loop (capped at half the time budget)")
    p.add_argument("--iters", type=int, default=100, help="timed calls per loop (fewer when the budget runs out)")
    p.add_argument("--time-budget", type=float, default=10.0, help="seconds per timed loop")
    p.add_argument("--min-iters", type=int, default=5, help="timed calls even past the budget")
    p.add_argument("--no-e2e", action="store_true", help="skip the end-to-end (preprocess + inference + NMS) loop")
    p.add_argument("--conf", type=float, default=0.25, help="end-to-end NMS confidence threshold")
    p.add_argument("--iou", type=float, default=0.7, help="end-to-end NMS IoU threshold")
    p.add_argument("--source-shape", type=int, nargs=2, default=[720, 1280], metavar=("H", "W"),
                   help="end-to-end input frame size")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: Ultralytics' choice)")
    p.add_argument("--ort-cpu-fallback", action="store_true",
                   help="on a GPU run without onnxruntime-gpu, time ONNX Runtime on the CPU (labelled) instead of failing")
    p.add_argument("--json", default=None, help="results file (default runs/bench/bench_<machine>_<time>.json)")


def check_arguments(args: argparse.Namespace) -> None:
    """Numbers out of range and a folder given as --json: one line before any model is timed."""
    from detkd.cli.checks import check_output_file
    from detkd.ranges import check_ranges

    check_ranges(args, positive=("imgsz", "batch", "iters", "min_iters", "threads", "source_shape"),
                 non_negative=("warmup",), unit=("conf", "iou"), above_zero=("time_budget",))
    check_output_file(args.json, "--json", "bench.json")


def run(args: argparse.Namespace) -> int:
    from detkd.bench import format_table, machine_info, machine_tag, run_benchmarks, write_results
    from detkd.bench.report import fastest_lines, format_notes, machine_line

    check_arguments(args)

    precisions = args.precision or (["fp16"] if args.half else ["fp32"])
    settings = {"imgsz": args.imgsz, "batches": args.batch, "device": str(args.device), "precisions": precisions,
                "backends": args.backend, "warmup": args.warmup, "iters": args.iters, "time_budget": args.time_budget,
                "min_iters": args.min_iters, "e2e": not args.no_e2e, "conf": args.conf, "iou": args.iou,
                "source_shape": list(args.source_shape), "threads": args.threads,
                "ort_cpu_fallback": args.ort_cpu_fallback}
    rows = run_benchmarks(args.models, imgsz=args.imgsz, batches=args.batch, device=args.device,
                          precisions=precisions, backends=args.backend, warmup=args.warmup, iters=args.iters,
                          time_budget=args.time_budget, min_iters=args.min_iters, e2e=not args.no_e2e,
                          conf=args.conf, iou=args.iou, source_shape=tuple(args.source_shape), threads=args.threads,
                          ort_cpu_fallback=args.ort_cpu_fallback)
    machine = machine_info(args.device)
    out = Path(args.json) if args.json else Path("runs/bench") / (
        f"bench_{machine_tag(machine, args.device)}_{datetime.now():%Y%m%d-%H%M%S}.json")
    json_path, md_path = write_results(rows, machine, settings, out, out.with_suffix(".md"))
    print(f"\n{machine_line(machine)}\n\n{format_table(rows)}")
    notes = format_notes(rows)
    if notes:
        print(f"\n{notes}")
    fastest = fastest_lines(rows)
    if fastest:
        print("\n" + "\n".join(fastest))
    print(f"\nResults: {json_path} (table: {md_path})")
    return 0

#!/usr/bin/env python
"""Speed table of detectors on this machine -> benchmarks/results/speed_<machine>.json and .md.

Runs from a fresh checkout with only torch + ultralytics (+ onnx/onnxruntime for that backend) installed: the repo
root is put on sys.path, detkd itself need not be installed. Default (GPU box, a few minutes on an H100)::

    python benchmarks/speed.py --models yolov8l.yaml yolov8n.yaml --imgsz 640 --batch 1 32 --device 0 \\
        --half both --backend torch onnxruntime

Model YAMLs build randomly initialised models: speed does not depend on the weights. Settings that cannot run here
(no onnxruntime-gpu, FP16 torch on CPU, out of memory) become 'skipped' rows with the reason instead of aborting; when
ONNX Runtime has no CUDA provider its rows run on the CPU, labelled, up to --fallback-max-batch.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("YOLO_OFFLINE", "1")  # before ultralytics is imported


def parse_args(argv=None) -> argparse.Namespace:
    import torch

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", nargs="+", default=["yolov8l.yaml", "yolov8n.yaml"], help=".pt or model YAMLs")
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    p.add_argument("--device", default="0" if torch.cuda.is_available() else "cpu")
    p.add_argument("--half", choices=["no", "yes", "both"], default="both", help="fp32, fp16 or both")
    p.add_argument("--backend", nargs="+", default=["torch", "onnxruntime"])
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--iters", type=int, default=200)
    p.add_argument("--time-budget", type=float, default=3.0, help="seconds per timed loop")
    p.add_argument("--min-iters", type=int, default=5)
    p.add_argument("--no-e2e", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-ort-cpu-fallback", action="store_true",
                   help="skip ORT rows on a GPU run without onnxruntime-gpu instead of timing them on the CPU")
    p.add_argument("--fallback-max-batch", type=int, default=1, help="largest batch for ORT CPU-fallback rows")
    p.add_argument("--tag", default=None, help="machine tag in the file names (default: GPU or CPU name)")
    p.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from detkd.bench import machine_info, machine_tag, run_benchmarks, write_results
    from detkd.bench.report import format_notes, format_table, machine_line
    from detkd.errors import DetKDError

    precisions = {"no": ["fp32"], "yes": ["fp16"], "both": ["fp32", "fp16"]}[args.half]
    if torch.cuda.is_available() and str(args.device) != "cpu":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    settings = {"imgsz": args.imgsz, "batches": args.batch, "device": str(args.device), "precisions": precisions,
                "backends": args.backend, "warmup": args.warmup, "iters": args.iters, "time_budget": args.time_budget,
                "min_iters": args.min_iters, "e2e": not args.no_e2e, "conf": 0.25, "iou": 0.7,
                "source_shape": [720, 1280], "threads": args.threads, "ort_cpu_fallback": not args.no_ort_cpu_fallback,
                "fallback_max_batch": args.fallback_max_batch, "cudnn_benchmark": torch.backends.cudnn.benchmark,
                "command": " ".join(["python benchmarks/speed.py", *(sys.argv[1:] if argv is None else argv)])}
    t0 = time.time()
    try:
        rows = run_benchmarks(args.models, imgsz=args.imgsz, batches=args.batch, device=args.device,
                              precisions=precisions, backends=args.backend, skip_unavailable=True,
                              fallback_max_batch=args.fallback_max_batch, warmup=args.warmup, iters=args.iters,
                              time_budget=args.time_budget, min_iters=args.min_iters, e2e=not args.no_e2e,
                              threads=args.threads, ort_cpu_fallback=not args.no_ort_cpu_fallback)
    except DetKDError as e:
        print(f"benchmarks/speed.py: error: {e}", file=sys.stderr)
        return 2
    settings["wall_s"] = round(time.time() - t0, 1)
    machine = machine_info(args.device)
    tag = args.tag or machine_tag(machine, args.device)
    out = Path(args.out_dir) / f"speed_{tag}.json"
    json_path, md_path = write_results(rows, machine, settings, out, out.with_suffix(".md"),
                                       title=f"detkd speed benchmark — {tag}")
    print(f"\n{machine_line(machine)}\n\n{format_table(rows)}\n\n{format_notes(rows)}")
    print(f"\nWrote {json_path} and {md_path} in {settings['wall_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``detkd export``: export the student (only the student) to ONNX and other offline formats, with ONNX parity.

    detkd export --model runs/distill/exp/weights/best.pt --format onnx
    detkd export --model best.pt --format openvino --int8 --data path/to/coco_dataset --imgsz 640

``--int8`` calibrates on the training images of ``--data``, scores the INT8 artefact next to its FP32 twin on the
val split (COCO AP), prints ΔAP and both latencies and exits 1 when AP drops by more than ``--max-int8-drop``.
"""

from __future__ import annotations

import argparse

from detkd.export.exporter import FORMAT_REQUIREMENTS
from detkd.export.int8 import DEFAULT_CALIB_IMAGES, DEFAULT_MAX_DROP

HELP = ("Export the distilled student (no teacher, no adapters) to ONNX or another format; ONNX gets a parity check; "
        "--int8 calibrates on your training images and measures AP and latency against FP32.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="student checkpoint (.pt), e.g. runs/distill/exp/weights/best.pt")
    p.add_argument("--format", default="onnx", help=f"one of: {', '.join(FORMAT_REQUIREMENTS)} ('pt' = clean "
                                                     f"student-only checkpoint)")
    p.add_argument("--imgsz", type=int, default=640, help="square input size in pixels (multiple of 32)")
    p.add_argument("--batch", type=int, default=1, help="static batch (maximum batch with --dynamic)")
    p.add_argument("--half", action="store_true", help="FP16 weights")
    p.add_argument("--dynamic", action="store_true", help="dynamic batch/height/width axes")
    p.add_argument("--device", default="cpu", help="'cpu' or a CUDA index (needed for engine, torchscript --half)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: Ultralytics' choice)")
    p.add_argument("--output", default=None, help="output file (with the format's suffix) or directory "
                                                  "(default: beside the checkpoint; pt: <stem>_student.pt)")
    p.add_argument("--no-parity", action="store_true", help="skip the torch vs ONNX Runtime parity check")
    p.add_argument("--parity-images", default=None, help="image file/folder for the parity check "
                                                         "(default: Ultralytics' sample images; with --int8: 32 images "
                                                         "of the --data split)")
    p.add_argument("--conf", type=float, default=0.25,
                   help="parity detection confidence threshold (detections are compared at 0.001 instead when none "
                        "reaches it; the summary says so)")
    p.add_argument("--iou", type=float, default=0.7,
                   help="parity NMS IoU threshold (unused for end-to-end models: NMS-free)")
    q = p.add_argument_group("INT8 (--int8: calibrated, scored and timed against the FP32 export)")
    q.add_argument("--int8", action="store_true",
                   help="INT8 weights and activations (onnx: ONNX Runtime Q/DQ; openvino: NNCF; engine, coreml, "
                        "litert, mnn passed to Ultralytics unmeasured), calibrated on the training images of --data")
    q.add_argument("--data", default=None,
                   help="with --int8: the dataset (COCO folder, detkd COCO YAML or data.yaml): calibration on its "
                        "training images, AP on --split")
    q.add_argument("--calib-images", type=int, default=DEFAULT_CALIB_IMAGES,
                   help="calibration images drawn from the training split (all when fewer)")
    q.add_argument("--calib-seed", type=int, default=0, help="seed of that draw")
    q.add_argument("--max-int8-drop", type=float, default=DEFAULT_MAX_DROP,
                   help="exit 1 when INT8 loses more COCO AP than this vs the FP32 export (0.01: beyond the "
                        "0.001-0.003 healthy INT8 costs and a nano student's seed-to-seed spread)")
    q.add_argument("--split", default="val", help="with --int8: the split AP is measured on")
    q.add_argument("--time-budget", type=float, default=5.0,
                   help="with --int8: seconds of timed calls per artefact (model-only, batch 1, CPU)")


# --int8's own flags and their defaults: refused without --int8 (they would be ignored)
INT8_ONLY = {"data": None, "calib_images": DEFAULT_CALIB_IMAGES, "calib_seed": 0, "max_int8_drop": DEFAULT_MAX_DROP,
             "split": "val", "time_budget": 5.0}


def run(args: argparse.Namespace) -> int:
    from detkd.ranges import check_ranges
    from detkd.errors import ConfigError
    from detkd.export import export_model

    check_ranges(args, unit=("conf", "iou"), non_negative=("max_int8_drop",))
    if not args.int8:
        given = [f"--{k.replace('_', '-')}" for k in INT8_ONLY if getattr(args, k) != INT8_ONLY[k]]
        if given:
            raise ConfigError(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} used by --int8 only "
                              f"(calibration and scoring): add --int8 or drop {'it' if len(given) == 1 else 'them'}.")
    result = export_model(args.model, format=args.format, imgsz=args.imgsz, batch=args.batch, half=args.half,
                          dynamic=args.dynamic, device=args.device, output=args.output, opset=args.opset,
                          parity=not args.no_parity, parity_images=args.parity_images,
                          parity_kwargs={"conf": args.conf, "iou": args.iou}, int8=args.int8, data=args.data,
                          int8_kwargs={"calib_images": args.calib_images, "calib_seed": args.calib_seed,
                                       "max_drop": args.max_int8_drop, "split": args.split,
                                       "time_budget": args.time_budget})
    print(f"\nExported student ({result.student_params / 1e6:.2f} M params) -> {result.path}")
    if result.removed:
        print(f"Stripped from the checkpoint: {', '.join(result.removed)}")
    if result.int8 is not None:
        print(result.int8.summary())
        return 0 if result.int8.passed else 1
    if result.graph:
        print(f"ONNX graph: {result.graph['initializers']} initializers, {result.graph['elements']:,} weights "
              f"(student-only check passed)")
    if result.parity is not None:
        print(result.parity.summary())
    return 0

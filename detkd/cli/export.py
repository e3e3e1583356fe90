"""``detkd export``: export the student (only the student) to ONNX and other offline formats, with ONNX parity."""

from __future__ import annotations

import argparse

from detkd.export.exporter import FORMAT_REQUIREMENTS

HELP = "Export the distilled student (no teacher, no adapters) to ONNX or another format; ONNX gets a parity check."


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
                                                         "(default: Ultralytics' sample images)")
    p.add_argument("--conf", type=float, default=0.25,
                   help="parity detection confidence threshold (detections are compared at 0.001 instead when none "
                        "reaches it; the summary says so)")
    p.add_argument("--iou", type=float, default=0.7,
                   help="parity NMS IoU threshold (unused for end-to-end models: NMS-free)")


def run(args: argparse.Namespace) -> int:
    from detkd.export import export_model

    result = export_model(args.model, format=args.format, imgsz=args.imgsz, batch=args.batch, half=args.half,
                          dynamic=args.dynamic, device=args.device, output=args.output, opset=args.opset,
                          parity=not args.no_parity, parity_images=args.parity_images,
                          parity_kwargs={"conf": args.conf, "iou": args.iou})
    print(f"\nExported student ({result.student_params / 1e6:.2f} M params) -> {result.path}")
    if result.removed:
        print(f"Stripped from the checkpoint: {', '.join(result.removed)}")
    if result.graph:
        print(f"ONNX graph: {result.graph['initializers']} initializers, {result.graph['elements']:,} weights "
              f"(student-only check passed)")
    if result.parity is not None:
        print(result.parity.summary())
    return 0

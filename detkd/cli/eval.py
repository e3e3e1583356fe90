"""``detkd eval``: official COCO metrics (faster-coco-eval; pycocotools with --coco-backend) of any detector on a
COCO dataset.

    detkd eval --model runs/detect/train/weights/best.pt --data path/to/coco_dataset
    detkd eval --model teacher.pt --data coco.yaml --split val --imgsz 640 --conf 0.001 --iou 0.7 --out runs/eval/t
    detkd eval --model runs/detect/train/weights/best_int8_openvino_model --data path/to/coco_dataset --imgsz 640

The model's classes are matched to the data's by name: the same classes in another order, or more classes than the
data's (a ``--keep-teacher-classes`` student), are scored on the data's classes and one line says so; a data class
the model does not have is refused (exit 2) unless ``--class-map`` names the model class that is it; a model without
class names (an export without Ultralytics' metadata) is scored by index, and one line says so.

Writes ``metrics.json`` and ``predictions.json`` (COCO results with the dataset's own image and category
ids) to ``--out`` (default ``runs/detkd/eval/exp*``) and prints the overall and per-class table.
"""

from __future__ import annotations

import argparse

HELP = "Evaluate a detector on a COCO dataset with COCOeval (AP, AP50, AP75, APs/m/l, AR, per-class AP)."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="checkpoint .pt (teacher, baseline or distilled student), exported model (.onnx FP32/INT8, "
                        "an *_openvino_model/ folder, ...) or model .yaml (random init)")
    p.add_argument("--data", required=True,
                   help="COCO dataset folder (annotations/instances_<split>*.json + images), detkd COCO YAML, "
                        "or a data.yaml written by detkd")
    p.add_argument("--split", default="val", help="split to evaluate (train, val, test)")
    p.add_argument("--imgsz", type=int, default=640, help="inference size (pixels)")
    p.add_argument("--conf", type=float, default=0.001, help="confidence threshold (keep low for AP)")
    p.add_argument("--iou", type=float, default=0.7, help="NMS IoU threshold")
    p.add_argument("--batch", type=int, default=16, help="batch size")
    p.add_argument("--device", default="cpu", help="cpu, 0, ...")
    p.add_argument("--out", default=None, help="output folder [runs/detkd/eval/exp*]")
    p.add_argument("--precision", default=None, metavar="P",
                   help="OpenVINO models only: inference precision fp32, bf16 or fp16 (default: OpenVINO's, BF16 on "
                        "CPUs with BF16 units); the precision that really ran is printed and kept in metrics.json")
    p.add_argument("--coco-backend", choices=("faster", "pycocotools"), default=None,
                   help="COCOeval implementation: faster (faster-coco-eval, C++, default) or pycocotools (the "
                        "reference, ~7.7x slower at COCO-val size; same numbers) [$DETKD_COCO_BACKEND or faster]")
    p.add_argument("--class-map", default=None, metavar="MODEL=DATA;...",
                   help="model classes named otherwise than the data's, e.g. 'ring=circle;car,truck=vehicle' "
                        "(classes of the same name are matched without it; merged classes by noisy-OR)")
    p.add_argument("--class-groups", nargs="+", metavar="NAME=CLASS,CLASS",
                   help="also print AP per group of classes, e.g. --class-groups old=cat,dog new=bird (mean AP of "
                        "the group's classes; 'all' is added)")
    p.add_argument("--groups-from-teacher", metavar="TEACHER.pt",
                   help="AP per class group split by this teacher's classes: the teacher's classes, the new "
                        "classes, all (e.g. after learning new classes from a teacher, docs/classes.md)")


def check_class_groups(args: argparse.Namespace) -> None:
    """--class-groups / --groups-from-teacher against the data's classes before the evaluation (a misspelt class was
    refused only after it)."""
    from ultralytics.utils import YAML

    from detkd.data.coco import prepare_dataset
    from detkd.eval.class_groups import resolve_groups

    names = YAML.load(prepare_dataset(args.data, verbose=False))["names"]
    resolve_groups(names, args.class_groups, args.groups_from_teacher)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from detkd.ranges import check_ranges
    from detkd.errors import ConfigError
    from detkd.eval.class_groups import add_class_groups
    from detkd.eval.coco_eval import evaluate_coco

    check_ranges(args, positive=("batch",), unit=("conf", "iou"))
    if args.imgsz < 32 or args.imgsz % 32:
        raise ConfigError(f"--imgsz {args.imgsz} must be a positive multiple of 32 (the detector's largest stride).")
    if args.out is not None and Path(args.out).exists() and not Path(args.out).is_dir():
        raise ConfigError(f"--out {args.out} is a file: give a folder for metrics.json and predictions.json.")
    if args.class_groups or args.groups_from_teacher:
        check_class_groups(args)
    metrics = evaluate_coco(args.model, args.data, split=args.split, imgsz=args.imgsz, conf=args.conf,
                            iou=args.iou, batch=args.batch, device=args.device, out_dir=args.out, verbose=True,
                            backend=args.coco_backend, precision=args.precision, class_map=args.class_map)
    add_class_groups(metrics, args.class_groups, args.groups_from_teacher)
    return 0

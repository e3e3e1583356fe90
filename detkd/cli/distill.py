"""``detkd distill``: train a student with distillation from a frozen teacher.

    detkd distill --teacher yolov8l.pt --student yolov8n.yaml --data data.yaml --epochs 100 --imgsz 640 \\
                  --cls-kd 1.0 --box-kd 1.0 --feat-kd 1.0 --feat-method cwd --device 0
    detkd distill --resume runs/detect/train/weights/last.pt
    detkd distill --teacher l.pt --teacher x.pt --teacher-weights 0.6 0.4 --student yolov8n.yaml --data data.yaml
    detkd distill --teacher l.pt --assistant yolov8s.yaml --student yolov8n.yaml --data data.yaml   # TA chain
    detkd distill --teacher l.pt --student yolov8n.yaml --data data.yaml --unlabeled frames/   # + unlabelled images
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "Train a student detector with knowledge distillation from a frozen teacher."

# CLI flag -> KDConfig field. Flags default to None so that only what is typed overrides --config / defaults.
KD_FLAGS = {
    "cls_kd": "cls_kd", "cls_mode": "cls_mode", "cls_temp": "cls_temperature",
    "box_kd": "box_kd", "box_temp": "box_temperature", "box_iou": "box_iou",
    "feat_kd": "feat_kd", "one2one_kd": "one2one_kd", "kd_e2e_schedule": "e2e_schedule", "feat_method": "feat_method", "feat_temp": "feat_temperature",
    "feat_fg_mask": "feat_fg_mask", "mgd_mask_ratio": "mgd_mask_ratio",
    "anchor_weighting": "anchor_weighting", "kd_schedule": "schedule", "kd_final": "schedule_final", "kd_balance": "balance", "kd_guard": "guard",
    "min_teacher_map": "min_teacher_map", "teacher_val": "validate_teacher", "teacher_half": "teacher_half",
    "teacher_graphs": "teacher_graphs", "teacher_overlap": "teacher_overlap", "unlabeled": "unlabeled", "unlabeled_ratio": "unlabeled_ratio",
    "pseudo_conf": "pseudo_conf", "ensemble_rule": "ensemble_rule", "class_map": "class_map",
    "keep_teacher_classes": "keep_teacher_classes",
}
# Ultralytics training arguments exposed as first-class flags (anything else: --set key=value).
TRAIN_FLAGS = ("epochs", "imgsz", "batch", "device", "project", "name", "seed", "workers", "lr0", "optimizer",
               "patience", "cos_lr", "close_mosaic", "amp", "exist_ok", "plots", "val", "fraction", "cache")


def _bool(s: str) -> bool:
    v = str(s).lower()
    if v in {"1", "true", "yes", "on"}:
        return True
    if v in {"0", "false", "no", "off"}:
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got '{s}'")


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("models and data")
    g.add_argument("--teacher", action="append", default=None,
                   help="teacher checkpoint .pt (or model .yaml for a random-init teacher); repeat it for several "
                        "teachers, distilled as one weighted ensemble")
    g.add_argument("--teacher-weights", type=float, nargs="+", metavar="W",
                   help="one weight per --teacher (normalised to sum 1) [equal]")
    g.add_argument("--ensemble-rule", choices=("targets", "losses"),
                   help="several teachers: combine their outputs into one teacher (targets) or sum the per-teacher "
                        "KD losses (losses) [targets]")
    g.add_argument("--drop-weak-teachers", action="store_true",
                   help="several teachers: leave out those not above the student's start or below --min-teacher-map "
                        "(instead of refusing)")
    g.add_argument("--assistant", metavar="MODEL",
                   help="teacher-assistant chain: first distil this model (e.g. yolov8s.yaml) from the teacher, then "
                        "the student from it; each stage resumable (see README)")
    g.add_argument("--assistant-both", action="store_true",
                   help="with --assistant: the student learns from the assistant and the teacher together")
    g.add_argument("--student", default="yolov8n.yaml", help="student .pt or model .yaml (from scratch)")
    g.add_argument("--data", help="Ultralytics data.yaml or COCO dataset (folder with annotations/instances_*.json)")
    g.add_argument("--unlabeled", metavar="PATH",
                   help="unlabelled images to distil on too: a folder, a .txt list of images, a COCO JSON whose "
                        "images have no annotations, or a YAML with an 'unlabeled:' entry (default: that entry of "
                        "the --data YAML). There: KD weighted by teacher confidence, and the teacher's detections "
                        "as detection targets (--pseudo-conf, on by default; 'off': KD only)")
    g.add_argument("--class-map", metavar="SPEC",
                   help="a teacher with other classes: which teacher class teaches which data class, beyond same "
                        "names (case/spaces ignored), e.g. 'car,truck,bus=vehicle;person=pedestrian' (quote it; "
                        "merged classes: noisy-OR of their scores). See docs/classes.md")
    g.add_argument("--keep-teacher-classes", action="store_const", const=True, default=None,
                   help="learn the data's classes without forgetting the teacher's: the student predicts the "
                        "teacher's classes + the data's new ones, starts from the teacher's weights when the "
                        "architectures match, and the teacher teaches the classes the data does not label. See "
                        "docs/classes.md")
    g.add_argument("--config", help="YAML with a 'kd:' mapping (KD settings) and optional 'train:' mapping")
    g.add_argument("--resume", help="continue an interrupted run from its weights/last.pt (its KD settings; with "
                                    "--teacher: the run's teacher, moved to that path)")

    k = p.add_argument_group("distillation (defaults: detkd's recipe, see README)")
    k.add_argument("--cls-kd", type=float, help="weight of class-logit KD (0 = off) [1.0]")
    k.add_argument("--cls-mode", choices=("bce", "kl"), help="bce: sigmoid-aware binary KL; kl: softmax KL [bce]")
    k.add_argument("--cls-temp", type=float, help="logit KD temperature [1.0]")
    k.add_argument("--box-kd", type=float, help="weight of box KD: LD on shared DFL bins, else L1 + 1-IoU on decoded "
                                                "distances (YOLO26 heads) [1.0]")
    k.add_argument("--box-temp", type=float, help="LD temperature (shared DFL bins only) [2.0]")
    k.add_argument("--box-iou", type=float, help="extra weight of 1-IoU between decoded boxes, added to LD (the "
                                                "decoded-distance path always has it at 1) [0]")
    k.add_argument("--feat-kd", type=float, help="weight of P3/P4/P5 feature imitation [1.0]")
    k.add_argument("--feat-method", choices=("cwd", "mse", "mgd"), help="feature imitation method [cwd]")
    k.add_argument("--one2one-kd", type=float,
                   help="end-to-end students (YOLO26): weight of logit/box KD on the one-to-one branch [1.0]")
    k.add_argument("--kd-e2e-schedule", type=_bool, metavar="BOOL",
                   help="end-to-end students: each branch's KD follows Ultralytics' one2many->one2one loss weights [true]")
    k.add_argument("--feat-temp", type=float, help="CWD temperature tau [1.0]")
    k.add_argument("--feat-fg-mask", type=_bool, metavar="BOOL", help="mse only: imitate inside GT boxes [false]")
    k.add_argument("--mgd-mask-ratio", type=float, help="mgd only: masked fraction [0.65]")
    k.add_argument("--anchor-weighting", choices=("union", "teacher", "assigned", "verified"), help="KD anchors [verified]")
    k.add_argument("--kd-schedule", choices=("constant", "linear", "cosine"), help="KD weight schedule [cosine]")
    k.add_argument("--kd-final", type=float, help="KD weight multiplier at the last epoch (linear/cosine) [0]")
    k.add_argument("--kd-balance", choices=("none", "detection"),
                   help="detection: each KD weight is a share of the running detection loss [none]")
    k.add_argument("--kd-guard", choices=("warn", "adapt"),
                   help="warn: log when a KD term's gradient works against the labels' for 3 epochs; adapt: also "
                        "halve that term's weight each further such epoch (0 after 4), restored step by step when "
                        "it agrees again; logged as train/kd_scale_* in results.csv [warn]")
    k.add_argument("--unlabeled-ratio", type=float, metavar="R",
                   help="with --unlabeled: the unlabelled share of each epoch; an epoch = all labelled images + "
                        "R/(1-R) x as many unlabelled [0.5]")
    k.add_argument("--pseudo-conf", metavar="CONF|off",
                   help="with --unlabeled: teacher detections >= CONF also become detection targets there (hard "
                        "pseudo-labels, on top of the soft KD); off: soft KD only [0.25]")
    k.add_argument("--min-teacher-map", type=float, help="refuse to start if the teacher's val mAP50-95 is lower")
    k.add_argument("--teacher-val", type=_bool, metavar="BOOL", help="validate the teacher at start [true]")
    k.add_argument("--teacher-half", type=_bool, metavar="BOOL", help="reduced-precision teacher: FP16 on CUDA, BF16 on CPUs with AMX or AVX-512 BF16 [true]")
    k.add_argument("--teacher-graphs", type=_bool, metavar="BOOL",
                   help="CUDA graphs + side stream for the teacher on CUDA [true]")
    k.add_argument("--teacher-overlap", type=_bool, metavar="BOOL",
                   help="on CPU, the teacher runs one batch ahead in a worker thread, beside the student [true]")

    t = p.add_argument_group("training (Ultralytics arguments)")
    t.add_argument("--epochs", type=int, help="training epochs [100]")
    t.add_argument("--imgsz", type=int, help="training and validation image size in pixels [640]")
    t.add_argument("--batch", type=float, help="batch size (-1: AutoBatch) [16]")
    t.add_argument("--device", help="cpu, 0, 0,1 (multi-GPU: DDP launched by Ultralytics)")
    t.add_argument("--project", help="output root [runs/detect]")
    t.add_argument("--name", help="run name [train]")
    t.add_argument("--seed", type=int)
    t.add_argument("--workers", type=int)
    t.add_argument("--lr0", type=float)
    t.add_argument("--optimizer")
    t.add_argument("--patience", type=int)
    t.add_argument("--cos-lr", type=_bool, metavar="BOOL")
    t.add_argument("--close-mosaic", type=int)
    t.add_argument("--amp", type=_bool, metavar="BOOL")
    t.add_argument("--exist-ok", type=_bool, metavar="BOOL")
    t.add_argument("--plots", type=_bool, metavar="BOOL")
    t.add_argument("--val", type=_bool, metavar="BOOL")
    t.add_argument("--fraction", type=float)
    t.add_argument("--cache", help="ram / disk / false")
    t.add_argument("--coco-eval", action="store_true",
                   help="validate with COCOeval (faster-coco-eval; DETKD_COCO_BACKEND=pycocotools for the "
                        "reference) on the dataset's own COCO JSON; best.pt chosen on official AP")
    t.add_argument("--qat", action="store_true",
                   help="quantization-aware training: fine-tune a trained --student (.pt) with INT8 fake-quantization "
                        "(Ultralytics' quantize=8, NVIDIA ModelOpt: the deploy extra), KD from the float teacher; "
                        "export keeps the learnt ranges. See docs/export.md")
    t.add_argument("--augmentations", metavar="SPEC",
                   help="extra albumentations: YAML list (see tools/example_augmentations.yaml) or module.py:function")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other Ultralytics training argument, e.g. --set mosaic=0.5 (repeatable)")


def parse_set(items: list[str]) -> dict:
    """--set key=value pairs → dict with YAML-typed values."""
    import yaml

    from detkd.errors import ConfigError

    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE, got '{item}'")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def build_settings(args) -> tuple[object, dict]:
    """(KDConfig or None on resume, Ultralytics train args) from CLI flags and --config."""
    import yaml

    from detkd.config import KDConfig
    from detkd.errors import ConfigError

    train: dict = {}
    kd_overrides = {field: getattr(args, flag) for flag, field in KD_FLAGS.items() if getattr(args, flag) is not None}
    if args.teacher:
        kd_overrides["teacher"] = args.teacher if len(args.teacher) > 1 else args.teacher[0]
    if args.teacher_weights:
        kd_overrides["teacher_weights"] = args.teacher_weights
    if args.drop_weak_teachers:
        kd_overrides["drop_weak_teachers"] = True
    if args.config:
        kd = KDConfig.from_yaml(args.config, **kd_overrides)
        raw = yaml.safe_load(open(args.config)) or {}
        section = raw.get("train") or {}
        if not isinstance(section, dict):
            raise ConfigError(f"'train:' in {args.config} must be a mapping of Ultralytics training arguments "
                              f"('train:' then '  epochs: 100' on the next line), not a {type(section).__name__}.")
        train.update(section)
    else:
        kd = KDConfig.from_dict(kd_overrides)
    train.update({f: getattr(args, f) for f in TRAIN_FLAGS if getattr(args, f) is not None})
    if isinstance(train.get("batch"), float) and train["batch"].is_integer():
        train["batch"] = int(train["batch"])
    train.update(parse_set(args.set))
    if args.coco_eval:
        train["coco_eval"] = True
    if args.qat:
        train["quantize"] = 8  # Ultralytics' QAT (detkd/engine/qat.py)
    if args.augmentations:
        from detkd.data.augment import load_augmentations

        train["augmentations"] = load_augmentations(args.augmentations)
    if args.resume:
        return None, {**train, "resume": args.resume}
    if not kd.teacher:
        raise ConfigError("--teacher is required (a .pt checkpoint, or a model .yaml for a random-init teacher).")
    if not args.data:
        raise ConfigError("--data is required: an Ultralytics data.yaml or a COCO dataset folder.")
    return kd, train


def run(args) -> int:
    import time

    from detkd.api import distill

    kd, train = build_settings(args)
    if args.assistant_both and not args.assistant:
        from detkd.errors import ConfigError

        raise ConfigError("--assistant-both needs --assistant MODEL (the chain whose student learns from both).")
    t0 = time.time()
    if args.assistant:
        return run_chain(args, kd, train, t0)
    moved = None  # --resume with --teacher: the run's teacher at its new path
    if args.resume and args.teacher:
        moved = args.teacher if len(args.teacher) > 1 else args.teacher[0]
    result = distill(teacher=moved, student=args.student, data=args.data, kd=kd, **train)
    print(f"\ndetkd distill finished in {(time.time() - t0) / 60:.1f} min\n{result.describe()}")
    return 0


def run_chain(args, kd, train: dict, t0: float) -> int:
    """``--assistant``: teacher → assistant → student (detkd/engine/assistant.py)."""
    import time

    from detkd.engine.assistant import chain_summary, distill_via_assistant
    from detkd.errors import ConfigError

    if args.resume:
        raise ConfigError("--assistant with --resume: run the same --assistant command again instead; each finished "
                          "stage is reused and an interrupted one resumes from its last.pt.")
    if len(kd.teachers) != 1:
        raise ConfigError("--assistant takes one --teacher (the assistant is distilled from it).")
    teacher, kd.teacher = kd.teacher, None
    project, name = train.pop("project", "runs/detect"), train.pop("name", "chain")
    train.pop("exist_ok", None)
    distill_via_assistant(teacher, args.assistant, student=args.student, data=args.data,
                          kd={k: v for k, v in kd.to_dict().items() if k != "teacher"},
                          from_both=args.assistant_both, project=project, name=name, **train)
    print(f"\ndetkd distill (teacher-assistant chain) finished in {(time.time() - t0) / 60:.1f} min "
          f"(val metrics of each stage's best.pt)\n{chain_summary(Path(project) / name)}")
    return 0

"""``detkd compare``: teacher, baseline student and distilled student(s) on identical settings, one report.

    detkd compare --teacher teacher.pt --student yolov8n.yaml --data path/to/coco_dataset --epochs 100 --imgsz 640 \\
                  --batch 16 --device 0 --with-ultralytics-kd --seeds 0 1 \\
                  --kd detkd --kd mgd:feat_method=mgd,feat_kd=2 --kd mine:my_kd.yaml,cls_kd=0.5

Writes ``<project>/<name>/report.md`` (table: params, GFLOPs, AP, AP50, APs/m/l, latency p50, FPS, ΔAP vs baseline,
teacher verdict), ``map_vs_fps.png`` and ``training_curves.png``. Re-running reuses finished runs. ``--deploy`` adds
every student run exported to ONNX Runtime / OpenVINO in FP32 / INT8 (AP and CPU speed of each file).
"""

from __future__ import annotations

import argparse

HELP = ("Compare teacher, baseline student and distilled student(s) trained on identical settings: COCO AP, speed, "
        "report.md and plots.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("models and data")
    g.add_argument("--teacher", help="teacher checkpoint .pt (evaluated and distilled from, never trained here)")
    g.add_argument("--student", default="yolov8n.yaml", help="student .pt or model .yaml (from scratch)")
    g.add_argument("--data", help="COCO dataset (folder or detkd COCO YAML: official COCO AP) or Ultralytics data.yaml")
    g.add_argument("--kd", action="append", metavar="NAME[:SPEC]",
                   help="a KD configuration to train, repeatable. SPEC: comma-separated key=value KDConfig settings "
                        "and/or one YAML file with a 'kd:' mapping, e.g. 'mgd:feat_method=mgd,feat_kd=2' or "
                        "'mine:kd.yaml,cls_kd=0.5'. Default: one configuration 'detkd' = detkd's defaults")
    g.add_argument("--assistant", metavar="MODEL",
                   help="add teacher-assistant rows: MODEL (e.g. yolov8s.yaml) distilled from the teacher, and the "
                        "student distilled from it ('via assistant', beside the direct distilled row)")
    g.add_argument("--unlabeled", metavar="PATH",
                   help="unlabelled images (folder, .txt list, COCO JSON, or a YAML with an 'unlabeled:' entry; "
                        "default: that entry of the --data YAML): adds each KD configuration trained with "
                        "them too, and the pseudo-label baseline (teacher detections as labels, no KD)")
    g.add_argument("--pseudo-conf", metavar="CONF|off",
                   help="with --unlabeled: the teacher confidence at which its detections become hard labels on "
                        "the unlabelled images, in the pseudo-label baseline and in detkd + unlabelled; off: soft KD "
                        "only there, and no pseudo-label baseline [0.25]")
    g.add_argument("--class-map", metavar="SPEC",
                   help="a teacher with other classes: which teacher class teaches which data class, beyond same "
                        "names, as in detkd distill, for every distilled run (e.g. 'car,truck,bus=vehicle'); the "
                        "teacher row is scored in the data's classes through it, and the report adds AP per class "
                        "group. See docs/classes.md")
    g.add_argument("--keep-teacher-classes", action="store_true",
                   help="every distilled run learns the data's classes without forgetting the teacher's (as in "
                        "detkd distill); rows scored in the data's classes, AP per class group added. See "
                        "docs/classes.md")
    g.add_argument("--with-ultralytics-kd", action="store_true",
                   help="also train the student with Ultralytics' built-in distill_model= (same teacher, settings)")

    t = p.add_argument_group("training (identical for every student run)")
    t.add_argument("--epochs", type=int, default=100, help="training epochs of every student run")
    t.add_argument("--imgsz", type=int, default=640, help="training and evaluation image size")
    t.add_argument("--batch", type=int, default=16, help="training batch size")
    t.add_argument("--seed", type=int, help="the seed of every student run (one seed; for several: --seeds) [0]")
    t.add_argument("--seeds", type=int, nargs="+", default=None, metavar="SEED",
                   help="repeat every student run with each seed (e.g. --seeds 0 1 2): the report gives AP mean ± "
                        "std per configuration and says whether KD beats the baseline beyond the seed spread")
    t.add_argument("--device", default=None, help="training device: cpu, 0, 0,1 [Ultralytics' choice]")
    t.add_argument("--workers", type=int, default=None, help="dataloader workers [Ultralytics' default]")
    t.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="any other Ultralytics training argument for all runs, e.g. --set lr0=0.005 (repeatable)")
    t.add_argument("--project", default="runs/compare", help="output root")
    t.add_argument("--name", default=None, help="experiment folder under --project [<dataset>_<student>]")

    e = p.add_argument_group("evaluation and speed")
    e.add_argument("--split", default="val", help="split to evaluate")
    e.add_argument("--conf", type=float, default=0.001, help="evaluation confidence threshold")
    e.add_argument("--iou", type=float, default=0.7, help="evaluation NMS IoU threshold")
    e.add_argument("--eval-batch", type=int, default=16, help="evaluation batch size")
    e.add_argument("--eval-device", default=None, help="evaluation device [--device, else cpu]")
    e.add_argument("--bench-device", default="cpu", help="device for the speed columns (batch 1)")
    e.add_argument("--bench-imgsz", type=int, default=None, help="speed/GFLOPs input size [--imgsz]")
    e.add_argument("--bench-warmup", type=int, default=5, help="warm-up calls per model")
    e.add_argument("--bench-iters", type=int, default=50, help="timed calls per model (fewer past the time budget)")
    e.add_argument("--bench-time", type=float, default=5.0, help="seconds of timed calls per model")
    e.add_argument("--deploy", nargs="*", metavar="BACKEND[:PRECISION]",
                   help="also export every student run (onnx, openvino; fp32, int8) and add each file's AP and CPU "
                        "speed to the report and map_vs_fps.png. Alone: onnx:fp32 onnx:int8 openvino:fp32 "
                        "openvino:int8; a backend alone: its fp32 and int8. Needs pip install -e '.[deploy]'")
    e.add_argument("--calib-images", type=int,
                   help="with --deploy: training images INT8 files are calibrated on (drawn with the first seed) [300]")


def parse_kd(items: list[str]) -> dict:
    """``--kd`` values -> ``{name: KDConfig fields}`` (validated); no ``--kd`` -> ``{'detkd': {}}``."""
    import yaml

    from detkd.config import KDConfig
    from detkd.errors import ConfigError

    if not items:
        return {"detkd": {}}
    out: dict = {}
    for item in items:
        name, _, spec = item.partition(":")
        name = name.strip()
        if not name or "=" in name:
            raise ConfigError(f"--kd '{item}': expected NAME or NAME:key=value,key=value (or NAME:file.yaml), "
                              f"e.g. --kd mgd:feat_method=mgd,feat_kd=2.")
        if name in out:
            raise ConfigError(f"--kd: configuration name '{name}' given twice.")
        cfg: dict = {}
        for part in (p.strip() for p in spec.split(",") if p.strip()):
            if "=" in part:
                key, value = (x.strip() for x in part.split("=", 1))
                if key not in KDConfig.keys():
                    raise ConfigError(f"--kd {name}: unknown setting '{key}'. Known: "
                                      f"{', '.join(sorted(KDConfig.keys() - {'teacher'}))}.")
                try:
                    cfg[key] = yaml.safe_load(value)
                except yaml.YAMLError:
                    raise ConfigError(f"--kd {name}: {key}={value} is not a value (a number, true/false, a word or "
                                      f"a closed [list]); quote the whole --kd argument in the shell.") from None
            elif part.lower().endswith((".yaml", ".yml")):
                KDConfig.from_yaml(part)  # missing file, bad YAML, unknown keys: one clear error
                raw = yaml.safe_load(open(part)) or {}
                base = raw.get("kd", {k: v for k, v in raw.items() if k in KDConfig.keys()}) or {}
                cfg = {**{k: v for k, v in base.items() if k != "teacher"}, **cfg}
            else:
                raise ConfigError(f"--kd {name}: '{part}' is neither key=value nor a .yaml file.")
        KDConfig.from_dict(cfg)  # validate now: bad values fail before any training
        out[name] = cfg
    return out


def build_settings(args):
    from detkd.cli.distill import parse_set
    from detkd.compare.experiment import CompareSettings
    from detkd.errors import ConfigError

    if not args.teacher:
        raise ConfigError("--teacher is required: the teacher checkpoint (.pt) to distil from.")
    if not args.data:
        raise ConfigError("--data is required: a COCO dataset folder or an Ultralytics data.yaml.")
    return CompareSettings(
        teacher=args.teacher, data=args.data, student=args.student, kd_configs=parse_kd(args.kd or []),
        with_ultralytics_kd=args.with_ultralytics_kd, assistant=args.assistant, unlabeled=args.unlabeled,
        pseudo_conf="auto" if args.pseudo_conf is None else args.pseudo_conf, epochs=args.epochs, imgsz=args.imgsz,
        batch=args.batch, seed=args.seed, seeds=args.seeds, device=args.device,
        workers=args.workers, train_args=parse_set(args.set or []),
        project=args.project, name=args.name, eval_split=args.split, eval_conf=args.conf, eval_iou=args.iou,
        eval_batch=args.eval_batch, eval_device=args.eval_device, bench_device=args.bench_device,
        bench_imgsz=args.bench_imgsz, bench_warmup=args.bench_warmup, bench_iters=args.bench_iters,
        bench_time_budget=args.bench_time, deploy=args.deploy, calib_images=args.calib_images,
        class_map=args.class_map, keep_teacher_classes=args.keep_teacher_classes,
    ).validate()


def run(args) -> int:
    import time

    from detkd.compare.experiment import run_compare

    settings = build_settings(args)
    t0 = time.time()
    result = run_compare(settings)
    print(f"detkd compare finished in {(time.time() - t0) / 60:.1f} min")
    if result.verdict:
        print(f"Teacher verdict: {result.verdict}")
    return 0

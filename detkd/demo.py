"""The embedded default: a whole distillation experiment, offline, on CPU, in minutes.

1. generate a procedural COCO-format dataset (4 shape classes, clutter, occlusion, distractors);
2. train a teacher (YOLOv8-s) on it;
3. train the student (YOLOv8-n) alone — the baseline;
4. train the same student, same budget and seed, distilled from the teacher;
5. evaluate all three with official COCO metrics (pycocotools) and print a table with params and GFLOPs.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class DemoSettings:
    out: Path = Path("runs/demo")
    imgsz: int = 128
    n_train: int = 192
    n_val: int = 48
    teacher: str = "yolov8s.yaml"
    student: str = "yolov8n.yaml"
    teacher_epochs: int = 16
    epochs: int = 12
    batch: int = 16
    device: str = "cpu"
    seed: int = 0


def _step(i: int, n: int, text: str) -> None:
    print(f"\n{'=' * 100}\n[detkd demo {i}/{n}] {text}\n{'=' * 100}", flush=True)


def model_size(weights: str | Path, imgsz: int) -> dict:
    """Parameters (M) and GFLOPs at ``imgsz`` of a checkpoint."""
    from ultralytics.utils.torch_utils import get_flops, get_num_params

    from detkd.models.loading import load_detection_model

    net = load_detection_model(weights)
    return {"params_M": get_num_params(net) / 1e6, "GFLOPs": get_flops(net, imgsz)}


def run_demo(s: DemoSettings) -> dict:
    from detkd.api import distill, resolve_data, train_baseline
    from detkd.config import KDConfig
    from detkd.data.synthetic import SyntheticSpec, make_shapes_dataset
    from detkd.eval.coco_eval import evaluate_coco

    t_start = time.time()
    n = 6
    out = Path(s.out).resolve()
    _step(1, n, f"generating the procedural shapes dataset ({s.n_train} train / {s.n_val} val, {s.imgsz} px)")
    root = make_shapes_dataset(out / "data", SyntheticSpec(n_train=s.n_train, n_val=s.n_val, imgsz=s.imgsz, seed=s.seed))
    data = resolve_data(root)
    common = dict(imgsz=s.imgsz, batch=s.batch, device=s.device, workers=0, seed=s.seed, plots=False,
                  project=str(out / "runs"), exist_ok=True)
    timings = {}

    _step(2, n, f"training the teacher {s.teacher} for {s.teacher_epochs} epochs")
    t0 = time.time()
    teacher = train_baseline(student=s.teacher, data=data, epochs=s.teacher_epochs, name="teacher", **common)
    timings["teacher"] = time.time() - t0

    _step(3, n, f"training the baseline student {s.student} for {s.epochs} epochs (no teacher)")
    t0 = time.time()
    baseline = train_baseline(student=s.student, data=data, epochs=s.epochs, name="baseline", **common)
    timings["baseline"] = time.time() - t0

    _step(4, n, f"distilling {s.teacher} -> {s.student} for {s.epochs} epochs (same budget and seed)")
    t0 = time.time()
    distilled = distill(teacher=str(teacher.best), student=s.student, data=data, kd=KDConfig(),
                        epochs=s.epochs, name="distilled", **common)
    timings["distilled"] = time.time() - t0

    _step(5, n, "COCO evaluation (pycocotools, the dataset's own JSON) of teacher, baseline and distilled")
    rows = {}
    for name, run in (("teacher", teacher), ("baseline", baseline), ("distilled", distilled)):
        m = evaluate_coco(run.best, data, split="val", imgsz=s.imgsz, device=s.device, batch=16,
                          out_dir=out / "eval" / name, verbose=False)
        rows[name] = {"AP": m["AP"], "AP50": m["AP50"], **model_size(run.best, s.imgsz),
                      "train_s": timings[name], "weights": str(run.best)}

    _step(6, n, "results")
    report = {"settings": {k: str(v) for k, v in s.__dict__.items()}, "rows": rows,
              "total_s": time.time() - t_start}
    table = format_demo_table(report)
    print(table)
    (out / "demo_results.json").write_text(json.dumps(report, indent=2))
    (out / "demo_results.md").write_text(table + "\n")
    print(f"\nwritten: {out / 'demo_results.md'}, {out / 'demo_results.json'}")
    return report


def format_demo_table(report: dict) -> str:
    rows, s = report["rows"], report["settings"]
    base = rows["baseline"]["AP"]
    lines = [
        f"detkd demo — shapes dataset, {s['imgsz']} px, {s['device']}, total {report['total_s'] / 60:.1f} min",
        "",
        "| model | mAP50-95 (COCO AP) | mAP50 | Δ AP vs baseline | params (M) | GFLOPs | train time (s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    labels = {"teacher": f"teacher {Path(s['teacher']).stem}", "baseline": f"baseline {Path(s['student']).stem}",
              "distilled": f"distilled {Path(s['student']).stem}"}
    for name, r in rows.items():
        delta = "" if name == "baseline" else f"{r['AP'] - base:+.3f}"
        lines.append(f"| {labels[name]} | {r['AP']:.3f} | {r['AP50']:.3f} | {delta} | {r['params_M']:.2f} | "
                     f"{r['GFLOPs']:.1f} | {r['train_s']:.0f} |")
    if rows["teacher"]["AP"] <= base:
        lines += ["", "Teacher verdict: the teacher is not above the student trained alone — distilling from it "
                      "will not help (train it longer: --teacher-epochs)."]
    return "\n".join(lines)

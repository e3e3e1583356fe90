#!/usr/bin/env python
"""Does a BF16 teacher distil as well as an FP32 one? -> benchmarks/results/teacher_precision_<machine>.json, .md

On CPUs with fast BF16 (Intel AMX, AVX-512 BF16) detkd runs the teacher in BF16 (``--teacher-half``, the default),
2–4× faster than FP32 (``benchmarks/kd_overhead.py``). Its targets move by a few parts in a thousand; this checks that
the student learns as well from them. The demo's setting and recipe (:mod:`detkd.demo`: generated shapes, a YOLOv8-s
teacher on 600 images, YOLOv8-n students on 100 of them), per seed: one teacher, then two distilled students that
differ only in the teacher's precision (same data, epochs, augmentation stream and seed), COCO AP of each on the
demo's val split. Each seed's results are kept in ``--runs`` (a re-run skips finished seeds)::

    python benchmarks/teacher_precision.py                    # seeds 0 1 2, the demo's defaults
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("YOLO_OFFLINE", "1")

PRECISIONS = {"bf16": True, "fp32": False}  # row -> teacher_half


def run_seed(seed: int, args) -> dict:
    """Teacher + the two distilled students of one seed; COCO AP of each (reused when already finished)."""
    from detkd.api import distill, resolve_data, train_baseline
    from detkd.config import KDConfig
    from detkd.data.synthetic import make_shapes_dataset
    from detkd.demo import DEMO_KD, DemoSettings, demo_spec, train_subset
    from detkd.eval.coco_eval import evaluate_coco

    out = (args.runs / f"seed{seed}").resolve()
    done = out / "teacher_precision.json"
    if done.exists():
        return json.loads(done.read_text())
    s = DemoSettings(out=out, seed=seed, imgsz=args.imgsz, n_teacher=args.n_teacher, n_student=args.n_student,
                     n_val=args.n_val, teacher_epochs=args.teacher_epochs, epochs=args.epochs)
    root = make_shapes_dataset(out / "data" / "teacher", demo_spec(s))
    data_t, data_s = resolve_data(root), resolve_data(train_subset(root, out / "data" / "student", s.n_student))
    common = dict(imgsz=s.imgsz, batch=s.batch, device="cpu", workers=0, seed=seed, plots=False,
                  project=str(out / "runs"), exist_ok=True, warmup_epochs=1)
    weights = {}
    for name in ("teacher", *(f"distilled_{row}" for row in PRECISIONS)):  # a finished model is reused
        marker = out / "runs" / name / "detkd_finished.txt"
        if marker.exists():
            weights[name] = marker.read_text().strip()
            continue
        if name == "teacher":
            print(f"[seed {seed}] teacher {s.teacher}, {s.n_teacher} images, {s.teacher_epochs} epochs", flush=True)
            r = train_baseline(student=s.teacher, data=data_t, epochs=s.teacher_epochs, name="teacher",
                               close_mosaic=max(1, s.teacher_epochs // 3), **common)
        else:
            row = name.split("_")[1]
            print(f"[seed {seed}] distilled, {row.upper()} teacher", flush=True)
            r = distill(teacher=weights["teacher"], student=s.student, data=data_s, epochs=s.epochs, name=name,
                        kd=KDConfig(**DEMO_KD, teacher_half=PRECISIONS[row]), **common)
        weights[name] = str(r.best)
        marker.write_text(weights[name])
    ap = {name: evaluate_coco(w, data_s, split="val", imgsz=s.imgsz, device="cpu", batch=32,
                              out_dir=out / "eval" / name, verbose=False)["AP"] for name, w in weights.items()}
    result = {"seed": seed, "AP": ap, "weights": weights}
    done.write_text(json.dumps(result, indent=2))
    return result


def summarise(seeds: list[dict]) -> dict:
    """Per row: AP per seed, mean, spread (half the min–max range); the BF16 − FP32 difference per seed; the verdict:
    *same* when the mean difference is within the spread of the FP32 students' seeds."""
    rows = {}
    for name in seeds[0]["AP"]:
        values = [s["AP"][name] for s in seeds]
        rows[name] = {"per_seed": values, "mean": statistics.fmean(values),
                      "spread": (max(values) - min(values)) / 2}
    diff = [s["AP"]["distilled_bf16"] - s["AP"]["distilled_fp32"] for s in seeds]
    mean_diff = statistics.fmean(diff)
    same = abs(mean_diff) <= rows["distilled_fp32"]["spread"]
    return {"rows": rows, "bf16_minus_fp32": {"per_seed": diff, "mean": mean_diff,
                                              "spread": (max(diff) - min(diff)) / 2},
            "verdict": "same" if same else "different"}


def render_markdown(r: dict) -> str:
    from detkd.bench.report import machine_line

    s, summary = r["settings"], r["summary"]
    seeds = s["seeds"]
    unit = r["bf16_unit"] if "bf16_unit" in r else "AMX" if r.get("amx") else None  # older files: AMX or not
    lines = [f"# BF16 vs FP32 teacher — {r['machine']['cpu']['name']}", "", f"{machine_line(r['machine'])}.", "",
             f"The demo's setting and recipe ({s['imgsz']} px; teacher yolov8s on {s['n_teacher']} images, "
             f"{s['teacher_epochs']} epochs; students yolov8n on {s['n_student']} images, {s['epochs']} epochs; "
             f"{s['n_val']} val images). Per seed one teacher, two distilled students that differ only in the "
             f"teacher's precision (`--teacher-half true` / `false`). Fast BF16 on this CPU: "
             f"{unit or 'no (both rows ran FP32)'}.", "",
             "| model | " + " | ".join(f"seed {x}" for x in seeds) + " | mean ± spread |",
             "|---|" + "---:|" * (len(seeds) + 1)]
    labels = {"teacher": "teacher", "distilled_bf16": "distilled, BF16 teacher (default here)",
              "distilled_fp32": "distilled, FP32 teacher"}
    for name, row in summary["rows"].items():
        lines.append(f"| {labels.get(name, name)} | " + " | ".join(f"{v:.3f}" for v in row["per_seed"])
                     + f" | {row['mean']:.3f} ± {row['spread']:.3f} |")
    d = summary["bf16_minus_fp32"]
    lines.append("| Δ BF16 − FP32 | " + " | ".join(f"{v:+.3f}" for v in d["per_seed"])
                 + f" | {d['mean']:+.3f} ± {d['spread']:.3f} |")
    verdict = ("the same: the mean difference is within the FP32 students' seed spread" if summary["verdict"] == "same"
               else "different: the mean difference exceeds the FP32 students' seed spread")
    lines += ["", f"COCO AP (mAP50-95) on the demo's val split. BF16 vs FP32 teacher: **{verdict}**."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from detkd.demo import DemoSettings

    d = DemoSettings()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--runs", type=Path, default=Path("runs/teacher_precision"), help="one folder per seed in here")
    p.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--imgsz", type=int, default=d.imgsz)
    p.add_argument("--n-teacher", type=int, default=d.n_teacher)
    p.add_argument("--n-student", type=int, default=d.n_student)
    p.add_argument("--n-val", type=int, default=d.n_val)
    p.add_argument("--teacher-epochs", type=int, default=d.teacher_epochs)
    p.add_argument("--epochs", type=int, default=d.epochs)
    args = p.parse_args(argv)

    from detkd.bench.machine import machine_info, machine_tag
    from detkd.bench.report import write_json_and_markdown
    from detkd.models.teacher import cpu_bf16_unit

    seeds = [run_seed(seed, args) for seed in args.seeds]
    info = machine_info("cpu")
    unit = cpu_bf16_unit()
    result = {"machine": info, "bf16_unit": unit,
              "settings": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}},
              "seeds": seeds, "summary": summarise(seeds)}
    write_json_and_markdown(args.out_dir / f"teacher_precision_{machine_tag(info, 'cpu')}", result,
                            render_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

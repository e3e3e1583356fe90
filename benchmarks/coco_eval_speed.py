#!/usr/bin/env python
"""COCO evaluation speed, faster-coco-eval vs pycocotools -> benchmarks/results/coco_eval_speed_<machine>.json, .md.

Generates a COCO-val-sized case (:func:`detkd.eval.synthetic.synthetic_eval_case`: 5,000 images, ~37k boxes,
~500k detections, 80 categories with COCO's ids, COCO's size distribution, crowd regions) and scores it with
:func:`detkd.eval.metrics.coco_box_metrics` on each backend, timing each phase. The number that matters is the
evaluation itself, evaluate + accumulate + summarize (inference excluded); reading the ground truth and ``loadRes``
are reported beside it. The run fails (exit 1) when the backends disagree on a stat or a per-class AP by more than
1e-12. CPU only; the pycocotools run takes ~2 minutes at the default size::

    python benchmarks/coco_eval_speed.py                      # 5000 images, both backends
    python benchmarks/coco_eval_speed.py --images 200 --out-dir /tmp/b   # a quick look
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
os.environ.setdefault("YOLO_OFFLINE", "1")

TOL = 1e-12
TARGET_S = 15.0  # faster-coco-eval, evaluate+accumulate+summarize, COCO-val size, 2-core CPU
PHASES = ("load_gt", "load_dets", "load_res", "evaluate", "accumulate", "summarize")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--gt-per-image", type=float, default=7.4)
    p.add_argument("--dets-per-image", type=float, default=100.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backends", nargs="+", default=["faster", "pycocotools"], choices=["faster", "pycocotools"])
    p.add_argument("--note", action="append", default=[], help="a line for the report's notes (repeatable)")
    p.add_argument("--tag", default=None, help="machine tag in the file names (default: CPU name)")
    p.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    return p.parse_args(argv)


def describe_case(gt: dict, dets: list) -> dict:
    import numpy as np

    area = np.array([a["area"] for a in gt["annotations"] if not a["iscrowd"]])
    per_img = np.bincount(np.unique([d["image_id"] for d in dets], return_inverse=True)[1])
    return {"images": len(gt["images"]), "categories": len(gt["categories"]),
            "gt_boxes": len(gt["annotations"]), "crowd_regions": sum(a["iscrowd"] for a in gt["annotations"]),
            "images_without_gt": len(gt["images"]) - len({a["image_id"] for a in gt["annotations"]}),
            "detections": len(dets), "images_over_maxdets_100": int((per_img > 100).sum()),
            "gt_small_medium_large": [round(float(x), 3) for x in ((area < 32**2).mean(),
                                      ((area >= 32**2) & (area < 96**2)).mean(), (area >= 96**2).mean())]}


def compare(a: dict, b: dict) -> dict:
    """Largest |difference| of the 12 stats and of the per-class AP / AP50 (None must match None)."""
    from detkd.eval.metrics import STAT_KEYS

    def diff(x, y):
        if x is None or y is None:
            return 0.0 if x is y else float("inf")
        return abs(x - y)

    return {"stats": max(diff(a[k], b[k]) for k in STAT_KEYS),
            "per_class_AP": max(diff(a["per_class"][n], b["per_class"].get(n)) for n in a["per_class"]),
            "per_class_AP50": max(diff(a["per_class_AP50"][n], b["per_class_AP50"].get(n)) for n in a["per_class"]),
            "stats_bitwise_equal": all(a[k] == b[k] for k in STAT_KEYS)}


def render_markdown(r: dict) -> str:
    from detkd.bench.report import machine_line
    from detkd.eval.metrics import BACKEND_LABEL, STAT_KEYS

    c, runs = r["case"], r["runs"]
    lines = [f"# COCO evaluation speed — {r['tag']}", "", f"**Machine:** {machine_line(r['machine'])}; "
             f"faster-coco-eval {r['versions']['faster-coco-eval']}, pycocotools {r['versions']['pycocotools']}.", "",
             f"**Case** (synthetic, COCO val2017 statistics, seed {r['settings']['seed']}): {c['images']:,} images, "
             f"{c['gt_boxes']:,} GT boxes ({c['crowd_regions']} crowd, small/medium/large "
             f"{'/'.join(f'{x:.0%}' for x in c['gt_small_medium_large'])}, {c['images_without_gt']} images without "
             f"GT), {c['detections']:,} detections ({c['images_over_maxdets_100']:,} images over maxDets=100), "
             f"{c['categories']} categories. Generated in {r['generate_s']:.1f} s.", "",
             "**Method:** `detkd.eval.metrics.coco_box_metrics` (bbox, all images) once per backend, in one "
             "process, each phase timed with `time.perf_counter`. *eval* = evaluate + accumulate + summarize "
             "(the evaluation itself, no inference); *total* adds reading the ground truth and the detections and "
             "`loadRes`.", "",
             "| backend | load GT s | checks s | loadRes s | evaluate s | accumulate s | summarize s | **eval s** "
             "| total s |", "|---|---|---|---|---|---|---|---|---|"]
    for b, run in runs.items():
        t = run["seconds"]
        lines.append(f"| {BACKEND_LABEL[b]} | " + " | ".join(f"{t[k]:.2f}" for k in PHASES)
                     + f" | **{run['eval_s']:.2f}** | {run['total_s']:.2f} |")
    lines += [""]
    if "speedup_eval" in r:
        lines += [f"**Speed-up** (pycocotools / faster-coco-eval): eval {r['speedup_eval']:.1f}x, total "
                  f"{r['speedup_total']:.1f}x.", ""]
    if "faster" in runs:
        verdict = "meets" if runs["faster"]["eval_s"] <= TARGET_S else "MISSES"
        lines += [f"**Target** (faster-coco-eval eval <= {TARGET_S:.0f} s at COCO-val size): {verdict} "
                  f"({runs['faster']['eval_s']:.2f} s).", ""]
    first = next(iter(runs.values()))["stats"]
    lines += ["**Stats** (" + ", ".join(BACKEND_LABEL[b] for b in runs) + "):", "",
              "| " + " | ".join(STAT_KEYS) + " |", "|" + "---|" * len(STAT_KEYS),
              "| " + " | ".join(f"{first[k]:.4f}" for k in STAT_KEYS) + " |", ""]
    if "agreement" in r:
        a = r["agreement"]
        lines += [f"**Agreement:** largest |difference| over the 12 stats {a['stats']:.1e} (bitwise equal: "
                  f"{'yes' if a['stats_bitwise_equal'] else 'no'}), per-class AP {a['per_class_AP']:.1e}, per-class "
                  f"AP50 {a['per_class_AP50']:.1e} (tolerance {TOL:g}): "
                  f"{'the same numbers' if r['identical'] else 'DIFFERENT'}.", ""]
    lines += ["Notes:", ""] + [f"- {n}" for n in r["notes"]] + [""]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    from importlib import metadata

    from detkd.bench.machine import machine_info, machine_tag
    from detkd.bench.report import write_json_and_markdown
    from detkd.eval.metrics import BACKEND_LABEL, coco_box_metrics
    from detkd.eval.synthetic import synthetic_eval_case

    load0 = os.getloadavg()
    t0 = time.perf_counter()
    gt, dets = synthetic_eval_case(args.images, gt_per_image=args.gt_per_image, dets_per_image=args.dets_per_image,
                                   seed=args.seed)
    generate_s = time.perf_counter() - t0
    case = describe_case(gt, dets)
    print(f"case: {case} ({generate_s:.1f} s)", flush=True)
    runs, metrics = {}, {}
    for b in args.backends:
        timings: dict = {}
        t0 = time.perf_counter()
        m = coco_box_metrics(gt, dets, backend=b, timings=timings)
        total = time.perf_counter() - t0
        metrics[b] = m
        eval_s = timings["evaluate"] + timings["accumulate"] + timings["summarize"]
        runs[b] = {"seconds": {k: round(timings[k], 3) for k in PHASES}, "eval_s": round(eval_s, 3),
                   "total_s": round(total, 3), "stats": {k: v for k, v in m.items() if k[:2] in ("AP", "AR")}}
        print(f"{BACKEND_LABEL[b]}: eval {eval_s:.2f} s, total {total:.2f} s, AP {m['AP']:.4f}", flush=True)
    load1 = os.getloadavg()
    info = machine_info("cpu")
    tag = args.tag or machine_tag(info, "cpu")
    r = {"tag": tag, "machine": info, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
         "versions": {d: metadata.version(d) for d in ("faster-coco-eval", "pycocotools")},
         "settings": {**vars(args), "command": " ".join(["python benchmarks/coco_eval_speed.py",
                                                         *(sys.argv[1:] if argv is None else argv)])},
         "case": case, "generate_s": round(generate_s, 2), "runs": runs, "target_s": TARGET_S,
         "load_average_before_after": [round(load0[0], 2), round(load1[0], 2)]}
    if len(runs) == 2:
        a = compare(metrics["faster"], metrics["pycocotools"])
        r["agreement"] = a
        r["identical"] = max(a["stats"], a["per_class_AP"], a["per_class_AP50"]) <= TOL
        r["speedup_eval"] = round(runs["pycocotools"]["eval_s"] / runs["faster"]["eval_s"], 2)
        r["speedup_total"] = round(runs["pycocotools"]["total_s"] / runs["faster"]["total_s"], 2)
    if "faster" in runs:
        r["meets_target"] = runs["faster"]["eval_s"] <= TARGET_S
    r["notes"] = [f"1-minute load average {r['load_average_before_after'][0]} before, "
                  f"{r['load_average_before_after'][1]} after, on {info['cpu']['logical_cores']} logical cores: the "
                  f"CPU may be shared with other work, which slows both backends alike."] + list(args.note)
    write_json_and_markdown(Path(args.out_dir) / f"coco_eval_speed_{tag}", r, render_markdown(r))
    return 0 if r.get("identical", True) else 1


if __name__ == "__main__":
    sys.exit(main())

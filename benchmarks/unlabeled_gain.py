#!/usr/bin/env python
"""Does distilling on unlabelled images help? -> benchmarks/results/unlabeled_gain_<tag>.json, .md.

Protocol (issue 12): a labelled dataset is split into a labelled part (``--labeled`` images, or a fraction) and an
"unlabelled" rest whose labels are withheld (its images only, in a folder). Two teacher scenarios:

* ``teacher-all``:      the teacher saw every label (the labelled part and the rest) — a big model trained on more
                        data than the student may use;
* ``teacher-labeled``:  the teacher saw the labelled part only (same data as the student), trained for as many
                        optimizer steps as the other teacher (``--teacher-epochs`` x train / labelled images): with
                        the same epochs on 100 of 600 images a YOLOv8-s from scratch got 84 steps and scored 0 AP.

For each, ``detkd compare`` trains on the labelled part, with the same seeds, epochs, image size and augmentation:
baseline (labelled only), detkd (labelled only), detkd + unlabelled (``--unlabeled``: detkd's default there, soft KD
+ hard pseudo-labels at ``--pseudo-conf``), with ``--soft-only`` also detkd + unlabelled with soft KD only, and the
pseudo-label baseline users are told to use (teacher detections >= ``--pseudo-conf`` as labels on the unlabelled
images, no KD), and Ultralytics' built-in ``distill_model=`` on the labelled images.
Unlabelled images make up half of each epoch (``unlabeled_ratio`` 0.5, the default).
Each row: COCO AP per seed, mean ± spread; the verdict says whether detkd + unlabelled beats detkd labelled-only and
the pseudo-label baseline beyond the seed spread (worst seed above the other's best). Finished runs are reused, so
the protocol can be split over several calls (``--scenarios``, ``--seeds``) and merged by a last one; a scenario
already in the results file of the same protocol is kept when a call measures only the other one::

    python benchmarks/unlabeled_gain.py --soft-only                      # the demo's shapes data, 2 seeds
    python benchmarks/unlabeled_gain.py --data ../shared/datasets/raccoon --imgsz 160 --labeled-fraction 0.5 \\
        --teacher-epochs 60 --epochs 60 --tag raccoon --runs runs/unlabeled_gain_raccoon
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("YOLO_OFFLINE", "1")

SCENARIOS = ("teacher-all", "teacher-labeled")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", type=Path, default=None,
                   help="COCO dataset folder (annotations/instances_{train,val}.json); default: the demo's shapes")
    p.add_argument("--n-train", type=int, default=600, help="shapes only: generated training images")
    p.add_argument("--n-val", type=int, default=150, help="shapes only: generated val images")
    p.add_argument("--labeled", type=int, default=100, help="labelled images (the rest is unlabelled)")
    p.add_argument("--labeled-fraction", type=float, default=None, help="instead of --labeled: a share of train")
    p.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--teacher-cfg", default="yolov8s.yaml")
    p.add_argument("--student", default="yolov8n.yaml")
    p.add_argument("--teacher-epochs", type=int, default=12)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--imgsz", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--kd", default="{}", help="KDConfig fields (JSON) of the detkd rows; {} = detkd's defaults")
    p.add_argument("--pseudo-conf", type=float, default=0.25)
    p.add_argument("--soft-only", action="store_true",
                   help="also detkd + unlabelled with soft KD only (no hard pseudo-labels)")
    p.add_argument("--runs", type=Path, default=Path("runs/unlabeled_gain"))
    p.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--tag", default="shapes", help="dataset name in the file names (the machine is added)")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------------ data
def shapes_source(args) -> Path:
    from detkd.data.synthetic import make_shapes_dataset
    from detkd.demo import DemoSettings, demo_spec

    spec = demo_spec(DemoSettings(imgsz=args.imgsz, n_teacher=args.n_train, n_val=args.n_val))
    return make_shapes_dataset(args.runs / "data" / "shapes_full", spec)


def split_dataset(src: Path, dst: Path, n_labeled: int, seed: int = 0) -> tuple[Path, Path]:
    """``dst/labeled``: a COCO dataset with ``n_labeled`` random train images of ``src`` (val unchanged);
    ``dst/unlabeled``: links to the other train images (their labels withheld). Idempotent."""
    coco = json.loads((src / "annotations" / "instances_train.json").read_text())
    images = sorted(coco["images"], key=lambda im: im["id"])
    random.Random(seed).shuffle(images)
    keep = {im["id"] for im in images[:n_labeled]}
    labeled, unlabeled = dst / "labeled", dst / "unlabeled"
    (labeled / "annotations").mkdir(parents=True, exist_ok=True)
    unlabeled.mkdir(parents=True, exist_ok=True)
    sub = {**coco, "images": [im for im in coco["images"] if im["id"] in keep],
           "annotations": [a for a in coco["annotations"] if a["image_id"] in keep]}
    _write_if_changed(labeled / "annotations" / "instances_train.json", sub)
    _write_if_changed(labeled / "annotations" / "instances_val.json",
                      json.loads((src / "annotations" / "instances_val.json").read_text()))
    for split in ("train", "val"):
        link = labeled / split
        if not link.exists():
            link.symlink_to(_image_dir(src, split).resolve(), target_is_directory=True)
    train_dir = _image_dir(src, "train")
    for im in coco["images"]:
        if im["id"] not in keep and not (unlabeled / Path(im["file_name"]).name).exists():
            (unlabeled / Path(im["file_name"]).name).symlink_to((train_dir / im["file_name"]).resolve())
    return labeled, unlabeled


def _image_dir(src: Path, split: str) -> Path:
    for d in (src / split, src / "images" / split):
        if d.is_dir():
            return d
    raise SystemExit(f"no {split} image folder in {src} (expected {src / split} or {src / 'images' / split})")


def _write_if_changed(path: Path, obj) -> None:
    text = json.dumps(obj)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


# ------------------------------------------------------------------------------------------- teachers
def teacher_epochs(args, scenario: str, n_train: int, n_labeled: int) -> int:
    """``--teacher-epochs`` for the teacher that saw every label; the teacher of the labelled part alone gets as many
    optimizer steps (epochs x n_train / n_labeled), so that it is not weaker only for being trained less."""
    if scenario == "teacher-all":
        return args.teacher_epochs
    return max(1, round(args.teacher_epochs * n_train / max(1, n_labeled)))


def train_teacher(args, data: Path, name: str, epochs: int) -> tuple[str, float]:
    """``--teacher-cfg`` trained on ``data`` for ``epochs`` (reused when finished, resumed from ``weights/last.pt``
    when it was cut off): (best.pt, its val mAP50-95)."""
    from detkd.api import train_baseline
    from detkd.engine.checkpoints import run_state

    folder = (args.runs / "teachers" / name).resolve()
    marker = folder / "teacher.json"
    key = {"data": str(data.resolve()), "cfg": args.teacher_cfg, "epochs": epochs, "imgsz": args.imgsz}
    if marker.exists() and json.loads(marker.read_text()).get("key") == key:
        done = json.loads(marker.read_text())
        return done["best"], done["mAP50-95"]
    state, last = run_state(folder)
    resume = {"resume": str(last)} if state == "interrupted" else {}
    if resume:
        print(f"[unlabeled_gain] {name}: resuming the teacher from {last}", flush=True)
    run = train_baseline(args.teacher_cfg, data=str(data), epochs=epochs, imgsz=args.imgsz,
                         batch=args.batch, workers=args.workers, device=args.device, seed=0, plots=False,
                         project=str(folder.parent), name=name, exist_ok=True, **resume)
    done = {"key": key, "best": str(run.best), "mAP50-95": run.metrics.get("mAP50-95")}
    marker.write_text(json.dumps(done, indent=1))
    return done["best"], done["mAP50-95"]


# ------------------------------------------------------------------------------------------- students
SAME_ITERATIONS = " (same iterations)"


def run_scenario(args, scenario: str, teacher: str, labeled: Path, unlabeled: Path) -> list[dict]:
    """The compare rows with the unlabelled images, then baseline and detkd labelled-only trained for as many
    iterations (an epoch with unlabelled images is 1 / (1 - 0.5) = 2x longer: without this control, part of the
    gain is only more training)."""
    from detkd.compare.experiment import compare

    kd = json.loads(args.kd)
    configs = {"detkd": kd}
    if args.soft_only:
        configs["detkd-soft"] = {**kd, "pseudo_conf": None}  # soft KD only on the unlabelled images
    common = dict(student=args.student, seeds=args.seeds, imgsz=args.imgsz, batch=args.batch, workers=args.workers,
                  device=args.device, project=str(args.runs.resolve()), bench_iters=10, bench_time_budget=1.0,
                  bench_warmup=2)
    rows = compare(teacher, labeled, kd_configs=configs, unlabeled=str(unlabeled), pseudo_conf=args.pseudo_conf,
                   with_ultralytics_kd=True, epochs=args.epochs, name=scenario, **common).rows
    longer = compare(teacher, labeled, kd_configs={"detkd": kd}, epochs=args.epochs * 2,
                     name=f"{scenario}-same-iterations", **common).rows
    for r in longer:
        if r["kind"] != "teacher":
            r["config"], r["config_label"] = r["config"] + "-same-iterations", r["config_label"] + SAME_ITERATIONS
            r["kind"] = "distilled"  # not the baseline the deltas are taken against
    return rows + [r for r in longer if r["kind"] != "teacher"]


def beats(a: dict, b: dict) -> str:
    """'yes' when every seed of ``a`` is above every seed of ``b`` (beyond the spread), 'no' when the reverse,
    else 'within spread'."""
    if not a or not b:
        return "n/a"
    if min(a.values()) > max(b.values()):
        return "yes"
    if max(a.values()) < min(b.values()):
        return "no (below)"
    return "within spread"


def summarise(rows: list[dict]) -> dict:
    from detkd.compare.seeds import aggregate

    groups = {g["config"]: g for g in aggregate(rows)}
    teacher = next((r for r in rows if r["kind"] == "teacher"), {})
    unl, soft, lab, lab_long, pseudo = (groups.get(k, {}).get("aps", {}) for k in (
        "distilled-detkd-unlabeled", "distilled-detkd-soft-unlabeled", "distilled-detkd",
        "distilled-detkd-same-iterations", "pseudo-labels"))
    return {"teacher_AP": teacher.get("AP"), "groups": list(groups.values()),
            "unlabeled_beats_labeled_only": beats(unl, lab),
            "unlabeled_beats_labeled_only_same_iterations": beats(unl, lab_long),
            "unlabeled_beats_pseudo_labels": beats(unl, pseudo),
            "unlabeled_beats_soft_only": beats(unl, soft),
            "soft_only_beats_labeled_only": beats(soft, lab_long), "soft_only_beats_pseudo_labels": beats(soft, pseudo)}


def spread(aps: dict) -> float:
    v = list(aps.values())
    return (max(v) - min(v)) / 2 if v else float("nan")


def render(report: dict) -> str:
    m = report["machine"]
    s = report["settings"]
    lines = [f"# Distilling on unlabelled images — {s['dataset']}", "",
             f"Machine: {(m.get('gpus') or [None])[0] or m['cpu'].get('name')} ({m['cpu'].get('logical_cores')} "
             f"cores). "
             f"Labelled: {report['split']['labeled']} images, "
             f"unlabelled (labels withheld): {report['split']['unlabeled']}, val: {report['split']['val']}. "
             f"Student {s['student']}, {s['epochs']} epochs at {s['imgsz']} px, batch {s['batch']}, seeds "
             f"{s['seeds']}; unlabelled share of each epoch 0.5 (the default); hard pseudo-label threshold "
             f"{s['pseudo_conf']} (pseudo-label baseline and detkd + unlabelled). An epoch with unlabelled images "
             f"is twice as long: the '(same iterations)' rows "
             f"are trained {2 * s['epochs']} epochs on the labelled images. COCO AP (pycocotools-compatible, val "
             f"split); spread = half the min-max range.", ""]
    for name, sc in report["scenarios"].items():
        t = sc["teacher_AP"]
        ep = f", {sc['teacher_epochs']} epochs" if sc.get("teacher_epochs") else ""
        lines += [f"## {name} (teacher {s['teacher_cfg']}{ep}, AP {t:.3f})" if t is not None else f"## {name}", "",
                  "| student | AP per seed | AP mean ± spread | Δ vs baseline |", "|---|---|---:|---:|"]
        for g in sc["groups"]:
            per = ", ".join(f"{g['aps'][k]:.3f}" for k in sorted(g["aps"]))
            d = "" if g["delta_mean"] is None else f"{g['delta_mean']:+.3f}"
            lines.append(f"| {g['label']} | {per} | {g['mean']:.3f} ± {spread(g['aps']):.3f} | {d} |")
        lines += ["", f"detkd + unlabelled (soft KD + hard pseudo-labels, the default) beats detkd labelled-only "
                      f"beyond the spread: **{sc['unlabeled_beats_labeled_only']}** (same epochs), "
                      f"**{sc.get('unlabeled_beats_labeled_only_same_iterations', 'n/a')}** (same iterations); "
                      f"beats the pseudo-label baseline: **{sc['unlabeled_beats_pseudo_labels']}**."
                  + (f" Soft KD only: beats labelled-only (same iterations) **{sc['soft_only_beats_labeled_only']}**, "
                     f"the pseudo-label baseline **{sc['soft_only_beats_pseudo_labels']}**; the default beats it: "
                     f"**{sc['unlabeled_beats_soft_only']}**." if "distilled-detkd-soft-unlabeled" in
                     {g["config"] for g in sc["groups"]} else ""), ""]
    return "\n".join(lines)


# Settings that only say how or where a call ran, not what was measured.
NOT_PROTOCOL = ("scenarios", "runs", "out_dir", "workers")


def merge_earlier(report: dict, earlier: dict | None) -> dict:
    """``report`` with the scenarios of an ``earlier`` report of the same protocol (same split and settings, save
    where and which scenarios ran) that this call did not measure: a scenario measured in an earlier session, whose
    runs are gone, is not lost when a later one measures the other. A scenario measured now replaces the earlier."""
    def protocol(r: dict) -> tuple:
        return {k: v for k, v in r["settings"].items() if k not in NOT_PROTOCOL}, r.get("split")

    if not earlier or protocol(earlier) != protocol(report):
        return report
    scenarios = {**{k: v for k, v in earlier["scenarios"].items() if k not in report["scenarios"]},
                 **report["scenarios"]}
    order = [k for k in SCENARIOS if k in scenarios]
    return {**report, "scenarios": {k: scenarios[k] for k in order},
            "settings": {**report["settings"], "scenarios": order}}


def main(argv=None) -> int:
    args = parse_args(argv)
    from detkd.bench.machine import machine_info, machine_tag

    args.runs.mkdir(parents=True, exist_ok=True)
    src = args.data.resolve() if args.data else shapes_source(args)
    n_train = len(json.loads((src / "annotations" / "instances_train.json").read_text())["images"])
    n_val = len(json.loads((src / "annotations" / "instances_val.json").read_text())["images"])
    n_lab = round(args.labeled_fraction * n_train) if args.labeled_fraction else args.labeled
    labeled, unlabeled = split_dataset(src, args.runs / "data" / f"split_{n_lab}", n_lab)
    scenarios = {}
    for name in args.scenarios:
        epochs = teacher_epochs(args, name, n_train, n_lab)
        teacher, t_map = train_teacher(args, src if name == "teacher-all" else labeled, name, epochs)
        print(f"[unlabeled_gain] {name}: teacher {teacher} ({epochs} epochs, val mAP50-95 {t_map})", flush=True)
        scenarios[name] = {**summarise(run_scenario(args, name, teacher, labeled, unlabeled)),
                           "teacher_epochs": epochs}
    info = machine_info(args.device)
    report = {"machine": info, "split": {"labeled": n_lab, "unlabeled": n_train - n_lab, "val": n_val},
              "settings": {"dataset": args.tag, **{k: (str(v) if isinstance(v, Path) else v)
                                                   for k, v in vars(args).items()}},
              "scenarios": scenarios}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.out_dir / f"unlabeled_gain_{args.tag}_{machine_tag(info, args.device)}"
    report_json = stem.with_suffix(".json")
    report = merge_earlier(report, json.loads(report_json.read_text()) if report_json.exists() else None)
    report_json.write_text(json.dumps(report, indent=1, default=str))
    stem.with_suffix(".md").write_text(render(report))
    print(render(report))
    print(f"wrote {stem}.json, .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

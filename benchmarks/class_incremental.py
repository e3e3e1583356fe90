#!/usr/bin/env python
"""Learning new classes without forgetting, and a teacher with more classes, measured (issue 28 item 5).

    python benchmarks/class_incremental.py --data ../shared/datasets/deeppcb --tag deeppcb \\
        --old open short mousebite --new spur copper pin-hole --imgsz 192 --old-epochs 24 --epochs 6 \\
        --seeds 0 1 --device cpu --workers 1 --runs runs/class_incremental_deeppcb

From one COCO dataset and a class split (old classes A, new classes B, by name; classes in neither are left out of
everything, val included), the train images are split at random (``--split-seed``) into an old half and a new half:

* ``old``      the old images, labelled for A only (classes A);
* ``new``      the new images, labelled for B only (classes B): the A objects in them are there, unlabelled;
* ``new_all``  the same images and labels with classes A + B (what plain fine-tuning of the old model trains on);
* ``joint``    every train image, labelled for A and B (classes A + B).

Each keeps the full val split, relabelled for its classes. Rows, per seed (every run: the student YAML's
architecture, image size, batch and augmentation; the last epoch's weights, no per-epoch validation):

* ``old``          the old model: the student from its YAML on ``old`` for ``--old-epochs``;
* ``finetune``     the old model of the same seed, its head widened to A + B (the old classes' rows kept, as detkd
                   does), trained on ``new_all`` by Ultralytics alone for ``--epochs``: the forgetting baseline (the
                   unlabelled A objects are background);
* ``new_only``     the student from its YAML on ``new``, ``--epochs``: training on the new data alone;
* ``incremental``  ``detkd distill --teacher old.pt --student old.pt --data new --keep-teacher-classes``,
                   ``--epochs``;
* ``joint``        the widened old model trained on ``joint`` (every image, A + B labels), ``--epochs``: the upper
                   bound of the step (the same start, every label);
* ``superset``     a teacher with more classes: the first seed's ``joint`` model (classes A + B) teaches the student
                   from its YAML on ``old`` (classes A, matched by name; B unused), ``--old-epochs``. Its baseline is
                   the ``old`` row (the same student, data, epochs and seed without a teacher).

Every run is scored once on the val split with COCO AP per class (``detkd eval``'s :func:`evaluate_coco`, on the
derived dataset with the run's own classes), and per class group with :func:`group_ap`: old (A), new (B), all. A
class the model does not predict scores AP 0. The report gives mean ± spread (half the min–max range) over the seeds
and checks the issue's targets: the incremental run keeps old-class AP beyond the seed spread above fine-tuning (its
worst seed above fine-tuning's best), its AP over all classes reaches ``--joint-share`` (0.85) of joint training's,
and in the superset case detkd is never below the baseline (each seed against the same seed).

Runs are recorded in ``<runs>/state.json`` as they finish; a re-run skips them (an interrupted run is resumed from
its ``last.pt``). ``--time-budget S`` starts no run expected to end after S seconds and exits with 3 while runs
remain. ``--variant NAME=JSON`` adds a further ``incremental_NAME`` row on every seed (KDConfig fields on top of
``--kd``; e.g. one documented round of changes after a missed target), run after the protocol and reported beside
it; the targets are checked for it too. Results: ``<out-dir>/class_incremental_<tag>_<machine>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "benchmarks"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))
os.environ.setdefault("YOLO_OFFLINE", "1")

from distill_gain import resume_point  # noqa: E402  (a run cut off by a stopped process is resumed)
from unlabeled_gain import _image_dir, _write_if_changed  # noqa: E402  (COCO folder helpers)

LABELS = {
    "old": "old model (old images, A labels)",
    "finetune": "fine-tuning the old model on the new data",
    "new_only": "training on the new data alone",
    "incremental": "**detkd `--keep-teacher-classes`**",
    "joint": "joint training on all labels (upper bound)",
    "superset": "detkd, teacher with more classes",
}
PROTOCOL_ROWS = ("old", "finetune", "new_only", "incremental", "joint")
FROM_OLD = {"finetune", "incremental", "joint"}  # rows that start from the old model of their seed
FROM_SCRATCH_LONG = {"old", "superset"}  # trained from the YAML for --old-epochs
GROUPS = ("old", "new", "all")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="COCO dataset folder (annotations/instances_{train,val})")
    p.add_argument("--tag", help="dataset name in the file names (default: the folder's name)")
    p.add_argument("--old", nargs="+", required=True, metavar="CLASS", help="the old classes A")
    p.add_argument("--new", nargs="+", required=True, metavar="CLASS", help="the new classes B")
    p.add_argument("--old-fraction", type=float, default=0.5, help="share of the train images in the old half")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the old/new image split")
    p.add_argument("--student", default="yolov8n.yaml", help="every model's architecture")
    p.add_argument("--old-epochs", type=int, default=24, help="epochs of the old model and the superset rows")
    p.add_argument("--epochs", type=int, default=6, help="epochs of the rows on the new data and joint training")
    p.add_argument("--imgsz", type=int, default=192)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--joint-share", type=float, default=0.85,
                   help="target: incremental AP over all classes >= this share of joint training's")
    p.add_argument("--kd", default="{}", help="KDConfig fields (JSON) of the detkd rows; {} = detkd's defaults")
    p.add_argument("--train-args", default="{}", help="JSON of extra Ultralytics training arguments for all runs")
    p.add_argument("--variant", dest="variant_items", action="append", default=[], metavar="NAME=JSON",
                   help="a further detkd incremental row (kind incremental_NAME): KDConfig fields on top of --kd")
    p.add_argument("--only", nargs="+", help="run only these kinds or runs now (old finetune incremental_s1 ...)")
    p.add_argument("--time-budget", type=float, metavar="S",
                   help="start no run expected to finish after S seconds; exit 3 while runs remain")
    p.add_argument("--runs", type=Path, default=Path("runs/class_incremental"))
    p.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)
    args.kd, args.train_args = json.loads(args.kd), json.loads(args.train_args)
    args.runs = args.runs.resolve()  # Ultralytics puts a relative project under its own runs_dir, not here
    args.tag = args.tag or args.data.resolve().name
    args.variants = {}
    for item in args.variant_items:
        name, _, spec = item.partition("=")
        if not name.isidentifier():
            raise SystemExit(f"--variant '{item}': NAME must be an identifier")
        args.variants[name] = json.loads(spec or "{}")
    return args


def is_incremental(kind: str) -> bool:
    """The default incremental row or one of its ``--variant`` rows."""
    return kind == "incremental" or kind.startswith("incremental_")


# ------------------------------------------------------------------------------------------------ data
def split_images(image_ids: list[int], fraction: float, seed: int) -> tuple[set[int], set[int]]:
    """(old, new) image ids: a seeded shuffle of the sorted ids, the first ``round(fraction * n)`` old."""
    ids = sorted(image_ids)
    random.Random(seed).shuffle(ids)
    n_old = round(fraction * len(ids))
    return set(ids[:n_old]), set(ids[n_old:])


def relabel(coco: dict, image_ids: set[int] | None, labelled: list[str], classes: list[str]) -> dict:
    """``coco`` restricted to ``image_ids`` (None: all), keeping only the boxes of the ``labelled`` classes, with the
    categories ``classes`` renumbered 1..n in that order (the model's class order)."""
    old_name = {c["id"]: c["name"] for c in coco["categories"]}
    new_id = {name: i + 1 for i, name in enumerate(classes)}
    keep = set(labelled)
    images = [im for im in coco["images"] if image_ids is None or im["id"] in image_ids]
    kept = {im["id"] for im in images}
    anns = [{**a, "category_id": new_id[old_name[a["category_id"]]]} for a in coco["annotations"]
            if a["image_id"] in kept and old_name.get(a["category_id"]) in keep]
    return {**coco, "images": images, "annotations": anns,
            "categories": [{"id": new_id[n], "name": n, "supercategory": "none"} for n in classes]}


def check_split(coco: dict, old: list[str], new: list[str]) -> None:
    """Refuse, in one line, a class that is not the dataset's or is on both sides."""
    names = [c["name"] for c in coco["categories"]]
    unknown = [c for c in old + new if c not in names]
    both = sorted(set(old) & set(new))
    if unknown or both or not old or not new:
        raise SystemExit(f"class split: {'not classes of the data: ' + ', '.join(unknown) if unknown else ''}"
                         f"{'on both sides: ' + ', '.join(both) if both else ''}"
                         f"{'give --old and --new' if not (old and new) else ''} (classes: {', '.join(names)}).")


def derive_datasets(src: Path, dst: Path, old: list[str], new: list[str], fraction: float, seed: int) -> dict:
    """Write the four relabelled COCO datasets (see the module doc) under ``dst``; return ``{name: folder}`` and the
    split's counts. Image folders are links to ``src``'s. Idempotent."""
    train = json.loads((src / "annotations" / "instances_train.json").read_text())
    val = json.loads((src / "annotations" / "instances_val.json").read_text())
    check_split(train, old, new)
    old_ids, new_ids = split_images([im["id"] for im in train["images"]], fraction, seed)
    both = old + new
    plan = {"old": (old_ids, old, old), "new": (new_ids, new, new), "new_all": (new_ids, new, both),
            "joint": (None, both, both)}
    folders, counts = {}, {}
    for name, (ids, labelled, classes) in plan.items():
        folder = dst / name
        (folder / "annotations").mkdir(parents=True, exist_ok=True)
        parts = {"train": relabel(train, ids, labelled, classes), "val": relabel(val, None, labelled, classes)}
        for split, coco in parts.items():
            _write_if_changed(folder / "annotations" / f"instances_{split}.json", coco)
            link = folder / split
            if not link.exists():
                link.symlink_to(_image_dir(src, split).resolve(), target_is_directory=True)
        folders[name] = folder
        counts[name] = {"train_images": len(parts["train"]["images"]), "train_boxes": instances(parts["train"]),
                        "classes": classes}
    counts["val"] = {"images": len(val["images"]), "boxes": instances(relabel(val, None, both, both))}
    return {"folders": folders, "counts": counts}


def instances(coco: dict) -> dict[str, int]:
    """Boxes per class name."""
    names = {c["id"]: c["name"] for c in coco["categories"]}
    out = dict.fromkeys(names.values(), 0)
    for a in coco["annotations"]:
        out[names[a["category_id"]]] += 1
    return out


# ------------------------------------------------------------------------------------------------ runs
def run_key(kind: str, seed: int) -> str:
    return f"{kind}_s{seed}"


def plan(args, only: bool = True) -> list[tuple[str, int]]:
    """(kind, seed) of every run, seed by seed (a partial protocol is a whole first seed); each seed's old model
    before the rows that start from it, the first seed's ``joint`` (the superset teacher) before ``superset``."""
    runs = []
    for seed in args.seeds:
        runs += [("old", seed), ("finetune", seed), ("incremental", seed), ("new_only", seed), ("joint", seed),
                 ("superset", seed)]
    runs += [(f"incremental_{name}", seed) for name in args.variants for seed in args.seeds]
    if only and args.only:
        runs = [r for r in runs if r[0] in args.only or run_key(*r) in args.only]
    return runs


def epochs_of(kind: str, args) -> int:
    return args.old_epochs if kind in FROM_SCRATCH_LONG else args.epochs


def widened_old_model(old_pt: str, classes: list[str], out: Path) -> str:
    """The old model with its head widened to ``classes`` (the old classes' rows kept exactly, the new ones as the
    architecture initialises them; :func:`detkd.engine.incremental.widen_from`), saved as a checkpoint: where plain
    fine-tuning and joint training start, as the incremental run does."""
    import torch
    from ultralytics.nn.tasks import DetectionModel

    from detkd.engine.incremental import widen_from
    from detkd.models.loading import load_detection_model

    if out.is_file():
        return str(out)
    old = load_detection_model(old_pt, role="teacher")
    net = DetectionModel(dict(old.yaml), nc=len(classes), verbose=False)
    if not widen_from(net, old, len(old.names)):
        raise SystemExit(f"could not widen {old_pt} to {len(classes)} classes")
    net.names = dict(enumerate(classes))
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": net, "train_args": {}, "epoch": -1}, out)
    return str(out)


def train(kind: str, seed: int, args, folders: dict, state: dict) -> dict:
    """Train one run (resumed when cut off) and return its record (weights, wall time)."""
    from detkd.api import distill, train_baseline

    key = run_key(kind, seed)
    common = dict(epochs=epochs_of(kind, args), imgsz=args.imgsz, batch=args.batch, workers=args.workers, device=args.device,
                  seed=seed, plots=False, val=False, project=str(args.runs), name=key, exist_ok=True,
                  **args.train_args)
    resumed = resume_point(args.runs / key)
    if resumed:
        common["resume"] = str(resumed)
        print(f"    resuming {key} from {resumed}", flush=True)
    old_pt = state["runs"].get(run_key("old", seed), {}).get("best")
    teacher_pt = state["runs"].get(run_key("joint", args.seeds[0]), {}).get("best")
    kd = {**args.kd, "validate_teacher": False}
    t0 = time.perf_counter()
    if kind in {"old", "new_only"}:
        run = train_baseline(student=args.student, data=folders["old" if kind == "old" else "new"], **common)
    elif kind in {"finetune", "joint"}:
        start = widened_old_model(old_pt, args.old + args.new, args.runs / f"widened_old_s{seed}.pt")
        run = train_baseline(student=start, data=folders["new_all" if kind == "finetune" else "joint"], **common)
    elif is_incremental(kind):
        kd = {**kd, **args.variants.get(kind.removeprefix("incremental_"), {}), "keep_teacher_classes": True}
        run = distill(teacher=old_pt, student=old_pt, data=folders["new"], kd=kd, **common)
    else:  # superset: the teacher knows A + B, the student's data A
        run = distill(teacher=teacher_pt, student=args.student, data=folders["old"], kd=kd, **common)
    detkd_row = is_incremental(kind) or kind == "superset"
    return {"kind": kind, "seed": seed, "epochs": common["epochs"], "wall_s": time.perf_counter() - t0,
            "kd": {k: v for k, v in kd.items() if k != "validate_teacher"} if detkd_row else None,
            "resumed": bool(resumed), "best": str(run.best), "median_epoch_s": median_epoch_s(run.save_dir)}


def median_epoch_s(run_dir: Path) -> float | None:
    """The median time of one epoch, from the cumulative ``time`` column of the run's results.csv (unlike the wall
    time, not lengthened by a pause of the process on a shared machine)."""
    import csv

    csv_path = Path(run_dir) / "results.csv"
    if not csv_path.is_file():
        return None
    with open(csv_path) as f:
        times = [float(v) for r in csv.DictReader(f) for k, v in r.items() if k.strip() == "time"]
    steps = [b - a for a, b in zip([0.0, *times], times)]
    return statistics.median(steps) if steps else None


def needs(kind: str, seed: int, args, state: dict) -> str | None:
    """The run (kind, seed) must wait for (its seed's old model, the superset teacher), or None."""
    need = run_key("old", seed) if kind in FROM_OLD or is_incremental(kind) else run_key("joint", args.seeds[0]) if kind == "superset" \
        else None
    return need if need and need not in state["runs"] else None


def expected_wall_s(state: dict, kind: str) -> float | None:
    """How long a run of ``kind`` should take: the longest recorded one of that kind, else of any kind."""
    same = [r["wall_s"] for r in state["runs"].values() if r["kind"] == kind]
    every = [r["wall_s"] for r in state["runs"].values()]
    return max(same or every) if (same or every) else None


# ------------------------------------------------------------------------------------------------ scoring
def evaluate(best: str, args, folders: dict, val_boxes: dict, out_dir: Path) -> dict:
    """COCO AP per class of ``best`` on the val split (the derived dataset with the model's classes), the classes it
    does not predict at AP 0, and AP per group (old A, new B, all)."""
    import contextlib
    import io

    from detkd.eval.class_groups import group_ap
    from detkd.eval.coco_eval import evaluate_coco
    from detkd.models.class_map import names_list
    from detkd.models.loading import load_detection_model

    names = names_list(load_detection_model(best, role="model").names)
    data = {tuple(args.old): "old", tuple(args.new): "new", tuple(args.old + args.new): "joint"}[tuple(names)]
    with contextlib.redirect_stdout(io.StringIO()):
        m = evaluate_coco(best, folders[data], split="val", imgsz=args.imgsz, batch=args.batch, device=args.device,
                          out_dir=out_dir, verbose=False)
    every = args.old + args.new
    scored = {c: (m["per_class"].get(c) if c in names else (0.0 if val_boxes.get(c) else None)) for c in every}
    scored50 = {c: (m["per_class_AP50"].get(c) if c in names else (0.0 if val_boxes.get(c) else None))
                for c in every}
    groups = group_ap({"per_class": scored, "per_class_AP50": scored50, "per_class_instances": val_boxes},
                      {"old": args.old, "new": args.new, "all": every})
    return {"classes": names, "eval_data": data, "per_class": scored, "per_class_AP50": scored50,
            "not_predicted": [c for c in every if c not in names],
            "groups": {g: {"AP": v["AP"], "AP50": v["AP50"]} for g, v in groups.items()}}


def stats(values: list[float]) -> dict:
    return {"mean": statistics.mean(values), "spread": (max(values) - min(values)) / 2 if len(values) > 1 else None,
            "runs": values}


def summarise(runs: dict) -> dict:
    """Per kind and group: mean, spread and the per-seed values (in seed order)."""
    out = {}
    variants = sorted({r["kind"] for r in runs.values() if r["kind"].startswith("incremental_")})
    for kind in [*LABELS, *variants]:
        rs = sorted((r for r in runs.values() if r["kind"] == kind and r.get("eval")), key=lambda r: r["seed"])
        if rs:
            epoch_s = [r["median_epoch_s"] for r in rs if r.get("median_epoch_s")]
            out[kind] = {"seeds": [r["seed"] for r in rs], "epochs": rs[0]["epochs"],
                         "wall_s": statistics.mean(r["wall_s"] for r in rs),
                         "median_epoch_s": statistics.mean(epoch_s) if epoch_s else None,
                         **{g: stats([r["eval"]["groups"][g]["AP"] or 0.0 for r in rs]) for g in GROUPS}}
    return out


def targets(summary: dict, joint_share: float, incremental: str = "incremental", n_old: int | None = None,
            n_new: int | None = None) -> dict:
    """The issue's three checks, each with its numbers (None where a row is missing); ``incremental``: the row
    checked (the default, or a ``--variant`` row: then ``variants`` holds each one's first two checks).

    For scale, with the class counts ``n_old`` (A) and ``n_new`` (B): ``no_forgetting_bound``, the AP over all
    classes of a model that kept the old model's A AP and learnt B as well as fine-tuning does,
    (n_old·AP_A(old model) + n_new·AP_B(fine-tuning)) / (n_old + n_new), and its ratio to joint training's."""
    inc, ft, joint = summary.get(incremental), summary.get("finetune"), summary.get("joint")
    sup, base = summary.get("superset"), summary.get("old")
    out = {"keeps_old_classes": None, "reaches_joint_share": None, "superset_never_below_baseline": None,
           "no_forgetting_bound": None}
    if base and ft and joint and n_old and n_new and joint["all"]["mean"]:
        bound = (n_old * base["old"]["mean"] + n_new * ft["new"]["mean"]) / (n_old + n_new)
        out["no_forgetting_bound"] = {"all": bound, "ratio": bound / joint["all"]["mean"]}
    if inc and ft:
        worst, best = min(inc["old"]["runs"]), max(ft["old"]["runs"])
        out["keeps_old_classes"] = {"met": worst > best, "incremental_worst_seed": worst, "finetune_best_seed": best}
    if inc and joint:
        ratio = inc["all"]["mean"] / joint["all"]["mean"] if joint["all"]["mean"] else None
        out["reaches_joint_share"] = {"met": ratio is not None and ratio >= joint_share, "ratio": ratio,
                                      "target": joint_share, "incremental": inc["all"]["mean"],
                                      "joint": joint["all"]["mean"]}
    if sup and base:
        paired = {s: (d, b) for s, d in zip(sup["seeds"], sup["old"]["runs"])
                  for sb, b in zip(base["seeds"], base["old"]["runs"]) if s == sb}
        out["superset_never_below_baseline"] = {"met": bool(paired) and all(d >= b for d, b in paired.values()),
                                                "per_seed": {str(s): {"detkd": d, "baseline": b}
                                                             for s, (d, b) in paired.items()},
                                                "delta_mean": sup["old"]["mean"] - base["old"]["mean"]}
    if incremental == "incremental":
        out["variants"] = {k.removeprefix("incremental_"): {n: v for n, v in targets(summary, joint_share, k).items()
                                                            if n in ("keeps_old_classes", "reaches_joint_share")}
                           for k in summary if k.startswith("incremental_")}
    return out


# ------------------------------------------------------------------------------------------------ report
def _cell(s: dict | None) -> str:
    if not s:
        return "—"
    spread = f" ± {s['spread']:.3f}" if s["spread"] is not None else ""
    return f"{s['mean']:.3f}{spread}"


def _per_seed(s: dict) -> str:
    return " / ".join(f"{v:.3f}" for v in s["runs"])


def _verdict(t: dict | None) -> str:
    return "not measured yet" if t is None else ("**met**" if t["met"] else "**not met**")


def render(result: dict) -> str:
    from detkd.bench.report import machine_line

    s, split, summary, t = result["settings"], result["split"], result["summary"], result["targets"]
    c = split["counts"]
    dropped = split.get("dropped") or []
    first = s["seeds"][0]
    lines = [f"# Learning new classes without forgetting — {s['dataset']}", "",
             f"Machine: {machine_line(result['machine'])}.", "",
             f"Data: {s['data']}. Old classes A: {', '.join(s['old'])}; new classes B: {', '.join(s['new'])}"
             + (f"; left out: {', '.join(dropped)}" if dropped else "") + ". "
             f"Train images split at random (seed {s['split_seed']}): old {c['old']['train_images']} images "
             f"(A boxes: {_boxes(c['old']['train_boxes'])}), new {c['new']['train_images']} images (B boxes: "
             f"{_boxes(c['new']['train_boxes'])}; their A objects unlabelled); val {c['val']['images']} images "
             f"({_boxes(c['val']['boxes'])}). Every run: {s['student']}, {s['imgsz']} px, batch {s['batch']}"
             f"{', Ultralytics arguments ' + json.dumps(s['train_args']) if s['train_args'] else ''}, seeds "
             f"{', '.join(map(str, s['seeds']))}, the last epoch's weights. Each seed has its own old model "
             f"({s['old_epochs']} epochs from the YAML); fine-tuning, detkd and joint training start from it (head "
             f"widened to A + B, the old rows kept) for {s['epochs']} epochs; joint training sees every train image "
             f"with A and B labels. detkd rows: detkd's default recipe"
             f"{' + ' + json.dumps(s['kd']) if s['kd'] else ''}. COCO AP@[.50:.95] on val per class, averaged per "
             f"group; a class a model does not predict scores 0; mean ± spread (half the min–max range) over the "
             f"seeds; epoch s: the median epoch's time (mean over the seeds; a rough guide: other jobs shared the "
             f"machine).", "",
             "## New classes on top of an old model", "",
             "| row | epochs | seeds | old classes A | new classes B | all classes | all, per seed | epoch s |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    variants = [k for k in summary if k.startswith("incremental_")]
    for kind in [*PROTOCOL_ROWS[:4], *variants, PROTOCOL_ROWS[4]]:
        a = summary.get(kind)
        if a:
            lines.append(f"| {row_label(kind, result['runs'])} | {a['epochs']} | {', '.join(map(str, a['seeds']))} | {_cell(a['old'])} "
                         f"| {_cell(a['new'])} | {_cell(a['all'])} | {_per_seed(a['all'])} | {_epoch_s(a)} |")
    lines += ["", "Targets (detkd's default recipe):", "", *_target_lines(t, s["joint_share"])]
    bound = t.get("no_forgetting_bound")
    if bound:
        lines += ["", f"For scale: a model that forgot nothing (the old model's AP on A) and learnt B as well as "
                      f"fine-tuning does would score {bound['all']:.3f} over all classes = {bound['ratio']:.2f}× "
                      f"joint training's (joint training also has labels for the A objects of the new images)."]
    for name, vt in t.get("variants", {}).items():
        lines += ["", f"The same targets for {row_label('incremental_' + name, result['runs'])}:", "",
                  *_target_lines(vt, s["joint_share"])]
    lines += ["", "## A teacher with more classes", "",
              f"Teacher: the joint model of seed {first} (classes A + B; the row above). Student: {s['student']} from "
              f"its YAML on the old images labelled for A only (classes A; the teacher's B classes unused), "
              f"{s['old_epochs']} epochs. The baseline is the old model row above (the same student, data, epochs "
              f"and seeds without a teacher). AP over A.", "",
              "| row | seeds | AP (A) | per seed | Δ vs baseline | epoch s |", "|---|---|---:|---:|---:|---:|"]
    teacher = result["runs"].get(f"joint_s{first}", {}).get("eval")
    if teacher:
        lines.append(f"| teacher (joint training, seed {first}) | {first} | {teacher['groups']['old']['AP']:.3f} "
                     f"| | | |")
    base = summary.get("old")
    for kind, label in (("old", "baseline (student alone: the old model)"), ("superset", LABELS["superset"])):
        a = summary.get(kind)
        if a:
            delta = f"{a['old']['mean'] - base['old']['mean']:+.3f}" if kind != "old" else ""
            lines.append(f"| {label} | {', '.join(map(str, a['seeds']))} | {_cell(a['old'])} | {_per_seed(a['old'])} "
                         f"| {delta} | {_epoch_s(a)} |")
    sup = t["superset_never_below_baseline"]
    lines += ["", f"Target: detkd never below the baseline (each seed against the same seed): {_verdict(sup)}."]
    if result.get("pending"):
        lines += ["", f"**Not run yet:** {', '.join(result['pending'])}."]
    return "\n".join(lines) + "\n"


def row_label(kind: str, runs: dict) -> str:
    """The row's name; a ``--variant`` row named by the KD settings it ran with."""
    if not kind.startswith("incremental_"):
        return LABELS[kind]
    kd = next((r.get("kd") or {} for r in runs.values() if r["kind"] == kind), {})
    changed = ", ".join(f"{k}={v}" for k, v in kd.items() if k != "keep_teacher_classes")
    return f"detkd `--keep-teacher-classes`, {changed or 'as the default'} (`{kind}`)"


def _target_lines(t: dict, joint_share: float) -> list[str]:
    keep, share = t["keeps_old_classes"], t["reaches_joint_share"]
    return [f"- detkd keeps old-class AP beyond the seed spread above fine-tuning: {_verdict(keep)}"
            + (f" (worst detkd seed {keep['incremental_worst_seed']:.3f}, best fine-tuning seed "
               f"{keep['finetune_best_seed']:.3f})." if keep else "."),
            f"- detkd's AP over all classes reaches {joint_share:.2f}× joint training's: {_verdict(share)}"
            + (f" ({share['incremental']:.3f} / {share['joint']:.3f} = {share['ratio']:.4f}×)."
               if share and share["ratio"] is not None else ".")]


def _epoch_s(a: dict) -> str:
    return f"{a['median_epoch_s']:.1f}" if a.get("median_epoch_s") else ""


def _boxes(counts: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items())


# ------------------------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    args = parse_args(argv)
    from detkd.bench.machine import machine_info, machine_tag
    from detkd.bench.report import write_json_and_markdown

    args.runs.mkdir(parents=True, exist_ok=True)
    split = derive_datasets(args.data.resolve(), args.runs / "data", args.old, args.new, args.old_fraction,
                            args.split_seed)
    folders = split.pop("folders")
    source = json.loads((args.data / "annotations" / "instances_train.json").read_text())
    split["dropped"] = [c["name"] for c in source["categories"] if c["name"] not in args.old + args.new]
    val_boxes = split["counts"]["val"]["boxes"]
    state_file = args.runs / "state.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {"runs": {}}

    todo, t_start = plan(args), time.perf_counter()
    for i, (kind, seed) in enumerate(todo):
        key = run_key(kind, seed)
        if key in state["runs"]:
            print(f"[{i + 1}/{len(todo)}] {key}: done before, reused", flush=True)
            continue
        wait = needs(kind, seed, args, state)
        if wait:
            raise SystemExit(f"{key} needs {wait} first (--only {wait})")
        expected = expected_wall_s(state, kind)
        if args.time_budget and expected and time.perf_counter() - t_start + expected > args.time_budget:
            print(f"[{i + 1}/{len(todo)}] {key}: not started, expected {expected:.0f} s would pass the "
                  f"{args.time_budget:.0f} s time budget", flush=True)
            break
        print(f"[{i + 1}/{len(todo)}] {key} ...", flush=True)
        record = train(kind, seed, args, folders, state)
        record["eval"] = evaluate(record["best"], args, folders, val_boxes, args.runs / key / "eval")
        g = record["eval"]["groups"]
        print(f"[{i + 1}/{len(todo)}] {key}: AP old {g['old']['AP']:.3f}  new {g['new']['AP']:.3f}  all "
              f"{g['all']['AP']:.3f}  ({record['wall_s']:.0f} s)", flush=True)
        state = json.loads(state_file.read_text()) if state_file.exists() else {"runs": {}}
        state["runs"][key] = record
        state["machine"] = machine_info(args.device)
        state_file.write_text(json.dumps(state, indent=1))

    pending = [run_key(*r) for r in plan(args, only=False) if run_key(*r) not in state["runs"]]
    left_now = [run_key(*r) for r in todo if run_key(*r) not in state["runs"]]
    for key, record in state["runs"].items():  # records from before the epoch times were kept
        record.setdefault("median_epoch_s", median_epoch_s(args.runs / key))
    summary = summarise(state["runs"])
    machine = state.get("machine") or machine_info(args.device)
    settings = {"dataset": args.tag, "data": os.path.relpath(args.data.resolve(), ROOT), "old": args.old, "new": args.new,
                "old_fraction": args.old_fraction, "split_seed": args.split_seed, "student": args.student,
                "old_epochs": args.old_epochs, "epochs": args.epochs, "imgsz": args.imgsz, "batch": args.batch,
                "workers": args.workers, "device": args.device, "seeds": args.seeds, "joint_share": args.joint_share, "kd": args.kd,
                "train_args": args.train_args, "variants": args.variants}
    result = {"machine": machine, "settings": settings, "split": split, "summary": summary,
              "targets": targets(summary, args.joint_share, n_old=len(args.old), n_new=len(args.new)), "runs": state["runs"], "pending": pending}
    write_json_and_markdown(args.out_dir / f"class_incremental_{args.tag}_{machine_tag(machine, args.device)}",
                            result, render(result))
    if left_now:
        print(f"{len(left_now)} run(s) still to do ({' '.join(left_now)}): run the same command again to go on.")
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())

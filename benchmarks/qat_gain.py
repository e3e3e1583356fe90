"""Where does post-training INT8 lose accuracy, and does quantization-aware distillation win it back? (issue 29 item 5)

    python benchmarks/qat_gain.py --students yolov8n.yaml yolo26n.yaml --seeds 0 1 --imgsz 64 --device cpu

The setting is the one where INT8 has the least room: nano students at 64 px on few images (``detkd demo``'s
generated shapes: a YOLOv8-s teacher trained on 600 images, the students on 100 of them). For each student and seed:

* **FP32** — the student trained from its YAML (``--epochs``), scored in torch FP32 (the reference) and as an
  OpenVINO FP32 IR run in FP32 (the FP32 twin ``detkd export --int8`` compares INT8 with);
* **PTQ** — that ``best.pt`` to OpenVINO INT8 with detkd's INT8 export (:func:`detkd.export.int8.export_calibrated`:
  NNCF post-training quantization calibrated on every training image), what ``detkd export --int8`` writes; and
  calibrated on only ``--few-calib`` images (8: few images to calibrate on);

then three fine-tunings of that ``best.pt`` with the same budget (``--ft-epochs``, ``--ft-lr``, no mosaic, no
warm-up) and seed:

* **FT + PTQ** — fine-tuned in FP32 without a teacher, then PTQ as above: the control (more training alone);
* **QAT** — fine-tuned fake-quantized (Ultralytics' ``quantize=8``) without a teacher, exported to OpenVINO INT8
  with its learnt ranges (:func:`detkd.engine.qat.export_qat_int8`, what ``detkd export --int8`` does for it);
* **QAT + KD** — the same with detkd's distillation from the FP32 teacher (``detkd distill --qat``; the demo's
  recipe, teacher in FP32).

Every INT8 artefact runs in OpenVINO's default precision on this CPU (int8, other layers BF16 where the CPU has BF16
units) and is scored with COCO AP on the 150 val images (``detkd eval``'s path). ``ΔAP`` is against the same seed's
torch FP32 student; what PTQ itself costs is INT8 against the same weights in OpenVINO FP32 (the backend cancels
out); the seed spread is half the range of the torch FP32 AP over seeds. State (trained runs, scores) lives
in ``<runs>/state.json``: a re-run reuses what is done. Results: ``<out-dir>/qat_gain_shapes<imgsz>_<machine>.json``
and ``.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ARMS = ("fp32", "ptq", "ft_ptq", "qat", "qat_kd")
LABELS = {"fp32": "FP32 student (torch)", "fp32_ov": "FP32 student (OpenVINO FP32)",
          "ptq": "PTQ (OpenVINO INT8, NNCF)", "ft_fp32": "FT FP32 (torch)", "ft_fp32_ov": "FT FP32 (OpenVINO FP32)",
          "ft_ptq": "FT FP32 + PTQ", "qat": "QAT (no teacher)", "qat_kd": "QAT + KD"}


# ------------------------------------------------------------------------------------------- state
STATE_SECTIONS = ("runs", "scores")


def load_state(path: Path) -> dict:
    from detkd.bench.state import load_state as load

    return load(path, STATE_SECTIONS)


def save_state(path: Path, update) -> dict:
    """Re-read, apply ``update(state)``, write (another process may have recorded rows meanwhile)."""
    from detkd.bench.state import save_state as save

    return save(path, update, STATE_SECTIONS)


# ------------------------------------------------------------------------------------------- data, training
def demo_data(root: Path, n_student: int) -> tuple[str, str]:
    """(teacher data.yaml, student data.yaml): ``detkd demo``'s generated shapes and its first ``n_student`` images."""
    from detkd.api import resolve_data
    from detkd.data.synthetic import make_shapes_dataset
    from detkd.demo import DemoSettings, demo_spec, train_subset

    spec = demo_spec(DemoSettings())
    teacher_root = make_shapes_dataset(root / "teacher", spec)
    return resolve_data(teacher_root), resolve_data(train_subset(teacher_root, root / "student", n_student))


def train(key: str, args, state_file: Path, **kw) -> dict:
    """Train one run (once: a finished run is reused from the state); its summary."""
    from detkd.api import distill, train_baseline

    done = load_state(state_file)["runs"].get(key)
    if done:
        return done
    folder = args.runs / key
    shutil.rmtree(folder, ignore_errors=True)  # a run cut off before: start it again (Ultralytics would append)
    common = dict(imgsz=args.imgsz, batch=args.batch, device=args.device, workers=args.workers, plots=False,
                  project=str(args.runs), name=key, exist_ok=True)
    print(f"training {key} ...", flush=True)
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        run = distill(**common, **kw) if "teacher" in kw else train_baseline(**common, **kw)
    summary = {"best": str(run.best), "wall_s": time.perf_counter() - t0, "val_mAP50-95": run.metrics.get("mAP50-95"),
               "settings": {k: v for k, v in kw.items() if k not in {"student", "data", "teacher"}}}
    save_state(state_file, lambda st: st["runs"].__setitem__(key, summary))
    return summary


def fine_tune_args(args, seed: int) -> dict:
    """The one budget every fine-tuning gets: ``--ft-epochs`` at ``--ft-lr`` (AdamW), no warm-up, no mosaic."""
    return dict(epochs=args.ft_epochs, seed=seed, optimizer="AdamW", lr0=args.ft_lr, warmup_epochs=0, mosaic=0.0)


# ------------------------------------------------------------------------------------------- exporting, scoring
def int8_artefact(best: str, data_yaml: str, folder: Path, args, seed: int, calib_images: int | None = None) -> str:
    """OpenVINO INT8 of ``best`` as ``detkd export --int8`` writes it: NNCF calibrated on the training images for a
    float student, the learnt ranges for a QAT one."""
    from detkd.export.int8 import _quiet_quantizers, export_calibrated
    from detkd.export.student import load_student

    folder.mkdir(parents=True, exist_ok=True)
    done = folder / "best_int8_openvino_model"
    if done.exists():
        return str(done)
    net = load_student(best)[0]
    with _quiet_quantizers(False):
        path, _ = export_calibrated(net, "openvino", data_yaml, folder, "best", imgsz=args.imgsz,
                                    calib_images=calib_images or args.calib_images, calib_seed=seed)
    return str(path)


def fp32_artefact(best: str, folder: Path, args) -> str:
    """The OpenVINO FP32 IR of a float student (the FP32 twin ``detkd export --int8`` scores INT8 against)."""
    from detkd.export.exporter import export_loaded
    from detkd.export.int8 import _quiet_quantizers
    from detkd.export.student import load_student

    done = folder / "best_openvino_model"
    if done.exists():
        return str(done)
    with _quiet_quantizers(False):
        return str(export_loaded(load_student(best)[0], "openvino", folder, "best", imgsz=args.imgsz))


def score(key: str, path: str, data_yaml: str, args, state_file: Path, precision: str | None = None) -> dict:
    """COCO AP of an artefact on the val split (detkd eval's path; OpenVINO in ``precision``, None: its default),
    once."""
    from detkd.bench.speed import quiet_ultralytics
    from detkd.eval.coco_eval import evaluate_coco

    done = load_state(state_file)["scores"].get(key)
    if done:
        return done
    with quiet_ultralytics(), contextlib.redirect_stdout(io.StringIO()):
        m = evaluate_coco(path, data_yaml, split="val", imgsz=args.imgsz, batch=1, device="cpu",
                          out_dir=args.runs / "eval" / key, verbose=False, precision=precision)
    s = {"AP": float(m["AP"]), "AP50": float(m["AP50"]), "precision_ran": m.get("precision"), "path": path}
    print(f"  {key}: AP {s['AP']:.4f} ({s['precision_ran'] or 'torch'})", flush=True)
    save_state(state_file, lambda st: st["scores"].__setitem__(key, s))
    return s


def run_student(student: str, seed: int, teacher: str, data_s: str, args, state_file: Path) -> None:
    """Every arm of one student and seed (see the module doc); the probe stage stops after PTQ."""
    from detkd.demo import DEMO_KD

    tag = f"{Path(student).stem}_s{seed}"
    base = train(f"{tag}_fp32", args, state_file, student=student, data=data_s, epochs=args.epochs, seed=seed)
    score(f"{tag}_fp32", base["best"], data_s, args, state_file)
    score(f"{tag}_fp32_ov", fp32_artefact(base["best"], args.runs / "export" / f"{tag}_ptq", args), data_s, args,
          state_file, precision="fp32")
    score(f"{tag}_ptq", int8_artefact(base["best"], data_s, args.runs / "export" / f"{tag}_ptq", args, seed), data_s,
          args, state_file)
    for n in args.few_calib:  # PTQ calibrated on only n training images
        score(f"{tag}_ptq_c{n}", int8_artefact(base["best"], data_s, args.runs / "export" / f"{tag}_ptq_c{n}", args,
                                               seed, calib_images=n), data_s, args, state_file)
    if args.stage == "probe":
        return
    ft = fine_tune_args(args, seed)
    runs = {
        "ft_ptq": train(f"{tag}_ft", args, state_file, student=base["best"], data=data_s, **ft),
        "qat": train(f"{tag}_qat", args, state_file, student=base["best"], data=data_s, quantize=8, **ft),
        "qat_kd": train(f"{tag}_qat_kd", args, state_file, student=base["best"], data=data_s, quantize=8,
                        teacher=teacher, kd={**DEMO_KD, "teacher_half": False}, **ft),
    }
    for arm, run in runs.items():
        score(f"{tag}_{arm}", int8_artefact(run["best"], data_s, args.runs / "export" / f"{tag}_{arm}", args, seed),
              data_s, args, state_file)
    score(f"{tag}_ft_fp32", runs["ft_ptq"]["best"], data_s, args, state_file)
    score(f"{tag}_ft_fp32_ov", fp32_artefact(runs["ft_ptq"]["best"], args.runs / "export" / f"{tag}_ft_ptq", args),
          data_s, args, state_file, precision="fp32")


# ------------------------------------------------------------------------------------------- report
def label_of(arm: str) -> str:
    return LABELS.get(arm) or f"PTQ, {arm.split('_c')[1]} calibration images"


def aggregate(state: dict, students: list[str], seeds: list[int]) -> list[dict]:
    """One entry per student: per arm the AP and ΔAP (vs the seed's FP32) of each seed, their mean, the spread."""
    entries = []
    for student in students:
        stem = Path(student).stem
        scores = state["scores"]
        fp32 = {s: scores.get(f"{stem}_s{s}_fp32", {}).get("AP") for s in seeds}
        if any(v is None for v in fp32.values()):
            continue
        arms = {}
        few = sorted({k.split("_ptq_c")[1] for k in scores if k.startswith(f"{stem}_s") and "_ptq_c" in k}, key=int)
        for arm in (*ARMS, "fp32_ov", "ft_fp32", "ft_fp32_ov", *(f"ptq_c{n}" for n in few)):
            ap = {s: scores.get(f"{stem}_s{s}_{arm}", {}).get("AP") for s in seeds}
            if any(v is None for v in ap.values()):
                continue
            delta = {s: ap[s] - fp32[s] for s in seeds}
            arms[arm] = {"AP": ap, "delta": delta, "mean_AP": statistics.mean(ap.values()),
                         "mean_delta": statistics.mean(delta.values()),
                         "ran": {s: scores[f"{stem}_s{s}_{arm}"].get("precision_ran") for s in seeds}}
        spread = (max(fp32.values()) - min(fp32.values())) / 2 if len(seeds) > 1 else None
        ptq = {}  # INT8 against the same weights in OpenVINO FP32: what PTQ itself costs (the backend cancels out)
        for arm, ref in (("ptq", "fp32_ov"), *((f"ptq_c{n}", "fp32_ov") for n in few), ("ft_ptq", "ft_fp32_ov")):
            if arm in arms and ref in arms:
                ptq[arm] = {s: arms[arm]["AP"][s] - arms[ref]["AP"][s] for s in seeds}
        ptq_mean = statistics.mean(ptq["ptq"].values()) if "ptq" in ptq else arms["ptq"]["mean_delta"]
        entries.append({"student": student, "seeds": seeds, "fp32_spread": spread, "arms": arms,
                        "ptq_vs_openvino_fp32": ptq, "ptq_drop": ptq_mean,
                        "ptq_beyond_spread": spread is not None and -ptq_mean > spread,
                        "train_s": {k: v["wall_s"] for k, v in state["runs"].items() if k.startswith(stem)}})
    return entries


def render(result: dict) -> str:
    from detkd.bench.report import machine_line

    s = result["settings"]
    lines = ["# Quantization-aware distillation — PTQ vs QAT vs QAT + KD (OpenVINO INT8)", "",
             f"Machine: {machine_line(result['machine'])}.", "",
             f"Data: detkd demo's generated shapes (64 px images), trained and scored at {s['imgsz']} px (3 "
             f"classes; teacher {s['teacher']} trained {s['teacher_epochs']} epochs on {s['n_teacher']} images, "
             f"val mAP50-95 {s['teacher_map']:.3f}; students on {s['n_student']} of them, 150 val images). "
             f"Students trained {s['epochs']} epochs from their YAML (batch {s['batch']}); fine-tunings (FT, QAT, "
             f"QAT + KD) {s['ft_epochs']} epochs from that best.pt, "
             f"AdamW lr0 {s['ft_lr']:g}, no warm-up, no mosaic, same seed. INT8: OpenVINO IR, NNCF calibrated on "
             f"{s['calib_images']} training images for float students, the learnt ranges for QAT ones; run in "
             f"OpenVINO's default precision (int8, the rest BF16 on this CPU). COCO AP@[.50:.95] on the val split; "
             f"ΔAP against the same seed's torch FP32 student. Seed spread: half the range of FP32 AP over seeds.",
             ""]
    for e in result["entries"]:
        seeds = e["seeds"]
        lines += [f"## {e['student']}", "",
                  "| variant | " + " | ".join(f"AP seed {x}" for x in seeds) + " | mean AP | "
                  + " | ".join(f"ΔAP seed {x}" for x in seeds) + " | mean ΔAP |",
                  "|---|" + "---:|" * (2 * len(seeds) + 2)]
        for arm in ("fp32", "fp32_ov", "ptq", *(a for a in e["arms"] if "_c" in a), "ft_fp32", "ft_fp32_ov",
                    "ft_ptq", "qat", "qat_kd"):
            a = e["arms"].get(arm)
            if not a:
                continue
            label = label_of(arm)
            lines.append(f"| {label} | " + " | ".join(f"{a['AP'][x]:.4f}" for x in seeds)
                         + f" | {a['mean_AP']:.4f} | " + " | ".join(f"{a['delta'][x]:+.4f}" for x in seeds)
                         + f" | {a['mean_delta']:+.4f} |")
        spread, drops = e["fp32_spread"], e["ptq_vs_openvino_fp32"]
        per_seed = "; ".join(f"{label_of(arm)}: " + ", ".join(f"{d[x]:+.4f}" for x in seeds)
                             for arm, d in drops.items())
        verdict = (f"INT8 against the same weights in OpenVINO FP32 (what PTQ itself costs), per seed — {per_seed}. "
                   f"PTQ's mean {e['ptq_drop']:+.4f} is {'beyond' if e['ptq_beyond_spread'] else 'within'} the "
                   f"seed spread of the FP32 students (±{spread:.4f})." if spread is not None and drops else
                   f"PTQ ΔAP {e['ptq_drop']:+.4f}.")
        lines += ["", verdict, ""]
    lines += result.get("notes", [])
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None) -> int:
    from detkd.bench.machine import machine_info, machine_tag
    from detkd.bench.report import write_json_and_markdown
    from detkd.demo import DemoSettings

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--students", nargs="+", default=["yolov8n.yaml", "yolo26n.yaml"])
    p.add_argument("--teacher", default="yolov8s.yaml")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--imgsz", type=int, default=64)
    p.add_argument("--n-student", type=int, default=100)
    p.add_argument("--teacher-epochs", type=int, default=12)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--ft-epochs", type=int, default=10)
    p.add_argument("--ft-lr", type=float, default=2e-4)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--calib-images", type=int, default=100)
    p.add_argument("--few-calib", type=int, nargs="*", default=[8],
                   help="also PTQ calibrated on only this many training images (one row each)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--stage", choices=("probe", "all", "report"), default="all",
                   help="probe: FP32 and PTQ only (where does PTQ lose?); all: every arm; report: write results")
    p.add_argument("--runs", type=Path, default=Path("runs/qat_gain"))
    p.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--note", action="append", default=[], help="a line added under the tables")
    args = p.parse_args(argv)
    args.runs = args.runs.resolve()
    args.runs.mkdir(parents=True, exist_ok=True)
    state_file = args.runs / "state.json"

    data_t, data_s = demo_data(args.runs / "data", args.n_student)
    if args.stage != "report":
        teacher = train("teacher", args, state_file, student=args.teacher, data=data_t, epochs=args.teacher_epochs,
                        seed=0, close_mosaic=max(1, args.teacher_epochs // 3), warmup_epochs=1)
        for student in args.students:
            for seed in args.seeds:
                run_student(student, seed, teacher["best"], data_s, args, state_file)
    state = load_state(state_file)
    info = machine_info("cpu")
    demo = DemoSettings()
    result = {"machine": info, "notes": args.note,
              "settings": {"data": "generated shapes (detkd demo)", "imgsz": args.imgsz, "teacher": args.teacher,
                           "teacher_epochs": args.teacher_epochs,
                           "teacher_map": state["runs"]["teacher"]["val_mAP50-95"], "n_teacher": demo.n_teacher,
                           "n_student": args.n_student, "epochs": args.epochs, "ft_epochs": args.ft_epochs,
                           "ft_lr": args.ft_lr, "batch": args.batch, "calib_images": args.calib_images,
                           "seeds": args.seeds, "students": args.students},
              "entries": aggregate(state, args.students, args.seeds)}
    if result["entries"]:
        write_json_and_markdown(args.out_dir / f"qat_gain_shapes{args.imgsz}_{machine_tag(info, 'cpu')}", result,
                                render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Which deployment of a nano student is fastest on this CPU, and what does it cost in accuracy? (issue 29 item 6)

    python benchmarks/deploy_gain.py --dataset raccoon ../shared/datasets/raccoon 160 40 \\
        --dataset deeppcb ../shared/datasets/deeppcb 256 25 --students yolov8n.yaml yolo26n.yaml \\
        --seed 0 --batch 16 --device cpu --workers 0

For each (dataset, student) the student is trained once from its YAML (the ``baseline`` run of
``benchmarks/distill_gain.py``, same helpers, resumable), then exported with detkd's own functions and measured:

* **torch FP32** — the trained ``best.pt`` (the reference row);
* **ONNX Runtime FP32 / INT8** — :func:`detkd.export.exporter.export_loaded` / :func:`detkd.export.int8.export_calibrated`
  (the INT8 export ``detkd export --int8`` does: Ultralytics' static Q/DQ quantization, calibrated on
  ``--calib-images`` training images drawn with ``--seed``);
* **OpenVINO FP32 / INT8** — the same, OpenVINO IR and NNCF. The FP32 IR is measured twice: forced to FP32
  (``INFERENCE_PRECISION_HINT f32``) and in OpenVINO's default for this CPU (BF16 on CPUs with BF16 units); each row
  names the precision that really ran (read back from the compiled model).

Accuracy: COCO AP@[.50:.95] of each artefact on the val split with the dataset's own category ids
(:func:`detkd.eval.coco_eval.evaluate_coco`, ``detkd eval``'s path), at the training size. Speed: model-only batch-1
p50 latency on the CPU, as ``detkd bench`` times it (:func:`detkd.bench.speed.benchmark_model`; the OpenVINO default
row with :func:`detkd.export.int8.time_artefact`, which leaves OpenVINO's precision alone), at the training size and
at ``--bench-imgsz`` (640). Exports are static, so the 640 px rows time a second export of the same weights at 640 px
(INT8 calibrated on ``--calib-images-640`` images: those files are only timed, never scored).

Timing waits for an idle CPU (1-minute load average below ``--max-load``, up to ``--wait-idle`` seconds) and records
the load before and after. State (trained runs, measured rows) lives in ``<runs>/state.json``: a re-run reuses every
finished run and row. Results: ``<out-dir>/deploy_gain_<machine>.json`` and ``.md``, one table per dataset x student
and a line naming the fastest deployment within ``--max-drop`` AP of torch FP32, checked against the issue's target
(>= 2x torch FP32 with ΔAP >= -0.005).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from distill_gain import read_curve, resume_point, train_run  # noqa: E402,F401  (shared run/state helpers)

# (row key, backend label, precision asked, export format or None for the .pt, OpenVINO precision hint)
VARIANTS = (
    ("torch_fp32", "torch", "fp32", None, None),
    ("onnx_fp32", "ONNX Runtime", "fp32", "onnx", None),
    ("onnx_int8", "ONNX Runtime", "int8", "onnx", None),
    ("openvino_fp32", "OpenVINO", "fp32 (forced)", "openvino", "fp32"),
    ("openvino_default", "OpenVINO", "fp32 IR, default", "openvino", None),
    ("openvino_int8", "OpenVINO", "int8", "openvino", None),
)
TARGET_SPEEDUP, TARGET_DROP = 2.0, 0.005


# ------------------------------------------------------------------------------------------- state
STATE_SECTIONS = ("runs", "measured")


def load_state(path: Path) -> dict:
    from detkd.bench.state import load_state as load

    return load(path, STATE_SECTIONS)


def save_state(path: Path, update) -> dict:
    """Re-read, apply ``update(state)``, write (another process may have recorded rows meanwhile)."""
    from detkd.bench.state import save_state as save

    return save(path, update, STATE_SECTIONS)


def run_name(tag: str, student: str) -> str:
    return f"{tag}_{Path(student).stem}"


# ------------------------------------------------------------------------------------------- training
def train_student(ds: dict, student: str, args, data_yaml: str) -> dict:
    """distill_gain's baseline run of ``student`` on ``ds`` (resumed when cut off)."""
    run_args = SimpleNamespace(student=student, teacher_cfg=None, teacher2_cfg=None, assistant=None,
                               teacher_epochs=ds["epochs"], epochs=ds["epochs"], imgsz=ds["imgsz"], batch=args.batch,
                               device=args.device, workers=args.workers, runs=args.runs, train_args={}, kd={},
                               variants={})
    return train_run("baseline", run_args, data_yaml, args.seed, None, run_name(ds["tag"], student))


# ------------------------------------------------------------------------------------------- exporting
def export_variant(net, fmt: str, precision: str, data_yaml: str, folder: Path, imgsz: int, calib_images: int,
                   seed: int) -> tuple[str, dict | None]:
    """The artefact of one variant at ``imgsz`` (reused when already in ``folder``) and its calibration."""
    from detkd.export.exporter import export_loaded
    from detkd.export.int8 import _quiet_quantizers, export_calibrated

    stem = f"best_{imgsz}"
    name = {("onnx", "fp32"): f"{stem}.onnx", ("onnx", "int8"): f"{stem}_int8.onnx",
            ("openvino", "fp32"): f"{stem}_openvino_model", ("openvino", "int8"): f"{stem}_int8_openvino_model"}
    key = "int8" if precision == "int8" else "fp32"
    path, record = folder / name[(fmt, key)], folder / f"{name[(fmt, key)]}.calibration.json"
    if path.exists():
        return str(path), json.loads(record.read_text()) if record.exists() else None
    if key == "int8":
        built, calibration = export_calibrated(net, fmt, data_yaml, folder, stem, imgsz=imgsz,
                                               calib_images=calib_images, calib_seed=seed)
        record.write_text(json.dumps(calibration, default=str))
        return str(built), calibration
    with _quiet_quantizers(False):
        return str(export_loaded(net, fmt, folder, stem, imgsz=imgsz)), None


# ------------------------------------------------------------------------------------------- measuring
def score(path: str, data_yaml: str, imgsz: int, precision: str | None, out_dir: Path) -> dict:
    """COCO AP of an artefact on the val split (detkd eval's path; OpenVINO in ``precision``, None = its default)."""
    from detkd.bench.speed import quiet_ultralytics
    from detkd.eval.coco_eval import evaluate_coco

    with quiet_ultralytics(), contextlib.redirect_stdout(io.StringIO()):
        m = evaluate_coco(path, data_yaml, split="val", imgsz=imgsz, batch=1, device="cpu", out_dir=out_dir,
                          verbose=False, precision=precision)
    return {"AP": float(m["AP"]), "AP50": float(m["AP50"]), "precision_ran": m.get("precision"),
            "precision_detail": m.get("precision_detail")}


def time_variant(key: str, path: str, imgsz: int, hint: str | None, args) -> dict:
    """Model-only batch-1 CPU latency of one artefact at ``imgsz``, as detkd bench times it."""
    from detkd.bench.speed import benchmark_model
    from detkd.export.int8 import time_artefact

    if key == "openvino_default":  # OpenVINO's own precision choice: time_artefact sets no hint
        t = time_artefact(path, imgsz, warmup=args.warmup, iters=args.iters, time_budget=args.time_budget)
        return {"p50_ms": t["latency_ms"]["p50"], "mean_ms": t["latency_ms"]["mean"], "n": t["latency_ms"]["n"],
                "ran": t.get("precision"), "detail": t.get("detail"), "threads": None}
    row = benchmark_model(path, imgsz=imgsz, batch=1, device="cpu", backend="torch", precision=hint,
                          warmup=args.warmup, iters=args.iters, time_budget=args.time_budget, e2e=False,
                          threads=args.threads)
    return {"p50_ms": row["latency_ms"]["p50"], "mean_ms": row["latency_ms"]["mean"], "n": row["latency_ms"]["n"],
            "ran": row["executed"], "detail": row["executed_detail"], "threads": row.get("threads"),
            "provider": row.get("provider")}


def wait_for_idle(max_load: float, wait_s: float) -> list[float]:
    """Wait (up to ``wait_s``) until the 1-minute load average is below ``max_load``; return the load then."""
    t0 = time.time()
    while os.getloadavg()[0] >= max_load and time.time() - t0 < wait_s:
        print(f"    CPU busy (load {os.getloadavg()[0]:.2f} >= {max_load}): waiting", flush=True)
        time.sleep(20)
    return [round(x, 2) for x in os.getloadavg()]


def measure(ds: dict, student: str, run: dict, args, data_yaml: str, state_file: Path) -> None:
    """Export, score and time every variant of one trained student; each finished row is recorded in the state."""
    from detkd.export.student import load_student

    key = run_name(ds["tag"], student)
    folder = Path(args.runs) / key / "deploy"
    folder.mkdir(parents=True, exist_ok=True)
    done = load_state(state_file)["measured"].get(key, {})
    net = None
    for vkey, backend, precision, fmt, hint in VARIANTS:
        row = dict(done.get(vkey, {}))
        if row.get("timed"):
            continue
        if net is None:
            net = load_student(run["best"], role="model")[0]
        row.update(backend=backend, precision=precision)
        if "AP" not in row:
            if fmt is None:
                path, calib = run["best"], None
            else:
                path, calib = export_variant(net, fmt, precision, data_yaml, folder, ds["imgsz"], args.calib_images,
                                             args.seed)
            s = score(path, data_yaml, ds["imgsz"], hint if fmt == "openvino" else None, folder / "eval" / vkey)
            row.update(artefact=path, calibration=calib, **s)
            print(f"    {key} {backend} {precision}: AP {s['AP']:.4f} (ran {s['precision_ran']})", flush=True)
            save_state(state_file, lambda st: st["measured"].setdefault(key, {}).__setitem__(vkey, row))
        paths = {ds["imgsz"]: row["artefact"]}
        if args.bench_imgsz != ds["imgsz"]:
            paths[args.bench_imgsz] = (run["best"] if fmt is None else
                                       export_variant(net, fmt, precision, data_yaml, folder, args.bench_imgsz,
                                                      args.calib_images_640, args.seed)[0])
        load = wait_for_idle(args.max_load, args.wait_idle)
        timing = {str(size): time_variant(vkey, p, size, hint, args) for size, p in paths.items()}
        row.update(timing=timing, load_before=load, load_after=[round(x, 2) for x in os.getloadavg()], timed=True)
        print(f"    {key} {backend} {precision}: " + ", ".join(
            f"{s} px p50 {t['p50_ms']:.2f} ms (ran {t['ran']})" for s, t in timing.items())
            + f", load {load[0]:.2f}", flush=True)
        save_state(state_file, lambda st: st["measured"].setdefault(key, {}).__setitem__(vkey, row))


# ------------------------------------------------------------------------------------------- report
def table_rows(measured: dict, train_size: int, bench_size: int) -> list[dict]:
    """Rows with ΔAP and speed-up against torch FP32 (None where the torch row or a number is missing)."""
    ref = measured.get("torch_fp32", {})
    out = []
    for vkey, *_ in VARIANTS:
        r = measured.get(vkey)
        if not r:
            continue
        t = r.get("timing", {})
        p_train, p_bench = (t.get(str(s), {}).get("p50_ms") for s in (train_size, bench_size))
        ref_t = ref.get("timing", {})
        ref_train, ref_bench = (ref_t.get(str(s), {}).get("p50_ms") for s in (train_size, bench_size))
        ran = sorted({ran_label(x.get("ran"), x.get("detail")) for x in t.values() if x.get("ran")}
                     | {ran_label(r.get("precision_ran"), r.get("precision_detail"))} - {None})
        out.append({"variant": vkey, "backend": r["backend"], "precision": r["precision"], "ran": "/".join(ran),
                    "AP": r.get("AP"), "delta_AP": None if r.get("AP") is None or ref.get("AP") is None
                    else r["AP"] - ref["AP"], "p50_train_ms": p_train, "p50_bench_ms": p_bench,
                    "speedup_train": ref_train / p_train if ref_train and p_train else None,
                    "speedup_bench": ref_bench / p_bench if ref_bench and p_bench else None,
                    "load": r.get("load_before")})
    return out


def ran_label(precision: str | None, detail: str | None) -> str | None:
    """'int8+bf16' for an INT8 model whose remaining float layers ran in BF16 (from the read-back detail)."""
    rest = (detail or "").partition("(the rest in ")[2].rstrip(")")
    return f"{precision}+{rest}" if precision and rest else precision


def fastest_within(rows: list[dict], max_drop: float, which: str) -> dict | None:
    """The row with the largest speed-up (``which``: 'train' or 'bench') among those with ΔAP >= -max_drop, torch
    FP32 excluded; None when none qualifies."""
    ok = [r for r in rows if r["variant"] != "torch_fp32" and r["delta_AP"] is not None
          and r["delta_AP"] >= -max_drop - 1e-12 and r[f"speedup_{which}"]]
    return max(ok, key=lambda r: r[f"speedup_{which}"], default=None)


def verdict(rows: list[dict], max_drop: float, train_size: int, bench_size: int) -> dict:
    """The fastest deployment within ``max_drop`` AP at each size and whether it meets the issue's target."""
    out = {}
    for which, size in (("train", train_size), ("bench", bench_size)):
        best = fastest_within(rows, max_drop, which)
        out[which] = None if best is None else {
            "variant": best["variant"], "label": f"{best['backend']} {best['precision']}", "ran": best["ran"],
            "imgsz": size, "speedup": best[f"speedup_{which}"], "delta_AP": best["delta_AP"],
            "met": best[f"speedup_{which}"] >= TARGET_SPEEDUP and best["delta_AP"] >= -TARGET_DROP - 1e-12}
    return out


def _n(x, f: str) -> str:
    return "-" if x is None else format(x, f)


def render_section(entry: dict) -> list[str]:
    """One dataset x student: its table and its fastest-deployment lines."""
    s = entry["settings"]
    lines = [f"## {entry['dataset']} — {entry['student']}", "",
             f"Trained {s['epochs']} epochs at {s['imgsz']} px, batch {s['batch']}, seed {s['seed']} "
             f"(torch FP32 val mAP50-95 by Ultralytics: {_n(entry.get('train_mAP50-95'), '.3f')}). "
             f"INT8 calibrated on {_n((entry.get('calibration') or {}).get('n'), 'd')} of "
             f"{_n((entry.get('calibration') or {}).get('available'), 'd')} training images (seed {s['seed']}).", "",
             f"| backend | precision | ran | COCO AP | ΔAP vs torch FP32 | p50 ms @ {s['imgsz']} px | "
             f"p50 ms @ {s['bench_imgsz']} px | speed-up @ {s['imgsz']} | speed-up @ {s['bench_imgsz']} |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in entry["rows"]:
        lines.append(f"| {r['backend']} | {r['precision']} | {r['ran'] or '-'} | {_n(r['AP'], '.4f')} | "
                     f"{_n(r['delta_AP'], '+.4f')} | {_n(r['p50_train_ms'], '.2f')} | {_n(r['p50_bench_ms'], '.2f')} | "
                     f"{_n(r['speedup_train'], '.2f')}x | {_n(r['speedup_bench'], '.2f')}x |")
    lines.append("")
    for which in ("train", "bench"):
        v = entry["verdict"].get(which)
        if v is None:
            lines.append(f"Fastest deployment within ΔAP ≥ -{s['max_drop']:g} at "
                         f"{s['imgsz'] if which == 'train' else s['bench_imgsz']} px: none (no export kept the AP).")
            continue
        lines.append(f"Fastest deployment within ΔAP ≥ -{s['max_drop']:g} at {v['imgsz']} px: **{v['label']}** "
                     f"(ran {v['ran']}), {v['speedup']:.2f}x torch FP32, ΔAP {v['delta_AP']:+.4f} — target "
                     f"(≥ {TARGET_SPEEDUP:g}x, ΔAP ≥ -{TARGET_DROP:g}) {'**met**' if v['met'] else '**not met**'}.")
    return lines + [""]


def render(result: dict) -> str:
    from detkd.bench.report import machine_line

    s = result["settings"]
    loads = [r["load"][0] for e in result["entries"] for r in e["rows"] if r.get("load")]
    met = [e["verdict"].get(w, {}) and e["verdict"][w]["met"] for e in result["entries"] for w in ("train", "bench")]
    load = f" 1-minute load average before each timing: {min(loads):.2f}-{max(loads):.2f}." if loads else ""
    lines = ["# Deployment gain — torch FP32 vs ONNX Runtime / OpenVINO, FP32 / INT8", "",
             f"Machine: {machine_line(result['machine'])}.", "",
             "COCO AP@[.50:.95] of each exported file on the val split (dataset's own category ids, detkd eval's "
             "path) at the training size; model-only batch-1 p50 latency on the CPU (detkd bench's loop) at the "
             f"training size and at {s['bench_imgsz']} px (a second static export of the same weights). 'ran' is the "
             "precision read back from the backend (OpenVINO runs an FP32 IR in BF16 by default on CPUs with BF16 "
             f"units: both rows are shown). torch runs {s.get('threads')} CPU threads, like ONNX Runtime and OpenVINO "
             "here (detkd bench's default would give it one fewer). Speed-up = torch FP32 p50 / row p50 at the same "
             "size. At 640 px the ΔAP is the training size's: the 640 px exports are only timed (their INT8 calibrated on "
             f"{s['calib_images_640']} images), a student is scored at the size it was trained at." + load, ""]
    if s.get("note"):
        lines += [s["note"], ""]
    for entry in result["entries"]:
        lines += render_section(entry)
    lines.append(f"**Target** (fastest deployment ≥ {TARGET_SPEEDUP:g}x torch FP32 with ΔAP ≥ -{TARGET_DROP:g}): "
                 f"met in {sum(bool(m) for m in met)} of {len(met)} (dataset x student x size) cases.")
    return "\n".join(lines) + "\n"


def build_result(state: dict, datasets: list[dict], args, machine: dict) -> dict:
    entries = []
    for ds in datasets:
        for student in args.students:
            key = run_name(ds["tag"], student)
            if key not in state["measured"]:
                continue
            measured = state["measured"][key]
            rows = table_rows(measured, ds["imgsz"], args.bench_imgsz)
            calib = next((r.get("calibration") for r in measured.values() if r.get("calibration")), None)
            settings = {"epochs": ds["epochs"], "imgsz": ds["imgsz"], "batch": args.batch, "seed": args.seed,
                        "bench_imgsz": args.bench_imgsz, "max_drop": args.max_drop}
            entries.append({"key": key, "dataset": ds["tag"], "data": ds["data"], "student": student,
                            "settings": settings, "train_mAP50-95": state["runs"].get(key, {}).get("mAP50-95"),
                            "train_wall_s": state["runs"].get(key, {}).get("wall_s"), "calibration": calib,
                            "rows": rows, "verdict": verdict(rows, args.max_drop, ds["imgsz"], args.bench_imgsz),
                            "measured": measured})
    settings = {"students": args.students, "seed": args.seed, "batch": args.batch, "bench_imgsz": args.bench_imgsz,
                "calib_images": args.calib_images, "calib_images_640": args.calib_images_640,
                "max_drop": args.max_drop, "max_load": args.max_load, "iters": args.iters,
                "time_budget": args.time_budget, "warmup": args.warmup, "note": args.note, "threads": args.threads,
                "datasets": datasets, "dataset": ", ".join(d["tag"] for d in datasets), "seeds": [args.seed]}
    return {"machine": machine, "settings": settings, "entries": entries,
            "target": {"speedup": TARGET_SPEEDUP, "max_drop": TARGET_DROP}}


# ------------------------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", nargs=4, action="append", metavar=("TAG", "DIR", "IMGSZ", "EPOCHS"), required=True,
                   help="a COCO dataset folder, its training size and epochs; repeatable")
    p.add_argument("--students", nargs="+", default=["yolov8n.yaml", "yolo26n.yaml"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--bench-imgsz", type=int, default=640)
    p.add_argument("--calib-images", type=int, default=300, help="INT8 calibration images (scored exports)")
    p.add_argument("--calib-images-640", type=int, default=32,
                   help="calibration images of the --bench-imgsz INT8 exports (timed only)")
    p.add_argument("--max-drop", type=float, default=TARGET_DROP, help="AP drop allowed for the fastest line")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--time-budget", type=float, default=8.0, help="seconds of timed calls per row and size")
    p.add_argument("--max-load", type=float, default=0.5, help="time only below this 1-minute load average")
    p.add_argument("--wait-idle", type=float, default=180, help="seconds to wait for an idle CPU before timing")
    p.add_argument("--threads", type=int, default=os.cpu_count(),
                   help="torch CPU threads (default: all cores, as ONNX Runtime and OpenVINO use; detkd bench's "
                        "default is Ultralytics' min(8, cores - 1))")
    p.add_argument("--stage", choices=("all", "train", "measure", "report"), default="all")
    p.add_argument("--note", default="", help="a line added under the results' header (e.g. cut epochs)")
    p.add_argument("--runs", type=Path, default=Path("runs/deploy_gain"))
    p.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)
    args.runs = args.runs.resolve()
    args.datasets = [{"tag": t, "data": d, "imgsz": int(i), "epochs": int(e)} for t, d, i, e in args.dataset]
    return args


def main(argv=None) -> int:
    from detkd.api import resolve_data
    from detkd.bench.machine import machine_info, machine_tag
    from detkd.bench.report import write_json_and_markdown

    args = parse_args(argv)
    args.runs.mkdir(parents=True, exist_ok=True)
    state_file = args.runs / "state.json"
    for ds in args.datasets:
        data_yaml = resolve_data(ds["data"]) if args.stage != "report" else None
        for student in args.students:
            key = run_name(ds["tag"], student)
            if args.stage in {"all", "train"} and key not in load_state(state_file)["runs"]:
                print(f"training {key} ...", flush=True)
                run = train_student(ds, student, args, data_yaml)
                save_state(state_file, lambda st: st["runs"].__setitem__(key, run))
            run = load_state(state_file)["runs"].get(key)
            if args.stage in {"all", "measure"} and run:
                print(f"measuring {key} ...", flush=True)
                measure(ds, student, run, args, data_yaml, state_file)
    info = machine_info("cpu")
    result = build_result(load_state(state_file), args.datasets, args, info)
    if result["entries"]:
        write_json_and_markdown(args.out_dir / f"deploy_gain_{machine_tag(info, 'cpu')}", result, render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``detkd compare --deploy``: every student run exported to each deployment variant (backend x precision), scored
and timed like the torch rows, so the report and ``map_vs_fps.png`` show the whole accuracy/speed trade-off.

A variant is ``onnx:fp32``, ``onnx:int8`` (ONNX Runtime; INT8 = Ultralytics' static Q/DQ quantization),
``openvino:fp32`` or ``openvino:int8`` (NNCF). INT8 variants are calibrated on ``calib_images`` training images drawn
with the comparison's first seed (:func:`detkd.export.int8.export_calibrated`). Layout under the comparison folder::

    deploy/<run key>/best.onnx, best_int8.onnx, best_openvino_model/, best_int8_openvino_model/, *_calibration.txt
    deploy/<run key>/<variant>.json   the export's fingerprint (source weights, variant, imgsz, calibration)
    eval/<run key>.<variant>/         its COCO metrics (reused like the other evaluations)
    bench/<run key>.<variant>.json    its speed (timed once per architecture and variant)

Each variant's AP is the exported file's own (the dataset's COCO JSON, Ultralytics' validator loop); its speed is
model-only batch 1 on the CPU through Ultralytics' ``AutoBackend`` (the loop ``detkd bench`` times), beside the
torch rows' model-only speed.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from detkd.engine.fingerprint import model_id, normal, read_json, same_settings
from detkd.errors import ConfigError, DetKDError

DEFAULT_VARIANTS = ("onnx:fp32", "onnx:int8", "openvino:fp32", "openvino:int8")
BACKENDS = {"onnx": "onnx", "onnxruntime": "onnx", "ort": "onnx", "openvino": "openvino", "ov": "openvino"}
BACKEND_LABEL = {"onnx": "ONNX Runtime", "openvino": "OpenVINO"}
PRECISIONS = ("fp32", "int8")
PACKAGES = {("onnx", "fp32"): ("onnx", "onnxruntime"), ("onnx", "int8"): ("onnx", "onnxruntime"),
            ("openvino", "fp32"): ("openvino",), ("openvino", "int8"): ("openvino", "nncf")}
DEPLOY_EXTRA = "pip install -e '.[deploy]'"


def parse_variants(items) -> list[str]:
    """``--deploy`` values -> normalised ``backend:precision`` strings (``[]`` given: :data:`DEFAULT_VARIANTS`;
    a backend alone: its FP32 and INT8). Raises :class:`ConfigError` for unknown names, :class:`DetKDError` naming
    the deploy extra for missing packages."""
    if items is None:
        return []
    out: list[str] = []
    for item in list(items) or list(DEFAULT_VARIANTS):
        backend, _, precision = str(item).strip().lower().partition(":")
        fmt = BACKENDS.get(backend)
        if fmt is None or (precision and precision not in PRECISIONS):
            raise ConfigError(f"--deploy '{item}': expected BACKEND[:PRECISION] with BACKEND onnx or openvino and "
                              f"PRECISION {' or '.join(PRECISIONS)}, e.g. --deploy openvino:int8 onnx:fp32.")
        for p in [precision] if precision else PRECISIONS:
            if f"{fmt}:{p}" not in out:
                out.append(f"{fmt}:{p}")
    missing = sorted({m for v in out for m in PACKAGES[tuple(v.split(":"))] if importlib.util.find_spec(m) is None})
    if missing:
        raise DetKDError(f"--deploy {' '.join(out)} needs {', '.join(missing)}, not installed: {DEPLOY_EXTRA}")
    return out


def check_deploy_settings(s) -> None:
    """The settings --deploy cannot honour, refused before any training."""
    if str(s.bench_device).lower() not in {"cpu", ""}:
        raise ConfigError(f"--deploy times ONNX Runtime and OpenVINO on the CPU: use --bench-device cpu (not "
                          f"{s.bench_device}) so every point of map_vs_fps.png ran on one device.")
    if s.bench_imgsz and int(s.bench_imgsz) != int(s.imgsz):
        raise ConfigError(f"--deploy exports at --imgsz {s.imgsz} (a static input size) and times there: drop "
                          f"--bench-imgsz {s.bench_imgsz} or set it to {s.imgsz}.")
    if int(s.calib_images) < 1:
        raise ConfigError(f"--calib-images {s.calib_images} must be >= 1.")


def variant_label(variant: str) -> str:
    """'openvino:int8' -> 'OpenVINO INT8'."""
    fmt, precision = variant.split(":")
    return f"{BACKEND_LABEL[fmt]} {precision.upper()}"


def variant_specs(trained: list, variants: list[str]) -> list:
    """One :class:`~detkd.compare.experiment.RunSpec` per trained run and variant (kind 'deploy'; ``source`` = the
    run's key), in run order."""
    from detkd.compare.experiment import RunSpec

    specs = []
    for r in trained:
        for v in variants:
            tag = v.replace(":", "-")
            seed = r.label[len(r.config_label):]  # ' (seed 1)' with --seeds, else ''
            specs.append(RunSpec(key=f"{r.key}.{tag}", kind="deploy", seed=r.seed, variant=v, source=r.key,
                                 label=f"{r.config_label} [{variant_label(v)}]{seed}",
                                 config=f"{r.config or r.key}.{tag}"))
    return specs


def export_fingerprint(source, variant: str, s) -> dict:
    fp = {"weights": model_id(source.weights), "variant": variant, "imgsz": int(s.imgsz)}
    if variant.endswith(":int8"):
        fp["calibration"] = {"images": int(s.calib_images), "seed": int(s.seed_list[0])}
    return normal(fp)


def calibration_phrase(calibration: dict, of_available: bool = False) -> str:
    """How an INT8 file got its ranges, in words: calibrated on n (of the available) training images, the ranges a
    quantization-aware trained student learnt, or weight-only (nothing to calibrate)."""
    if calibration.get("qat"):
        return "quantization-aware trained, the ranges it learnt (no calibration)"
    if calibration.get("weight_only"):
        return "weight-only INT8, nothing to calibrate"
    of = f" of {calibration['available']}" if of_available else ""
    return f"calibrated on {calibration['n']}{of} training images (seed {calibration['seed']})"


def export_variant(spec, source, s, data_yaml: str, out: Path, log=print):
    """Export ``source``'s weights to ``spec.variant`` (reused when its fingerprint matches); set ``spec.weights``.

    A new export drops the variant's cached evaluation and speed, which describe the old file."""
    from detkd.compare.experiment import EVAL_MARKER
    from detkd.export.exporter import export_loaded
    from detkd.engine.qat import float_twin
    from detkd.export.int8 import _quiet_quantizers, export_calibrated
    from detkd.export.student import load_student

    fmt, precision = spec.variant.split(":")
    folder = out / "deploy" / source.key
    marker = folder / f"{spec.variant.replace(':', '-')}.json"
    fp = export_fingerprint(source, spec.variant, s)
    old = read_json(marker)
    if old and same_settings(old.get("fingerprint"), fp) and Path(old.get("path", "")).exists():
        spec.weights, spec.train = old["path"], {"reused": True, **{k: v for k, v in old.items() if k != "fingerprint"}}
        log(f"      {spec.label}: reused {old['path']}")
        return spec
    (out / "eval" / spec.key / EVAL_MARKER).unlink(missing_ok=True)
    (out / "bench" / f"{spec.key}.json").unlink(missing_ok=True)
    net = load_student(source.weights, role="model")[0]
    if precision == "int8":
        path, calibration = export_calibrated(net, fmt, data_yaml, folder, "best", imgsz=int(s.imgsz),
                                              calib_images=s.calib_images, calib_seed=s.seed_list[0])
    else:
        with _quiet_quantizers(False):  # a QAT student's FP32 file: without its quantizers (else Ultralytics
            # writes its INT8 graph, measured and labelled FP32)
            path, calibration = export_loaded(float_twin(net), fmt, folder, "best", imgsz=int(s.imgsz)), None
    record = {"fingerprint": fp, "path": str(path), "calibration": calibration}
    marker.write_text(json.dumps(record, indent=1, default=str))
    spec.weights, spec.train = str(path), {"reused": False, "path": str(path), "calibration": calibration}
    log(f"      {spec.label}: exported {path}" + (f" ({calibration_phrase(calibration)})" if calibration else ""))
    return spec


def benchmark_variant(spec, source, s, out: Path, log=print):
    """Model-only batch-1 CPU speed of ``spec``'s artefact (reused when the artefact and settings match); params and
    GFLOPs are the source's (an export does not change the network)."""
    from detkd.bench.machine import machine_tag
    from detkd.export.int8 import time_artefact

    path = out / "bench" / f"{spec.key}.json"
    fp = normal({"artefact": read_json(out / "deploy" / source.key / f"{spec.variant.replace(':', '-')}.json")
                 .get("fingerprint"), "warmup": s.bench_warmup, "iters": s.bench_iters,
                 "time_budget": s.bench_time_budget, "machine": machine_tag(device="cpu")})
    old = read_json(path)
    if old and same_settings(old.get("fingerprint"), fp):
        spec.speed = {**old["speed"], "reused": True}
        log(f"      {spec.label}: p50 {spec.speed['latency_p50_ms']:.2f} ms, {spec.speed['fps']:.1f} FPS (reused)")
        return spec
    t = time_artefact(spec.weights, int(s.imgsz), warmup=s.bench_warmup, iters=s.bench_iters,
                      time_budget=s.bench_time_budget, min_iters=min(s.bench_min_iters, s.bench_iters))
    speed = {"params_m": source.speed.get("params_m"), "gflops": source.speed.get("gflops"), "imgsz": int(s.imgsz),
             "device": "cpu", "provider": variant_label(spec.variant), "precision_ran": t.get("precision"),
             "precision_detail": t.get("detail"), "n": t["latency_ms"]["n"],
             "latency_p50_ms": t["latency_ms"]["p50"], "latency_mean_ms": t["latency_ms"]["mean"], "fps": t["fps"]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"fingerprint": fp, "speed": speed}, indent=1, default=str))
    spec.speed = {**speed, "reused": False}
    log(f"      {spec.label}: p50 {speed['latency_p50_ms']:.2f} ms, {speed['fps']:.1f} FPS"
        + (f" ({speed['precision_ran']} ran)" if speed["precision_ran"] else ""))
    return spec


def run_deploy(trained: list, s, data_yaml: str, coco: bool, out: Path, log=print) -> list:
    """Export, evaluate and time every variant of every trained run; return the variant specs."""
    from detkd.compare.experiment import architecture_id, evaluate_run, share_speed

    by_key = {r.key: r for r in trained}
    specs = variant_specs(trained, s.deploy)
    timed: dict = {}
    for v in specs:
        source = by_key[v.source]
        export_variant(v, source, s, data_yaml, out, log)
        evaluate_run(v, s, data_yaml, coco, out, log)
        arch = (architecture_id(source.weights), v.variant)  # one architecture and variant: one speed
        if arch in timed:
            share_speed(v, timed[arch], log)
        else:
            timed[arch] = benchmark_variant(v, source, s, out, log)
    return specs


def deploy_rows(specs, sources) -> list[dict]:
    """Report rows of the variants: AP, ΔAP against the torch FP32 run it was exported from, speed and speed-up."""
    by_key = {r.key: r for r in sources}
    rows = []
    for v in specs:
        src = by_key[v.source]
        ap, src_ap = v.metrics.get("AP"), src.metrics.get("AP")
        fps, src_fps = v.speed.get("fps"), src.speed.get("fps")
        rows.append({"key": v.key, "source": v.source, "label": v.label, "source_label": src.label,
                     "variant": v.variant, "backend": BACKEND_LABEL[v.variant.split(':')[0]],
                     "precision": v.variant.split(":")[1], "precision_ran": v.speed.get("precision_ran"),
                     "artefact": v.weights, "AP": ap, "AP50": v.metrics.get("AP50"),
                     "delta_AP_vs_torch": None if ap is None or src_ap is None else ap - src_ap,
                     "latency_p50_ms": v.speed.get("latency_p50_ms"), "fps": fps,
                     "speedup_vs_torch": fps / src_fps if fps and src_fps else None,
                     "calibration": (v.train or {}).get("calibration"), "speed_timed_as": v.speed.get("timed_as")})
    return rows


def format_deploy_section(rows: list[dict]) -> list[str]:
    """The report's deployment section (Markdown lines)."""
    if not rows:
        return []

    def num(x, f):
        return "-" if x is None else format(x, f)

    calib = next((r["calibration"] for r in rows if r.get("calibration")), None)
    lines = ["## Deployment (exported students)", "",
             "Each student run exported to each backend x precision and measured like the rows above: AP of the "
             "exported file on the same split, model-only batch-1 speed on the CPU. ΔAP and speed-up are against "
             "the torch FP32 row the file was exported from."
             + (f" INT8 files: {calibration_phrase(calib, of_available=True)}." if calib else ""), "",
             "| model | backend | precision (ran) | AP | ΔAP vs torch | latency p50 (ms) | FPS | speed-up vs torch |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        ran = f" ({r['precision_ran']})" if r.get("precision_ran") and r["precision_ran"] != r["precision"] else ""
        lines.append(f"| {r['source_label']} | {r['backend']} | {r['precision'].upper()}{ran} | {num(r['AP'], '.3f')} "
                     f"| {num(r['delta_AP_vs_torch'], '+.3f')} | {num(r['latency_p50_ms'], '.2f')} | "
                     f"{num(r['fps'], '.1f')} | {num(r['speedup_vs_torch'], '.2f')}x |")
    best = max((r for r in rows if r["fps"]), key=lambda r: r["fps"], default=None)
    if best:
        lines += ["", f"Fastest deployment: **{best['label']}**, {best['fps']:.1f} FPS "
                      f"({num(best['speedup_vs_torch'], '.2f')}x torch), AP {num(best['AP'], '.3f')} "
                      f"({num(best['delta_AP_vs_torch'], '+.3f')} vs torch)."]
    return lines + [""]

"""Speed of a detector per setting (model x backend x precision x batch): model-only and end-to-end.

* **Model-only**: the preprocessed batch (B, 3, imgsz, imgsz) already on the device goes through Ultralytics'
  ``AutoBackend`` (the fused torch module, or an ONNX Runtime session with CUDA IO binding). Latency per call and
  throughput (images/s) from a separate pipelined loop.
* **End-to-end**: B BGR uint8 frames (default 720x1280) through Ultralytics' ``DetectionPredictor``: letterbox,
  to-device, normalise, inference, NMS, boxes scaled back to the frame, ``Results`` built. Stage means come from the
  predictor's own profilers.

Every row carries params (M) and GFLOPs at the bench imgsz (Ultralytics' ``get_flops``, per image), the device, the
execution provider that ran, the CPU threads and the precision that really ran (``executed``, read back from the
backend: OpenVINO runs FP32 models in BF16 by default on CPUs with BF16 units). ONNX files and OpenVINO folders are
exported on the fly through Ultralytics' exporter; an already exported ``.onnx`` or ``*_openvino_model/`` (e.g. an
INT8 export) is timed as it is, on its own backend.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from copy import deepcopy
from pathlib import Path

import numpy as np
import torch

from detkd.bench.timing import latency_stats, pipelined_seconds, timed_calls, warm_up
from detkd.errors import DetKDError

BACKENDS = ("torch", "onnxruntime", "openvino")
BACKEND_ALIASES = {"pt": "torch", "pytorch": "torch", "ort": "onnxruntime", "onnx": "onnxruntime", "ov": "openvino"}
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
INT8_HINT = ("INT8 needs a calibrated export: detkd export --int8 --data DATA (ONNX or OpenVINO), then pass the "
             "exported .onnx or *_openvino_model/ to --models")


def normalize_backend(name: str) -> str:
    """'torch', 'onnxruntime' or 'openvino' (aliases pt/pytorch, ort/onnx, ov); :class:`DetKDError` otherwise."""
    key = str(name).strip().lower()
    key = BACKEND_ALIASES.get(key, key)
    if key not in BACKENDS:
        raise DetKDError(f"unknown backend '{name}': choose from {', '.join(BACKENDS)} (aliases: "
                         f"{', '.join(BACKEND_ALIASES)}).")
    return key


def resolve_device(device: str | int | torch.device) -> torch.device:
    """A torch.device for 'cpu', '0', 'cuda:1', ...; :class:`DetKDError` when the GPU is not there."""
    dev = str(device).strip().lower()
    if dev in {"", "cpu", "none"}:
        return torch.device("cpu")
    idx = dev.replace("cuda:", "").replace("cuda", "0")
    if not idx.isdigit():
        raise DetKDError(f"device '{device}' not understood: use 'cpu' or a CUDA index such as 0.")
    if not torch.cuda.is_available():
        raise DetKDError(f"device '{device}' requested but CUDA is not available here. Use --device cpu.")
    if int(idx) >= torch.cuda.device_count():
        raise DetKDError(f"device '{device}': only {torch.cuda.device_count()} CUDA device(s) visible.")
    return torch.device(f"cuda:{int(idx)}")


def ort_providers() -> list[str]:
    """Execution providers of the installed ONNX Runtime; :class:`DetKDError` when it or onnx is missing."""
    try:
        import onnx  # noqa: F401  (the exporter needs it)
        import onnxruntime as ort
    except ImportError as e:
        raise DetKDError(f"the onnxruntime backend needs '{e.name}', not installed. Install it: pip install onnx "
                         f"onnxruntime (CPU) or onnx onnxruntime-gpu (CUDA) — or pip install 'detkd[onnx]'.") from None
    return list(ort.get_available_providers())


def plan_openvino(precision: str) -> tuple[torch.device, list[str]]:
    """OpenVINO runs on the CPU: check the precision against what its CPU plugin executes (read from OpenVINO).

    FP32 is forced with ``INFERENCE_PRECISION_HINT f32`` (noted when the plugin's default would be BF16); BF16/FP16
    need the CPU's BF16/FP16 units; INT8 needs a calibrated export. :class:`DetKDError` otherwise (also when the
    deploy extra is missing).
    """
    from detkd.deploy.backends import openvino_precisions

    supported = openvino_precisions("CPU")
    if precision == "int8":
        raise DetKDError(INT8_HINT + ".")
    if precision not in supported:
        raise DetKDError(f"OpenVINO {precision} is not executed by this CPU (OpenVINO CPU runs: {', '.join(supported)});"
                         f" it would fall back silently, so the row is not measured.")
    notes = []
    if precision == "fp32" and "bf16" in supported:
        notes.append("OpenVINO forced to FP32 (INFERENCE_PRECISION_HINT f32): its default on this CPU is BF16, "
                     "see the bf16 row")
    return torch.device("cpu"), notes


def plan_setting(backend: str, device: torch.device, half: bool, ort_cpu_fallback: bool = False,
                 precision: str | None = None) -> tuple[torch.device, list[str]]:
    """Check one (backend, device, precision) before any work; return the device it will really run on and notes.

    ``precision`` ('fp32', 'fp16', 'bf16', 'int8'; default from ``half``). Raises :class:`DetKDError` for combinations
    that cannot be measured honestly: FP16 torch on CPU (Ultralytics runs FP32 there), BF16 outside OpenVINO, INT8
    without a calibrated export, ONNX Runtime without its CUDA provider on a GPU run (unless ``ort_cpu_fallback``,
    which moves the ORT rows to the CPU and says so in their notes), OpenVINO precisions its CPU plugin lacks.
    """
    precision = precision or ("fp16" if half else "fp32")
    notes: list[str] = []
    if backend == "openvino":
        dev, notes = plan_openvino(precision)
        if device.type == "cuda":
            notes.insert(0, "OpenVINO on CPU (Ultralytics runs OpenVINO on Intel devices, not CUDA)")
        return dev, notes
    if precision == "int8":
        raise DetKDError(INT8_HINT + ".")
    if precision == "bf16":
        raise DetKDError(f"bf16 is measured with the openvino backend only (not {backend}): add --backend openvino.")
    if backend == "torch":
        if half and device.type == "cpu":
            raise DetKDError("fp16 with the torch backend needs a CUDA device (Ultralytics runs torch FP32 on CPU): "
                             "drop --half or use --device 0.")
        return device, notes
    providers = ort_providers()
    if device.type == "cuda" and "CUDAExecutionProvider" not in providers:
        msg = (f"ONNX Runtime here has no CUDAExecutionProvider (available: {', '.join(providers)}); "
               f"install onnxruntime-gpu matching CUDA {torch.version.cuda}")
        if not ort_cpu_fallback:
            raise DetKDError(f"{msg}, or pass --ort-cpu-fallback to time ONNX Runtime on the CPU instead.")
        notes.append(f"ORT on CPU: {msg}")
        return torch.device("cpu"), notes
    if half and device.type == "cpu":
        notes.append("fp16 ONNX on CPUExecutionProvider (FP32 inputs/outputs, FP16 weights)")
    return device, notes


def model_profile(net: torch.nn.Module, imgsz: int) -> dict:
    """``{"params_m": parameters in millions, "gflops": GFLOPs of one image at imgsz x imgsz}`` (unfused model)."""
    from ultralytics.utils.torch_utils import get_flops, get_num_params

    return {"params_m": get_num_params(net) / 1e6, "gflops": float(get_flops(deepcopy(net), imgsz))}


def synthetic_frames(batch: int, shape: tuple[int, int] = (720, 1280), seed: int = 0) -> list[np.ndarray]:
    """``batch`` reproducible BGR uint8 frames of ``shape`` (H, W): smooth gradients plus noise, like camera input."""
    rng = np.random.default_rng(seed)
    h, w = shape
    frames = []
    for _ in range(batch):
        base = np.linspace(rng.integers(0, 128, 3), rng.integers(128, 256, 3), w, dtype=np.float32)[None]
        noise = rng.normal(0, 20, (h, w, 3)).astype(np.float32)
        frames.append(np.clip(base + noise, 0, 255).astype(np.uint8))
    return frames


def make_predictor(source: torch.nn.Module | str | Path, device: torch.device, half: bool, imgsz: int, batch: int,
                   conf: float = 0.25, iou: float = 0.7, nms_free: bool = False):
    """An Ultralytics ``DetectionPredictor`` with its ``AutoBackend`` built on ``source`` (module or .onnx path).

    Square letterbox (``rect=False``), so every backend sees imgsz x imgsz inputs. ``nms_free``: end-to-end models
    (YOLO26) run their one-to-one head and skip NMS, as deployed.
    """
    from ultralytics.models.yolo.detect import DetectionPredictor

    overrides = {"imgsz": imgsz, "batch": batch, "device": "cpu" if device.type == "cpu" else str(device.index),
                 "quantize": 16 if half else None, "conf": conf, "iou": iou, "rect": False, "verbose": False,
                 "save": False, "mode": "predict", "task": "detect"}
    if nms_free:
        overrides["nms"] = False
    predictor = DetectionPredictor(overrides=overrides)
    predictor.setup_model(source, verbose=False)
    return predictor


@contextlib.contextmanager
def quiet_ultralytics():
    """Silence Ultralytics' INFO logs (export banners, backend loading) inside the block; warnings still show."""
    from ultralytics.utils import LOGGER

    level = LOGGER.level
    LOGGER.setLevel(logging.WARNING)
    try:
        yield
    finally:
        LOGGER.setLevel(level)


def _execution(predictor, backend: str) -> dict:
    """Which provider/device/threads/precision actually ran (read back from the built backend, never assumed)."""
    from detkd.deploy.backends import executed_precision

    dev = torch.device(predictor.device)
    ran = executed_precision(predictor.model)
    info = {"device": str(dev), "executed": ran["precision"], "executed_detail": ran["detail"]}
    if backend == "openvino":
        compiled = predictor.model.backend.ov_compiled_model
        info["provider"] = "OpenVINO " + ",".join(compiled.get_property("EXECUTION_DEVICES"))
        info["threads"] = int(compiled.get_property("INFERENCE_NUM_THREADS"))
    elif backend == "onnxruntime":
        session = predictor.model.backend.session
        info["provider"] = session.get_providers()[0]
        n = session.get_session_options().intra_op_num_threads
        if dev.type == "cpu" or info["provider"] == "CPUExecutionProvider":
            from detkd.bench.machine import physical_cores

            info["threads"] = n or physical_cores() or "default"
    else:
        info["provider"] = "torch-cuda" if dev.type == "cuda" else "torch-cpu"
        if dev.type == "cpu":
            info["threads"] = torch.get_num_threads()
    return info


def exported_artefact(model):
    """The :class:`~detkd.deploy.backends.Artefact` of an exported ``.onnx`` / OpenVINO folder, else None (a
    module, a ``.pt`` or a YAML, which detkd exports itself per backend)."""
    if isinstance(model, torch.nn.Module):
        return None
    name = str(model)
    if not (name.lower().endswith((".onnx", ".xml")) or Path(name).is_dir()):
        return None
    from detkd.deploy.backends import inspect_artefact

    return inspect_artefact(name)


def check_artefact_shape(art, imgsz: int, batch: int) -> None:
    """:class:`DetKDError` when a static export cannot take (batch, 3, imgsz, imgsz) inputs."""
    meta = art.metadata
    if (meta.get("args") or {}).get("dynamic"):
        return
    size = meta.get("imgsz")
    size = list(size) if isinstance(size, (list, tuple)) else [size, size]
    if size[0] and (list(size) != [imgsz, imgsz] or int(meta.get("batch", 1)) != int(batch)):
        raise DetKDError(f"{art.path.name} was exported for batch {meta.get('batch', 1)} at {size[0]}x{size[1]} px, "
                         f"not batch {batch} at {imgsz} px: bench it with --imgsz {size[0]} --batch "
                         f"{meta.get('batch', 1)}, or export it with --dynamic.")


def export_for_backend(net: torch.nn.Module, backend: str, export_dir: str | Path, label: str, imgsz: int,
                       batch: int, half: bool, run_dev: torch.device) -> str:
    """Export ``net`` with Ultralytics' exporter for ``backend`` ('onnxruntime': .onnx, 'openvino': an OpenVINO
    folder, FP16-compressed when ``half``); return the artefact path."""
    from detkd.export.exporter import export_loaded

    fmt = {"onnxruntime": "onnx", "openvino": "openvino"}[backend]
    stem = f"{Path(label).stem}_{imgsz}_b{batch}_{'fp16' if half else 'fp32'}_{run_dev.type}"
    with quiet_ultralytics():
        path = export_loaded(net, fmt, export_dir, stem, imgsz=imgsz, batch=batch, half=half,
                             device="cpu" if run_dev.type == "cpu" else str(run_dev.index))
    return str(path)


def benchmark_model(model: str | Path | torch.nn.Module, imgsz: int = 640, batch: int = 1, device: str = "cpu",
                    half: bool = False, backend: str = "torch", warmup: int = 10, iters: int = 100,
                    time_budget: float = 10.0, min_iters: int = 5, e2e: bool = True, conf: float = 0.25,
                    iou: float = 0.7, source_shape: tuple[int, int] = (720, 1280), ort_cpu_fallback: bool = False,
                    export_dir: str | Path | None = None, name: str | None = None, profile: dict | None = None,
                    threads: int | None = None, precision: str | None = None) -> dict:
    """Measure one setting.

    Args:
        model: ``.pt`` checkpoint, model YAML (random init is fine for speed), a loaded ``DetectionModel``, or an
            exported ``.onnx`` / ``*_openvino_model/`` (timed as it is on its own backend; ``backend`` is ignored,
            ``imgsz``/``batch`` must match a static export).
        imgsz: square input side (pixels, multiple of 32); batch: images per call.
        device: 'cpu' or a CUDA index; half: FP16 weights/activations.
        precision: 'fp32', 'fp16', 'bf16' (OpenVINO) or 'int8' (exported INT8 artefacts); default from ``half``.
        backend: 'torch', 'onnxruntime' or 'openvino' (the ONNX file / OpenVINO folder is exported with Ultralytics'
            exporter into ``export_dir``, a temporary folder by default).
        warmup: warm-up calls (capped at half the time budget); iters: timed calls, or fewer once ``time_budget``
            seconds are spent (but at least ``min_iters``). The same rule applies to the end-to-end loop.
        e2e: also time the end-to-end pipeline; conf/iou: its NMS thresholds; source_shape: frame (H, W).
        ort_cpu_fallback: on a GPU run without onnxruntime-gpu, time ORT on the CPU (noted) instead of raising.
        name: row label (default: the model's file name); profile: precomputed :func:`model_profile`.
        threads: torch CPU threads (default: Ultralytics' choice, min(8, cores - 1)); ORT uses its own default
            (physical cores). The row reports what ran.

    Returns:
        A row dict: ``model, params_m, gflops, backend, provider, device, precision, executed`` (the precision that
        really ran, read back), ``executed_detail, weights`` (stored precision), ``imgsz, batch, threads, latency_ms`` (:func:`~detkd.bench.timing.latency_stats` of one call), ``throughput_img_s`` (pipelined),
        ``e2e_ms`` (same stats, end-to-end, or None), ``e2e_throughput_img_s`` (batch / mean e2e latency),
        ``e2e_stages_ms`` (preprocess/inference/postprocess mean per call), ``notes`` and ``status: "ok"``.
    """
    from detkd.export.student import load_student
    from detkd.models.compat import is_end_to_end

    if int(imgsz) <= 0 or int(imgsz) % 32:
        raise DetKDError(f"imgsz {imgsz} must be a positive multiple of 32.")
    if int(batch) < 1:
        raise DetKDError(f"batch {batch} must be >= 1.")
    art = exported_artefact(model)
    if art is not None:
        backend = art.label
        precision = art.weights if art.kind == "onnx" or art.weights == "int8" else (precision or "fp32")
    backend = normalize_backend(backend)
    precision = precision or ("fp16" if half else "fp32")
    half = precision == "fp16"
    dev = resolve_device(device)
    if art is not None and precision == "int8":  # a quantized export runs as it was calibrated, no precision hint
        run_dev, notes = ((torch.device("cpu"), []) if backend == "openvino"
                          else plan_setting(backend, dev, False, ort_cpu_fallback))
    else:
        run_dev, notes = plan_setting(backend, dev, half, ort_cpu_fallback, precision=precision)
    label = name or (Path(str(model)).name if not isinstance(model, torch.nn.Module) else "model")
    tmp = None
    if art is not None:
        check_artefact_shape(art, imgsz, batch)
        source, net, nms_free = str(art.path), None, bool(art.metadata.get("end2end"))
        profile = profile or {"params_m": None, "gflops": None}
    else:
        net = model if isinstance(model, torch.nn.Module) else load_student(model, role="model")[0]
        if not getattr(net, "task", None):
            net.task = "detect"
        profile = profile or model_profile(net, imgsz)
        nms_free = is_end_to_end(net)
        source = net
    if nms_free:
        notes.append("end-to-end model: NMS-free one-to-one head timed (no NMS in the end-to-end pipeline)")
    if art is None and backend in {"onnxruntime", "openvino"}:
        if export_dir is None:
            tmp = tempfile.TemporaryDirectory(prefix="detkd-bench-")
            export_dir = tmp.name
        source = export_for_backend(net, backend, export_dir, label, imgsz, batch, half, run_dev)
    try:
        with quiet_ultralytics():
            predictor = make_predictor(source, run_dev, half and backend != "openvino", imgsz, batch, conf, iou,
                                       nms_free=nms_free)
            if backend == "openvino" and precision != "int8":
                from detkd.deploy.backends import set_openvino_precision

                set_openvino_precision(predictor.model, precision, source)
        if threads:
            torch.set_num_threads(int(threads))
        frames = synthetic_frames(batch, source_shape)
        predictor(source=frames)  # first call: sets up source handling and warms the backend once
        used = _execution(predictor, backend)
        x = predictor.preprocess(frames)  # (B, 3, imgsz, imgsz) on the device, in the model's dtype

        def model_only():
            return predictor.model(x)

        with torch.inference_mode():
            warm_up(model_only, run_dev, warmup, time_budget / 2)
            times = timed_calls(model_only, run_dev, iters, time_budget, min_iters)
            pipe_s = pipelined_seconds(model_only, run_dev, len(times))
        if used["executed"] != precision or precision == "int8":  # INT8: say what the unquantized layers ran in
            notes.append(f"ran in {used['executed']}: {used['executed_detail']}")
        row = {
            "model": label, **{k: (round(v, 3) if v is not None else None) for k, v in profile.items()},
            "backend": backend, "provider": used["provider"], "device": used["device"], "precision": precision,
            "executed": used["executed"], "executed_detail": used["executed_detail"],
            "weights": art.weights if art is not None else ("fp16" if half else "fp32"),
            "imgsz": int(imgsz), "batch": int(batch), "threads": used.get("threads"),
            "latency_ms": latency_stats(times), "throughput_img_s": batch * len(times) / pipe_s,
            "e2e_ms": None, "e2e_throughput_img_s": None, "e2e_stages_ms": None,
            "source_shape": list(source_shape), "notes": notes, "status": "ok",
        }
        if e2e:
            stages = []

            def end_to_end():
                predictor(source=frames)
                stages.append(predictor.speed)  # per-image ms of this call

            warm_up(end_to_end, run_dev, max(1, warmup // 2), time_budget / 2)
            stages.clear()
            e2e_times = timed_calls(end_to_end, run_dev, iters, time_budget, min_iters)
            row["e2e_ms"] = latency_stats(e2e_times)
            row["e2e_throughput_img_s"] = batch / row["e2e_ms"]["mean"] * 1e3
            row["e2e_stages_ms"] = {k: float(np.mean([s[k] for s in stages]) * batch) for k in stages[0]}
        return row
    finally:
        if tmp is not None:
            tmp.cleanup()

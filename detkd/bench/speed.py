"""Speed of a detector per setting (model x backend x precision x batch): model-only and end-to-end.

* **Model-only**: the preprocessed batch (B, 3, imgsz, imgsz) already on the device goes through Ultralytics'
  ``AutoBackend`` (the fused torch module, or an ONNX Runtime session with CUDA IO binding). Latency per call and
  throughput (images/s) from a separate pipelined loop.
* **End-to-end**: B BGR uint8 frames (default 720x1280) through Ultralytics' ``DetectionPredictor``: letterbox,
  to-device, normalise, inference, NMS, boxes scaled back to the frame, ``Results`` built. Stage means come from the
  predictor's own profilers.

Every row carries params (M) and GFLOPs at the bench imgsz (Ultralytics' ``get_flops``, per image), the device, the
execution provider that ran and the CPU threads. ONNX files are exported on the fly through Ultralytics' exporter.
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

BACKENDS = ("torch", "onnxruntime")
BACKEND_ALIASES = {"pt": "torch", "pytorch": "torch", "ort": "onnxruntime", "onnx": "onnxruntime"}
PRECISIONS = ("fp32", "fp16")


def normalize_backend(name: str) -> str:
    """'torch' or 'onnxruntime' (aliases pt/pytorch, ort/onnx); :class:`DetKDError` otherwise."""
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


def plan_setting(backend: str, device: torch.device, half: bool, ort_cpu_fallback: bool = False) -> tuple[torch.device, list[str]]:
    """Check one (backend, device, precision) before any work; return the device it will really run on and notes.

    Raises :class:`DetKDError` for combinations that cannot be measured honestly: FP16 torch on CPU (Ultralytics runs
    FP32 there), ONNX Runtime without its CUDA provider on a GPU run (unless ``ort_cpu_fallback``, which moves the
    ORT rows to the CPU and says so in their notes).
    """
    notes: list[str] = []
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
    """Which provider/device/threads actually ran (read back from the built backend, never assumed)."""
    dev = torch.device(predictor.device)
    info = {"device": str(dev)}
    if backend == "onnxruntime":
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


def benchmark_model(model: str | Path | torch.nn.Module, imgsz: int = 640, batch: int = 1, device: str = "cpu",
                    half: bool = False, backend: str = "torch", warmup: int = 10, iters: int = 100,
                    time_budget: float = 10.0, min_iters: int = 5, e2e: bool = True, conf: float = 0.25,
                    iou: float = 0.7, source_shape: tuple[int, int] = (720, 1280), ort_cpu_fallback: bool = False,
                    export_dir: str | Path | None = None, name: str | None = None, profile: dict | None = None,
                    threads: int | None = None) -> dict:
    """Measure one setting.

    Args:
        model: ``.pt`` checkpoint, model YAML (random init is fine for speed) or a loaded ``DetectionModel``.
        imgsz: square input side (pixels, multiple of 32); batch: images per call.
        device: 'cpu' or a CUDA index; half: FP16 weights/activations.
        backend: 'torch' or 'onnxruntime' (the ONNX file is exported with Ultralytics' exporter into ``export_dir``,
            a temporary folder by default).
        warmup: warm-up calls (capped at half the time budget); iters: timed calls, or fewer once ``time_budget``
            seconds are spent (but at least ``min_iters``). The same rule applies to the end-to-end loop.
        e2e: also time the end-to-end pipeline; conf/iou: its NMS thresholds; source_shape: frame (H, W).
        ort_cpu_fallback: on a GPU run without onnxruntime-gpu, time ORT on the CPU (noted) instead of raising.
        name: row label (default: the model's file name); profile: precomputed :func:`model_profile`.
        threads: torch CPU threads (default: Ultralytics' choice, min(8, cores - 1)); ORT uses its own default
            (physical cores). The row reports what ran.

    Returns:
        A row dict: ``model, params_m, gflops, backend, provider, device, precision, imgsz, batch, threads,
        latency_ms`` (:func:`~detkd.bench.timing.latency_stats` of one call), ``throughput_img_s`` (pipelined),
        ``e2e_ms`` (same stats, end-to-end, or None), ``e2e_throughput_img_s`` (batch / mean e2e latency),
        ``e2e_stages_ms`` (preprocess/inference/postprocess mean per call), ``notes`` and ``status: "ok"``.
    """
    from detkd.export.student import load_student
    from detkd.models.compat import is_end_to_end

    backend = normalize_backend(backend)
    if int(imgsz) <= 0 or int(imgsz) % 32:
        raise DetKDError(f"imgsz {imgsz} must be a positive multiple of 32.")
    if int(batch) < 1:
        raise DetKDError(f"batch {batch} must be >= 1.")
    dev = resolve_device(device)
    run_dev, notes = plan_setting(backend, dev, half, ort_cpu_fallback)
    label = name or (Path(str(model)).name if not isinstance(model, torch.nn.Module) else "model")
    net = model if isinstance(model, torch.nn.Module) else load_student(model, role="model")[0]
    if not getattr(net, "task", None):
        net.task = "detect"
    profile = profile or model_profile(net, imgsz)
    nms_free = is_end_to_end(net)
    if nms_free:
        notes.append("end-to-end model: NMS-free one-to-one head timed (no NMS in the end-to-end pipeline)")

    tmp = None
    if backend == "onnxruntime":
        from detkd.export.exporter import export_loaded

        if export_dir is None:
            tmp = tempfile.TemporaryDirectory(prefix="detkd-bench-")
            export_dir = tmp.name
        stem = f"{Path(label).stem}_{imgsz}_b{batch}_{'fp16' if half else 'fp32'}_{run_dev.type}"
        with quiet_ultralytics():
            source = export_loaded(net, "onnx", export_dir, stem, imgsz=imgsz, batch=batch, half=half,
                                   device="cpu" if run_dev.type == "cpu" else str(run_dev.index))
    else:
        source = net
    try:
        with quiet_ultralytics():
            predictor = make_predictor(source, run_dev, half, imgsz, batch, conf, iou, nms_free=nms_free)
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
        row = {
            "model": label, **{k: round(v, 3) for k, v in profile.items()}, "backend": backend,
            "provider": used["provider"], "device": used["device"], "precision": "fp16" if half else "fp32",
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

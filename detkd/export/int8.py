"""INT8 export, measured: calibrate on the training images, score the INT8 artefact next to its FP32 twin, gate on AP.

Ultralytics does the quantization (``quantize=8`` with calibration ``data``): ONNX Runtime static Q/DQ quantization
of the weighted ops for ONNX, NNCF post-training quantization for OpenVINO. detkd adds what it lacks:

* **calibration set**: ``n`` training images drawn with a seed (not Ultralytics' default, the first images of the val
  split), each checked readable, listed in ``<stem>_int8_calibration.txt`` beside the artefact;
* **FP32 twin**: the same format exported in FP32 (``<stem>.onnx`` / ``<stem>_openvino_model``), so ΔAP and the
  latency ratio isolate what INT8 changes on that backend;
* **accuracy**: COCO AP of both artefacts on the val split (detkd's COCOeval with the dataset's own category ids; a
  plain data.yaml gets Ultralytics' mAP50-95), ``ΔAP = AP(int8) - AP(fp32)``; the export fails (exit 1) when
  ``-ΔAP > max_drop``;
* **speed**: model-only batch-1 latency of both artefacts on the CPU (the same loop as ``detkd bench``);
* **student only and parity**: the INT8 graph is checked for teacher/adapter tensors like the FP32 one, and its
  detections are compared with the torch FP32 student's on val images (:func:`detkd.export.parity.check_int8_parity`).

Formats Ultralytics quantizes that detkd cannot score here (engine, coreml, litert, mnn) are exported with the same
calibration set and reported as not measured.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import random
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from detkd.errors import ConfigError, DetKDError

MEASURED_FORMATS = ("onnx", "openvino")  # scored and timed by detkd; other INT8 formats are passed through
DEFAULT_CALIB_IMAGES = 300  # Ultralytics' recommendation for INT8 calibration (">300 images recommended")
# Default gate: 0.01 COCO AP. Healthy post-training INT8 of YOLO detectors loses 0.001-0.003 AP (measured in issue 29:
# 0.601 -> 0.598 ORT, 0.603 -> 0.602 OpenVINO), and seed-to-seed spread of a nano student is of the order of 0.005-0.01,
# so a drop beyond 0.01 is more than noise: calibration went wrong or the model does not quantize well.
DEFAULT_MAX_DROP = 0.01
IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
DEPLOY_EXTRA = "pip install -e '.[deploy]'"


def what_to_try(fmt: str) -> str:
    """Advice after a failed INT8 export of ``fmt``."""
    other = " --format openvino (NNCF, with bias correction) instead of onnx," if fmt == "onnx" else ""
    return (f"Try: more or more representative calibration images (--calib-images; the training images should look "
            f"like what you deploy on),{other} --imgsz at the training size, or deploy FP32 (OpenVINO FP32 is often "
            f"as fast as INT8 on CPUs: compare the latencies above)")


def int8_formats() -> list[str]:
    """detkd export formats Ultralytics can write in INT8 (``quantize=8``), measured ones first."""
    from ultralytics.engine.exporter import INT8_FORMATS

    from detkd.export.exporter import FORMAT_REQUIREMENTS

    return [*MEASURED_FORMATS, *(f for f in FORMAT_REQUIREMENTS if f in INT8_FORMATS and f not in MEASURED_FORMATS)]


def takes_calibration(fmt: str) -> bool:
    """True when Ultralytics' INT8 export of ``fmt`` calibrates activations on data (onnx, openvino, engine, litert);
    False for its weight-only INT8 formats (coreml, mnn)."""
    from ultralytics.engine.exporter import export_formats

    table = export_formats()
    return "data" in dict(zip(table["Argument"], table["Arguments"])).get(fmt, [])


def check_int8_request(fmt: str, data, half: bool = False, dynamic: bool = False, batch: int = 1) -> None:
    """Refuse an INT8 request detkd cannot honour, before any work (:class:`ConfigError`, exit 2)."""
    formats = int8_formats()
    if fmt not in formats:
        raise ConfigError(f"--int8: format '{fmt}' has no INT8 export. INT8 formats: {', '.join(formats)} (detkd "
                          f"scores {' and '.join(MEASURED_FORMATS)}).")
    if not data:
        raise ConfigError("--int8 needs --data DATA to calibrate on (its training images) and to score the INT8 "
                          "model on (its val split): the dataset the student was trained on.")
    if half:
        raise ConfigError("--int8 and --half both given: choose one precision (INT8 keeps FP32 inputs/outputs).")
    if (dynamic or int(batch) != 1) and fmt in MEASURED_FORMATS:
        raise ConfigError(f"--int8 with {'--dynamic' if dynamic else f'--batch {batch}'}: detkd calibrates, scores "
                          f"and times a static batch-1 model; drop that flag.")
    check_int8_packages(fmt)


def check_int8_packages(fmt: str) -> None:
    """One line naming the deploy extra when the quantizer of ``fmt`` is missing (Ultralytics would try to install)."""
    needs = {"openvino": ("openvino", "nncf"), "onnx": ("onnx", "onnxruntime")}.get(fmt, ())
    missing = [m for m in needs if importlib.util.find_spec(m) is None]
    if missing:
        raise DetKDError(f"INT8 export to {fmt} needs {' and '.join(missing)}, not installed: {DEPLOY_EXTRA}")


# ------------------------------------------------------------------------------------------- calibration set
def split_images(data_yaml: str | Path, split: str = "train") -> list[Path]:
    """The image files of ``split`` in an Ultralytics data.yaml (folder, .txt list, or a list of them), sorted."""
    from ultralytics.utils import YAML

    cfg = YAML.load(str(data_yaml))
    root = Path(str(cfg.get("path") or Path(str(data_yaml)).parent))
    if not root.is_absolute():
        root = (Path(str(data_yaml)).parent / root).resolve()
    entries = cfg.get(split)
    entries = entries if isinstance(entries, (list, tuple)) else [entries] if entries else []
    files: list[Path] = []
    for entry in entries:
        p = Path(str(entry)) if Path(str(entry)).is_absolute() else root / str(entry)
        if p.is_dir():
            files += [f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES]
        elif p.is_file() and p.suffix.lower() == ".txt":
            for line in (x.strip() for x in p.read_text().splitlines()):
                if line and not line.startswith("#"):
                    f = Path(line) if Path(line).is_absolute() else p.parent / line
                    files.append(f if f.exists() else root / line)
        elif p.is_file():
            files.append(p)
    return sorted(set(files))


def pick_calibration_images(data_yaml: str | Path, n: int = DEFAULT_CALIB_IMAGES, seed: int = 0) -> list[Path]:
    """``min(n, available)`` training images drawn with ``seed`` (sorted), every one checked readable; never a val
    image (the INT8 model is scored on val).

    Raises :class:`ConfigError` when the training split has no image besides the val split's (an evaluation-only
    dataset has its val images as 'train') or a drawn image cannot be decoded (naming them): calibrating on fewer
    images than stated would change the INT8 model silently.
    """
    import cv2

    if int(n) < 1:
        raise ConfigError(f"--calib-images {n} must be >= 1.")
    train = split_images(data_yaml, "train")
    if not train:
        raise ConfigError(f"no training images found in {data_yaml} to calibrate INT8 on: its 'train' entry must "
                          f"name a folder or list of images.")
    val = {p.resolve() for p in split_images(data_yaml, "val")}
    images = [p for p in train if p.resolve() not in val]
    if not images:
        raise ConfigError(f"the training images of {data_yaml} are the val split's: INT8 calibrated on them would be "
                          f"scored on the images it was calibrated on. Export with a dataset that has a training "
                          f"split (--data; a COCO folder with annotations/instances_train.json).")
    chosen = sorted(random.Random(int(seed)).sample(images, min(int(n), len(images))))
    unreadable = [p for p in chosen if not p.is_file() or cv2.imread(str(p)) is None]
    if unreadable:
        raise ConfigError(f"{len(unreadable)} of {len(chosen)} calibration images cannot be read (e.g. "
                          f"{', '.join(str(p) for p in unreadable[:3])}): fix or remove them from the training split.")
    return chosen


def write_calibration_yaml(images: list[Path], data_yaml: str | Path, folder: Path) -> Path:
    """A data.yaml whose ``val`` split is exactly ``images`` (Ultralytics calibrates on ``val``): the images are
    linked (copied where links fail) into ``folder/images/calib`` so no label cache is written beside the user's
    dataset. Class names and count are the dataset's."""
    from ultralytics.utils import YAML

    cfg = YAML.load(str(data_yaml))
    target = folder / "images" / "calib"
    target.mkdir(parents=True, exist_ok=True)
    for i, src in enumerate(images):
        dst = target / f"{i:05d}_{src.name}"
        try:
            os.symlink(src.resolve(), dst)
        except OSError:
            shutil.copyfile(src, dst)
    out = folder / "calibration.yaml"
    YAML.save(out, {"path": str(folder), "train": "images/calib", "val": "images/calib", "nc": cfg.get("nc"),
                    "names": cfg["names"]})
    return out


# ------------------------------------------------------------------------------------------- measuring
def score_artefact(path: str | Path, data_yaml: str, coco: bool, split: str = "val", imgsz: int = 640,
                   device: str = "cpu", out_dir: str | Path | None = None) -> dict:
    """AP of an exported artefact on ``split``: detkd's COCOeval with the dataset's own ids for COCO data, else
    Ultralytics' mAP50-95. Returns ``{'AP', 'AP50', 'method', 'precision'}`` (the precision that ran, when known:
    OpenVINO runs FP32 models in BF16 on CPUs with AMX)."""
    import contextlib
    import io

    from detkd.bench.speed import quiet_ultralytics

    with quiet_ultralytics(), contextlib.redirect_stdout(io.StringIO()):
        if coco:
            from detkd.eval.coco_eval import evaluate_coco

            m = evaluate_coco(str(path), data_yaml, split=split, imgsz=imgsz, batch=1, device=device,
                              out_dir=out_dir, verbose=False)
            return {"AP": float(m["AP"]), "AP50": float(m["AP50"]), "method": "COCO AP (COCOeval, dataset ids)",
                    "precision": m.get("precision")}
        from ultralytics import YOLO

        v = YOLO(str(path), task="detect").val(data=data_yaml, split=split, imgsz=imgsz, batch=1, device=device,
                                                plots=False, verbose=False, project=str(out_dir), name="val",
                                                exist_ok=True)
        return {"AP": float(v.box.map), "AP50": float(v.box.map50), "method": "Ultralytics mAP50-95"}


def time_artefact(path: str | Path, imgsz: int, warmup: int = 5, iters: int = 50, time_budget: float = 5.0,
                  min_iters: int = 5) -> dict:
    """Model-only batch-1 latency of an artefact on the CPU, as ``detkd bench`` times it (Ultralytics' predictor
    preprocesses one synthetic frame; only ``AutoBackend(x)`` is timed).

    Returns ``{'latency_ms': latency_stats, 'fps': pipelined images/s, 'precision': what ran, 'detail'}``.
    """
    import torch

    from detkd.bench.speed import make_predictor, quiet_ultralytics, synthetic_frames
    from detkd.bench.timing import latency_stats, pipelined_seconds, timed_calls, warm_up

    cpu = torch.device("cpu")
    with quiet_ultralytics():
        predictor = make_predictor(str(path), cpu, False, imgsz, 1)
    frames = synthetic_frames(1)
    predictor(source=frames)  # first call sets up the letterbox and warms the backend (as detkd bench does)
    x = predictor.preprocess(frames)

    def model_only():
        return predictor.model(x)

    with torch.inference_mode():
        warm_up(model_only, cpu, warmup, time_budget / 2)
        times = timed_calls(model_only, cpu, iters, time_budget, min(min_iters, iters))
        fps = len(times) / pipelined_seconds(model_only, cpu, len(times))
    ran = _executed(predictor.model)
    return {"latency_ms": latency_stats(times), "fps": fps, **ran}


def _executed(net) -> dict:
    """What really ran (detkd.deploy.backends.executed_precision when available)."""
    try:
        from detkd.deploy.backends import executed_precision
    except ImportError:  # pragma: no cover - the deploy helpers are part of detkd
        return {"precision": None, "detail": ""}
    try:
        return executed_precision(net)
    except Exception as e:  # reading it back is informative only
        return {"precision": None, "detail": f"(could not read the executed precision: {type(e).__name__})"}


# ------------------------------------------------------------------------------------------- the whole step
@dataclass
class Int8Result:
    """What :func:`export_int8` measured. APs are fractions (COCO AP@[.50:.95]); latencies in ms (p50)."""

    format: str
    int8_path: Path
    fp32_path: Path | None
    calibration: dict  # {'n', 'available', 'seed', 'list': path of the image list, 'split': 'train'}
    measured: bool = False
    method: str = ""
    ap_fp32: float | None = None
    ap_int8: float | None = None
    ap_ran: dict = field(default_factory=dict)  # {'fp32': precision that ran while scoring, 'int8': ...}
    split: str = "val"  # the split AP was measured on
    latency_fp32: dict = field(default_factory=dict)  # time_artefact() of each
    latency_int8: dict = field(default_factory=dict)
    max_drop: float = DEFAULT_MAX_DROP
    graph: dict = field(default_factory=dict)
    parity: object | None = None

    @property
    def delta_ap(self) -> float | None:
        return None if self.ap_int8 is None or self.ap_fp32 is None else self.ap_int8 - self.ap_fp32

    @property
    def within_drop(self) -> bool:
        """True unless the measured AP drop exceeds ``max_drop`` (unmeasured formats pass: nothing to judge)."""
        return self.delta_ap is None or -self.delta_ap <= self.max_drop

    @property
    def parity_ok(self) -> bool:
        return self.parity is None or getattr(self.parity, "state", "PASS") != "FAIL"

    @property
    def passed(self) -> bool:
        return self.within_drop and self.parity_ok

    def summary(self) -> str:
        """The lines ``detkd export --int8`` prints."""
        c = self.calibration
        lines = [f"INT8 {self.format}: {self.int8_path}",
                 "Calibration: none (quantization-aware trained: the ranges learnt in training; FP32 twin: the "
                 "student without its quantizers)" if c.get("qat") else
                 f"Calibration: {c['n']} of {c['available']} training images, drawn with seed {c['seed']} "
                 f"(list: {c['list']})" if not c.get("weight_only") else
                 f"Calibration: none (Ultralytics' {self.format} INT8 quantizes weights only)"]
        if not self.measured:
            lines.append(f"Not scored: detkd measures AP and latency of {' and '.join(MEASURED_FORMATS)} artefacts "
                         f"only; validate this one on its target device.")
            return "\n".join(lines)
        p32, p8 = self.latency_fp32["latency_ms"]["p50"], self.latency_int8["latency_ms"]["p50"]
        ran = lambda t: f" ({t['precision']} ran)" if t.get("precision") else ""  # noqa: E731
        ran32 = self.ap_ran.get("fp32")
        note = f" ({ran32} ran)" if ran32 and ran32 != "fp32" else ""
        lines += [f"Accuracy ({self.method}, {self.split} split): FP32 {self.ap_fp32:.4f}{note} -> INT8 {self.ap_int8:.4f}, "
                  f"ΔAP {self.delta_ap:+.4f} (allowed drop {self.max_drop:g})",
                  f"Latency (model-only, batch 1, CPU, p50): FP32 {p32:.2f} ms{ran(self.latency_fp32)} -> INT8 "
                  f"{p8:.2f} ms{ran(self.latency_int8)} (INT8 {max(p32, p8) / min(p32, p8):.2f}x "
                  f"{'faster' if p8 < p32 else 'slower'}); "
                  f"FP32 twin: {self.fp32_path}"]
        if self.graph:
            lines.append(f"INT8 graph: {self.graph['elements']:,} constants (student-only check passed)")
        if self.parity is not None:
            lines.append(self.parity.summary())
        if not self.within_drop:
            lines.append(f"INT8 FAILED: AP drops by {-self.delta_ap:.4f}, more than --max-int8-drop "
                         f"{self.max_drop:g}. The artefact is kept for inspection; do not deploy it. "
                         f"{what_to_try(self.format)}.")
        elif not self.parity_ok:
            lines.append(f"INT8 FAILED: its detections disagree with the FP32 student beyond INT8's tolerance. "
                         f"{what_to_try(self.format)}.")
        if -(self.delta_ap or 0) <= self.max_drop and self.latency_int8 and p8 >= p32:
            lines.append("Note: INT8 is not faster than FP32 on this backend and CPU: deploy the FP32 model here.")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k != "parity"}
        d.update(delta_ap=self.delta_ap, passed=self.passed,
                 parity=self.parity.to_dict() if self.parity is not None else None)
        return json.loads(json.dumps(d, default=str))


def export_calibrated(net, fmt: str, data_yaml: str, out_dir: str | Path, stem: str, imgsz: int = 640,
                      device: str = "cpu", calib_images: int = DEFAULT_CALIB_IMAGES, calib_seed: int = 0,
                      verbose: bool = False) -> tuple[Path, dict]:
    """Ultralytics' INT8 export of ``net`` calibrated on :func:`pick_calibration_images` of ``data_yaml``.

    Writes the artefact (``<stem>_int8.onnx`` / ``<stem>_int8_openvino_model/``) and the calibration list
    ``<stem>_int8_calibration.txt`` into ``out_dir``. Returns ``(artefact, calibration)`` with calibration
    ``{'n', 'available', 'seed', 'list', 'split': 'train'}``.
    """
    from detkd.engine.qat import export_qat_int8, is_quantized
    from detkd.export.exporter import export_loaded

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if is_quantized(net):  # quantization-aware trained (--qat): the ranges it learnt, nothing to calibrate
        with _quiet_quantizers(verbose):
            path = export_qat_int8(net, fmt, out_dir, stem, imgsz=imgsz, device=device, verbose=verbose)
        return path, {"n": 0, "available": len(split_images(data_yaml, "train")), "seed": int(calib_seed),
                      "list": None, "split": "train", "qat": True}
    if not takes_calibration(fmt):  # weight-only INT8: nothing to calibrate
        with _quiet_quantizers(verbose):
            path = export_loaded(net, fmt, out_dir, stem, imgsz=imgsz, device=device, verbose=verbose, int8=True)
        return path, {"n": 0, "available": len(split_images(data_yaml, "train")), "seed": int(calib_seed),
                      "list": None, "split": "train", "weight_only": True}
    images = pick_calibration_images(data_yaml, calib_images, calib_seed)
    listing = out_dir / f"{stem}_int8_calibration.txt"
    listing.write_text("".join(f"{p}\n" for p in images))
    calibration = {"n": len(images), "available": len(split_images(data_yaml, "train")), "seed": int(calib_seed),
                   "list": str(listing), "split": "train"}
    with tempfile.TemporaryDirectory(prefix="detkd-int8-") as tmp, _quiet_quantizers(verbose):
        calib_yaml = write_calibration_yaml(images, data_yaml, Path(tmp) / "calibration")
        # exported in a scratch folder, then moved: Ultralytics' ONNX INT8 export deletes its intermediate
        # <stem>.onnx, which would be the user's FP32 export if it ran in out_dir
        built = export_loaded(net, fmt, Path(tmp) / "export", stem, imgsz=imgsz, device=device, verbose=verbose,
                              int8=True, calibration_data=str(calib_yaml))
        path = out_dir / built.name
        if path.is_dir():
            shutil.rmtree(path)
        shutil.move(str(built), str(path))
    return path, calibration


def export_int8(net, fmt: str, data, out_dir: Path, stem: str, imgsz: int = 640, device: str = "cpu",
                calib_images: int = DEFAULT_CALIB_IMAGES, calib_seed: int = 0, max_drop: float = DEFAULT_MAX_DROP,
                split: str = "val", parity: bool = True, parity_images=None, parity_kwargs: dict | None = None,
                time_budget: float = 5.0, verbose: bool = False) -> Int8Result:
    """Export ``net`` (a bare student) to ``fmt`` in INT8 calibrated on ``data``'s training images, and measure it.

    Writes ``out_dir/<stem>_int8.onnx`` or ``out_dir/<stem>_int8_openvino_model/`` (Ultralytics' names), the FP32
    twin ``<stem>.onnx`` / ``<stem>_openvino_model/``, the calibration list ``<stem>_int8_calibration.txt`` and the
    measurements ``<stem>_int8_report.json``. Never raises on an AP drop: check ``result.passed``.
    """
    from detkd.api import resolve_data
    from detkd.compare.experiment import is_coco_data
    from detkd.engine.qat import float_twin
    from detkd.export.exporter import check_onnx_graph, check_openvino_graph, export_loaded

    out_dir = Path(out_dir)
    data_yaml = resolve_data(data)
    int8_path, calibration = export_calibrated(net, fmt, data_yaml, out_dir, stem, imgsz=imgsz, device=device,
                                               calib_images=calib_images, calib_seed=calib_seed, verbose=verbose)
    result = Int8Result(fmt, int8_path, None, calibration, max_drop=float(max_drop))
    if fmt not in MEASURED_FORMATS:
        return _saved(result, out_dir, stem)
    with _quiet_quantizers(verbose):
        result.fp32_path = export_loaded(float_twin(net), fmt, out_dir, stem, imgsz=imgsz, device=device,
                                         verbose=verbose)  # a QAT student: without its quantizers
    result.graph = (check_onnx_graph(int8_path, net, imgsz) if fmt == "onnx"
                    else check_openvino_graph(int8_path, net, imgsz))
    coco = is_coco_data(data_yaml)
    with tempfile.TemporaryDirectory(prefix="detkd-int8-eval-") as tmp:
        s32 = score_artefact(result.fp32_path, data_yaml, coco, split, imgsz, "cpu", Path(tmp) / "fp32")
        s8 = score_artefact(int8_path, data_yaml, coco, split, imgsz, "cpu", Path(tmp) / "int8")
    result.measured, result.method, result.split = True, s8["method"], split
    result.ap_fp32, result.ap_int8 = s32["AP"], s8["AP"]
    result.ap_ran = {"fp32": s32.get("precision"), "int8": s8.get("precision")}
    result.latency_fp32 = time_artefact(result.fp32_path, imgsz, time_budget=time_budget)
    result.latency_int8 = time_artefact(int8_path, imgsz, time_budget=time_budget)
    if parity:
        from detkd.export.parity import check_int8_parity

        images = int8_parity_images(data_yaml, split, parity_images)
        result.parity = check_int8_parity(net, int8_path, images, imgsz=imgsz,
                                          verbose=False, **(parity_kwargs or {}))
    return _saved(result, out_dir, stem)


@contextlib.contextmanager
def _quiet_quantizers(verbose: bool):
    """Ultralytics' export banners and NNCF's per-operation INFO lines off unless ``verbose`` (warnings stay)."""
    import logging

    from detkd.bench.speed import quiet_ultralytics

    if verbose:
        yield
        return
    nncf = logging.getLogger("nncf")
    level = nncf.level
    nncf.setLevel(logging.WARNING)
    try:
        with quiet_ultralytics():
            yield
    finally:
        nncf.setLevel(level)


def int8_parity_images(data_yaml: str, split: str, parity_images=None) -> list:
    """The images the INT8 parity check compares on: ``parity_images`` (a file or folder) if given, else the first
    :data:`~detkd.export.parity.INT8_PARITY_IMAGES` files of the evaluation split — its own files, not their folder
    (splits given as .txt lists may share one folder with the training images the INT8 file was calibrated on)."""
    from detkd.export.parity import INT8_PARITY_IMAGES, load_parity_images

    return load_parity_images(parity_images or split_images(data_yaml, split) or None, n=INT8_PARITY_IMAGES)


def _saved(result: Int8Result, out_dir: Path, stem: str) -> Int8Result:
    (out_dir / f"{stem}_int8_report.json").write_text(json.dumps(result.to_dict(), indent=1))
    return result

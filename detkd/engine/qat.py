"""Quantization-aware distillation: the student fine-tuned with INT8 fake-quantization, the teacher in float.

Ultralytics does the quantization. Its training argument ``quantize=8`` (``detkd distill --qat``) makes
``BaseTrainer._setup_train`` insert NVIDIA ModelOpt fake-quantizers into the student (``prepare_qat``): INT8 ranges
calibrated once on a few training batches and then held fixed, so training adapts the weights to them. Its
checkpoints carry those ranges beside the module (``ckpt['modelopt']``), ``YOLO(best.pt)`` and a resume re-apply
them, EMA and DDP work unchanged, and its ONNX export writes them as Q/DQ nodes. detkd adds what KD needs:

* **before any work** (:func:`check_qat_run`): ModelOpt installed (else one line naming the deploy extra; Ultralytics
  would try to pip-install it), a student that is a trained checkpoint (the ranges are calibrated on the starting
  weights: a random-init student gets meaningless, fixed ranges), no ``compile``;
* **the teacher stays float**: only the student (``trainer.model``) is quantized; the teacher and the feature
  adapters are separate modules Ultralytics never sees. A quantized teacher checkpoint (a QAT ``best.pt``) is refused
  (:func:`refuse_quantized_teacher`). The adapters are saved beside the checkpoint, never in it, so never exported;
* **export keeping the learnt ranges** (:func:`export_qat_int8`): Ultralytics exports a QAT model to ONNX (Q/DQ) and
  TensorRT only, and refuses OpenVINO. detkd writes the Q/DQ ONNX and, for OpenVINO, converts that ONNX (its Q/DQ
  become FakeQuantize with the same ranges; no NNCF calibration). ``detkd export --int8`` scores it against the
  student with its quantizers removed (:func:`float_twin`), the FP32 model QAT trained.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from copy import deepcopy
from pathlib import Path

from detkd.errors import ConfigError, DetKDError

DEPLOY_EXTRA = "pip install -e '.[deploy]'"
QAT_MODULES = ("modelopt", "huggingface_hub")  # Ultralytics' MODELOPT_REQUIREMENTS (ModelOpt imports the hub)
YAML_SUFFIXES = (".yaml", ".yml")


def qat_requested(args) -> bool:
    """True when a run's training arguments (namespace or dict) ask for quantization-aware training: ``quantize=8``
    (Ultralytics canonicalises 'int8' to 8)."""
    value = args.get("quantize") if isinstance(args, dict) else getattr(args, "quantize", None)
    return value == 8


def check_modelopt() -> None:
    """One line naming the deploy extra when ModelOpt (or the hub it imports) is not installed."""
    missing = [m for m in QAT_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise DetKDError(f"quantization-aware training (--qat, quantize=8) needs nvidia-modelopt "
                         f"({', '.join(missing)} not installed): {DEPLOY_EXTRA}")


def check_qat_run(args, resume: bool = False) -> None:
    """Refuse a QAT run detkd cannot train well, before any work (:class:`DetKDError`, exit 2). No-op without QAT."""
    if not qat_requested(args):
        return
    check_modelopt()
    if getattr(args, "compile", False):
        raise ConfigError("--qat with compile: fake-quantized models do not run under torch.compile. Drop compile.")
    if not resume and str(args.model).lower().endswith(YAML_SUFFIXES):
        raise ConfigError(f"--qat fine-tunes a trained student: its INT8 ranges are calibrated once on the starting "
                          f"weights and then held fixed, so a student built from {Path(str(args.model)).name} (random "
                          f"init) would keep meaningless ranges. Train the student first, then --qat --student "
                          f"runs/detect/<run>/weights/best.pt.")


def is_quantized(net) -> bool:
    """True when ``net`` is a module carrying fake-quantizers (Ultralytics' ``is_qat``: by class name, no import)."""
    import torch
    from ultralytics.utils.torch_utils import is_qat

    return isinstance(net, torch.nn.Module) and is_qat(net)


def refuse_quantized_teacher(net, path) -> None:
    """The teacher computes in float: a quantization-aware trained checkpoint (``ckpt['modelopt']``) is refused."""
    if is_quantized(net):
        raise ConfigError(f"teacher '{path}' is a quantization-aware trained (INT8 fake-quantized) checkpoint: "
                          f"distil from the float teacher (the checkpoint it was fine-tuned from).")


def float_twin(net):
    """``net`` itself when it carries no quantizer, else a copy with them removed: the float model QAT trained (the
    FP32 twin ``detkd export --int8`` compares the INT8 artefact with)."""
    if not is_quantized(net):
        return net
    from ultralytics.utils.torch_utils import strip_qat

    twin = deepcopy(net)
    strip_qat(twin)
    return twin


def export_qat_int8(net, fmt: str, out_dir: str | Path, stem: str, imgsz: int = 640, batch: int = 1,
                    dynamic: bool = False, device: str = "cpu", opset: int | None = None,
                    verbose: bool = False) -> Path:
    """Export a quantization-aware trained student to INT8 with the ranges it learnt (no calibration).

    ``onnx``: Ultralytics' export, Q/DQ nodes at every quantizer, as ``out_dir/<stem>_int8.onnx``. ``openvino``: that
    ONNX converted by OpenVINO (Q/DQ → FakeQuantize, same ranges; FP32 weights kept, OpenVINO compresses them to INT8
    at compile time) as ``out_dir/<stem>_int8_openvino_model/`` with Ultralytics' ``metadata.yaml``, so
    ``YOLO(path)``, ``detkd eval`` and ``detkd bench`` load it like Ultralytics' own OpenVINO INT8 export.
    ``batch``, ``dynamic`` and ``opset`` are the ONNX export's (OpenVINO keeps its dynamic axes).
    """
    from detkd.export.exporter import export_loaded

    if fmt not in ("onnx", "openvino"):
        raise DetKDError(f"a quantization-aware trained model exports INT8 to onnx or openvino here (its ranges are "
                         f"Q/DQ nodes; Ultralytics also writes TensorRT engines on a GPU), not '{fmt}'.")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="detkd-qat-") as tmp:
        built = export_loaded(net, "onnx", Path(tmp), stem, imgsz=imgsz, batch=batch, dynamic=dynamic,
                              device=device, opset=opset, verbose=verbose)  # Q/DQ
        if fmt == "onnx":
            path = out_dir / f"{stem}_int8.onnx"
            shutil.move(str(built), str(path))
            return path
        return _openvino_from_qdq_onnx(built, out_dir / f"{stem}_int8_openvino_model", f"{stem}_int8")


def _openvino_from_qdq_onnx(onnx_path: Path, folder: Path, name: str) -> Path:
    """An OpenVINO IR folder (``<name>.xml/.bin`` + ``metadata.yaml``) converted from a Q/DQ ONNX export."""
    import ast

    import openvino as ov
    from ultralytics.nn.backends.base import BaseBackend
    from ultralytics.utils import YAML

    from detkd.offline import no_telemetry

    metadata = BaseBackend.read_metadata(onnx_path)  # Ultralytics' metadata, stored as strings in the ONNX
    args = metadata.get("args") or {}
    args = ast.literal_eval(args) if isinstance(args, str) else dict(args)
    metadata["args"] = {**args, "format": "openvino"}
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    with no_telemetry():
        model = ov.convert_model(str(onnx_path))
    ov.save_model(model, str(folder / f"{name}.xml"), compress_to_fp16=False)
    YAML.save(folder / "metadata.yaml", metadata)
    return folder

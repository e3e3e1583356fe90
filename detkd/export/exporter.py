"""Export the student through Ultralytics' ``Exporter``; only formats that work offline are offered.

``pt`` is detkd's own: a clean student-only Ultralytics checkpoint (see :mod:`detkd.export.student`). Every other
format goes through ``ultralytics.engine.exporter.Exporter`` on the bare student. For ONNX the exported graph is
inspected afterwards: no initializer may be named like a teacher/adapter, and its weights must not outnumber the
student's.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import torch

from detkd.errors import DetKDError
from detkd.models.compat import is_end_to_end
from detkd.export.student import FORBIDDEN_TOKENS, assert_student_only, load_student, save_student_checkpoint
from detkd.offline import no_telemetry

# format -> (Python modules it needs, all importable; pip packages that provide them). Formats Ultralytics offers but
# that download tools/assets at export time (TensorFlow SavedModel/GraphDef/Edge TPU) or need vendor toolchains
# (imx, rknn, axelera, deepx, qnn, hailo, ascend, xilinx, coreai) are not offered: they cannot work offline.
FORMAT_REQUIREMENTS: dict[str, tuple[tuple[str, ...], str]] = {
    "pt": ((), ""),
    "torchscript": ((), ""),
    "onnx": (("onnx",), "onnx"),
    "openvino": (("openvino",), "openvino"),
    "engine": (("tensorrt", "onnx"), "tensorrt onnx"),
    "coreml": (("coremltools",), "coremltools"),
    "litert": (("litert_torch", "ai_edge_litert"), "litert-torch ai-edge-litert"),
    "paddle": (("paddle", "x2paddle"), "paddlepaddle x2paddle"),
    "mnn": (("MNN",), "MNN"),
    "ncnn": (("pnnx", "ncnn"), "pnnx ncnn"),
    "executorch": (("executorch",), "executorch"),
}
GPU_ONLY_FORMATS = {"engine"}
HALF_NEEDS_GPU = {"torchscript"}  # Ultralytics only casts these to FP16 on a CUDA device


@dataclass
class ExportResult:
    """What :func:`export_model` produced.

    Attributes:
        path: the exported file or directory.
        format: the format name ('onnx', 'pt', ...).
        student_params: parameter count of the exported student (unfused).
        removed: names stripped from the checkpoint (teacher, adapters, wrapper), empty for a clean checkpoint.
        graph: for ONNX, :func:`check_onnx_graph`'s summary (initializer count/elements); else empty.
        parity: for ONNX with a parity check, the :class:`detkd.export.parity.ParityReport` (INT8: the
            :class:`detkd.export.parity.Int8ParityReport`).
        int8: for an INT8 export, the :class:`detkd.export.int8.Int8Result`.
    """

    path: Path
    format: str
    student_params: int
    removed: list[str] = field(default_factory=list)
    graph: dict = field(default_factory=dict)
    parity: object | None = None
    int8: object | None = None  # --int8: the detkd.export.int8.Int8Result (AP and latency of INT8 vs FP32)


def normalize_format(fmt: str) -> str:
    """Lower-case and alias a format name; raise :class:`DetKDError` for one detkd cannot export offline."""
    name = str(fmt).strip().lower().lstrip(".")
    name = {"tensorrt": "engine", "trt": "engine", "torch": "pt", "pytorch": "pt", "ts": "torchscript",
            "mlpackage": "coreml", "tflite": "litert"}.get(name, name)
    if name not in FORMAT_REQUIREMENTS:
        raise DetKDError(f"export format '{fmt}' is not available. Choose one of: {', '.join(FORMAT_REQUIREMENTS)} "
                         f"(TensorFlow, Edge TPU and vendor NPU formats need downloads or toolchains detkd does not "
                         f"fetch).")
    return name


def check_format_requirements(fmt: str, device: str = "cpu", half: bool = False) -> None:
    """Raise :class:`DetKDError` naming the missing package/device before any work starts (detkd never installs)."""
    modules, pip_names = FORMAT_REQUIREMENTS[fmt]
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise DetKDError(f"export format '{fmt}' needs the Python package(s) {', '.join(missing)}, not installed. "
                         f"Install them: pip install {pip_names}")
    on_gpu = str(device).lower() not in {"cpu", "", "none", "mps"}
    if on_gpu and not torch.cuda.is_available():
        raise DetKDError(f"device '{device}' requested but CUDA is not available here. Use --device cpu.")
    if fmt in GPU_ONLY_FORMATS and not on_gpu:
        raise DetKDError(f"export format '{fmt}' builds on a GPU: pass --device 0.")
    if half and fmt in HALF_NEEDS_GPU and not on_gpu:
        raise DetKDError(f"--half for '{fmt}' needs a CUDA device (Ultralytics exports FP32 on CPU): pass --device 0 "
                         f"or drop --half.")


def _output_location(output: str | Path | None, default_dir: Path, stem: str, suffix: str) -> tuple[Path, str]:
    """(directory, stem) for the artefact: ``output`` may be a file path with the format's suffix or a directory."""
    if output is None:
        return default_dir, stem
    out = Path(output)
    if suffix and out.name.endswith(suffix):
        return out.parent, out.name[: -len(suffix)]
    if out.suffix.lower() in _artefact_suffixes() and not out.is_dir():
        raise DetKDError(f"--output {out}: a '{out.suffix}' file, but this format writes '{suffix}': name it "
                         f"{out.with_suffix('').name}{suffix} or give a folder.")
    return out, stem


def _artefact_suffixes() -> set[str]:
    """File suffixes of every export format (``.onnx``, ``.engine``, ...) and of checkpoints."""
    from ultralytics.engine.exporter import export_formats

    return {s.lower() for s in export_formats()["Suffix"] if s.startswith(".")} | {".pt", ".pth"}


def export_loaded(net: torch.nn.Module, fmt: str, out_dir: str | Path, stem: str, imgsz: int = 640, batch: int = 1,
                  half: bool = False, dynamic: bool = False, device: str = "cpu", opset: int | None = None,
                  simplify: bool | None = None, verbose: bool = False, int8: bool = False,
                  calibration_data: str | None = None) -> Path:
    """Export an in-memory bare student with Ultralytics' ``Exporter``; return the artefact path.

    Args:
        net: a ``DetectionModel`` (teacher-free; checked by :func:`assert_student_only`).
        fmt: a normalised format other than 'pt'.
        out_dir, stem: the artefact is written as ``out_dir/<stem><suffix>`` (e.g. ``runs/x/best.onnx``).
        imgsz: square input side in pixels; batch: static batch (the maximum batch when ``dynamic``).
        half: FP16 weights (ONNX on CPU: converted after export with FP32 inputs/outputs kept).
        dynamic: dynamic batch/height/width axes.
        simplify: run onnxslim (None: only when onnxslim is installed — detkd never installs it).
        int8: Ultralytics' ``quantize=8`` calibrated on the ``val`` split of ``calibration_data`` (a data.yaml, see
            :func:`detkd.export.int8.write_calibration_yaml`); the artefact is ``<stem>_int8.onnx`` /
            ``<stem>_int8_openvino_model/``.
    """
    from ultralytics.engine.exporter import Exporter

    from detkd.engine.qat import export_qat_int8, is_quantized

    assert_student_only(net)
    if is_quantized(net) and half:
        raise DetKDError("this is a quantization-aware trained (INT8) student: it exports with the INT8 ranges it "
                         "learnt, so --half does not apply. Drop --half.")
    if fmt == "openvino" and is_quantized(net):  # Ultralytics writes QAT ranges to ONNX Q/DQ only (engine/qat.py)
        return export_qat_int8(net, fmt, out_dir, stem, imgsz=imgsz, batch=batch, dynamic=dynamic, device=device,
                               opset=opset, verbose=verbose)
    if simplify is None:
        simplify = importlib.util.find_spec("onnxslim") is not None
    model = net  # Exporter deep-copies before touching anything; pt_path only names the output
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    old_pt_path, old_args = getattr(model, "pt_path", None), getattr(model, "args", None)
    model.pt_path = str(out_dir / f"{stem}.pt")
    if isinstance(old_args, dict) and "data" not in old_args:  # the exporter reads args["data"] for its metadata
        model.args = {**old_args, "data": None}
    overrides = {"format": fmt, "imgsz": imgsz, "batch": batch, "quantize": 16 if half else None, "dynamic": dynamic,
                 "device": device, "mode": "export", "verbose": verbose, "data": None}
    if int8:
        from detkd.export.int8 import takes_calibration

        overrides["quantize"] = 8
        if takes_calibration(fmt):
            if not calibration_data:
                raise DetKDError("INT8 export needs calibration data (a data.yaml): detkd never uses Ultralytics' "
                                 "default dataset, which would be downloaded.")
            overrides.update(data=str(calibration_data), fraction=1.0)
    if fmt == "onnx":  # Ultralytics rejects ONNX-only arguments for other formats (OpenVINO: 'simplify' not supported)
        overrides.update(simplify=simplify, opset=opset)
    if is_end_to_end(net):
        overrides["nms"] = False  # end-to-end students export their NMS-free one-to-one head: (N, 300, 6) detections
    try:
        with no_telemetry():  # OpenVINO's converter and NNCF would report usage over the network
            path = Exporter(overrides=overrides)(model=model)
    except DetKDError:
        raise
    except Exception as e:
        raise DetKDError(f"Ultralytics export to '{fmt}' failed ({type(e).__name__}: {e}).") from e
    finally:
        model.pt_path = old_pt_path
        if old_args is not None:
            model.args = old_args
    if not path or not Path(path).exists():
        raise DetKDError(f"Ultralytics export to '{fmt}' produced no file (see the log above).")
    return Path(path)


def student_weight_budget(net: torch.nn.Module, imgsz: int, int8: bool = False) -> int:
    """The most numbers an exported student may hold: its parameters, its anchor grid (4 values per anchor at
    ``imgsz``), 10 000 constants, and for INT8 graphs 4 quantization ranges per convolution output channel."""
    strides = [int(s) for s in getattr(net, "stride", torch.tensor([8, 16, 32])).tolist()]
    anchors = sum((imgsz // s) ** 2 for s in strides)
    ranges = 4 * sum(m.out_channels for m in net.modules() if isinstance(m, torch.nn.Conv2d)) if int8 else 0
    return sum(p.numel() for p in net.parameters()) + 4 * anchors + 10_000 + ranges


def _check_graph(path, names: list[str], elements: int, net: torch.nn.Module | None, imgsz: int,
                 int8: bool) -> int | None:
    """Raise :class:`DetKDError` when a graph names distillation parts or holds more numbers than the student."""
    bad = [n for n in names if any(t in n.lower() for t in FORBIDDEN_TOKENS)]
    if bad:
        raise DetKDError(f"exported graph {path} has tensors named like distillation parts ({', '.join(bad[:5])}); "
                         f"the export must contain only the student.")
    if net is None:
        return None
    budget = student_weight_budget(net, imgsz, int8)
    if elements > budget:
        raise DetKDError(f"exported graph {path} holds {elements:,} weights, more than the student's {budget:,}: "
                         f"it may contain the teacher or adapters.")
    return budget


def check_onnx_graph(path: str | Path, net: torch.nn.Module | None = None, imgsz: int = 640) -> dict:
    """Inspect an exported ONNX graph (FP32, FP16 or INT8); raise :class:`DetKDError` if it may hold more than the
    student.

    Checks that no initializer or node is named with a teacher/adapter/projector/distill token and, when ``net`` is
    given, that the initializers hold no more numbers than :func:`student_weight_budget`.

    Returns:
        ``{"initializers": count, "elements": total numbers, "budget": allowed elements or None}``.
    """
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    names = [i.name for i in graph.initializer] + [n.name for n in graph.node]
    elements = int(sum(numpy_helper.to_array(i).size for i in graph.initializer))
    int8 = any(n.op_type in {"QuantizeLinear", "DequantizeLinear"} for n in graph.node)
    budget = _check_graph(path, names, elements, net, imgsz, int8)
    return {"initializers": len(graph.initializer), "elements": elements, "budget": budget}


def check_openvino_graph(path: str | Path, net: torch.nn.Module | None = None, imgsz: int = 640) -> dict:
    """The student-only check of :func:`check_onnx_graph` for an OpenVINO IR folder (or its .xml): operation names
    and the numbers its Constant operations hold.

    Returns:
        ``{"initializers": Constant count, "elements": total numbers, "budget": allowed elements or None}``.
    """
    import math

    import openvino as ov

    p = Path(path)
    xml = p if p.is_file() else next(iter(sorted(p.glob("*.xml"))), None)
    if xml is None:
        raise DetKDError(f"'{path}' holds no OpenVINO .xml: the export is incomplete.")
    ops = ov.Core().read_model(str(xml)).get_ops()
    consts = [op for op in ops if op.get_type_name() == "Constant"]
    elements = int(sum(math.prod(op.get_output_shape(0)) for op in consts))
    int8 = any(op.get_type_name() == "FakeQuantize" for op in ops)
    budget = _check_graph(path, [op.get_friendly_name() for op in ops], elements, net, imgsz, int8)
    return {"initializers": len(consts), "elements": elements, "budget": budget}


def export_model(model: str | Path | torch.nn.Module, format: str = "onnx", imgsz: int = 640, batch: int = 1,
                 half: bool = False, dynamic: bool = False, device: str = "cpu", output: str | Path | None = None,
                 opset: int | None = None, simplify: bool | None = None, parity: bool = True,
                 parity_images: str | Path | None = None, parity_kwargs: dict | None = None,
                 verbose: bool = True, int8: bool = False, data=None, int8_kwargs: dict | None = None) -> ExportResult:
    """Export the student of ``model`` (a ``.pt``, a model YAML or a module) to ``format``.

    The artefact goes to ``output`` (a file with the format's suffix, or a directory), by default beside the checkpoint
    (the working directory for a YAML); format 'pt' defaults to ``<stem>_student.pt`` there. For ONNX, the graph is checked (:func:`check_onnx_graph`) and, unless
    ``parity=False``, :func:`detkd.export.parity.check_onnx_parity` runs the same images through torch and ONNX Runtime
    and raises :class:`DetKDError` when raw outputs or post-NMS detections disagree.

    ``int8``: calibrate on the training images of ``data`` and measure the INT8 artefact against its FP32 twin
    (:func:`detkd.export.int8.export_int8`, ``int8_kwargs``: calib_images, calib_seed, max_drop, split,
    time_budget); the result's ``int8`` holds the measurements, ``path`` the INT8 artefact.
    """
    fmt = normalize_format(format)
    if int8:
        from detkd.export.int8 import check_int8_request

        check_int8_request(fmt, data, half=half, dynamic=dynamic, batch=batch)
    check_format_requirements(fmt, device, half)
    if int(imgsz) <= 0 or int(imgsz) % 32:
        raise DetKDError(f"--imgsz {imgsz} must be a positive multiple of 32 (the detector's largest stride).")
    if int(batch) < 1:
        raise DetKDError(f"--batch {batch} must be >= 1.")
    net, ckpt, removed = load_student(model, role="model")
    params = sum(p.numel() for p in net.parameters())
    if removed:
        from ultralytics.utils import LOGGER

        LOGGER.warning(f"detkd export: stripped non-student parts from the checkpoint: {', '.join(removed)}")
    src = None if isinstance(model, torch.nn.Module) else Path(str(model))
    default_dir = src.parent if src is not None and src.suffix.lower() in {".pt", ".pth"} else Path.cwd()
    stem = src.stem if src is not None else "student"
    if fmt == "pt" and output is None:
        stem += "_student"  # best.pt -> best_student.pt beside it, never the source itself
    from ultralytics.engine.exporter import export_formats

    suffix = ".pt" if fmt == "pt" else dict(zip(export_formats()["Argument"], export_formats()["Suffix"]))[fmt]
    out_dir, stem = _output_location(output, default_dir, stem, suffix)

    if fmt == "pt":
        path = out_dir / f"{stem}.pt"
        if src is not None and path.resolve() == src.resolve():
            raise DetKDError(f"--output {path} would overwrite the source checkpoint; choose another path.")
        return ExportResult(save_student_checkpoint(net, path, ckpt), fmt, params, removed)

    if int8:
        from detkd.export.int8 import export_int8

        measured = export_int8(net, fmt, data, out_dir, stem, imgsz=imgsz, device=device, parity=parity,
                               parity_images=parity_images, parity_kwargs=parity_kwargs, verbose=verbose,
                               **(int8_kwargs or {}))
        return ExportResult(measured.int8_path, fmt, params, removed, graph=measured.graph, parity=measured.parity,
                            int8=measured)
    path = export_loaded(net, fmt, out_dir, stem, imgsz=imgsz, batch=batch, half=half, dynamic=dynamic,
                         device=device, opset=opset, simplify=simplify, verbose=verbose)
    result = ExportResult(path, fmt, params, removed)
    if fmt == "onnx":
        result.graph = check_onnx_graph(path, net, imgsz)
        if parity:
            from detkd.export.parity import check_onnx_parity, load_parity_images

            images = load_parity_images(parity_images)
            result.parity = check_onnx_parity(net, path, images, imgsz=imgsz, half=half, device=device,
                                              **(parity_kwargs or {}))
    return result

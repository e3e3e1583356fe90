"""Exported detectors (``.pt``, ``.onnx``, OpenVINO folder): recognise, load and run them, and name the precision
that really ran. Loading and inference are Ultralytics' ``AutoBackend``; this module only adds the checks and the
read-back of what executed.

API (stable; other detkd modules import it)::

    from detkd.deploy.backends import (inspect_artefact, load_backend, executed_precision, import_openvino,
                                       openvino_missing_message, openvino_precisions, DEPLOY_EXTRA)

    art = inspect_artefact("best_int8_openvino_model/")  # Artefact(path, kind, weights, metadata); DetKDError
    art.kind        # 'pt' | 'onnx' | 'openvino' | 'yaml'
    art.weights     # precision stored in the file: 'fp32' | 'fp16' | 'int8'
    net = load_backend(art, device="cpu", precision="fp32")  # Ultralytics AutoBackend; precision: OpenVINO
                    # inference precision 'fp32' | 'bf16' | 'fp16' | None (= OpenVINO's default for the device)
    y = net(x)      # x: (B, 3, H, W) float32 in [0, 1] -> the model's raw output, as Ultralytics returns it
    ran = executed_precision(net)  # {'precision': 'bf16', 'detail': '...'}: read back from the backend
    import_openvino()              # the openvino module, or DetKDError naming pip install -e '.[deploy]'
    openvino_precisions()          # ['fp32', 'bf16'] here: what the OpenVINO CPU plugin can execute

``precision`` names: ``fp32``, ``fp16``, ``bf16``, ``int8``; a mixed INT8 model reads ``int8`` with the float
precision of its remaining layers in ``detail``. OpenVINO's CPU plugin runs FP32 (and FP16) IRs in BF16 by default on
CPUs with BF16 units (AVX512-BF16, AMX): ``executed_precision`` says so, from the compiled model's
``INFERENCE_PRECISION_HINT`` and the per-layer runtime precisions.
"""

from __future__ import annotations

import importlib
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from detkd.errors import DetKDError

DEPLOY_EXTRA = "pip install -e '.[deploy]'"
# detkd precision name -> OpenVINO INFERENCE_PRECISION_HINT value
OPENVINO_HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
# OpenVINO element type names -> detkd precision names
_OV_TYPES = {"f32": "fp32", "bf16": "bf16", "f16": "fp16", "u8": "int8", "i8": "int8", "float32": "fp32",
             "bfloat16": "bf16", "float16": "fp16"}
_ONNX_INT8_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "ConvInteger", "MatMulInteger",
                  "QLinearMatMul", "DynamicQuantizeLinear"}
ARTEFACT_HELP = ("a checkpoint (.pt), an ONNX file (.onnx) or an OpenVINO folder (*_openvino_model/ with its .xml "
                 "and .bin) exported by detkd export or Ultralytics")


@dataclass
class Artefact:
    """An exported (or native) detector on disk.

    Attributes:
        path: the ``.pt``/``.onnx`` file or the OpenVINO folder (never the .xml inside it).
        kind: 'pt', 'onnx', 'openvino' or 'yaml'.
        weights: precision of the stored weights: 'fp32', 'fp16' or 'int8' (quantized graph).
        metadata: Ultralytics' export metadata (imgsz, batch, names, end2end, args ...), ``{}`` for .pt/.yaml.
    """

    path: Path
    kind: str
    weights: str = "fp32"
    metadata: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        """Backend name as bench/compare print it: 'torch', 'onnxruntime' or 'openvino'."""
        return {"pt": "torch", "yaml": "torch", "onnx": "onnxruntime"}.get(self.kind, self.kind)


def openvino_missing_message(what: str = "OpenVINO") -> str:
    """The one line shown when the deploy extra is absent."""
    return f"{what} needs the 'openvino' package (detkd's deploy extra), not installed: {DEPLOY_EXTRA}"


def import_openvino():
    """The ``openvino`` module; :class:`DetKDError` naming the deploy extra when it cannot be imported."""
    try:
        return importlib.import_module("openvino")
    except ImportError:
        raise DetKDError(openvino_missing_message()) from None


def openvino_available() -> bool:
    """True when ``import openvino`` works."""
    try:
        import_openvino()
        return True
    except DetKDError:
        return False


def openvino_precisions(device: str = "CPU") -> list[str]:
    """Inference precisions the OpenVINO ``device`` executes natively, in ['fp32', 'bf16', 'fp16'] order.

    From the plugin's ``OPTIMIZATION_CAPABILITIES`` (e.g. ['BF16', 'FP32', 'INT8', ...]); FP32 is always there.
    INT8 is not listed: it needs a quantized model (an INT8 export), not a precision hint.
    """
    ov = import_openvino()
    caps = {str(c).upper() for c in ov.Core().get_property(device, "OPTIMIZATION_CAPABILITIES")}
    return ["fp32"] + [p for p in ("bf16", "fp16") if p.upper() in caps]


def _openvino_xml(path: Path) -> Path:
    """The IR .xml of an OpenVINO folder (or the .xml itself); DetKDError when there is none or no .bin beside it."""
    xml = path if path.is_file() else next(iter(sorted(path.glob("*.xml"))), None)
    if xml is None or not xml.with_suffix(".bin").is_file():
        raise DetKDError(f"'{path}' is not an OpenVINO model: expected a folder with <name>.xml and <name>.bin "
                         f"(detkd export --format openvino writes *_openvino_model/).")
    return xml


def artefact_kind(path: str | Path) -> str:
    """'pt', 'onnx', 'openvino' or 'yaml' from the path alone (a folder holding an .xml is OpenVINO).

    Raises :class:`DetKDError` when the path does not exist or is not one of those.
    """
    p = Path(str(path)).expanduser()
    suffix = p.suffix.lower()
    if suffix in {".yaml", ".yml"}:
        return "yaml"
    if not p.exists():
        raise DetKDError(f"model '{path}' not found. Pass {ARTEFACT_HELP}.")
    if p.is_dir() and not any(p.glob("*.xml")):
        inside = next((f for f in (p / "weights" / "best.pt", p / "best.pt") if f.is_file()), None)
        raise DetKDError(f"model '{path}' is a folder without a model in it: pass " + (
            f"the checkpoint inside, e.g. {inside}." if inside else f"{ARTEFACT_HELP}."))
    if p.is_dir() or suffix == ".xml":
        _openvino_xml(p)
        folder = p if p.is_dir() else p.parent
        if not folder.name.lower().endswith("_openvino_model"):  # how Ultralytics recognises the format
            raise DetKDError(f"OpenVINO folder '{folder}' must be named *_openvino_model (as exported): rename it, "
                             f"e.g. to '{folder.name}_openvino_model'.")
        return "openvino"
    if suffix in {".pt", ".pth"}:
        return "pt"
    if suffix == ".onnx":
        return "onnx"
    raise DetKDError(f"model '{path}': unsupported file type '{suffix or p.name}'. Pass {ARTEFACT_HELP}.")


def onnx_weights_precision(path: str | Path) -> str:
    """'int8' (quantize/dequantize or integer ops), 'fp16' (mostly FP16 initializers) or 'fp32'; DetKDError when
    the file is not a readable ONNX model."""
    try:
        import onnx
    except ImportError:
        raise DetKDError("reading an ONNX model needs 'onnx' and 'onnxruntime': pip install -e '.[onnx]'") from None
    try:
        graph = onnx.load(str(path)).graph
    except Exception as e:
        raise DetKDError(f"'{path}' is not a readable ONNX model ({type(e).__name__}). Re-export it with "
                         f"detkd export --format onnx.") from None
    if any(n.op_type in _ONNX_INT8_OPS for n in graph.node):
        return "int8"
    types = Counter(t.data_type for t in graph.initializer if len(t.dims))
    return "fp16" if types and types.most_common(1)[0][0] == onnx.TensorProto.FLOAT16 else "fp32"


def openvino_weights_precision(path: str | Path) -> str:
    """'int8' (FakeQuantize ops from NNCF), 'fp16' (compressed FP16 constants) or 'fp32' of an OpenVINO IR."""
    ov = import_openvino()
    xml = _openvino_xml(Path(path))
    try:
        model = ov.Core().read_model(str(xml), str(xml.with_suffix(".bin")))
    except Exception as e:
        raise DetKDError(f"'{path}' is not a readable OpenVINO model ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:120]}). Re-export it with detkd export --format openvino.") from None
    ops = model.get_ops()
    if any(op.get_type_name() == "FakeQuantize" for op in ops):
        return "int8"
    consts = Counter(op.get_element_type().get_type_name() for op in ops if op.get_type_name() == "Constant")
    return "fp16" if consts.get("f16", 0) > consts.get("f32", 0) else "fp32"


def read_metadata(path: str | Path) -> dict:
    """Ultralytics' export metadata of an artefact with its values typed as ``AutoBackend`` types them (imgsz list,
    batch int, names dict, args dict, end2end bool); ``{}`` when there is none."""
    import ast

    from ultralytics.nn.backends.base import BaseBackend

    meta = dict(BaseBackend.read_metadata(path) or {})
    for k, v in meta.items():
        if k in {"stride", "batch", "channels"}:
            meta[k] = int(v)
        elif k in {"imgsz", "names", "args", "end2end"} and isinstance(v, str):
            try:
                meta[k] = ast.literal_eval(v)
            except (ValueError, SyntaxError):
                pass
    meta["end2end"] = bool(meta.get("end2end", False) or (meta.get("args") or {}).get("nms", False))
    return meta


def inspect_artefact(path: str | Path | Artefact) -> Artefact:
    """Recognise and read an artefact without building a backend; one clear :class:`DetKDError` when it is missing,
    of an unknown type or unreadable (OpenVINO artefacts also need the deploy extra)."""
    if isinstance(path, Artefact):
        return path
    kind = artefact_kind(path)
    p = Path(str(path)).expanduser()
    if kind in {"pt", "yaml"}:
        return Artefact(p, kind)
    if kind == "onnx":
        return Artefact(p, kind, onnx_weights_precision(p), read_metadata(p))
    if p.suffix.lower() == ".xml":
        p = p.parent
    return Artefact(p, kind, openvino_weights_precision(p), read_metadata(p))


def load_backend(artefact: str | Path | Artefact, device: str = "cpu", precision: str | None = None,
                 fp16: bool = False):
    """Ultralytics ``AutoBackend`` on the artefact (a ``.pt`` is fused, as Ultralytics predicts with it).

    Args:
        artefact: path or :class:`Artefact`.
        device: 'cpu' or a CUDA index (OpenVINO runs on the CPU).
        precision: OpenVINO inference precision ('fp32', 'bf16', 'fp16'; None = the plugin's default for the device,
            which is BF16 on CPUs with BF16 units). Ignored by the other backends.
        fp16: FP16 inputs for torch on CUDA / FP16 ONNX (as Ultralytics' ``quantize=16``).
    """
    from ultralytics.nn.autobackend import AutoBackend
    from ultralytics.utils.torch_utils import select_device

    art = inspect_artefact(artefact)
    if art.kind == "yaml":
        raise DetKDError(f"'{art.path}' is a model YAML, not trained weights: pass {ARTEFACT_HELP}.")
    target = str(art.path)
    if art.kind == "pt":
        from detkd.export.student import load_student

        target = load_student(art.path, role="model")[0]
    try:
        net = AutoBackend(target, device=select_device(str(device), verbose=False), fp16=fp16, verbose=False)
    except DetKDError:
        raise
    except Exception as e:
        raise DetKDError(f"'{art.path}' could not be loaded by Ultralytics ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:160] if str(e) else ''}). Pass {ARTEFACT_HELP}.") from None
    if art.kind == "openvino" and precision is not None:
        set_openvino_precision(net, precision, art.path)
    return net


def set_openvino_precision(net, precision: str, path: str | Path) -> None:
    """Recompile an OpenVINO ``AutoBackend`` (built on the IR at ``path``: the folder or its .xml) with
    ``INFERENCE_PRECISION_HINT`` for ``precision`` (fp32/bf16/fp16).

    Later recompiles by Ultralytics (static INT8 models reshaped per input shape) keep the hint. A hint the device
    cannot execute is not an error here: OpenVINO falls back and :func:`executed_precision` reports what ran.
    """
    key = str(precision).lower()
    if key not in OPENVINO_HINTS:
        raise DetKDError(f"OpenVINO precision '{precision}' not understood: use one of {', '.join(OPENVINO_HINTS)}.")
    backend = getattr(net, "backend", net)
    compile_fn = backend.compile_model  # partial(core.compile_model, device_name=..., config=...)
    config = {**compile_fn.keywords.get("config", {}), "INFERENCE_PRECISION_HINT": OPENVINO_HINTS[key]}
    backend.compile_model = partial(compile_fn.func, *compile_fn.args, **{**compile_fn.keywords, "config": config})
    runtime_input = backend.ov_compiled_model.input().get_partial_shape()
    core = compile_fn.func.__self__
    xml = _openvino_xml(Path(path))
    model = core.read_model(str(xml), str(xml.with_suffix(".bin")))
    if not runtime_input.is_dynamic and model.input().get_partial_shape().is_dynamic:
        model.reshape(runtime_input)
    backend.ov_compiled_model = backend.compile_model(model)


def _openvino_runtime_precisions(compiled) -> Counter:
    """Runtime precision of each convolution of a compiled OpenVINO model, counted ('bf16': 60, 'u8': 4 ...)."""
    counts: Counter = Counter()
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        if "layerType" in info and info["layerType"].astype(str) == "Convolution":
            counts[info["runtimePrecision"].astype(str)] += 1
    return counts


def openvino_executed_precision(compiled) -> dict:
    """What an OpenVINO compiled model executes: ``{'precision', 'hint', 'convolutions', 'detail'}``.

    ``precision`` is the precision most convolutions run in (int8 when any runs quantized); ``hint`` the compiled
    ``INFERENCE_PRECISION_HINT``; ``convolutions`` the per-precision counts.
    """
    hint = _OV_TYPES.get(compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name(), "fp32")
    convs: Counter = Counter()
    for k, v in _openvino_runtime_precisions(compiled).items():
        convs[_OV_TYPES.get(k, k)] += v
    if not convs:
        precision = hint
    elif convs.get("int8"):
        precision = "int8"
    else:
        precision = convs.most_common(1)[0][0]
    floats = [p for p in convs if p != "int8"]
    detail = (f"OpenVINO {', '.join(compiled.get_property('EXECUTION_DEVICES'))}: INFERENCE_PRECISION_HINT {hint}; "
              f"convolutions {', '.join(f'{n} {p}' for p, n in convs.most_common())}")
    if precision == "int8" and floats:
        detail += f" (the rest in {'/'.join(floats)})"
    return {"precision": precision, "hint": hint, "convolutions": dict(convs), "detail": detail}


def executed_precision(net) -> dict:
    """The precision an ``AutoBackend`` really runs in, read back from it: ``{'precision', 'detail'}``.

    torch: the parameters' dtype; ONNX Runtime: the session's graph (int8 when it holds quantize/dequantize or
    integer ops, fp16 for FP16 weights); OpenVINO: :func:`openvino_executed_precision` of the compiled model.
    """
    fmt = getattr(net, "format", "pt")
    backend = getattr(net, "backend", net)
    if fmt == "openvino":
        return openvino_executed_precision(backend.ov_compiled_model)
    if fmt == "onnx":
        session = backend.session
        path = getattr(session, "_model_path", None)
        weights = onnx_weights_precision(path) if path else ("fp16" if getattr(net, "fp16", False) else "fp32")
        return {"precision": weights, "detail": f"ONNX Runtime {session.get_providers()[0]}, {weights} graph"}
    model = getattr(backend, "model", net)
    dtype = next(iter(model.parameters())).dtype if hasattr(model, "parameters") else None
    name = {"torch.float16": "fp16", "torch.bfloat16": "bf16"}.get(str(dtype), "fp32")
    return {"precision": name, "detail": f"torch {dtype}"}

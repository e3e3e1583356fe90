"""Resolve and load detector weights without ever downloading.

A model is named either by a checkpoint (``*.pt``) that must exist on disk, or by a model YAML (``yolov8n.yaml``:
a file, or one of Ultralytics' bundled configs) that builds a randomly initialised model — what you train from
scratch with. Missing files raise :class:`~detkd.errors.WeightsNotFoundError` with the fix.
"""

from __future__ import annotations

from pathlib import Path

from detkd import offline
from detkd.errors import WeightsNotFoundError

offline.install()

WEIGHT_SUFFIXES = (".pt", ".pth")
YAML_SUFFIXES = (".yaml", ".yml")
REPO_WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "weights"  # the repo's weights/ folder (source checkouts)


def _search_dirs() -> list[Path]:
    from ultralytics.utils import WEIGHTS_DIR

    dirs = [Path.cwd() / "weights", REPO_WEIGHTS_DIR, Path(WEIGHTS_DIR)]
    return [d for i, d in enumerate(dirs) if d.resolve() not in {e.resolve() for e in dirs[:i]}]  # each once


# Files and folders Ultralytics exports for deployment: inference only, no training graph (suffix / folder-name tail).
EXPORTED_SUFFIXES = {".onnx": "ONNX", ".xml": "OpenVINO", ".engine": "TensorRT", ".torchscript": "TorchScript",
                     ".tflite": "LiteRT", ".mlpackage": "CoreML", ".mnn": "MNN", ".pte": "ExecuTorch"}
EXPORTED_FOLDERS = {"_openvino_model": "OpenVINO", "_ncnn_model": "NCNN", "_paddle_model": "Paddle",
                    "_saved_model": "TensorFlow", "_executorch_model": "ExecuTorch"}


def exported_format(path: str | Path) -> str | None:
    """The format name when ``path`` is an exported (deployment) model, not a checkpoint detkd can train from."""
    p = Path(str(path).rstrip("/\\")).expanduser()
    if p.suffix.lower() in EXPORTED_SUFFIXES:
        return EXPORTED_SUFFIXES[p.suffix.lower()]
    folder = next((f for tail, f in EXPORTED_FOLDERS.items() if p.name.lower().endswith(tail)), None)
    if folder or (p.is_dir() and any(p.glob("*.xml"))):
        return folder or "OpenVINO"
    return None


def refuse_exported(model: str | Path, role: str = "model", fix: str = "") -> None:
    """:class:`~detkd.errors.DetKDError` when ``model`` is an exported artefact (ONNX, OpenVINO ...): training,
    distillation and resuming need PyTorch checkpoints. ``fix`` says what to pass instead."""
    from detkd.errors import DetKDError

    fmt = exported_format(model)
    if fmt:
        fix = fix or (f"a {role} is loaded from the PyTorch checkpoint (.pt) it was exported from, e.g. "
                      f"runs/.../weights/best.pt")
        raise DetKDError(f"{role} '{model}' is an exported {fmt} model (inference only): {fix}.")


def resolve_model_path(model: str | Path, role: str = "model") -> str:
    """Return a local path (or bundled YAML name) for ``model``; raise a clear error when it does not exist.

    ``role`` ("teacher", "student", "model") only flavours the message.
    """
    name = str(model).strip()
    refuse_exported(name, role)
    if name.lower().startswith(("http://", "https://", "ul://", "hub.")):
        raise WeightsNotFoundError(
            f"{role} '{name}' is a URL: detkd never downloads. Download it yourself and pass the local path."
        )
    path = Path(name).expanduser()
    suffix = path.suffix.lower()
    if path.is_dir():
        inside = next((p for p in (path / "weights" / "best.pt", path / "best.pt") if p.is_file()), None)
        raise WeightsNotFoundError(f"{role} '{name}' is a folder, not a checkpoint or model YAML: give the file"
                                   + (f", e.g. {inside}." if inside else " (a run's weights/best.pt, or a .yaml)."))
    if suffix in YAML_SUFFIXES:
        if path.is_file():
            check_model_yaml(path, role)
            return str(path)
        from ultralytics.nn.tasks import yaml_model_load

        try:
            yaml_model_load(name)  # bundled configs with a scale letter: yolov8n.yaml -> yolov8.yaml, scale 'n'
            return name
        except Exception:
            raise WeightsNotFoundError(
                f"{role} config '{name}' not found (neither a file nor an Ultralytics model YAML such as "
                f"'yolov8n.yaml', 'yolov8l.yaml', 'yolo11n.yaml')."
            ) from None
    if suffix in WEIGHT_SUFFIXES or not suffix:
        candidates = [path] if path.is_absolute() or len(path.parts) > 1 else [path] + [d / path.name for d in _search_dirs()]
        if not suffix:
            candidates = [c.with_suffix(".pt") for c in candidates]
        for c in candidates:
            if c.is_file():
                return str(c)
        stem = path.stem
        looked = ", ".join(str(c.parent) for c in candidates)
        raise WeightsNotFoundError(
            f"{role} weights '{name}' not found (looked in: {looked}). detkd never downloads weights. "
            f"Put the file there (see weights/README.md), or train from scratch with the model YAML, "
            f"e.g. '{stem}.yaml'."
        )
    raise WeightsNotFoundError(f"{role} '{name}': expected a .pt checkpoint or a model .yaml, got '{suffix}'.")


def check_model_yaml(path: Path, role: str = "model") -> None:
    """A model YAML file is a mapping with Ultralytics' ``backbone`` and ``head`` (a data.yaml, a list or a broken
    file would fail inside Ultralytics' trainer with a traceback)."""
    import yaml

    from detkd.errors import DetKDError

    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise DetKDError(f"{role} '{path}' is not readable YAML ({type(e).__name__}): fix the file, or give a model "
                         f".yaml such as 'yolov8n.yaml' or a .pt checkpoint.") from None
    if not isinstance(cfg, dict) or not {"backbone", "head"} <= set(cfg):
        raise DetKDError(f"{role} '{path}' is not a model YAML (no 'backbone'/'head' mapping that Ultralytics can "
                         f"build). Give a model .yaml such as 'yolov8n.yaml' or a .pt checkpoint; a dataset's YAML "
                         f"goes to --data.")


def load_model_and_checkpoint(model: str | Path, role: str = "model", nc: int | None = None):
    """``(DetectionModel FP32 eval, checkpoint dict)`` from a ``.pt`` (or a YAML: random init, ``{}``)."""
    import torch
    from ultralytics.nn.tasks import DetectionModel, load_checkpoint

    from detkd.errors import DetKDError

    resolved = resolve_model_path(model, role)
    ckpt: dict = {}
    if resolved.lower().endswith(YAML_SUFFIXES):
        try:
            net = DetectionModel(resolved, nc=nc, verbose=False)
        except (KeyError, ValueError, TypeError) as e:  # a data.yaml, or a YAML without backbone/head
            raise DetKDError(f"{role} '{model}' is not a model YAML (no 'backbone'/'head' that Ultralytics can build: "
                             f"{type(e).__name__}: {e}). Give a model .yaml such as 'yolov8n.yaml' or a .pt "
                             f"checkpoint; a dataset's YAML goes to --data.") from None
        net.pt_path = None
    else:
        try:
            net, ckpt = load_checkpoint(resolved)
        except Exception as e:
            raise DetKDError(f"{role} checkpoint '{resolved}' could not be read ({type(e).__name__}: {e}). "
                             f"Is it an Ultralytics detection checkpoint?") from None
    if not isinstance(net, torch.nn.Module) or not hasattr(net, "model"):
        raise DetKDError(f"{role} '{resolved}' is not an Ultralytics detection model.")
    return net.float().eval(), (ckpt if isinstance(ckpt, dict) else {})


def load_detection_model(model: str | Path, role: str = "model", nc: int | None = None):
    """Load a ``DetectionModel`` (nn.Module, FP32, eval mode) from a checkpoint or build it from a YAML."""
    return load_model_and_checkpoint(model, role, nc)[0]

"""Take the student — and only the student — out of a checkpoint.

A detkd checkpoint is a plain Ultralytics checkpoint whose ``ema``/``model`` is the student ``DetectionModel``. This
module does not trust that: it unwraps Ultralytics' own ``DistillationModel`` (``.student_model``), strips attributes
named like distillation parts (teacher, adapter, projector, distill), verifies that every remaining tensor belongs to
the detector's layer list (``model.<i>.*``), and writes clean checkpoints that keep no extra top-level keys.
"""

from __future__ import annotations

from copy import deepcopy
from pathlib import Path

import torch

from detkd.errors import DetKDError
from detkd.models.loading import load_model_and_checkpoint

FORBIDDEN_TOKENS = ("teacher", "adapter", "projector", "distill")
# Top-level keys of an Ultralytics checkpoint (after strip_optimizer) that a clean student checkpoint may carry.
CLEAN_CKPT_KEYS = {"date", "version", "license", "docs", "epoch", "best_fitness", "model", "ema", "updates",
                   "optimizer", "scaler", "train_args", "train_metrics", "train_results", "git", "stopper",
                   "modelopt"}  # modelopt: a quantization-aware trained student's ranges (Ultralytics' QAT)


def _forbidden(name: str) -> bool:
    return any(t in name.lower() for t in FORBIDDEN_TOKENS)


def strip_non_student(net: torch.nn.Module) -> tuple[torch.nn.Module, list[str]]:
    """Return the bare student of ``net`` and the names of what was removed.

    Unwraps ``DistillationModel``-like wrappers (an attribute ``student_model``) and deletes every attribute — registered
    sub-module or plain object — whose name contains a token of :data:`FORBIDDEN_TOKENS`.
    """
    removed: list[str] = []
    if hasattr(net, "student_model") and isinstance(net.student_model, torch.nn.Module):
        if hasattr(net, "_remove_feature_hooks"):
            net._remove_feature_hooks()
        removed += [n for n in ("teacher_model", "projector") if hasattr(net, n)]
        removed.append("<wrapper:%s>" % type(net).__name__)
        net = net.student_model
    for name in list(net._modules):
        if _forbidden(name):
            del net._modules[name]
            removed.append(name)
    for name in [k for k in vars(net) if _forbidden(k) and not k.startswith("_")]:
        delattr(net, name)
        removed.append(name)
    return net, removed


def assert_student_only(net: torch.nn.Module) -> int:
    """Raise :class:`DetKDError` unless ``net`` is a bare Ultralytics detector; return its parameter count.

    Bare means: it has a layer list ``net.model`` ending in a Detect head, every state-dict key starts with ``model.``
    and no module name contains a teacher/adapter/projector/distill token.
    """
    from ultralytics.nn.modules.head import Detect

    layers = getattr(net, "model", None)
    if not isinstance(layers, torch.nn.Sequential) or not isinstance(layers[-1], Detect):
        raise DetKDError(f"{type(net).__name__} is not an Ultralytics detection model (no Detect head): only YOLO "
                         f"detectors can be exported by detkd.")
    foreign = [k for k in net.state_dict() if not k.startswith("model.") or _forbidden(k)]
    foreign += [n for n, _ in net.named_modules() if _forbidden(n)]
    if foreign:
        raise DetKDError(f"the student still holds non-student tensors/modules ({', '.join(sorted(set(foreign))[:5])}"
                         f"{' ...' if len(set(foreign)) > 5 else ''}); refusing to export a model that may contain the "
                         f"teacher or adapters. Re-save the student alone (its 'ema' or 'model').")
    return sum(p.numel() for p in net.parameters())


def load_student(model: str | Path | torch.nn.Module, role: str = "student") -> tuple[torch.nn.Module, dict, list[str]]:
    """Load a checkpoint (``.pt``), a model YAML (random init) or take a module, and return its bare student.

    Returns:
        ``(net, ckpt, removed)``: the FP32 eval-mode ``DetectionModel``; the checkpoint dict it came from (``{}`` for a
        YAML or a module); the names stripped by :func:`strip_non_student`.
    """
    ckpt: dict = {}
    if isinstance(model, torch.nn.Module):
        net = deepcopy(model)
    else:
        net, ckpt = load_model_and_checkpoint(model, role)
    net, removed = strip_non_student(net)
    assert_student_only(net)
    if not getattr(net, "task", None):  # YAML-built models carry no task; Ultralytics' exporter/predictor need it
        from ultralytics.nn.tasks import guess_model_task

        net.task = guess_model_task(net)
    return net.float().eval(), ckpt, removed


def save_student_checkpoint(net: torch.nn.Module, path: str | Path, ckpt: dict | None = None) -> Path:
    """Write an Ultralytics checkpoint holding only ``net`` (FP16, no optimizer, no extra top-level keys).

    ``ckpt`` supplies ``train_args`` (and nothing else). The file loads with ``ultralytics.YOLO(path)``.
    """
    from ultralytics.utils.torch_utils import qat_state, strip_optimizer, strip_qat

    assert_student_only(net)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    student = deepcopy(net).float().eval()
    for attr in ("pt_path", "criterion"):
        if hasattr(student, attr):
            setattr(student, attr, None)
    train_args = dict((ckpt or {}).get("train_args") or {})
    quantized = qat_state(student)  # a QAT student: its ranges travel beside the plain module, as Ultralytics saves it
    strip_qat(student)
    torch.save({"model": student, "ema": None, "train_args": train_args, "epoch": -1,
                **({"modelopt": quantized} if quantized else {})}, path)
    strip_optimizer(path)  # Ultralytics' own finalisation: FP16 weights, metadata, default-keyed train_args
    check_student_checkpoint(path)
    return path


def check_student_checkpoint(path: str | Path) -> None:
    """Raise :class:`DetKDError` when a saved checkpoint carries anything besides the student."""
    from ultralytics.utils.patches import torch_load

    ckpt = torch_load(path, map_location="cpu")
    extra = sorted(set(ckpt) - CLEAN_CKPT_KEYS)
    if extra:
        raise DetKDError(f"checkpoint {path} carries non-student entries {extra}.")
    for key in ("model", "ema"):
        if ckpt.get(key) is not None:
            assert_student_only(ckpt[key])

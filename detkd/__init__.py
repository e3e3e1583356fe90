"""detkd — knowledge distillation for YOLO-style detectors.

    from detkd import distill, train_baseline
    result = distill(teacher="teacher.pt", student="yolov8n.yaml", data="data.yaml", epochs=100)

Importing detkd makes Ultralytics offline-safe (see :mod:`detkd.offline`).
"""

from __future__ import annotations

from detkd import offline as _offline

_offline.set_offline_env()  # before anything imports ultralytics

__version__ = "0.1.0"
__all__ = ["distill", "train_baseline", "DistillationTrainer", "KDConfig", "__version__"]


def __getattr__(name):  # lazy: `import detkd` stays cheap, ultralytics is imported on first use
    if name in {"distill", "train_baseline"}:
        from detkd import api

        return getattr(api, name)
    if name == "DistillationTrainer":
        from detkd.engine.trainer import DistillationTrainer

        return DistillationTrainer
    if name == "KDConfig":
        from detkd.config import KDConfig

        return KDConfig
    raise AttributeError(f"module 'detkd' has no attribute {name!r}")

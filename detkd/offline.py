"""Make Ultralytics work with no network, and fail clearly where a file is genuinely missing.

Ultralytics reaches the network in three places that matter to detkd:

1. **Fonts** — ``check_font('Arial.ttf')`` downloads Arial into its config dir when a dataset is checked or labels
   are plotted. We place matplotlib's bundled DejaVu Sans under that name once, so the lookup is satisfied locally.
2. **AMP check** — on CUDA, ``BaseTrainer._setup_train`` calls ``check_amp`` which downloads ``yolo26n.pt`` to
   compare FP32 and AMP outputs. Offline we keep its GPU blacklist but skip the download (AMP stays on).
3. **Weights by name** — ``YOLO('yolov8n.pt')`` downloads a missing file. detkd resolves every weight path itself
   (:func:`detkd.models.loading.resolve_model_path`) and raises :class:`~detkd.errors.WeightsNotFoundError`
   suggesting the ``.yaml`` to train from scratch, so nothing is fetched.

``YOLO_OFFLINE=1`` is set before Ultralytics is imported, which turns off its online checks, hub events and
auto-updates. Call :func:`install` once; it is idempotent and is called on ``import detkd``.

OpenVINO's model converter and NNCF send usage telemetry unless told not to; every export runs inside
:func:`no_telemetry`, which tells them so for its duration (their own CI switches), so an export never reaches
the network.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

_INSTALLED = False


def set_offline_env() -> None:
    """Environment switches that must be set before ``import ultralytics``."""
    os.environ.setdefault("YOLO_OFFLINE", "1")


def install_fonts() -> None:
    """Give Ultralytics' font lookup a local file so it never downloads Arial."""
    import matplotlib
    from ultralytics.utils import USER_CONFIG_DIR

    src = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        dst = Path(USER_CONFIG_DIR) / name
        if not dst.exists() and src.exists():
            try:
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
            except OSError:  # read-only config dir: plots then fall back to PIL's default font
                pass


def offline_check_amp(model) -> bool:
    """Drop-in for ``ultralytics.utils.checks.check_amp`` that never downloads.

    Uses Ultralytics' own check when its reference weights are already on disk; otherwise returns True on CUDA
    (AMP on) unless the GPU is one Ultralytics blacklists, and False on CPU/MPS, exactly as the original would.
    """
    import re

    import torch
    from ultralytics.utils import LOGGER, WEIGHTS_DIR

    device = next(model.parameters()).device
    if device.type != "cuda":
        return False
    if (Path(WEIGHTS_DIR) / "yolo26n.pt").is_file():
        return _ORIGINAL_CHECK_AMP(model)
    gpu = torch.cuda.get_device_name(device)
    if re.search(r"(nvidia|geforce|quadro|tesla).*?(1660|1650|1630|t400|t550|t600|t1000|t1200|t2000|k40m)", gpu, re.I):
        LOGGER.warning(f"AMP: disabled on {gpu} (known AMP anomalies).")
        return False
    LOGGER.info("AMP: reference-weights check skipped (offline, detkd); AMP enabled. Use --amp false to disable.")
    return True


_ORIGINAL_CHECK_AMP = None

# OpenVINO's converter (openvino_telemetry, ``disable_in_ci``) and NNCF (read when it is imported) send no telemetry
# in a CI job; these are the switches they read
NO_TELEMETRY_ENV = {"CI": "true", "NNCF_CI": "1"}


@contextmanager
def no_telemetry():
    """Within this context OpenVINO's converter and NNCF send no usage telemetry (the environment is restored after;
    a value the user set is kept)."""
    saved = {k: os.environ.get(k) for k in NO_TELEMETRY_ENV}
    for k, v in NO_TELEMETRY_ENV.items():
        os.environ.setdefault(k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)


def install() -> None:
    """Apply all offline measures (idempotent)."""
    global _INSTALLED, _ORIGINAL_CHECK_AMP
    if _INSTALLED:
        return
    set_offline_env()
    import ultralytics.engine.trainer as trainer_module
    from ultralytics.utils import checks

    _ORIGINAL_CHECK_AMP = checks.check_amp
    trainer_module.check_amp = offline_check_amp  # the name BaseTrainer._setup_train looks up
    install_fonts()
    _INSTALLED = True

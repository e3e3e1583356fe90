"""What a benchmark ran on: hardware names and software versions, as a JSON-ready dict.

Every speed number is only meaningful next to this record, so :func:`machine_info` is stored in each benchmark JSON
and :func:`machine_tag` names result files (``speed_<tag>.json``).
"""

from __future__ import annotations

import os
import platform
import re
from importlib import metadata


def _version(dist: str) -> str | None:
    """Installed version of a distribution, or None."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def physical_cores() -> int | None:
    """Physical CPU cores (None when unknown)."""
    try:
        import psutil

        return psutil.cpu_count(logical=False)
    except Exception:
        return None


def cpu_name() -> str:
    """CPU model name, e.g. 'AMD EPYC 7763 64-Core Processor'."""
    try:
        from ultralytics.utils.torch_utils import get_cpu_info

        return get_cpu_info()
    except Exception:
        return platform.processor() or "unknown CPU"


def ort_info() -> dict:
    """ONNX Runtime version and the execution providers this installation offers (empty when not installed)."""
    try:
        import onnxruntime as ort
    except Exception:
        return {"version": None, "providers": []}
    return {"version": ort.__version__, "providers": list(ort.get_available_providers())}


def machine_info(device: str | None = None) -> dict:
    """Describe the machine and software stack.

    Args:
        device: the benchmark device ('cpu', '0', 'cuda:1', ...). When it names a GPU, that GPU is described first.

    Returns:
        dict with keys ``platform``, ``python``, ``cpu`` (name, logical/physical cores, torch threads), ``gpus``
        (name, memory in MiB, compute capability per visible GPU; empty on CPU-only machines), ``versions``
        (torch, torch CUDA, cuDNN, ultralytics, onnx, onnxruntime, openvino, numpy, detkd) and ``onnxruntime_providers``.
    """
    import torch

    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append({"index": i, "name": p.name, "memory_mib": round(p.total_memory / 2**20),
                         "compute_capability": f"{p.major}.{p.minor}"})
    ort = ort_info()
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": {
            "name": cpu_name(),
            "logical_cores": os.cpu_count(),
            "physical_cores": physical_cores(),
            "torch_threads": torch.get_num_threads(),
        },
        "gpus": gpus,
        "versions": {
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "ultralytics": _version("ultralytics"),
            "onnx": _version("onnx"),
            "onnxruntime": ort["version"],
            "openvino": _version("openvino"),
            "numpy": _version("numpy"),
            "detkd": _version("detkd"),
        },
        "onnxruntime_providers": ort["providers"],
    }
    if device is not None:
        info["device"] = str(device)
    return info


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def machine_tag(info: dict | None = None, device: str | None = None) -> str:
    """Short file-name-safe name of the benchmarked hardware.

    'nvidia-h100-80gb-hbm3' for a GPU run, 'cpu-<cpu-name>-<n>c' for a CPU run (n = logical cores).
    """
    info = info or machine_info(device)
    dev = str(device if device is not None else info.get("device", "cpu")).lower()
    if dev not in {"cpu", "", "none"} and info["gpus"]:
        idx = int(dev.split(":")[-1].split(",")[0]) if dev.split(":")[-1].split(",")[0].isdigit() else 0
        gpu = next((g for g in info["gpus"] if g["index"] == idx), info["gpus"][0])
        return _slug(gpu["name"])
    name = _slug(info["cpu"]["name"]).replace("-r-", "-").replace("-tm-", "-")
    return f"cpu-{name[:40].strip('-')}-{info['cpu']['logical_cores']}c"

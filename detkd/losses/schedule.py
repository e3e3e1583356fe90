"""Time schedules for KD weights: factor(progress) with progress = epoch / epochs in [0, 1].

* ``constant``: 1
* ``linear``:   1 → ``final`` linearly
* ``cosine``:   final + (1 − final)·(1 + cos(π·progress))/2

A late decay lets the student finish on its own detection loss once it has absorbed the teacher's guidance.
"""

from __future__ import annotations

import math

SCHEDULES = ("constant", "linear", "cosine")


def schedule_factor(kind: str, progress: float, final: float = 0.0) -> float:
    """Multiplier in [min(1, final), max(1, final)] for the KD weights at ``progress``."""
    p = min(max(float(progress), 0.0), 1.0)
    if kind == "constant":
        return 1.0
    if kind == "linear":
        return 1.0 + (final - 1.0) * p
    if kind == "cosine":
        return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * p))
    raise ValueError(f"unknown schedule '{kind}' (expected one of {SCHEDULES})")

"""Time schedules for KD weights: factor(progress) with progress = epoch / epochs in [0, 1].

* ``constant``: 1
* ``linear``:   1 → ``final`` linearly
* ``cosine``:   final + (1 − final)·(1 + cos(π·progress))/2

A late decay lets the student finish on its own detection loss once it has absorbed the teacher's guidance.

``epoch`` counts from 0 and the factor is set at each epoch's start, the convention of Ultralytics' own learning-rate
schedule (``lrf``): ``final`` is the value at the end of training, and the last of E epochs trains at the value of
progress (E − 1)/E (cosine to 0 over 25 epochs: 0.004; over 3 epochs: 0.25).
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

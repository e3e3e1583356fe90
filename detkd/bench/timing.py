"""Timing primitives: warm-up, synchronised timed loops and latency statistics. No model knowledge here.

A timed region is ``sync -> t0 -> fn() -> sync -> t1``: CUDA work is finished before each clock read, so a latency is
the real wall time of one call. Throughput is measured separately by a pipelined loop that synchronises only at its
ends, so on a GPU it includes the overlap of consecutive calls (what a serving loop gets).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import torch


def synchronize(device: torch.device) -> None:
    """Wait for all queued work on ``device`` (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def warm_up(fn: Callable[[], object], device: torch.device, iters: int, time_budget: float) -> int:
    """Call ``fn`` up to ``iters`` times, stopping early once ``time_budget`` seconds have passed (at least once).

    Returns the number of warm-up calls made.
    """
    t_end = time.perf_counter() + time_budget
    n = 0
    while n < max(1, iters):
        fn()
        n += 1
        if time.perf_counter() >= t_end:
            break
    synchronize(device)
    return n


def timed_calls(fn: Callable[[], object], device: torch.device, iters: int, time_budget: float,
                min_iters: int = 5) -> np.ndarray:
    """Per-call wall times in seconds, shape (n,), with ``min_iters <= n <= max(iters, min_iters)``.

    Stops after ``iters`` calls, or earlier once ``time_budget`` seconds are spent and ``min_iters`` calls are done.
    """
    times = []
    t_end = time.perf_counter() + time_budget
    while len(times) < max(iters, min_iters):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
        if len(times) >= min_iters and time.perf_counter() >= t_end:
            break
    return np.asarray(times, dtype=np.float64)


def pipelined_seconds(fn: Callable[[], object], device: torch.device, n: int) -> float:
    """Wall seconds for ``n`` back-to-back calls, synchronised only before and after."""
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    synchronize(device)
    return time.perf_counter() - t0


def latency_stats(times_s: Sequence[float]) -> dict:
    """Summary of per-call times (seconds in) in milliseconds.

    Returns:
        ``{"n", "mean", "std", "min", "p50", "p90", "p99", "max"}`` — all in ms except ``n``; percentiles by linear
        interpolation, so ``min <= p50 <= p90 <= p99 <= max``.
    """
    t = np.asarray(times_s, dtype=np.float64) * 1e3
    if t.size == 0:
        raise ValueError("no timings")
    p50, p90, p99 = np.percentile(t, [50, 90, 99])
    return {"n": int(t.size), "mean": float(t.mean()), "std": float(t.std()), "min": float(t.min()),
            "p50": float(p50), "p90": float(p90), "p99": float(p99), "max": float(t.max())}

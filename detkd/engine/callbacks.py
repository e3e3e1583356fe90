"""Trainer callbacks detkd's tools attach to Ultralytics trainers."""

from __future__ import annotations

import statistics
import time


class EpochTimer:
    """Records the train-loop time of every epoch (on_train_epoch_start → on_train_epoch_end; validation excluded).

    CUDA is synchronised at both ends so queued kernels are counted in the epoch that launched them.
    """

    def __init__(self):
        self.t0: float | None = None
        self.times: list[float] = []

    @staticmethod
    def _sync() -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def start(self, trainer) -> None:
        self._sync()
        self.t0 = time.perf_counter()

    def end(self, trainer) -> None:
        self._sync()
        self.times.append(time.perf_counter() - self.t0)

    def attach(self, trainer) -> "EpochTimer":
        trainer.add_callback("on_train_epoch_start", self.start)
        trainer.add_callback("on_train_epoch_end", self.end)
        return self

    def median(self) -> float:
        """Median epoch time, the first (warm-up: cudnn autotune, graph capture, caches) excluded when possible."""
        steady = self.times[1:] if len(self.times) > 1 else self.times
        return statistics.median(steady) if steady else float("nan")

"""The teacher one batch ahead on CPU: its forward for batch i+1 runs in a worker thread while the student steps on i.

On CPU Ultralytics trains with ``cpu_count − 1`` intra-op threads (one on a 2-core machine), so a core is free while
the student runs forward, loss and backward. :class:`TeacherLookahead` wraps the training loader: when it hands out
batch i it has already drawn batch i+1 and started the teacher on it in a worker thread (ATen releases the GIL in
its kernels; an ensemble's members each in their own thread, side by side, combined when the criterion asks). The
trainer's ``preprocess_batch`` then tells the teacher which input those outputs belong to
(:meth:`TeacherOverlap.expect`), and the criterion's ``teacher(img)`` collects them instead of running the teacher
again. This is the CPU counterpart of the CUDA side stream in :mod:`detkd.models.teacher`.

The numbers are the same as the sequential path: the worker runs the same forward on the same input
(``batch['img'] / 255``, as Ultralytics' ``preprocess_batch`` makes it), under ``no_grad``; outputs are used only when
the input the criterion passes equals it (same shape and values), else the teacher runs inline. Multi-scale training
resizes inside ``preprocess_batch`` with a random size, so it gets no lookahead. The wrapper holds no state across
epochs: resume, ``reset()`` (close_mosaic) and NaN recovery see Ultralytics' loader unchanged. Off with
``teacher_overlap=False`` (CLI ``--teacher-overlap false``).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import torch

AHEAD_KEY = "_detkd_teacher_ahead"  # batch key holding the teacher's pending outputs for that batch (a Future)


def teacher_input(raw_img: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) uint8 batch images → the float input in [0, 1] Ultralytics' ``preprocess_batch`` gives the model."""
    return raw_img.float() / 255


class TeacherOverlap:
    """A teacher (``FrozenTeacher`` or ``TeacherEnsemble``) whose forward can be started early in a worker thread.

    Same interface as the teacher it wraps (its facts and methods are forwarded); :meth:`__call__` returns the outputs
    started for that input when they match it.
    """

    def __init__(self, teacher):
        self.teacher = teacher
        self._parts = list(getattr(teacher, "members", None) or [teacher])  # an ensemble: one thread per member
        self._executor = ThreadPoolExecutor(max_workers=len(self._parts), thread_name_prefix="detkd-teacher",
                                            initializer=torch.set_num_threads, initargs=(torch.get_num_threads(),))
        self._expected: tuple[torch.Tensor, torch.Tensor, list[Future]] | None = None  # (img, started on, outputs)
        self.hits = 0  # steps served by the worker (the rest ran inline)

    def __getattr__(self, name):
        return getattr(self.__dict__["teacher"], name)

    def start(self, img: torch.Tensor) -> list[Future]:
        """Run the teacher on ``img`` (B, 3, H, W) float in worker threads (an ensemble's members side by side, each
        in its own); the Futures give the outputs (per member)."""
        return [self._executor.submit(_no_grad_call, part, img) for part in self._parts]

    def _collect(self, outputs: list[Future]):
        outs = [f.result() for f in outputs]
        return self.teacher.combine(outs) if len(self._parts) > 1 else outs[0]

    def expect(self, img: torch.Tensor, started_on: torch.Tensor, outputs: list[Future]) -> None:
        """The criterion's next ``self(img)`` may take ``outputs``, computed on ``started_on`` (checked equal)."""
        self._expected = (img, started_on, outputs)

    def __call__(self, img: torch.Tensor):
        expected, self._expected = self._expected, None
        if expected is not None:
            expected_img, started_on, outputs = expected
            result = self._collect(outputs)  # always collected: no worker is left running on a dropped batch
            if expected_img is img and started_on.shape == img.shape and torch.equal(started_on, img):
                self.hits += 1
                return result
        return self.teacher(img)

    def close(self) -> None:
        self._executor.shutdown(wait=True)


def _no_grad_call(teacher, img: torch.Tensor):
    with torch.no_grad():
        return teacher(img)


class TeacherLookahead:
    """Ultralytics' training loader, one batch ahead: batch i+1 is drawn, and ``start(batch)`` called on it, before
    batch i is handed out (see the module doc). Everything else (``len``, ``reset``, ``sampler``, ``dataset``, ...) is
    the wrapped loader's."""

    def __init__(self, loader, start):
        self.loader = loader
        self.start = start  # start(batch) -> None: may put AHEAD_KEY into the batch

    def __getattr__(self, name):
        return getattr(self.__dict__["loader"], name)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        batches = iter(self.loader)
        current = next(batches, None)
        if current is not None:
            self.start(current)
        while current is not None:
            following = next(batches, None)
            if following is not None:
                self.start(following)  # queued behind the current batch's teacher: one worker, first in first out
            yield current
            current = following

"""``StudentTrainer``: Ultralytics' ``DetectionTrainer`` with detkd's shared options, and nothing else.

It is the baseline ("the same student without a teacher") and the parent of :class:`DistillationTrainer`, so both
see identical data, augmentation, optimisation and validation. Its one addition: with ``coco_eval=True`` the
validator scores with pycocotools on the dataset's own COCO JSON, and ``best.pt`` is chosen on that official AP.

A relative ``project`` is relative to the current folder (:func:`project_from_here`). A run refused by detkd's
checks (:class:`~detkd.errors.DetKDError`: incompatible models, a weak teacher, no usable unlabelled image, ...)
removes the run folder it created, so the corrected run gets the same name, not ``NAME2``.
"""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from copy import copy
from pathlib import Path

import numpy as np

from detkd import offline
from detkd.config import register_detkd_arguments
from detkd.errors import DetKDError

offline.install()
register_detkd_arguments()

from ultralytics.models.yolo.detect import DetectionTrainer  # noqa: E402
from ultralytics.utils import DEFAULT_CFG, LOGGER, RANK  # noqa: E402

FEW_OPTIMIZER_STEPS = 10  # fewer optimizer steps in a whole run: warn


class StudentTrainer(DetectionTrainer):
    """DetectionTrainer + ``coco_eval`` (pycocotools AP as the validation metric)."""

    def __init__(self, cfg=DEFAULT_CFG, overrides=None, _callbacks=None):
        overrides = project_from_here(overrides)
        self._new_run_dir = new_run_dir(cfg, overrides)
        with self.discarding_run_dir_on_refusal():
            super().__init__(cfg, overrides, _callbacks)

    def train(self):
        with self.discarding_run_dir_on_refusal():
            return super().train()

    @contextmanager
    def discarding_run_dir_on_refusal(self):
        """A :class:`DetKDError` raised inside removes the run folder this trainer created, while it holds no
        weights (a folder that was there before, or any ``*.pt``, is never removed); the error goes on."""
        try:
            yield
        except DetKDError:
            remove_stub_run_dir(self._new_run_dir)
            raise

    def get_dataset(self):
        """Ultralytics' data description; its dataset errors (a data.yaml whose images are not where it says, a key
        missing) become one :class:`~detkd.errors.DatasetError` naming the file, not a traceback."""
        from detkd.errors import DatasetError

        try:
            return super().get_dataset()
        except RuntimeError as e:
            if not str(e).startswith("Dataset "):
                raise
            why = " ".join(str(e.__cause__ or e).replace("❌", "").replace("⚠️", "").split()).rstrip(".")
            fix = ("Make 'nc' the number of 'names' (or drop 'nc')" if "'nc" in why else
                   "Fix its path/train/val entries (paths relative to 'path')")
            raise DatasetError(f"data '{self.args.data}': {why}. {fix}, or pass a COCO dataset folder.") from None

    def check_resume(self, overrides):
        """Ultralytics' resume, writing into the run folder of the given checkpoint (``<run>/weights/last.pt``).

        A checkpoint stores the ``save_dir`` it was trained in: a copied or moved run would otherwise resume into
        the original folder (its results.csv appended to, its best.pt replaced).
        """
        super().check_resume(overrides)
        if self.resume:
            from detkd.engine.checkpoints import run_dir_of

            self.args.save_dir = str(run_dir_of(self.args.resume))

    def _setup_train(self):
        """Ultralytics' setup, then a warning when the whole run makes fewer than :data:`FEW_OPTIMIZER_STEPS`
        optimizer steps (tiny batches step once every ``nbs / batch`` batches: a short run barely trains)."""
        super()._setup_train()
        if RANK in {-1, 0}:
            warning = few_steps_warning(self)
            if warning:
                LOGGER.warning(warning)

    def get_validator(self):
        if not getattr(self.args, "coco_eval", False):
            return super().get_validator()
        from detkd.eval.validator import COCOEvalDetectionValidator

        return COCOEvalDetectionValidator(self.test_loader, save_dir=self.save_dir, args=copy(self.args),
                                          _callbacks=self.callbacks)


def project_from_here(overrides: dict | None) -> dict | None:
    """``overrides`` with a relative ``project`` made absolute from the current folder: ``runs/detect/NAME`` is where
    detkd's messages, docs, the chain's ``chain.json`` and ``compare`` look for a run. Ultralytics would put a relative
    project under its ``runs_dir`` setting (``<runs_dir>/detect/runs/detect/NAME``)."""
    project = (overrides or {}).get("project")
    if not project or Path(project).is_absolute():
        return overrides
    return {**overrides, "project": str(Path.cwd() / project)}


def new_run_dir(cfg, overrides: dict | None) -> Path | None:
    """The run folder a trainer built from ``cfg``/``overrides`` will create (Ultralytics' ``get_save_dir``), or
    None when it creates none: a resume, a DDP worker, a folder that exists already, or arguments Ultralytics refuses
    (it raises its own error then)."""
    from ultralytics.cfg import get_cfg, get_save_dir

    try:
        args = get_cfg(cfg, overrides)
    except Exception:  # noqa: BLE001 - the trainer reports it
        return None
    if args.resume or RANK not in {-1, 0}:
        return None
    folder = get_save_dir(args)
    return None if folder.exists() else folder


def remove_stub_run_dir(folder: Path | None) -> None:
    """Remove ``folder`` (what :func:`new_run_dir` named) unless it holds a checkpoint."""
    if folder is not None and folder.is_dir() and not any(folder.rglob("*.pt")):
        shutil.rmtree(folder, ignore_errors=True)


def optimizer_steps(batches: int, epochs: int, accumulate: int, warmup_iters: int, start_epoch: int = 0) -> int:
    """Optimizer steps of a run, counted as Ultralytics' training loop takes them (``BaseTrainer._do_train``).

    ``batches`` per epoch, ``accumulate`` the batches per step after warm-up (``nbs / batch``, capped), ramped from 1
    over the first ``warmup_iters`` batches; a step when ``accumulate`` batches passed since the last one.
    """
    last, steps = -1, 0
    for ni in range(start_epoch * batches, epochs * batches):
        acc = accumulate
        if warmup_iters and ni <= warmup_iters:
            acc = max(1, int(np.interp(ni, [0, warmup_iters], [1, accumulate]).round()))
        if ni - last >= acc:
            steps, last = steps + 1, ni
    return steps


def few_steps_warning(trainer) -> str:
    """The warning for a run of ``trainer`` (after its setup) that makes fewer than :data:`FEW_OPTIMIZER_STEPS`
    optimizer steps, or ''."""
    batches, acc, epochs = len(trainer.train_loader), int(trainer.accumulate), int(trainer.epochs)
    if getattr(trainer.args, "time", None) or (epochs - trainer.start_epoch) * batches >= FEW_OPTIMIZER_STEPS * acc:
        return ""  # time-limited runs re-plan their epochs; and every step takes at most `acc` batches
    steps = optimizer_steps(batches, epochs, acc, trainer._get_warmup_iterations(batches), trainer.start_epoch)
    if steps >= FEW_OPTIMIZER_STEPS:
        return ""
    nominal = max(round(trainer.args.nbs / trainer.batch_size), 1)
    cadence = f"nbs={trainer.args.nbs} / batch {trainer.batch_size}" + (
        f" = {nominal}, capped at the run's {epochs * batches} batches" if nominal > acc else "")
    return (f"this run makes only {steps} optimizer step{'s' if steps != 1 else ''} ({epochs - trainer.start_epoch} "
            f"epoch(s) x {batches} batches; after warm-up one step every {acc} batches: {cadence}), too few to "
            f"train. Train more epochs, or step more often with a smaller nominal batch (--set nbs={trainer.batch_size}).")

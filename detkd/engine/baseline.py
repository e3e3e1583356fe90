"""``StudentTrainer``: Ultralytics' ``DetectionTrainer`` with detkd's shared options, and nothing else.

It is the baseline ("the same student without a teacher") and the parent of :class:`DistillationTrainer`, so both
see identical data, augmentation, optimisation and validation. Its one addition: with ``coco_eval=True`` the
validator scores with pycocotools on the dataset's own COCO JSON, and ``best.pt`` is chosen on that official AP.

A run refused by detkd's checks (:class:`~detkd.errors.DetKDError`: incompatible models, a weak teacher, no usable
unlabelled image, ...) removes the run folder it created, so the corrected run gets the same name, not ``NAME2``.
"""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from copy import copy
from pathlib import Path

from detkd import offline
from detkd.config import register_detkd_arguments
from detkd.errors import DetKDError

offline.install()
register_detkd_arguments()

from ultralytics.models.yolo.detect import DetectionTrainer  # noqa: E402
from ultralytics.utils import DEFAULT_CFG, RANK  # noqa: E402


class StudentTrainer(DetectionTrainer):
    """DetectionTrainer + ``coco_eval`` (pycocotools AP as the validation metric)."""

    def __init__(self, cfg=DEFAULT_CFG, overrides=None, _callbacks=None):
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

    def check_resume(self, overrides):
        """Ultralytics' resume, writing into the run folder of the given checkpoint (``<run>/weights/last.pt``).

        A checkpoint stores the ``save_dir`` it was trained in: a copied or moved run would otherwise resume into
        the original folder (its results.csv appended to, its best.pt replaced).
        """
        super().check_resume(overrides)
        if self.resume:
            from detkd.engine.checkpoints import run_dir_of

            self.args.save_dir = str(run_dir_of(self.args.resume))

    def get_validator(self):
        if not getattr(self.args, "coco_eval", False):
            return super().get_validator()
        from detkd.eval.validator import COCOEvalDetectionValidator

        return COCOEvalDetectionValidator(self.test_loader, save_dir=self.save_dir, args=copy(self.args),
                                          _callbacks=self.callbacks)


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

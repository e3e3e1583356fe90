"""``StudentTrainer``: Ultralytics' ``DetectionTrainer`` with detkd's shared options, and nothing else.

It is the baseline ("the same student without a teacher") and the parent of :class:`DistillationTrainer`, so both
see identical data, augmentation, optimisation and validation. Its one addition: with ``coco_eval=True`` the
validator scores with pycocotools on the dataset's own COCO JSON, and ``best.pt`` is chosen on that official AP.
"""

from __future__ import annotations

from copy import copy

from detkd import offline
from detkd.config import register_detkd_arguments

offline.install()
register_detkd_arguments()

from ultralytics.models.yolo.detect import DetectionTrainer  # noqa: E402


class StudentTrainer(DetectionTrainer):
    """DetectionTrainer + ``coco_eval`` (pycocotools AP as the validation metric)."""

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

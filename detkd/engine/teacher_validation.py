"""Validating a teacher on the run's val split: any Detect-family head scored on its boxes and classes, a teacher with
other classes scored in the data's classes, and side work that draws no random numbers from the training stream
(used by :meth:`detkd.engine.trainer.DistillationTrainer._know_your_teacher`)."""

from __future__ import annotations

import random
from contextlib import contextmanager

import numpy as np
import torch

from detkd import offline
from detkd.models.class_map import map_inference_output

offline.install()

from ultralytics.models.yolo.detect import DetectionValidator  # noqa: E402


class DetectionOutputValidator(DetectionValidator):
    """Ultralytics' DetectionValidator for any Detect-family head: a Segment or Pose teacher is scored on its boxes and
    classes, the outputs it is distilled through (its mask coefficients or keypoints are not read as classes)."""

    teacher_class_map = None  # a teacher with other classes: its outputs mapped to the data's (models/class_map.py)

    def postprocess(self, preds):
        y = preds[0] if isinstance(preds, (list, tuple)) else preds  # eval output: (inference, raw)
        y = y[0] if isinstance(y, (list, tuple)) else y  # Segment: (inference, mask protos)
        if self.teacher_class_map is not None:
            y = map_inference_output(y, self.teacher_class_map, self.end2end)
        return super().postprocess(y[..., :6] if self.end2end else y[:, : 4 + self.nc])


@contextmanager
def validated_in_data_classes(validator, model, class_map):
    """Validate a teacher with other classes in the data's classes: the validator maps its outputs, and the model
    is named with the data's classes meanwhile (Ultralytics reads ``model.names`` for the class count)."""
    if class_map is None:
        yield
        return
    names = model.names
    validator.teacher_class_map = class_map
    model.names = dict(enumerate(class_map.student_names))
    try:
        yield
    finally:
        model.names = names


@contextmanager
def rng_preserved():
    """Restore Python's, NumPy's and torch's (CPU and CUDA) random states on exit: side work draws no random numbers
    from the training stream."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)

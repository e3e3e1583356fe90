"""Shared fixtures: tiny generated datasets and models, all offline and CPU-only."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_VERBOSE", "False")

SHARED = Path(__file__).resolve().parents[2] / "shared"
RACCOON = SHARED / "datasets" / "raccoon"


@pytest.fixture(autouse=True)
def _teacher_precision_independent_of_the_cpu(monkeypatch):
    """The same FP32 teacher on every CI machine: a CPU with AMX would otherwise run half teachers in BF16 (tests that
    check BF16 switch it back on with their own fixture)."""
    import detkd.models.teacher as teacher_module

    monkeypatch.setattr(teacher_module, "cpu_has_fast_bf16", lambda: False)


@pytest.fixture(scope="session")
def shapes_coco(tmp_path_factory) -> Path:
    """A tiny COCO-format shapes dataset (4 classes, ids 1..4, 96 px): 24 train / 8 val images."""
    from detkd.data.synthetic import SyntheticSpec, make_shapes_dataset

    return make_shapes_dataset(tmp_path_factory.mktemp("shapes"), SyntheticSpec(n_train=24, n_val=8, imgsz=96, seed=1))


@pytest.fixture(scope="session")
def raccoon() -> Path:
    """The real raccoon dataset beside the repo (skipped when ../shared is absent)."""
    if not (RACCOON / "annotations" / "instances_val.json").exists():
        pytest.skip(f"real dataset not found at {RACCOON}")
    return RACCOON


@pytest.fixture(scope="session")
def shapes_yaml(shapes_coco) -> str:
    """The shapes dataset converted to an Ultralytics data.yaml (cached by detkd's COCO converter)."""
    from detkd.data.coco import prepare_dataset

    return str(prepare_dataset(shapes_coco, verbose=False))


def named_model(cfg: str, data_yaml: str, seed: int = 0):
    """A random-init ``DetectionModel`` of ``cfg`` carrying the class names of ``data_yaml``."""
    import torch
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils import YAML

    names = YAML.load(data_yaml)["names"]
    torch.manual_seed(seed)
    net = DetectionModel(cfg, nc=len(names), verbose=False)
    net.names = dict(names) if isinstance(names, dict) else dict(enumerate(names))
    return net


def save_checkpoint(net, path: Path) -> str:
    """``net`` as an Ultralytics-format checkpoint at ``path``."""
    import torch

    torch.save({"model": net, "train_args": {}, "epoch": -1}, path)
    return str(path)


def with_class_rows(ref, names: list[str], rows: list[int | None]):
    """A model of ``ref``'s architecture predicting ``names``: every weight is ``ref``'s except the head's class rows:
    class k gets ``ref``'s class ``rows[k]``; None: a class ``ref`` lacks, confident everywhere (bias +12)."""
    from ultralytics.nn.tasks import DetectionModel

    net = DetectionModel(ref.yaml, nc=len(names), verbose=False)
    ref_sd, sd = ref.state_dict(), net.state_dict()
    sd.update({k: v.clone() for k, v in ref_sd.items() if sd[k].shape == v.shape})
    for branch in ("cv3", "one2one_cv3"):  # one-to-many and (YOLO26) one-to-one class branches
        for level in range(len(getattr(ref.model[-1], branch, None) or [])):
            key = f"model.{len(ref.model) - 1}.{branch}.{level}.2"  # the class conv of head level ``level``
            for k, r in enumerate(rows):
                sd[f"{key}.weight"][k] = 0.0 if r is None else ref_sd[f"{key}.weight"][r]
                sd[f"{key}.bias"][k] = 12.0 if r is None else ref_sd[f"{key}.bias"][r]
    net.load_state_dict(sd)
    net.names = dict(enumerate(names))
    return net


@pytest.fixture(scope="session")
def teacher_pt(tmp_path_factory, shapes_yaml) -> str:
    """A random-init YOLOv8s teacher checkpoint carrying the shapes dataset's class names."""
    return save_checkpoint(named_model("yolov8s.yaml", shapes_yaml), tmp_path_factory.mktemp("teacher") / "teacher.pt")


@pytest.fixture
def ultralytics_log():
    """Messages of Ultralytics' logger (it does not propagate to pytest's caplog)."""
    import logging

    from ultralytics.utils import LOGGER

    class Collect(logging.Handler):
        def __init__(self):
            super().__init__(logging.INFO)
            self.messages: list[str] = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    handler, level = Collect(), LOGGER.level
    LOGGER.addHandler(handler)
    LOGGER.setLevel(logging.INFO)  # YOLO_VERBOSE=False (conftest) keeps only warnings
    yield handler.messages
    LOGGER.removeHandler(handler)
    LOGGER.setLevel(level)


def assert_predicts(model, imgsz: int = 64) -> None:
    """``model`` (an Ultralytics ``YOLO``) predicts with its own pipeline on a random image, at confidence 0 so that a
    barely trained model still returns boxes: (N, 6) rows, N > 0, boxes inside the image, classes of its names."""
    import torch

    d = model.predict(torch.rand(1, 3, imgsz, imgsz), imgsz=imgsz, conf=0.0, verbose=False)[0].boxes.data
    assert d.ndim == 2 and d.shape[1] == 6 and len(d) > 0, d.shape
    assert (d[:, :4] >= -1).all() and (d[:, :4] <= imgsz + 1).all()
    assert ((d[:, 5] >= 0) & (d[:, 5] < len(model.names))).all() and torch.equal(d[:, 5], d[:, 5].round())


TINY_TRAIN = dict(imgsz=64, batch=8, epochs=2, device="cpu", workers=0, plots=False, seed=0, exist_ok=True,
                  warmup_epochs=0)

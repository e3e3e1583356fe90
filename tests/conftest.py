"""Shared fixtures: tiny generated datasets and models, all offline and CPU-only."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_VERBOSE", "False")

SHARED = Path(__file__).resolve().parents[2] / "shared"
RACCOON = SHARED / "datasets" / "raccoon"


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

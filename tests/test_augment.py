"""User albumentations pipelines: loading (YAML, module:function, lists) and box-aware use in Ultralytics' training."""

from __future__ import annotations

from pathlib import Path

import albumentations as A
import numpy as np
import pytest

from detkd.data.augment import load_augmentations
from detkd.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[1] / "tools" / "example_augmentations.yaml"


def test_example_yaml_loads():
    t = load_augmentations(EXAMPLE)
    names = [type(x).__name__ for x in t]
    assert names[:3] == ["RandomBrightnessContrast", "CLAHE", "OneOf"] and "Perspective" in names
    assert t[0].p == pytest.approx(0.3)
    assert [type(x).__name__ for x in t[2].transforms] == ["MotionBlur", "MedianBlur", "GaussianBlur"]
    for x in t:  # what the Ultralytics trainer does to store them in checkpoints
        assert type(A.from_dict(A.to_dict(x))) is type(x)


def test_albumentations_own_serialisation(tmp_path):
    f = tmp_path / "aug.yaml"
    A.save(A.Compose([A.HorizontalFlip(p=0.2), A.Blur(blur_limit=(3, 5), p=0.1)]), str(f), data_format="yaml")
    t = load_augmentations(f)
    assert [type(x).__name__ for x in t] == ["HorizontalFlip", "Blur"] and t[1].blur_limit == (3, 5)


def test_python_function_and_list(tmp_path, monkeypatch):
    mod = tmp_path / "myaug.py"
    mod.write_text("import albumentations as A\n\ndef build():\n    return [A.ToGray(p=0.1), A.VerticalFlip(p=0.3)]\n"
                   "\ndef compose():\n    return A.Compose([A.Blur(p=0.1)])\n")
    assert [type(x).__name__ for x in load_augmentations(f"{mod}:build")] == ["ToGray", "VerticalFlip"]
    assert [type(x).__name__ for x in load_augmentations(f"{mod}:compose")] == ["Blur"]
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "augs.py").write_text(mod.read_text())
    monkeypatch.syspath_prepend(str(tmp_path))
    assert [type(x).__name__ for x in load_augmentations("mypkg.augs:build")] == ["ToGray", "VerticalFlip"]
    with pytest.raises(ConfigError, match="calling Compose"):
        load_augmentations("albumentations:Compose")
    t = load_augmentations([A.CLAHE(p=0.1), {"Blur": {"p": 0.2}}])
    assert [type(x).__name__ for x in t] == ["CLAHE", "Blur"]


@pytest.mark.parametrize("content, message", [
    ("- NoSuchTransform: {p: 0.1}", "unknown albumentations transform"),
    ("- Blur: {pp: 0.1}", "not valid for transform Blur"),
    ("- Blur: {p: 0.1}\n  Flip: {}", "one transform per list item"),
    ("transform: 3", "must hold a list"),
    ("- [1, 2]", "is not an albumentations transform"),
])
def test_bad_yaml_is_a_clear_error(tmp_path, content, message):
    f = tmp_path / "bad.yaml"
    f.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_augmentations(f)


@pytest.mark.filterwarnings("ignore:Using lambda")
def test_bad_specs(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_augmentations(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="cannot import"):
        load_augmentations("no_such_pkg.mod:fn")
    with pytest.raises(ConfigError, match="has no function"):
        load_augmentations("albumentations:no_such_fn")
    with pytest.raises(ConfigError, match="A.Lambda"):
        load_augmentations([A.Lambda(image=lambda x, **k: x)])
    with pytest.raises(ConfigError, match="A.Lambda"):  # inside OneOf: still not storable in a checkpoint
        load_augmentations([A.OneOf([A.Blur(p=1.0), A.Lambda(image=lambda x, **k: x)], p=0.5)])
    with pytest.raises(ConfigError, match="expected a .yaml"):
        load_augmentations("aug.txt")


def _labels(img: np.ndarray, boxes_xyxy: np.ndarray) -> dict:
    from ultralytics.utils.instance import Instances

    return {"img": img.copy(), "cls": np.arange(len(boxes_xyxy), dtype=np.float32).reshape(-1, 1),
            "instances": Instances(boxes_xyxy.astype(np.float32), np.zeros((0, 1000, 2), np.float32),
                                   bbox_format="xyxy", normalized=False)}


def test_applied_box_aware_by_ultralytics(tmp_path):
    """The loaded transforms, stored as the trainer stores them (A.to_dict), move boxes with spatial changes."""
    from ultralytics.data.augment import Albumentations

    f = tmp_path / "flip.yaml"
    f.write_text("- HorizontalFlip: {p: 1.0}\n- RandomBrightnessContrast: {p: 1.0}\n")
    stored = [A.to_dict(t) for t in load_augmentations(f)]  # BaseTrainer.__init__ does this to args.augmentations
    aug = Albumentations(p=1.0, transforms=stored)
    assert aug.contains_spatial
    img = np.random.default_rng(0).integers(0, 255, (80, 100, 3), dtype=np.uint8)
    out = aug(_labels(img, np.array([[10, 20, 30, 60], [50, 5, 95, 40]])))
    inst = out["instances"]
    inst.convert_bbox("xyxy")
    inst.denormalize(100, 80)
    np.testing.assert_allclose(inst.bboxes, [[70, 20, 90, 60], [5, 5, 50, 40]], atol=1e-3)  # mirrored boxes
    assert out["cls"].ravel().tolist() == [0, 1]

    pixel_only = Albumentations(p=1.0, transforms=[A.to_dict(t) for t in load_augmentations([{"ToGray": {"p": 1}}])])
    assert not pixel_only.contains_spatial
    out = pixel_only(_labels(img, np.array([[10, 20, 30, 60]])))
    assert np.allclose(out["img"][..., 0], out["img"][..., 1])  # gray image, boxes untouched
    np.testing.assert_allclose(out["instances"].bboxes, [[10, 20, 30, 60]])


def test_reaches_training_pipeline(shapes_coco, tmp_path):
    """``augmentations=`` in the training args lands in the train dataset's Albumentations step, and runs."""
    from ultralytics.cfg import get_cfg
    from ultralytics.data import build_yolo_dataset
    from ultralytics.data.augment import Albumentations
    from ultralytics.data.utils import check_det_dataset

    from detkd.data.coco import prepare_dataset

    data = check_det_dataset(str(prepare_dataset(shapes_coco, cache_dir=tmp_path, verbose=False)))
    f = tmp_path / "aug.yaml"
    f.write_text("- HorizontalFlip: {p: 1.0}\n- ToGray: {p: 1.0}\n")
    cfg = get_cfg(overrides={"imgsz": 64, "augmentations": [A.to_dict(t) for t in load_augmentations(f)]})
    ds = build_yolo_dataset(cfg, data["train"], 4, data, mode="train")
    alb = [t for t in ds.transforms.transforms if isinstance(t, Albumentations)]
    assert len(alb) == 1 and alb[0].contains_spatial
    assert [type(t).__name__ for t in alb[0].transform.transforms] == ["HorizontalFlip", "ToGray"]
    item = ds[0]
    img = item["img"]  # CHW uint8 after the whole pipeline (mosaic, affine, ours, HSV, flips)
    assert img.shape == (3, 64, 64) and len(item["bboxes"]) == len(item["cls"])

"""COCO input: conversion to the cached YOLO layout, round trip, and every bad-input case (error or counted skip)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from detkd.data.coco import describe_dataset, load_coco_meta, prepare_dataset
from detkd.data.synthetic import SyntheticSpec, make_shapes_dataset
from detkd.data.validate import load_coco_json, validate_coco
from detkd.data.yolo_layout import yolo_to_coco
from detkd.errors import DatasetError

NONCONTIG = (3, 7, 20, 90)


@pytest.fixture(scope="module")
def shapes_noncontig(tmp_path_factory) -> Path:
    """Shapes dataset whose category ids are 3, 7, 20, 90 (as sparse as COCO's)."""
    return make_shapes_dataset(tmp_path_factory.mktemp("nc"), SyntheticSpec(
        n_train=6, n_val=5, imgsz=64, category_ids=NONCONTIG, seed=3))


def write_coco(root: Path, images: list[dict], annotations: list[dict], categories=None, split="val",
               sizes: dict | None = None, raw: dict | None = None) -> Path:
    """A tiny COCO dataset under root: root/<split>/<file> (64x48 RGB unless ``sizes`` says otherwise)."""
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for im in images:
        w, h = (sizes or {}).get(im["file_name"], (64, 48))
        cv2.imwrite(str(root / split / im["file_name"]), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    coco = raw if raw is not None else {
        "images": images, "annotations": annotations,
        "categories": categories or [{"id": 1, "name": "a"}, {"id": 5, "name": "b"}]}
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))
    return root


def img(i: int, name: str | None = None) -> dict:
    return {"id": i, "file_name": name or f"im{i}.jpg", "width": 64, "height": 48}


def ann(i: int, image_id: int, bbox, cat: int = 1, **kw) -> dict:
    return {"id": i, "image_id": image_id, "category_id": cat, "bbox": bbox, "area": bbox[2] * bbox[3],
            "iscrowd": 0, **kw}


def report_of(root: Path, split="val"):
    js = root / "annotations" / f"instances_{split}.json"
    return validate_coco(load_coco_json(js), js, root / split, split)


def labels(data_yaml: Path, split: str, file_name: str) -> list[list[float]]:
    root = data_yaml.parent
    f = root / "labels" / split / (Path(file_name).stem + ".txt")
    return [[float(v) for v in line.split()] for line in f.read_text().splitlines()]


# ------------------------------------------------------------------------------------------------ conversion
def test_data_yaml_keys_and_links(shapes_noncontig, tmp_path):
    y = prepare_dataset(shapes_noncontig, cache_dir=tmp_path, verbose=False)
    d = yaml.safe_load(y.read_text())
    assert d["nc"] == 4 and d["names"] == {0: "circle", 1: "square", 2: "triangle", 3: "cross"}
    assert d["category_ids"] == list(NONCONTIG)
    assert Path(d["coco"]["val"]) == (shapes_noncontig / "annotations" / "instances_val.json").resolve()
    assert d["coco_eval"] == d["coco"]  # clean data: evaluation uses the dataset's own JSON
    assert Path(d["images"]["train"]) == (shapes_noncontig / "train").resolve()
    first = sorted((y.parent / "images" / "val").iterdir())[0]
    assert first.is_symlink() and first.resolve() == (shapes_noncontig / "val" / first.name).resolve()
    meta = load_coco_meta(y)
    assert meta["category_ids"] == list(NONCONTIG)
    assert meta["image_ids"]["val"]["val_00000.jpg"] == 100000
    # Ultralytics accepts it as is
    from ultralytics.data.utils import check_det_dataset

    assert check_det_dataset(str(y))["nc"] == 4


def test_round_trip_coco_yolo_coco_noncontiguous(shapes_noncontig, tmp_path):
    y = prepare_dataset(shapes_noncontig, cache_dir=tmp_path, verbose=False)
    for split in ("train", "val"):
        orig = json.loads((shapes_noncontig / "annotations" / f"instances_{split}.json").read_text())
        back = yolo_to_coco(y, split)
        assert [c["id"] for c in back["categories"]] == list(NONCONTIG)
        assert {(i["id"], i["file_name"], i["width"], i["height"]) for i in back["images"]} == \
               {(i["id"], i["file_name"], i["width"], i["height"]) for i in orig["images"]}

        def boxes(coco):
            out = {}
            for a in coco["annotations"]:
                out.setdefault(a["image_id"], []).append((a["category_id"], *a["bbox"]))
            return {k: sorted(v) for k, v in out.items()}

        a, b = boxes(orig), boxes(back)
        assert a.keys() == b.keys() and len(orig["annotations"]) == len(back["annotations"]) > 0
        for k in a:
            assert [x[0] for x in a[k]] == [x[0] for x in b[k]]  # original category ids
            np.testing.assert_allclose(np.array(b[k])[:, 1:], np.array(a[k])[:, 1:], rtol=1e-6, atol=0)


def test_cache_reused_and_keyed_by_content(tmp_path):
    root = make_shapes_dataset(tmp_path / "ds", SyntheticSpec(n_train=2, n_val=2, imgsz=64))
    y1 = prepare_dataset(root, verbose=False)
    assert y1.parent.parent == root / ".detkd_cache"
    mtime = y1.stat().st_mtime_ns
    assert prepare_dataset(root, verbose=False) == y1 and y1.stat().st_mtime_ns == mtime  # reused, not rewritten
    js = root / "annotations" / "instances_val.json"
    coco = json.loads(js.read_text())
    coco["annotations"] = coco["annotations"][:1]
    js.write_text(json.dumps(coco))
    y2 = prepare_dataset(root, verbose=False)
    assert y2 != y1 and y2.is_file()


@pytest.mark.parametrize("folder", ["Customer Dataset Exports/Round 2 annotations/final version of the set",
                                    "it's: here"])
def test_a_dataset_path_yaml_would_wrap_or_quote_is_written_whole(tmp_path, folder):
    # YAML wraps a long plain value with spaces and quotes one with ': ': the cached data.yaml must still point at
    # the cache folder itself (it pointed at the deleted temporary one, and the cache was reused broken).
    root = make_shapes_dataset(tmp_path / folder, SyntheticSpec(n_train=2, n_val=2, imgsz=64))
    data_yaml = prepare_dataset(root, verbose=False, for_training=True)
    cfg = yaml.safe_load(data_yaml.read_text())
    assert Path(cfg["path"]).resolve() == data_yaml.parent.resolve()
    assert load_coco_meta(data_yaml)["category_ids"]


@pytest.mark.parametrize("yaml_dirs", [False, True])
def test_cache_reconverts_when_images_appear_or_disappear(tmp_path, yaml_dirs):
    """The cache key covers the image files (names, sizes, mtimes), not only the JSON."""
    root = make_shapes_dataset(tmp_path / "ds", SyntheticSpec(n_train=2, n_val=3, imgsz=64))
    data = root
    if yaml_dirs:  # image folders named in a detkd COCO YAML instead of guessed
        data = tmp_path / "ds.yaml"
        data.write_text(yaml.safe_dump({"path": str(root), "val": {"json": "annotations/instances_val.json",
                                                                    "images": "val"}}))

    def n_val(y):
        return len(list((y.parent / "images" / "val").iterdir()))

    y1 = prepare_dataset(data, verbose=False)
    assert n_val(y1) == 3
    f = sorted((root / "val").iterdir())[0]
    content = f.read_bytes()
    f.unlink()  # an image disappears
    y2 = prepare_dataset(data, verbose=False)
    assert y2 != y1 and n_val(y2) == 2
    f.write_bytes(content)  # and comes back
    y3 = prepare_dataset(data, verbose=False)
    assert n_val(y3) == 3
    assert prepare_dataset(data, verbose=False) == y3  # unchanged files: reused


def test_readonly_dataset_caches_elsewhere(tmp_path, monkeypatch):
    root = make_shapes_dataset(tmp_path / "ro", SyntheticSpec(n_train=2, n_val=2, imgsz=64))
    monkeypatch.setenv("DETKD_CACHE_DIR", str(tmp_path / "cache"))
    os.chmod(root, 0o555)
    try:
        y = prepare_dataset(root, verbose=False)
    finally:
        os.chmod(root, 0o755)
    assert not (root / ".detkd_cache").exists()
    assert y.parent.parent == tmp_path / "cache"


def test_ultralytics_yaml_returned_as_is(tmp_path):
    f = tmp_path / "data.yaml"
    f.write_text("path: .\ntrain: images/train\nval: images/val\nnames: {0: a}\n")
    assert prepare_dataset(f) == f
    with pytest.raises(DatasetError, match="without COCO ground truth"):
        load_coco_meta(f)


def test_detkd_coco_yaml(shapes_noncontig, tmp_path):
    f = tmp_path / "ds.yaml"
    f.write_text(yaml.safe_dump({"path": str(shapes_noncontig),
                                 "train": {"json": "annotations/instances_train.json", "images": "train"},
                                 "val": {"json": "annotations/instances_val.json", "images": "val"}}))
    y = prepare_dataset(f, cache_dir=tmp_path / "c", verbose=False)
    assert load_coco_meta(y)["category_ids"] == list(NONCONTIG)
    f.write_text(yaml.safe_dump({"val": {"json": str(shapes_noncontig / "annotations/instances_val.json"),
                                         "images": str(tmp_path / "nowhere")}}))
    with pytest.raises(DatasetError, match="does not exist"):
        prepare_dataset(f, cache_dir=tmp_path / "c", verbose=False)


def test_eval_only_dataset_points_train_at_val(tmp_path):
    root = write_coco(tmp_path / "d", [img(1)], [ann(1, 1, [1, 1, 10, 10])])
    d = yaml.safe_load(prepare_dataset(root, verbose=False).read_text())
    assert d["train"] == d["val"] == "images/val" and d["splits"] == ["val"]


# ------------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "top level is a list"),
    (json.dumps({"images": [], "categories": []}), "missing top-level key(s) 'annotations'"),
    (json.dumps({"images": {}, "annotations": [], "categories": []}), "'images' must be a list"),
    (json.dumps({"images": [], "annotations": [], "categories": []}), "defines no categories"),
    (json.dumps({"images": [], "annotations": [], "categories": [{"name": "x"}]}), "no integer 'id'"),
    (json.dumps({"images": [], "annotations": [],
                 "categories": [{"id": 1, "name": "x"}, {"id": 1, "name": "y"}]}), "defined twice"),
])
def test_not_coco_json_is_a_clear_error(tmp_path, content, message):
    (tmp_path / "d" / "annotations").mkdir(parents=True)
    (tmp_path / "d" / "val").mkdir()
    (tmp_path / "d" / "annotations" / "instances_val.json").write_text(content)
    with pytest.raises(DatasetError) as e:
        prepare_dataset(tmp_path / "d", verbose=False)
    assert message in str(e.value)


def test_folder_without_coco_files(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="neither a COCO dataset folder"):
        prepare_dataset(tmp_path / "empty")
    with pytest.raises(DatasetError, match="not found"):
        prepare_dataset(tmp_path / "missing")


def test_ambiguous_annotation_files(tmp_path):
    root = write_coco(tmp_path / "d", [img(1)], [])
    (root / "annotations" / "instances_val2017.json").write_text("{}")
    with pytest.raises(DatasetError, match="several val annotation files"):
        prepare_dataset(root)


def test_images_not_found_anywhere(tmp_path):
    root = write_coco(tmp_path / "d", [img(1)], [])
    (root / "val" / "im1.jpg").rename(root / "elsewhere.bin")
    with pytest.raises(DatasetError, match="not found"):
        prepare_dataset(root, verbose=False)


def test_no_usable_image(tmp_path):
    root = write_coco(tmp_path / "d", [img(1), img(2)], [])
    for f in (root / "val").iterdir():
        f.write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="none of its 2 images is usable"):
        prepare_dataset(root, verbose=False)


# ------------------------------------------------------------------------------------------------ counted skips
def test_missing_and_corrupt_images_counted_and_skipped(tmp_path):
    images = [img(1), img(2), img(3), img(4), img(5, "im5.gif")]
    root = write_coco(tmp_path / "d", images, [ann(1, 1, [1, 1, 10, 10]), ann(2, 2, [1, 1, 10, 10])])
    (root / "val" / "im2.jpg").unlink()  # missing
    (root / "val" / "im3.jpg").write_bytes(b"\x00" * 100)  # corrupt
    data = (root / "val" / "im4.jpg").read_bytes()
    (root / "val" / "im4.jpg").write_bytes(data[: len(data) // 2])  # truncated JPEG
    (root / "val" / "im5.gif").write_bytes(b"GIF89a")  # a format Ultralytics does not read
    r = report_of(root).report
    assert r.counts["images_missing"] == 1
    assert r.counts["images_corrupt"] == 2
    assert r.counts["images_unsupported_format"] == 1
    assert r.counts["annotations_on_skipped_image"] == 1
    y = prepare_dataset(root, verbose=False)
    assert sorted(p.name for p in (y.parent / "images" / "val").iterdir()) == ["im1.jpg"]
    assert json.loads((y.parent / "report.json").read_text())["val"]["counts"]["images_corrupt"] == 2


def test_unknown_image_and_category_counted(tmp_path):
    root = write_coco(tmp_path / "d", [img(1)], [
        ann(1, 1, [1, 1, 10, 10]), ann(2, 99, [1, 1, 10, 10]), ann(3, 1, [1, 1, 10, 10], cat=42)])
    s = report_of(root)
    assert s.report.counts["annotations_unknown_image"] == 1
    assert s.report.counts["annotations_unknown_category"] == 1
    assert s.report.n_boxes == 1 and s.needs_repair
    y = prepare_dataset(root, verbose=False)
    meta = load_coco_meta(y)
    assert meta["coco_eval"]["val"] != meta["coco"]["val"]  # evaluation uses a repaired copy
    fixed = json.loads(meta["coco_eval"]["val"].read_text())
    assert [a["id"] for a in fixed["annotations"]] == [1]


def test_bad_boxes_dropped_or_clipped(tmp_path):
    root = write_coco(tmp_path / "d", [img(1)], [
        ann(1, 1, [10, 10, 0, 5]),  # zero width
        ann(2, 1, [10, 10, 5, -3]),  # negative height
        ann(3, 1, [-8, 40, 20, 20]),  # partly outside (64x48): clipped to [0, 40, 12, 8]
        ann(4, 1, [70, 10, 5, 5]),  # entirely outside
        ann(5, 1, [1, 2, "x", 4]),  # malformed
        ann(6, 1, [4, 4, 8, 8], cat=5),  # fine
    ])
    c = report_of(root).report.counts
    assert (c["annotations_nonpositive_size"], c["annotations_clipped"], c["annotations_outside_image"],
            c["annotations_malformed_bbox"]) == (2, 1, 1, 1)
    y = prepare_dataset(root, verbose=False)
    lb = sorted(labels(y, "val", "im1.jpg"))
    assert len(lb) == 2
    np.testing.assert_allclose(lb[0], [0, 6 / 64, 44 / 48, 12 / 64, 8 / 48], rtol=1e-9)  # the clipped box
    np.testing.assert_allclose(lb[1], [1, 8 / 64, 8 / 48, 8 / 64, 8 / 48], rtol=1e-9)  # category id 5 -> class 1


def test_crowd_ignored_for_training_kept_for_eval(tmp_path):
    root = write_coco(tmp_path / "d", [img(1)], [ann(1, 1, [1, 1, 10, 10]), ann(2, 1, [20, 20, 10, 10], iscrowd=1)])
    s = report_of(root)
    assert s.report.counts["annotations_crowd"] == 1 and not s.needs_repair
    y = prepare_dataset(root, verbose=False)
    assert len(labels(y, "val", "im1.jpg")) == 1
    gt = json.loads(load_coco_meta(y)["coco_eval"]["val"].read_text())
    assert sum(a["iscrowd"] for a in gt["annotations"]) == 1


def test_images_without_annotations_are_background(tmp_path):
    root = write_coco(tmp_path / "d", [img(1), img(2)], [ann(1, 1, [1, 1, 10, 10])])
    assert report_of(root).report.counts["images_background"] == 1
    y = prepare_dataset(root, verbose=False)
    assert labels(y, "val", "im2.jpg") == []
    assert (y.parent / "images" / "val" / "im2.jpg").exists()


def test_duplicate_image_ids(tmp_path):
    root = write_coco(tmp_path / "d", [img(1), img(1, "other.jpg"), img(2)],
                      [ann(1, 1, [1, 1, 10, 10]), ann(1, 2, [2, 2, 10, 10])])  # also a duplicate annotation id
    s = report_of(root)
    assert s.report.counts["images_duplicate_id"] == 1 and s.report.counts["annotations_duplicate_id"] == 1
    assert [im.file_name for im in s.images] == ["im1.jpg", "im2.jpg"]
    y = prepare_dataset(root, verbose=False)
    gt = json.loads(load_coco_meta(y)["coco_eval"]["val"].read_text())
    assert [i["id"] for i in gt["images"]] == [1, 2]
    assert len({a["id"] for a in gt["annotations"]}) == 2
    from detkd.eval.metrics import load_gt

    assert len(load_gt(gt).getAnnIds()) == 2  # pycocotools reads the repaired copy


def test_non_rgb_images_kept_and_loaded_as_rgb(tmp_path):
    root = write_coco(tmp_path / "d", [img(1, "gray.png"), img(2, "rgba.png"), img(3)],
                      [ann(1, 1, [1, 1, 10, 10]), ann(2, 2, [1, 1, 10, 10]), ann(3, 3, [1, 1, 10, 10])])
    rng = np.random.default_rng(1)
    cv2.imwrite(str(root / "val" / "gray.png"), rng.integers(0, 255, (48, 64), dtype=np.uint8))
    cv2.imwrite(str(root / "val" / "rgba.png"), rng.integers(0, 255, (48, 64, 4), dtype=np.uint8))
    s = report_of(root)
    assert s.report.counts["images_non_rgb"] == 2 and s.report.n_images == 3
    y = prepare_dataset(root, verbose=False)
    from ultralytics.cfg import get_cfg
    from ultralytics.data import build_yolo_dataset
    from ultralytics.data.utils import check_det_dataset

    data = check_det_dataset(str(y))
    ds = build_yolo_dataset(get_cfg(overrides={"imgsz": 64}), data["val"], 2, data, mode="val")
    shapes = {Path(ds[i]["im_file"]).name: tuple(ds[i]["img"].shape) for i in range(len(ds))}
    assert all(s[0] == 3 for s in shapes.values()) and len(shapes) == 3  # CHW, 3 channels for gray and RGBA
    assert all(len(ds[i]["cls"]) == 1 for i in range(len(ds)))


def test_size_mismatch_uses_file_size(tmp_path):
    root = write_coco(tmp_path / "d", [img(1)], [ann(1, 1, [0, 0, 32, 24])], sizes={"im1.jpg": (128, 96)})
    assert report_of(root).report.counts["images_size_mismatch"] == 1
    y = prepare_dataset(root, verbose=False)
    np.testing.assert_allclose(labels(y, "val", "im1.jpg")[0], [0, 0.125, 0.125, 0.25, 0.25])


def test_describe_roboflow_layout(tmp_path):
    root = tmp_path / "rf"
    for split in ("train", "valid"):
        (root / split).mkdir(parents=True)
        (root / split / "_annotations.coco.json").write_text("{}")
    src = describe_dataset(root)
    assert set(src.splits) == {"train", "val"} and src.splits["val"][1] == root / "valid"


def test_report_table_readable(tmp_path):
    root = write_coco(tmp_path / "d", [img(1), img(2)], [ann(1, 1, [1, 1, 10, 10]), ann(2, 7, [1, 1, 1, 1])])
    t = report_of(root).report.table()
    assert "annotations_unknown_image" in t and "images_background" in t and "skipped" in t


def test_one_class_name_under_two_ids_across_splits_is_refused(tmp_path):
    # train 'cat' = id 1, val 'cat' = id 7: two classes named 'cat' would validate a class the model never learnt.
    write_coco(tmp_path, [img(1)], [ann(1, 1, [5, 5, 20, 20], cat=1)], [{"id": 1, "name": "cat"}], split="train")
    write_coco(tmp_path, [img(1)], [ann(1, 1, [5, 5, 20, 20], cat=7)], [{"id": 7, "name": "cat"}], split="val")
    with pytest.raises(DatasetError, match=r"'cat' is category id 1 in .*instances_train.json' and 7 in .*"
                                           r"instances_val.json'.*one category list"):
        prepare_dataset(tmp_path, verbose=False)


def test_a_roboflow_export_has_no_phantom_class_for_its_supercategory(tmp_path):
    # Roboflow COCO exports list the dataset's name as category 0, the supercategory of every real class, with no box
    cats = [{"id": 0, "name": "raccoons", "supercategory": "none"},
            {"id": 1, "name": "raccoon", "supercategory": "raccoons"}]
    for split in ("train", "val"):
        write_coco(tmp_path, [img(1)], [ann(1, 1, [5, 5, 20, 20], cat=1)], cats, split=split)
    data_yaml = prepare_dataset(tmp_path, verbose=False)
    cfg = yaml.safe_load(data_yaml.read_text())
    assert cfg["names"] == {0: "raccoon"} and cfg["nc"] == 1 and cfg["category_ids"] == [1]
    assert labels(data_yaml, "train", "im1.jpg")[0][0] == 0  # the raccoon is class 0, not 1 of 2
    kept = [{"id": 0, "name": "raccoons", "supercategory": "none"}, {"id": 1, "name": "raccoon",
                                                                     "supercategory": "animal"}]
    write_coco(tmp_path / "other", [img(1)], [ann(1, 1, [5, 5, 20, 20], cat=1)], kept)
    assert yaml.safe_load(prepare_dataset(tmp_path / "other", verbose=False).read_text())["nc"] == 2  # a real class


@pytest.mark.parametrize("mode", ["F", "I"])
def test_a_32_bit_tiff_opencv_cannot_read_is_skipped_not_passed_to_the_loader(tmp_path, mode):
    from PIL import Image

    root = write_coco(tmp_path / "d", [img(1, "depth.tif"), img(2)], [ann(1, 1, [1, 1, 10, 10]),
                                                                      ann(2, 2, [1, 1, 10, 10])])
    path = root / "val" / "depth.tif"
    Image.fromarray(np.random.default_rng(0).random((48, 64)).astype("float32" if mode == "F" else "int32"),
                    mode=mode).save(path)
    assert cv2.imread(str(path)) is None  # why: Ultralytics loads images with OpenCV
    s = report_of(root)
    assert s.report.counts["images_32bit"] == 1 and s.report.n_images == 1

"""EXIF orientation: COCO JSONs in the stored or the displayed frame give labels that match what Ultralytics loads,
and evaluation (predictions back in COCO coordinates) happens in the JSON's own frame."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from detkd.data.exif import box_to_displayed, box_to_stored
from detkd.data.validate import load_coco_json, validate_coco

# displayed frame 48 x 64 (portrait); stored 64 x 48 for orientations 6 and 8
DISP_W, DISP_H = 48, 64
RECTS = {1: ((4, 34), (20, 60), (255, 0, 0)),  # category 1: red, x 4..20, y 34..60 (displayed frame)
         5: ((26, 4), (44, 16), (0, 255, 0))}  # category 5: green
# PIL's exif_transpose method per orientation, and the method that undoes it (stored pixels from displayed ones)
UNDO = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_270}


def displayed_image() -> Image.Image:
    a = np.full((DISP_H, DISP_W, 3), 30, np.uint8)
    for (x0, y0), (x1, y1), color in RECTS.values():
        a[y0:y1, x0:x1] = color
    return Image.fromarray(a)


def mask_box(a: np.ndarray, color) -> list[float]:
    """COCO box of the pixels of ``color`` (RGB) in an RGB array: [x, y, w, h]."""
    c = np.argmax(color)
    m = (a[..., c] > 128) & (a[..., [i for i in range(3) if i != c]] < 128).all(-1)
    ys, xs = np.where(m)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1 - xs.min()), float(ys.max() + 1 - ys.min())]


def write_exif_jpeg(path: Path, orientation: int) -> Image.Image:
    """A JPEG (or, by ``path``'s suffix, a TIFF) whose DISPLAYED content is :func:`displayed_image`; returns the
    stored pixels."""
    stored = displayed_image().transpose(UNDO[orientation]) if orientation != 1 else displayed_image()
    if path.suffix == ".tif":
        stored.save(path, tiffinfo={0x0112: orientation})
        return stored
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(path, quality=100, subsampling=0, exif=exif)
    return stored


def make_dataset(root: Path, orientation: int, frame: str, suffix: str = ".jpg") -> Path:
    """COCO val split: r.jpg (EXIF ``orientation``; r.tif with ``suffix``) + p.jpg (no EXIF), annotations in
    ``frame`` of r."""
    (root / "val").mkdir(parents=True)
    (root / "annotations").mkdir()
    stored = write_exif_jpeg(root / "val" / f"r{suffix}", orientation)
    displayed_image().save(root / "val" / "p.jpg", quality=100, subsampling=0)
    src = np.asarray(stored) if frame == "stored" else np.asarray(displayed_image())
    h, w = src.shape[:2]
    images = [{"id": 7, "file_name": f"r{suffix}", "width": w, "height": h},
              {"id": 9, "file_name": "p.jpg", "width": DISP_W, "height": DISP_H}]
    anns = []
    for image_id, arr in ((7, src), (9, np.asarray(displayed_image()))):
        for cid, (_, _, color) in RECTS.items():
            b = mask_box(arr, color)
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cid, "bbox": b,
                         "area": b[2] * b[3], "iscrowd": 0})
    (root / "annotations" / "instances_val.json").write_text(json.dumps(
        {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "red"}, {"id": 5, "name": "green"}]}))
    return root


CASES = [(6, "displayed"), (6, "stored"), (8, "displayed"), (8, "stored")]


# ------------------------------------------------------------------------------------------------ transforms
@pytest.mark.parametrize("o", range(1, 9))
def test_box_transform_matches_pil_exif_transpose(o):
    """box_to_displayed moves a box exactly as PIL's exif_transpose moves the pixels; box_to_stored undoes it."""
    stored = displayed_image().transpose(UNDO[o]) if o != 1 else displayed_image()
    exif = Image.Exif()
    exif[0x0112] = o
    stored.info["exif"] = exif.tobytes()
    shown = np.asarray(ImageOps.exif_transpose(stored))
    sw, sh = stored.size
    for _, _, color in RECTS.values():
        b_stored, b_shown = mask_box(np.asarray(stored), color), mask_box(shown, color)
        assert box_to_displayed(b_stored, o, sw, sh) == b_shown
        assert box_to_stored(b_shown, o, shown.shape[1], shown.shape[0]) == b_stored


# ------------------------------------------------------------------------------------------------ conversion
@pytest.mark.parametrize("orientation, frame, suffix", [*((o, f, ".jpg") for o, f in CASES),
                                                         (6, "displayed", ".tif"), (6, "stored", ".tif")])
def test_labels_match_what_ultralytics_loads(tmp_path, orientation, frame, suffix):
    """The YOLO labels, read by Ultralytics' YOLODataset, frame the drawn rectangles in the image it loads (a TIFF:
    Pillow reports its size already turned by the EXIF tag, unlike a JPEG's)."""
    from ultralytics.cfg import get_cfg
    from ultralytics.data import build_yolo_dataset
    from ultralytics.data.utils import check_det_dataset

    from detkd.data.coco import prepare_dataset

    y = prepare_dataset(make_dataset(tmp_path / "d", orientation, frame, suffix), cache_dir=tmp_path / "c",
                        verbose=False)
    report = json.loads((y.parent / "report.json").read_text())["val"]
    assert report["counts"]["images_exif_rotated"] == 1 and report["n_boxes"] == 4
    assert report["counts"].get("images_exif_stored_frame", 0) == (frame == "stored")
    assert "images_size_mismatch" not in report["counts"] and "annotations_outside_image" not in report["counts"]
    data = check_det_dataset(str(y))
    ds = build_yolo_dataset(get_cfg(overrides={"imgsz": 64}), data["val"], 2, data, mode="val")
    assert len(ds.labels) == 2
    for i, lb in enumerate(ds.labels):
        im, (h0, w0), _ = ds.load_image(i)
        assert (h0, w0) == (DISP_H, DISP_W) == tuple(lb["shape"])  # upright, as cv2 applies the EXIF tag
        rgb = im[..., ::-1]
        assert len(lb["cls"]) == 2  # both rectangles labelled: the loop below checks each
        for c, (cx, cy, bw, bh) in zip(lb["cls"].ravel(), lb["bboxes"]):
            color = RECTS[(1, 5)[int(c)]][2]
            want = mask_box(rgb, color)
            got = [(cx - bw / 2) * w0, (cy - bh / 2) * h0, bw * w0, bh * h0]
            np.testing.assert_allclose(got, want, atol=1.01)


def _gt_validator(data_yaml, save_dir):
    """A COCOEvalDetectionValidator whose 'detections' are the ground-truth labels of each batch (score 1)."""
    import torch

    from detkd.eval.validator import COCOEvalDetectionValidator

    class GTAsDetections(COCOEvalDetectionValidator):
        def update_metrics(self, preds, batch):
            gt = []
            for si in range(len(preds)):
                pb = self._prepare_batch(si, batch)
                n = len(pb["cls"])
                gt.append({"bboxes": pb["bboxes"].reshape(n, 4), "conf": torch.ones(n), "cls": pb["cls"].reshape(n)})
            super().update_metrics(gt, batch)

    return GTAsDetections(save_dir=save_dir, args=dict(
        task="detect", mode="val", data=str(data_yaml), split="val", imgsz=64, batch=2, device="cpu", plots=False,
        save_json=True, verbose=False))


@pytest.mark.parametrize("orientation, frame", CASES)
def test_eval_gt_as_detections_in_json_frame(tmp_path, orientation, frame):
    """Ground truth fed through the validator as detections scores AP 1 against the JSON, in the JSON's frame."""
    import torch
    from ultralytics.nn.tasks import DetectionModel

    from detkd.data.coco import prepare_dataset

    root = make_dataset(tmp_path / "d", orientation, frame)
    y = prepare_dataset(root, cache_dir=tmp_path / "c", verbose=False)
    torch.manual_seed(0)
    v = _gt_validator(y, tmp_path / "eval")
    v(model=DetectionModel("yolov8n.yaml", nc=2, verbose=False))
    assert v.coco_metrics["AP"] == pytest.approx(1.0) and v.coco_metrics["n_detections"] == 4
    gt = load_coco_json(root / "annotations" / "instances_val.json")
    want = sorted((a["image_id"], a["category_id"], *a["bbox"]) for a in gt["annotations"])
    got = sorted((d["image_id"], d["category_id"], *d["bbox"]) for d in v.jdict)
    assert [w[:2] for w in want] == [g[:2] for g in got]
    np.testing.assert_allclose(np.array(got)[:, 2:], np.array(want)[:, 2:], atol=0.01)


@pytest.mark.parametrize("orientation, frame", [(6, "stored"), (8, "displayed")])
def test_yolo_to_coco_returns_the_json_frame(tmp_path, orientation, frame):
    from detkd.data.coco import prepare_dataset
    from detkd.data.yolo_layout import yolo_to_coco

    root = make_dataset(tmp_path / "d", orientation, frame)
    orig = load_coco_json(root / "annotations" / "instances_val.json")
    back = yolo_to_coco(prepare_dataset(root, cache_dir=tmp_path / "c", verbose=False), "val")
    key = {i["id"]: (i["width"], i["height"]) for i in orig["images"]}
    assert {i["id"]: (i["width"], i["height"]) for i in back["images"]} == key
    want = sorted((a["image_id"], a["category_id"], *a["bbox"]) for a in orig["annotations"])
    got = sorted((a["image_id"], a["category_id"], *a["bbox"]) for a in back["annotations"])
    np.testing.assert_allclose(np.array(got), np.array(want), atol=1e-6)


# ------------------------------------------------------------------------------------------------ frame detection
@pytest.mark.parametrize("json_wh, box, frame, mismatch", [
    ((64, 48), [50, 5, 10, 10], "stored", False),  # size and box say stored (x 60 > displayed width 48)
    ((48, 64), [5, 50, 10, 10], "displayed", False),  # size and box say displayed (y 60 > stored height 48)
    ((64, 48), [5, 50, 10, 10], "displayed", True),  # raw size written, but the box only fits the displayed frame
    ((64, 48), [1, 1, 5, 5], "stored", False),  # box fits both: the JSON's width/height decide
    ((None, None), [1, 1, 5, 5], "displayed", False),  # nothing decides: the convention, displayed
])
def test_json_frame_detected(tmp_path, json_wh, box, frame, mismatch):
    (tmp_path / "val").mkdir()
    write_exif_jpeg(tmp_path / "val" / "r.jpg", 6)
    im = {"id": 1, "file_name": "r.jpg"}
    if json_wh[0]:
        im.update(width=json_wh[0], height=json_wh[1])
    coco = {"images": [im], "categories": [{"id": 1, "name": "a"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": box, "area": 100, "iscrowd": 0}]}
    s = validate_coco(coco, tmp_path / "x.json", tmp_path / "val", "val", progress=False)
    assert s.images[0].json_frame == frame and (s.images[0].width, s.images[0].height) == (DISP_W, DISP_H)
    c = s.report.counts
    assert c["images_exif_rotated"] == 1 and c["images_exif_stored_frame"] == (frame == "stored")
    assert c["images_size_mismatch"] == (mismatch or json_wh[0] is None)
    assert s.report.n_boxes == 1 and "r.jpg" in s.report.examples["images_exif_rotated"][0]
    assert "orientation 6" in s.report.table()


@pytest.mark.parametrize("suffix", [".jpg", ".tif"])
def test_unlabelled_image_shape_is_the_loaded_one(tmp_path, suffix):
    from ultralytics.utils.patches import imread

    from detkd.data.unlabeled import _image_shape

    path = tmp_path / f"r{suffix}"
    write_exif_jpeg(path, 6)
    assert _image_shape(str(path)) == imread(str(path)).shape[:2] == (DISP_H, DISP_W)

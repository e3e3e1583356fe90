"""`detkd demo`: the generated data's knobs, the students' labelled subset, the thread setting, and the demo end to
end at tiny settings (table, teacher verdict, AP-per-epoch plot, progress lines)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest


def test_separated_shapes_are_inside_and_apart(tmp_path):
    """separated=True: every labelled box lies inside the image and no two shapes of an image overlap (their
    circumscribed circles are apart, so their boxes can meet only at the corners: under a quarter of the smaller)."""
    from detkd.data.synthetic import SyntheticSpec, make_shapes_dataset

    spec = SyntheticSpec(n_train=24, n_val=0, imgsz=64, seed=3, min_objects=2, max_objects=3,
                         object_size=(0.12, 0.2), distractor_p=0.0, separated=True)
    root = make_shapes_dataset(tmp_path / "ds", spec)
    coco = json.loads((root / "annotations" / "instances_train.json").read_text())
    by_image: dict = {}
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        assert x >= 0 and y >= 0 and x + w <= 64 and y + h <= 64
        by_image.setdefault(a["image_id"], []).append((x, y, x + w, y + h))
    assert sum(len(v) for v in by_image.values()) >= 2 * 24 * 0.8  # most images get their 2-3 objects
    for boxes in by_image.values():
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                a, b = boxes[i], boxes[j]
                inter_w = min(a[2], b[2]) - max(a[0], b[0])
                inter_h = min(a[3], b[3]) - max(a[1], b[1])
                # circumscribed circles are apart, so the tight boxes overlap at most at their corners
                assert inter_w <= 0 or inter_h <= 0 or inter_w * inter_h < 0.25 * min(
                    (a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))


def test_class_colors_paint_each_class_its_colour(tmp_path):
    """class_colors: the pixel at a shape's centre has its class colour (within jitter + noise)."""
    import cv2

    from detkd.data.synthetic import SyntheticSpec, make_shapes_dataset

    colors = ((0, 0, 255), (0, 255, 0), (255, 0, 0))
    spec = SyntheticSpec(n_train=12, n_val=0, imgsz=64, seed=0, classes=("circle", "square", "triangle"),
                         class_colors=colors, color_jitter=10, noise_std=2.0, object_size=(0.15, 0.25),
                         distractor_p=0.0, clutter_lines=(0, 0), separated=True)
    root = make_shapes_dataset(tmp_path / "ds", spec)
    coco = json.loads((root / "annotations" / "instances_train.json").read_text())
    files = {im["id"]: im["file_name"] for im in coco["images"]}
    checked = 0
    for a in coco["annotations"]:
        if a["category_id"] == 3:  # a triangle's box centre may lie outside the triangle
            continue
        img = cv2.imread(str(root / "train" / files[a["image_id"]])).astype(int)
        x, y, w, h = a["bbox"]
        pixel = img[int(y + h / 2), int(x + w / 2)]
        assert np.abs(pixel - np.array(colors[a["category_id"] - 1])).max() <= 10 + 20  # jitter + noise + JPEG
        checked += 1
    assert checked >= 5


def test_default_spec_draws_as_before(tmp_path):
    """The new knobs' defaults keep the original hard data: occluded / cut boxes and random colours occur."""
    from detkd.data.synthetic import SyntheticSpec, make_shapes_dataset

    root = make_shapes_dataset(tmp_path / "ds", SyntheticSpec(n_train=40, n_val=0, imgsz=64, seed=0))
    coco = json.loads((root / "annotations" / "instances_train.json").read_text())
    edge = [a for a in coco["annotations"] if a["bbox"][0] <= 0 or a["bbox"][1] <= 0
            or a["bbox"][0] + a["bbox"][2] >= 64 or a["bbox"][1] + a["bbox"][3] >= 64]
    assert edge  # objects cut by the border exist (not separated)
    assert min(a["bbox"][2] for a in coco["annotations"]) < 64 * 0.12  # small objects exist


def test_train_subset_keeps_first_images_and_whole_val(tmp_path):
    from detkd.data.synthetic import SyntheticSpec, make_shapes_dataset
    from detkd.demo import train_subset

    src = make_shapes_dataset(tmp_path / "src", SyntheticSpec(n_train=10, n_val=4, imgsz=64, seed=2))
    dst = train_subset(src, tmp_path / "dst", 3)
    full = json.loads((src / "annotations" / "instances_train.json").read_text())
    sub = json.loads((dst / "annotations" / "instances_train.json").read_text())
    assert [im["file_name"] for im in sub["images"]] == [im["file_name"] for im in full["images"][:3]]
    ids = {im["id"] for im in full["images"][:3]}
    assert sub["annotations"] == [a for a in full["annotations"] if a["image_id"] in ids]
    assert sorted(os.listdir(dst / "train")) == sorted(im["file_name"] for im in full["images"][:3])
    assert (dst / "annotations" / "instances_val.json").read_text() == \
        (src / "annotations" / "instances_val.json").read_text()
    assert len(os.listdir(dst / "val")) == 4
    assert train_subset(src, tmp_path / "dst", 3) == dst  # reused


def test_torch_threads_sets_and_restores_ultralytics_threads():
    import torch
    import ultralytics.utils.torch_utils as tu

    from detkd.demo import torch_threads

    before = tu.NUM_THREADS, torch.get_num_threads()
    with torch_threads(2):
        assert tu.NUM_THREADS == 2 and torch.get_num_threads() == 2
        tu.select_device("cpu", verbose=False)  # what every trainer / validator calls: it keeps our 2
        assert torch.get_num_threads() == 2
    assert (tu.NUM_THREADS, torch.get_num_threads()) == before


def test_demo_refuses_more_student_than_teacher_images(tmp_path, capsys):
    from detkd.cli import main

    rc = main(["demo", "--out", str(tmp_path / "d"), "--n-teacher", "10", "--n-student", "20"])
    assert rc == 2
    assert "--n-student" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_tiny(tmp_path, capsys):
    from detkd.cli import main

    rc = main(["demo", "--out", str(tmp_path / "demo"), "--imgsz", "64", "--n-teacher", "16", "--n-student", "8",
               "--n-val", "8", "--teacher-epochs", "1", "--epochs", "1", "--batch", "8"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "| teacher yolov8s | 16 | 1 |" in out and "| baseline yolov8n | 8 | 1 |" in out
    assert "| distilled yolov8n | 8 | 1 |" in out
    assert "Scenario: the teacher was trained on 16 labelled images, the students get only 8" in out
    assert "Teacher verdict: " in out
    for i in range(1, 6):
        assert f"[detkd demo {i}/5]" in out
    report = json.loads((tmp_path / "demo" / "demo_results.json").read_text())
    parallel = (os.cpu_count() or 1) >= 2
    assert report["settings"]["parallel"] is parallel
    if parallel:  # the parent printed each student's epochs as they finished
        assert "baseline epoch 1/1" in out and "distilled epoch 1/1" in out
    assert set(report["rows"]) == {"teacher", "baseline", "distilled"}
    for r in report["rows"].values():
        assert 0.0 <= r["AP"] <= 1.0 and r["params_M"] > 0 and r["GFLOPs"] > 0
    assert report["rows"]["teacher"]["params_M"] > report["rows"]["baseline"]["params_M"]
    assert len(report["rows"]["baseline"]["curve"]) == 1 and len(report["rows"]["distilled"]["curve"]) == 1
    png = tmp_path / "demo" / "demo_ap_per_epoch.png"
    assert f"plot (AP per epoch, baseline vs distilled): {png}" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the students trained on the subset, the teacher on all images
    sub = json.loads((tmp_path / "demo" / "data" / "student" / "annotations" / "instances_train.json").read_text())
    assert len(sub["images"]) == 8


def test_students_parallel_on_a_multicore_cpu_whatever_the_teacher_threads(monkeypatch):
    """--threads sets the teacher's torch threads; the students still train side by side on a 2+-core CPU."""
    import detkd.demo as demo

    monkeypatch.setattr(demo.os, "cpu_count", lambda: 2)
    assert demo.DemoSettings(threads=1).run_parallel() is True
    assert demo.DemoSettings().run_parallel() is True
    assert demo.DemoSettings(device="0").run_parallel() is False
    assert demo.DemoSettings(parallel=False).run_parallel() is False
    monkeypatch.setattr(demo.os, "cpu_count", lambda: 1)
    assert demo.DemoSettings().run_parallel() is False


def test_demo_with_yolo26_teacher_and_student(tmp_path, capsys):
    """The demo takes YOLO26 models (end-to-end, no DFL bins): it trains, distils and scores them (NMS-free)."""
    from detkd.cli import main

    rc = main(["demo", "--out", str(tmp_path / "demo"), "--imgsz", "64", "--n-teacher", "8", "--n-student", "8",
               "--n-val", "4", "--teacher-epochs", "1", "--epochs", "1", "--batch", "8",
               "--teacher", "yolo26n.yaml", "--student", "yolo26n.yaml"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "| teacher yolo26n | 8 | 1 |" in out and "| distilled yolo26n | 8 | 1 |" in out
    report = json.loads((tmp_path / "demo" / "demo_results.json").read_text())
    assert set(report["rows"]) == {"teacher", "baseline", "distilled"}
    assert all(0.0 <= r["AP"] <= 1.0 for r in report["rows"].values())

"""COCO evaluation: metric correctness against pycocotools called directly, evaluate_coco, CLI, training validator.

detkd evaluates with faster-coco-eval by default; its numbers equal pycocotools' to a few ulps (TOL), see also
tests/test_coco_backends.py."""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path

import numpy as np
import pytest

from detkd.data.coco import load_coco_meta, prepare_dataset
from detkd.data.synthetic import SyntheticSpec, make_shapes_dataset
from detkd.errors import DatasetError
from detkd.eval.metrics import STAT_KEYS, coco_box_metrics, format_table

NONCONTIG = (2, 11, 40, 77)
TOL = 1e-12


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("ev"), SyntheticSpec(
        n_train=8, n_val=6, imgsz=64, category_ids=NONCONTIG, seed=5))


def pycocotools_direct(gt_file, dets_file, img_ids=None) -> list[float]:
    """The reference: pycocotools exactly as its README calls it."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_file))
        dt = gt.loadRes(str(dets_file))
        ev = COCOeval(gt, dt, "bbox")
        if img_ids is not None:
            ev.params.imgIds = sorted(img_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float(x) for x in ev.stats]


def gt_as_detections(gt: dict) -> list[dict]:
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
            for a in gt["annotations"] if not a.get("iscrowd")]


def toy_gt(n_boxes: int = 4) -> dict:
    """One 200x200 image, ``n_boxes`` separated 30x30 boxes of category 9 (medium objects)."""
    anns = [{"id": k + 1, "image_id": 7, "category_id": 9, "bbox": [10 + 45 * k, 20, 40, 40], "area": 1600.0,
             "iscrowd": 0} for k in range(n_boxes)]
    return {"images": [{"id": 7, "file_name": "x.jpg", "width": 200, "height": 200}], "annotations": anns,
            "categories": [{"id": 9, "name": "thing"}]}


# ------------------------------------------------------------------------------------------------ metric correctness
def test_perfect_predictions_give_ap_1(shapes):
    gt_file = shapes / "annotations" / "instances_val.json"
    gt = json.loads(gt_file.read_text())
    m = coco_box_metrics(gt_file, gt_as_detections(gt))
    for k in ("AP", "AP50", "AP75", "AR100"):  # (AR1 < 1: one detection per image, several objects)
        assert m[k] == pytest.approx(1.0), k
    assert set(m["per_class"]) == {"circle", "square", "triangle", "cross"}
    assert all(v == pytest.approx(1.0) for v in m["per_class"].values() if v is not None)


def test_half_missed_known_ap(tmp_path):
    gt = toy_gt(4)
    dets = gt_as_detections(gt)[:2]  # two of four found, perfectly
    m = coco_box_metrics(gt, dets)
    # precision 1 up to recall 0.5, nothing after: 51 of COCO's 101 recall points -> AP = 51/101
    assert m["AP"] == pytest.approx(51 / 101) and m["AP50"] == pytest.approx(51 / 101)
    assert m["AR100"] == pytest.approx(0.5) and m["APs"] == -1.0  # no small objects: pycocotools says -1
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dt.json").write_text(json.dumps(dets))
    assert [m[k] for k in STAT_KEYS] == pytest.approx(pycocotools_direct(tmp_path / "gt.json", tmp_path / "dt.json"),
                                                      abs=TOL)


def test_equals_pycocotools_on_noisy_detections(shapes, tmp_path):
    gt_file = shapes / "annotations" / "instances_val.json"
    gt = json.loads(gt_file.read_text())
    rng = np.random.default_rng(0)
    dets = []
    for d in gt_as_detections(gt):
        x, y, w, h = d["bbox"]
        j = rng.normal(0, 0.12, 4) * [w, h, w, h]
        dets.append({**d, "bbox": [x + j[0], y + j[1], abs(w + j[2]) + 1, abs(h + j[3]) + 1],
                     "score": float(rng.random())})
        if rng.random() < 0.5:  # a confusion with another class
            dets.append({**d, "category_id": int(rng.choice(NONCONTIG)), "score": float(rng.random())})
    for im in gt["images"]:  # false positives
        dets.append({"image_id": im["id"], "category_id": NONCONTIG[0], "bbox": [5, 5, 20, 20],
                     "score": float(rng.random())})
    f = tmp_path / "dets.json"
    f.write_text(json.dumps(dets))
    m = coco_box_metrics(gt_file, f)
    ref = pycocotools_direct(gt_file, f)
    assert [m[k] for k in STAT_KEYS] == pytest.approx(ref, abs=TOL)
    assert 0.05 < m["AP"] < 0.95  # a non-trivial case
    sub = [im["id"] for im in gt["images"][:3]]
    assert [coco_box_metrics(gt_file, f, img_ids=sub)[k] for k in STAT_KEYS] == pytest.approx(
        pycocotools_direct(gt_file, f, sub), abs=TOL)


def test_crowd_region_detection_is_not_a_false_positive():
    gt = toy_gt(2)
    gt["annotations"].append({"id": 3, "image_id": 7, "category_id": 9, "bbox": [100, 120, 60, 60], "area": 3600.0,
                              "iscrowd": 1})
    dets = gt_as_detections(gt) + [{"image_id": 7, "category_id": 9, "bbox": [105, 125, 40, 40], "score": 1.0}]
    assert coco_box_metrics(gt, dets)["AP"] == pytest.approx(1.0)


def test_no_detections_and_unknown_ids():
    m = coco_box_metrics(toy_gt(2), [])
    assert m["AP"] == 0.0 and m["per_class"] == {"thing": 0.0} and m["n_detections"] == 0
    with pytest.raises(DatasetError, match="unknown image ids"):
        coco_box_metrics(toy_gt(2), [{"image_id": 8, "category_id": 9, "bbox": [1, 1, 2, 2], "score": 1}])
    with pytest.raises(DatasetError, match="unknown category ids"):
        coco_box_metrics(toy_gt(2), [{"image_id": 7, "category_id": 1, "bbox": [1, 1, 2, 2], "score": 1}])


def test_format_table():
    m = coco_box_metrics(toy_gt(4), gt_as_detections(toy_gt(4))[:2])
    t = format_table(m)
    assert "AP50" in t and "thing" in t and "0.505" in t and "-" in t.splitlines()[2]


# ------------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def random_model():
    from ultralytics import YOLO

    return YOLO("yolov8n.yaml")  # random init, nc reset by detkd for the data


def check_eval_run(m: dict, data, split="val"):
    """metrics.json and detections agree with pycocotools run directly on the written files."""
    out = Path(m["detections_json"]).parent
    saved = json.loads((out / "metrics.json").read_text())
    assert [saved[k] for k in STAT_KEYS] == [m[k] for k in STAT_KEYS]
    dets = json.loads(Path(m["detections_json"]).read_text())
    assert len(dets) == m["n_detections"] > 0
    meta = load_coco_meta(prepare_dataset(data, verbose=False))
    gt = json.loads(meta["coco"][split].read_text())
    assert {d["image_id"] for d in dets} <= {im["id"] for im in gt["images"]}  # original image ids
    assert {d["category_id"] for d in dets} <= set(meta["category_ids"])  # original category ids
    assert [m[k] for k in STAT_KEYS] == pytest.approx(pycocotools_direct(meta["coco"][split], m["detections_json"]),
                                                      abs=TOL)
    return dets


def test_evaluate_coco_random_model_matches_pycocotools(shapes, tmp_path):
    from detkd.eval.coco_eval import evaluate_coco

    m = evaluate_coco("yolov8n.yaml", shapes, imgsz=64, conf=0.0001, batch=8, out_dir=tmp_path, verbose=False)
    assert m["n_images"] == 6 and m["seconds"] > 0
    assert set(m["per_class"]) == {"circle", "square", "triangle", "cross"}
    dets = check_eval_run(m, shapes)
    assert {d["image_id"] for d in dets} <= set(range(100000, 100006))
    none = evaluate_coco("yolov8n.yaml", shapes, imgsz=64, conf=0.999, out_dir=tmp_path / "none", verbose=False)
    assert none["n_detections"] == 0 and none["AP"] == 0.0 and none["AR100"] == 0.0  # nothing found: a score, no crash
    assert json.loads((tmp_path / "none" / "predictions.json").read_text()) == []
    again = evaluate_coco("yolov8n.yaml", shapes, imgsz=64, conf=0.999, out_dir=tmp_path, verbose=False)  # re-scored
    assert json.loads(Path(again["detections_json"]).read_text()) == []  # not the earlier run's detections


def test_evaluate_coco_yolo_object_and_mismatched_classes(shapes, tmp_path, random_model):
    from detkd.errors import IncompatibleModelsError
    from detkd.eval.coco_eval import evaluate_coco

    with pytest.raises(IncompatibleModelsError, match="80 classes but the dataset has 4"):
        evaluate_coco(random_model, shapes, imgsz=64, out_dir=tmp_path, verbose=False)


def test_evaluate_coco_real_raccoon(raccoon, tmp_path):
    from detkd.eval.coco_eval import evaluate_coco

    m = evaluate_coco("yolov8n.yaml", raccoon, imgsz=96, conf=0.0001, batch=16, out_dir=tmp_path, verbose=False)
    assert m["n_images"] == 40 and list(m["per_class"]) == ["raccoon"]
    assert m["per_class_instances"] == {"raccoon": 42}
    check_eval_run(m, raccoon)


def test_cli_eval_prints_table(shapes, tmp_path, capsys):
    from detkd.cli import main

    rc = main(["eval", "--model", "yolov8n.yaml", "--data", str(shapes), "--imgsz", "64", "--conf", "0.0001",
               "--out", str(tmp_path / "cli")])
    out = capsys.readouterr().out
    assert rc == 0 and "AP50" in out and "triangle" in out and "per 1000 images" in out
    assert "COCO bbox (faster-coco-eval)" in out  # the default backend, named in the table
    assert (tmp_path / "cli" / "metrics.json").is_file() and (tmp_path / "cli" / "predictions.json").is_file()
    rc = main(["eval", "--model", "yolov8n.yaml", "--data", str(shapes), "--imgsz", "64", "--conf", "0.0001",
               "--out", str(tmp_path / "ref"), "--coco-backend", "pycocotools"])
    assert rc == 0 and "COCO bbox (pycocotools)" in capsys.readouterr().out
    fast, ref = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("cli", "ref"))
    assert (fast["coco_backend"], ref["coco_backend"]) == ("faster", "pycocotools")
    assert [fast[k] for k in STAT_KEYS] == pytest.approx([ref[k] for k in STAT_KEYS], abs=TOL)
    assert fast["per_class"] == pytest.approx(ref["per_class"], abs=TOL)
    with pytest.raises(SystemExit) as e:  # argparse: names the valid choices, exit 2
        main(["eval", "--model", "yolov8n.yaml", "--data", str(shapes), "--coco-backend", "fast"])
    assert e.value.code == 2 and "invalid choice: 'fast'" in capsys.readouterr().err
    assert main(["eval", "--model", "yolov8n.yaml", "--data", str(tmp_path / "nope")]) == 2
    assert "not found" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ training
def test_validator_sets_fitness_from_coco_ap(shapes, tmp_path, monkeypatch):
    """A DetectionTrainer using the COCO validator: fitness (best.pt selection) is pycocotools AP."""
    from ultralytics.models.yolo.detect import DetectionTrainer

    import detkd.eval.validator as vmod
    from detkd.eval.validator import COCOEvalDetectionValidator

    calls = []
    real = vmod.coco_box_metrics

    def fake_ap(gt, dets, img_ids=None, backend=None):  # real COCOeval; AP replaced by a value Ultralytics never gives
        m = real(gt, dets, img_ids=img_ids, backend=backend)
        calls.append({"n_dets": len(dets), "n_images": m["n_images"], "real_AP": m["AP"], "backend": backend})
        m["AP"] = 0.4321
        return m

    monkeypatch.setattr(vmod, "coco_box_metrics", fake_ap)

    class Trainer(DetectionTrainer):
        def get_validator(self):
            self.loss_names = "box_loss", "cls_loss", "dfl_loss"
            return COCOEvalDetectionValidator(self.test_loader, save_dir=self.save_dir, args=copy.copy(self.args),
                                              _callbacks=self.callbacks)

    data = prepare_dataset(shapes, verbose=False)
    t = Trainer(overrides=dict(model="yolov8n.yaml", data=str(data), epochs=1, imgsz=64, batch=8, device="cpu",
                               workers=0, plots=False, project=str(tmp_path), name="t", exist_ok=True, val=True,
                               conf=0.0001, amp=False, verbose=False))
    t.train()
    assert len(calls) == 2  # epoch 1 validation + final validation of best.pt
    assert all(c["n_images"] == 6 and c["n_dets"] > 0 and c["backend"] == "faster" for c in calls)
    assert t.best_fitness == pytest.approx(0.4321)  # best.pt chosen on the COCO AP
    assert t.metrics["metrics/AP(COCO)"] == pytest.approx(0.4321)
    assert t.validator.class_map == list(NONCONTIG)
    best = tmp_path / "t" / "weights" / "best.pt"
    monkeypatch.undo()
    from detkd.eval.coco_eval import evaluate_coco  # a trained checkpoint evaluates like any model

    check_eval_run(evaluate_coco(str(best), shapes, imgsz=64, conf=0.0001, out_dir=tmp_path / "e", verbose=False),
                   shapes)

"""``detkd eval`` / ``evaluate_coco`` match the model's classes to the data's by NAME, not by index.

Before, only the class count was checked: a model with the data's classes in another order was scored with its
class i as the data's i-th category (a silently wrong AP), and a ``--keep-teacher-classes`` student (the teacher's
classes + the data's) was refused for its count. The models here are copies of one reference model whose head's
class rows are permuted with their names (class k of a copy is the reference's class of that name), so scored by name
they must give exactly the reference's detections and AP; extra classes are confident everywhere, so any of their
detections left in would change the AP."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import named_model, save_checkpoint, with_class_rows
from detkd.cli import main
from detkd.errors import IncompatibleModelsError

SHAPES = ["circle", "square", "triangle", "cross"]  # the shapes dataset's classes, in its order
IMGSZ = 64


@pytest.fixture(scope="module")
def models(tmp_path_factory, shapes_yaml) -> dict:
    """Checkpoints: the reference (the data's classes, class biases +6 so it detects plenty, boxes 2 strides wide so
    that some overlap the objects: a random-init model's AP is 0 otherwise), the same classes in
    another order (and spelling), a superset (a --keep-teacher-classes student: teacher classes + the data's), one
    whose classes are not the data's ('star' for 'cross'), and the reference with placeholder names ('0', '1', ...)."""
    folder = tmp_path_factory.mktemp("eval_names")
    ref = named_model("yolov8n.yaml", shapes_yaml, seed=0)
    with torch.no_grad():
        for seq in ref.model[-1].cv3:
            seq[-1].bias += 6.0
        for seq in ref.model[-1].cv2:  # DFL logits peaked at bin 1: each side ~1 stride from the anchor
            seq[-1].weight.mul_(0.1)
            seq[-1].bias.zero_()
            seq[-1].bias.view(4, -1)[:, 1] = 10.0
    nets = {
        "reference": ref,
        "permuted": with_class_rows(ref, ["Cross", "triangle", "circle", " square"], [3, 2, 0, 1]),
        "superset": with_class_rows(ref, ["bus", "triangle", "car", "circle", "cross", "square"],
                                  [None, 2, None, 0, 3, 1]),
        "other": with_class_rows(ref, ["star", "circle", "square", "triangle"], [None, 0, 1, 2]),
        "renamed": with_class_rows(ref, ["ring", "square", "triangle", "cross"], [0, 1, 2, 3]),
        "nameless": with_class_rows(ref, ["0", "1", "2", "3"], [0, 1, 2, 3]),
    }
    return {name: save_checkpoint(net, folder / f"{name}.pt") for name, net in nets.items()}


def _eval(model, data, out, **kw):
    from detkd.eval.coco_eval import evaluate_coco

    return evaluate_coco(model, data, imgsz=IMGSZ, conf=0.001, batch=8, out_dir=out, verbose=False, **kw)


def _detections(metrics) -> list[tuple]:
    dets = json.loads(open(metrics["detections_json"]).read())
    return sorted((d["image_id"], d["category_id"], *(round(v, 2) for v in d["bbox"]), round(d["score"], 4))
                  for d in dets)


@pytest.fixture(scope="module")
def reference(models, shapes_coco, tmp_path_factory) -> dict:
    m = _eval(models["reference"], shapes_coco, tmp_path_factory.mktemp("ref"))
    assert m["AP"] > 0 and len(set(m["per_class"].values())) > 1  # a score that a wrong class order changes
    return m


def test_permuted_class_order_gives_the_reference_ap(models, shapes_coco, reference, tmp_path):
    """Before: the same count, so class 0 'Cross' was scored as the data's 'circle': another AP, silently."""
    m = _eval(models["permuted"], shapes_coco, tmp_path)
    assert m["AP"] == pytest.approx(reference["AP"], abs=1e-12)
    assert m["per_class"] == pytest.approx(reference["per_class"], abs=1e-12)
    assert _detections(m) == _detections(reference)  # the same detections, in the data's category ids
    assert m["class_match"]["how"] == "by name" and m["class_match"]["dropped"] == []
    assert "class_match" not in reference or reference["class_match"]["how"] == "same names"


def test_a_superset_model_is_scored_on_the_data_classes(models, shapes_coco, reference, tmp_path):
    """A --keep-teacher-classes student: its extra classes ('bus', 'car', confident everywhere) are dropped, the rest
    matched by name. Before: refused ('predicts 6 classes but the dataset has 4')."""
    m = _eval(models["superset"], shapes_coco, tmp_path)
    assert m["AP"] == pytest.approx(reference["AP"], abs=1e-12)
    assert _detections(m) == _detections(reference)
    assert m["class_match"]["dropped"] == ["bus", "car"]
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["class_match"]["how"] == "by name"


def test_cli_says_it_matched_by_name_and_which_classes_it_dropped(models, shapes_coco, tmp_path, capsys):
    rc = main(["eval", "--model", models["superset"], "--data", str(shapes_coco), "--imgsz", str(IMGSZ),
               "--out", str(tmp_path)])
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "by name" in line]
    assert rc == 0 and len(lines) == 1, out
    assert "bus, car" in lines[0] and "not in the data" in lines[0]


def test_classes_that_are_not_the_data_s_are_refused_in_one_line(models, shapes_coco, tmp_path, capsys):
    """Before: scored by index ('star' as 'circle', ...), exit 0."""
    rc = main(["eval", "--model", models["other"], "--data", str(shapes_coco), "--imgsz", str(IMGSZ),
               "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "cross" in err and "star" in err and "--class-map" in err  # both lists, the missing class, the fix
    with pytest.raises(IncompatibleModelsError, match="cross"):
        _eval(models["other"], shapes_coco, tmp_path / "api")


def test_class_map_names_classes_of_another_spelling(models, shapes_coco, reference, tmp_path, capsys):
    """'ring' is the data's 'circle': refused without a map, scored as the reference with --class-map ring=circle."""
    with pytest.raises(IncompatibleModelsError, match="circle"):
        _eval(models["renamed"], shapes_coco, tmp_path / "no_map")
    m = _eval(models["renamed"], shapes_coco, tmp_path / "map", class_map="ring=circle")
    assert m["AP"] == pytest.approx(reference["AP"], abs=1e-12)
    rc = main(["eval", "--model", models["renamed"], "--data", str(shapes_coco), "--imgsz", str(IMGSZ),
               "--class-map", "ring=circle", "--out", str(tmp_path / "cli")])
    assert rc == 0 and "ring -> circle" in capsys.readouterr().out
    rc = main(["eval", "--model", models["renamed"], "--data", str(shapes_coco), "--class-map", "ring=disc",
               "--out", str(tmp_path / "bad")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "disc" in err


def test_a_model_without_class_names_is_matched_by_index_and_says_so(models, shapes_coco, reference, tmp_path,
                                                                     capsys):
    rc = main(["eval", "--model", models["nameless"], "--data", str(shapes_coco), "--imgsz", str(IMGSZ),
               "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0 and sum("by index" in line for line in out.splitlines()) == 1, out
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["AP"] == pytest.approx(reference["AP"], abs=1e-12) and m["class_match"]["how"] == "by index"


def test_a_model_yaml_is_built_for_the_data_classes(shapes_coco, tmp_path, capsys):
    """A random-init baseline from a YAML has the data's classes by construction: no 'by index' note."""
    assert main(["eval", "--model", "yolov8n.yaml", "--data", str(shapes_coco), "--imgsz", str(IMGSZ),
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "by index" not in out and "by name" not in out


def test_an_nms_free_model_is_matched_by_name(shapes_yaml, shapes_coco, tmp_path):
    """YOLO26 (one-to-one head, no NMS): its top-k detections are renumbered into the data's classes. A random-init
    head scores alike over anchors, so the classes are told apart by their biases, and the anchors kept among equal
    scores may differ: the detections are compared as (category, score) counts, which a class order mixed up changes
    (before: the permuted model's 'cross' scored as 'circle')."""
    from collections import Counter

    ref = named_model("yolo26n.yaml", shapes_yaml, seed=0)
    with torch.no_grad():
        for seq in ref.model[-1].one2one_cv3:
            seq[-1].bias += torch.tensor([3.0, 1.0, -1.0, -3.0])
    perm = with_class_rows(ref, ["cross", "triangle", "circle", "square"], [3, 2, 0, 1])
    m_ref, m = _eval(ref, shapes_coco, tmp_path / "ref"), _eval(perm, shapes_coco, tmp_path / "perm")

    def by_class(metrics):
        return Counter((d[1], d[-1]) for d in _detections(metrics))

    assert by_class(m) == by_class(m_ref) and len({c for c, _ in by_class(m_ref)}) > 1
    assert m["postprocess"] == "NMS-free (one-to-one head)" and m["class_match"]["how"] == "by name"


# ------------------------------------------------------------------------------------- exported artefacts
def _export(checkpoint, fmt, out):
    from detkd.export.exporter import export_loaded
    from detkd.export.student import load_student

    return str(export_loaded(load_student(checkpoint)[0], fmt, out, fmt, imgsz=IMGSZ, batch=1))


def test_onnx_names_from_its_metadata_are_matched_by_name(models, shapes_coco, tmp_path):
    """Ultralytics writes the class names into the ONNX metadata: a permuted model's export scores as the reference's
    export. Without metadata (a plain ONNX) the classes are matched by index, and said so."""
    import onnx

    ref = _eval(_export(models["reference"], "onnx", tmp_path / "ref"), shapes_coco, tmp_path / "e_ref")
    perm = _eval(_export(models["permuted"], "onnx", tmp_path / "perm"), shapes_coco, tmp_path / "e_perm")
    assert ref["AP"] > 0 and perm["AP"] == pytest.approx(ref["AP"], abs=1e-9)
    assert perm["class_match"]["how"] == "by name" and _detections(perm) == _detections(ref)

    plain = onnx.load(str(tmp_path / "ref" / "onnx.onnx"))
    del plain.metadata_props[:]
    onnx.save(plain, str(tmp_path / "plain.onnx"))
    m = _eval(str(tmp_path / "plain.onnx"), shapes_coco, tmp_path / "e_plain")
    assert m["class_match"]["how"] == "by index" and m["AP"] == pytest.approx(ref["AP"], abs=1e-9)
    superset = _export(models["superset"], "onnx", tmp_path / "sup")
    m = _eval(superset, shapes_coco, tmp_path / "e_sup")
    assert m["class_match"]["dropped"] == ["bus", "car"] and m["AP"] == pytest.approx(ref["AP"], abs=1e-9)


def test_openvino_names_from_its_metadata_are_matched_by_name(models, shapes_coco, tmp_path):
    pytest.importorskip("openvino")
    folder = _export(models["permuted"], "openvino", tmp_path / "perm")
    ref = _eval(models["reference"], shapes_coco, tmp_path / "e_ref")
    m = _eval(folder, shapes_coco, tmp_path / "e_perm", precision="fp32")
    assert m["class_match"]["how"] == "by name"
    assert m["AP"] == pytest.approx(ref["AP"], abs=2e-3)  # FP32 OpenVINO vs torch: rounding only
    with pytest.raises(IncompatibleModelsError, match="star"):
        _eval(_export(models["other"], "openvino", tmp_path / "other"), shapes_coco, tmp_path / "e_other")

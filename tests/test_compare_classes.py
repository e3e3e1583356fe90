"""``detkd compare`` with a teacher of other classes (issue 28): --class-map and --keep-teacher-classes reach every
distilled run and its fingerprint, each row is scored in the data's classes (a teacher through its class map, on the
data classes it predicts), the report adds AP per class group, and bad input is one line with exit 2.

The teachers here are the permuted copies of one reference model: a teacher class's head rows are the reference's
rows of the data class of that name, so scored through the map it must give exactly the reference's detections,
while its extra classes (confident everywhere) must not appear at all."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import named_model, save_checkpoint, with_class_rows
from detkd.cli import main
from detkd.errors import IncompatibleModelsError

SHAPES = ["circle", "square", "triangle", "cross"]


@pytest.fixture(scope="module")
def teachers(tmp_path_factory, shapes_yaml) -> dict:
    """The reference (the data's classes, class biases raised by 6 so that it detects plenty at conf 0.001), a
    superset of it (other order and case, plus 'bus' and 'car') and a partial one (no 'cross'; 'ring' is circle)."""
    folder = tmp_path_factory.mktemp("class_teachers")
    ref = named_model("yolov8s.yaml", shapes_yaml, seed=3)
    with torch.no_grad():
        for level in range(len(ref.model[-1].cv3)):
            ref.model[-1].cv3[level][-1].bias += 6.0
    superset = with_class_rows(ref, ["bus", "Triangle", "car", "circle ", "cross", "Square"], [None, 2, None, 0, 3, 1])
    partial = with_class_rows(ref, ["bus", "Triangle", "car", "ring", "Square"], [None, 2, None, 0, 1])
    return {name: save_checkpoint(net, folder / f"{name}.pt")
            for name, net in (("reference", ref), ("superset", superset), ("partial", partial))}


def _settings(teacher, data, tmp_path, **kw):
    from detkd.compare.experiment import CompareSettings

    return CompareSettings(teacher=teacher, data=str(data), imgsz=64, eval_batch=8, device="cpu", workers=0,
                           project=str(tmp_path), name="c", **kw).validate()


def _detections(eval_dir) -> list[tuple]:
    dets = json.loads((eval_dir / "predictions.json").read_text())
    return sorted((d["image_id"], d["category_id"], *(round(v, 2) for v in d["bbox"]), round(d["score"], 4))
                  for d in dets)


# ------------------------------------------------------------------------------------ scoring a teacher's row
@pytest.mark.parametrize("coco", [True, False], ids=["coco", "ultralytics-val"])
def test_a_superset_teacher_is_scored_through_its_map_exactly_as_the_model_of_the_data_classes(
        tmp_path, shapes_yaml, teachers, coco):
    """Before: evaluate_coco refused the teacher ('predicts 6 classes but the dataset has 4'), and Ultralytics val
    scored its classes by index (class 2 'car' as the data's 'triangle')."""
    from detkd.compare.experiment import RunSpec, evaluate_run

    s = _settings(teachers["superset"], shapes_yaml, tmp_path)
    ref = evaluate_run(RunSpec("reference", "teacher", "teacher", weights=teachers["reference"]), s, shapes_yaml,
                       coco, s.out_dir, log=lambda *_: None, per_class=True)
    sup = evaluate_run(RunSpec("teacher", "teacher", "teacher", weights=teachers["superset"]), s, shapes_yaml,
                       coco, s.out_dir, log=lambda *_: None, per_class=True)
    assert sup.label == "teacher" and "scored_classes" not in sup.metrics  # it predicts every data class
    assert sup.metrics["per_class"] == pytest.approx(ref.metrics["per_class"], abs=1e-9)
    assert sup.metrics["AP"] == pytest.approx(ref.metrics["AP"], abs=1e-9) and ref.metrics["AP"] is not None
    if coco:  # the same detections, in the data's category ids; none of 'bus' or 'car' (confident everywhere)
        dets = _detections(s.out_dir / "eval" / "teacher")
        assert dets and dets == _detections(s.out_dir / "eval" / "reference")
        fp = json.loads((s.out_dir / "eval" / "teacher" / "compare_eval.json").read_text())["fingerprint"]
        assert fp["class_map"] == [[1, 2], [3, 0], [4, 3], [5, 1]]  # teacher index -> data index: a map change
        # re-evaluates


def test_a_mapped_model_answers_with_the_reference_outputs_in_the_data_classes(teachers, shapes_yaml):
    """What both evaluation paths run: the superset teacher's inference output, mapped, is the reference's."""
    from detkd.compare.classes import data_classes, in_data_classes, model_class_map
    from detkd.models.loading import load_detection_model

    cmap = model_class_map(teachers["superset"], data_classes(shapes_yaml))
    sup = in_data_classes(load_detection_model(teachers["superset"]), cmap)
    ref = load_detection_model(teachers["reference"])
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        y, y_ref = sup(x)[0], ref(x)[0]
    assert y.shape == y_ref.shape == (2, 4 + 4, 84) and torch.equal(y, y_ref)
    assert sup.names == {0: "circle", 1: "square", 2: "triangle", 3: "cross"}
    assert model_class_map(teachers["reference"], data_classes(shapes_yaml)) is None  # the data's classes


def test_a_teacher_without_some_data_class_is_scored_on_its_classes_only(tmp_path, shapes_yaml, teachers):
    from detkd.compare.experiment import RunSpec, evaluate_run

    s = _settings(teachers["partial"], shapes_yaml, tmp_path, class_map="ring=circle")
    ref = evaluate_run(RunSpec("reference", "teacher", "teacher", weights=teachers["reference"]), s, shapes_yaml,
                       True, s.out_dir, log=lambda *_: None, per_class=True)
    lines: list = []
    part = evaluate_run(RunSpec("teacher", "teacher", "teacher", weights=teachers["partial"]), s, shapes_yaml, True,
                        s.out_dir, log=lines.append, per_class=True)
    taught = ["circle", "square", "triangle"]
    assert part.label == "teacher (3 of 4 classes)" and part.metrics["scored_classes"] == taught
    mean = sum(ref.metrics["per_class"][c] for c in taught) / 3  # COCO AP over those classes: the mean of theirs
    assert part.metrics["AP"] == pytest.approx(mean, abs=1e-9)
    assert part.metrics["AP50"] == pytest.approx(sum(ref.metrics["per_class_AP50"][c] for c in taught) / 3)
    assert all(part.metrics[k] is None for k in ("AP75", "APs", "APm", "APl"))  # these need every class
    all_four = sum(ref.metrics["per_class"][c] for c in taught) / 4  # the full-split AP counts cross as a 0
    assert part.metrics["AP_all_classes"] == pytest.approx(all_four, abs=1e-9)
    ref_dets = [d for d in _detections(s.out_dir / "eval" / "reference") if d[1] != 4]  # cross: category id 4
    assert _detections(s.out_dir / "eval" / "teacher") == ref_dets
    assert "on the classes it predicts: circle, square, triangle" in lines[-1]


def test_keeping_the_classes_of_a_teacher_without_any_data_class_leaves_its_row_unscored(tmp_path,
                                                                                        shapes_yaml):
    """A teacher sharing no class with the data is fine for --keep-teacher-classes (every data class is new): its
    row has no AP (not a 0, not a crash), and the verdict says why."""
    from ultralytics.nn.tasks import DetectionModel

    from detkd.compare.classes import class_groups, data_classes
    from detkd.compare.experiment import RunSpec, evaluate_run
    from detkd.compare.report import build_rows, format_table, teacher_verdict

    old = DetectionModel("yolov8n.yaml", nc=2, verbose=False)
    old.names = {0: "car", 1: "bus"}
    teacher = save_checkpoint(old, tmp_path / "old.pt")
    s = _settings(teacher, shapes_yaml, tmp_path, keep_teacher_classes=True)
    groups = class_groups(teacher, data_classes(shapes_yaml), keep_teacher_classes=True)
    assert groups == {"new classes": SHAPES, "all": SHAPES}
    lines: list = []
    spec = evaluate_run(RunSpec("teacher", "teacher", "teacher", weights=teacher), s, shapes_yaml, True, s.out_dir,
                        log=lines.append, per_class=True)
    assert spec.label == "teacher (none of the data's classes)" and spec.metrics["AP"] is None
    assert not (s.out_dir / "eval" / "teacher").exists() and "no AP on this data" in lines[0]
    rows = build_rows([spec, _spec("baseline", "baseline", {"AP": 0.2, "per_class": dict.fromkeys(SHAPES, 0.2)})],
                      groups)
    assert rows[0]["delta_AP"] is None and rows[0]["class_groups"] == {"new classes": None, "all": None}
    assert "| teacher (none of the data's classes) |" in format_table(rows)
    assert "predicts none of the data's classes" in teacher_verdict(rows)
    with pytest.raises(IncompatibleModelsError, match="share no class"):  # else refused, as distill refuses it
        class_groups(teacher, data_classes(shapes_yaml))


def test_a_restricted_row_is_the_mean_ap_of_its_classes_and_leaves_out_what_needs_all():
    from detkd.compare.classes import restrict_to, scored_label

    m = {"AP": 0.3, "AP50": 0.5, "AP75": 0.2, "APs": 0.1, "APm": 0.3, "APl": 0.4, "AR100": 0.6,
         "per_class": {"a": 0.6, "b": 0.3, "c": 0.0, "d": None}, "per_class_AP50": {"a": 0.9, "b": 0.6, "c": 0.0}}
    r = restrict_to(m, ["a", "b", "d"])  # d has no ground truth in the split: in no mean
    assert r["AP"] == pytest.approx(0.45) and r["AP50"] == pytest.approx(0.75)
    assert (r["AP_all_classes"], r["AP50_all_classes"]) == (0.3, 0.5)
    assert all(r[k] is None for k in ("AP75", "APs", "APm", "APl", "AR100"))
    assert scored_label("teacher", ["a", "b"], 4) == "teacher (2 of 4 classes)"
    assert scored_label("teacher", [], 4) == "teacher (none of the data's classes)"
    assert scored_label("teacher", list("abcd"), 4) == "teacher"


def _spec(kind, label, metrics, seed=0):
    from detkd.compare.experiment import RunSpec

    return RunSpec(kind if kind != "distilled" else "distilled-detkd", kind, label, seed=seed, metrics=metrics,
                   weights="w/weights/best.pt", speed={"fps": 10.0})


def test_report_groups_and_verdict_compare_on_the_classes_each_model_predicts(teacher_pt, shapes_yaml):
    """Hand-made metrics: the teacher predicts circle and square only."""
    from detkd.compare.classes import group_cells
    from detkd.compare.report import _group_lines, build_rows, teacher_verdict
    from detkd.eval.class_groups import groups_from_mask

    groups = groups_from_mask(SHAPES, [True, True, False, False])
    per = lambda a, b, c, d: {"per_class": dict(zip(SHAPES, (a, b, c, d))),  # noqa: E731
                              "per_class_AP50": dict(zip(SHAPES, (a, b, c, d)))}
    teacher = {"AP": 0.5, "AP50": 0.5, **per(0.6, 0.4, 0.0, 0.0), "scored_classes": ["circle", "square"]}
    baseline = {"AP": 0.25, **per(0.3, 0.2, 0.3, 0.2)}
    distilled = {"AP": 0.3, **per(0.4, 0.3, 0.3, 0.2)}
    specs = [_spec("teacher", "teacher (2 of 4 classes)", teacher), _spec("baseline", "baseline", baseline),
             _spec("distilled", "distilled: detkd", distilled)]
    rows = build_rows(specs, groups)
    assert rows[0]["delta_AP"] == pytest.approx(0.5 - 0.25)  # vs the baseline on circle, square: (0.3 + 0.2) / 2
    assert rows[2]["delta_AP"] == pytest.approx(0.05)
    assert group_cells(teacher, groups)["new classes"] is None  # it predicts none of them: no AP, not a 0
    assert group_cells(distilled, groups)["teacher's classes"]["AP"] == pytest.approx(0.35)
    verdict = teacher_verdict(rows)
    assert "AP on the teacher's 2 classes (circle, square) 0.500 vs 0.250" in verdict and "stronger" in verdict

    from detkd.compare.experiment import CompareSettings

    s = CompareSettings(teacher=teacher_pt, data=shapes_yaml)
    table = [line for line in _group_lines(rows, groups, s) if line.startswith("| ")]
    cells = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in table}
    assert list(cells) == ["model", "teacher (2 of 4 classes)", "baseline", "distilled: detkd"]
    assert cells["model"] == ["teacher's classes (2)", "new classes (2)", "all (4)"]
    assert cells["teacher (2 of 4 classes)"] == ["0.500 (+0.250)", "-", "-"]
    assert cells["baseline"] == ["0.250", "0.250", "0.250"]
    assert cells["distilled: detkd"] == ["0.350 (+0.100)", "0.250 (+0.000)", "0.300 (+0.050)"]


# ------------------------------------------------------------------------------------ settings, fingerprints
def test_the_class_settings_reach_every_distilled_run_and_its_fingerprint(teachers, shapes_yaml):
    from detkd.cli import build_parser
    from detkd.cli.compare import build_settings
    from detkd.compare.experiment import kd_config, plan, train_fingerprint

    argv = ["compare", "--teacher", teachers["partial"], "--data", shapes_yaml, "--with-ultralytics-kd",
            "--kd", "a", "--kd", "b:cls_kd=2", "--class-map", "ring = circle"]
    s = build_settings(build_parser().parse_args(argv))
    runs = {r.key: r for r in plan(s)}
    fps = {k: train_fingerprint(r, s, shapes_yaml) for k, r in runs.items() if k != "teacher"}
    for key in ("distilled-a", "distilled-b"):
        assert kd_config(runs[key], s).class_map == {"ring": "circle"}
        assert fps[key]["kd"]["class_map"] == {"ring": "circle"}
    s.class_map = {"ring": "circle", "car": "circle"}  # another map: the distilled runs are other runs
    assert train_fingerprint(runs["distilled-a"], s, shapes_yaml) != fps["distilled-a"]
    for key in ("baseline", "ultralytics-kd"):  # they never read the map: reused
        assert train_fingerprint(runs[key], s, shapes_yaml) == fps[key]
    keep = build_settings(build_parser().parse_args(argv[:-2] + ["--keep-teacher-classes"]))
    assert kd_config(plan(keep)[2], keep).keep_teacher_classes


@pytest.mark.parametrize("extra, expected", [
    (["--class-map", "a=x;a=y"], "maps teacher class 'a' twice"),
    (["--class-map", "lorry=circle"], "--class-map lorry=circle: 'lorry' is not a teacher class. Teacher classes: "
                                      "bus, Triangle, car, ring, Square"),
    (["--class-map", "ring=circle", "--keep-teacher-classes"], "drop --class-map"),
    (["--keep-teacher-classes", "--assistant", "yolov8n.yaml"], "--keep-teacher-classes with --assistant"),
    (["--keep-teacher-classes", "--deploy"], "--keep-teacher-classes with --deploy"),
    (["--kd", "x:class_map=ring=circle"], "KD configuration 'x' sets 'class_map': that is --class-map"),
])
def test_bad_class_settings_are_one_line_exit_2_before_any_work(capsys, tmp_path, shapes_yaml, teachers, extra,
                                                                expected):
    argv = ["compare", "--teacher", teachers["partial"], "--data", shapes_yaml, "--project", str(tmp_path),
            "--name", "c", "--epochs", "1", "--imgsz", "64", "--device", "cpu", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "c").exists()


# ------------------------------------------------------------------------------------------- end to end
def _argv(teacher, data, project, *extra):
    return ["compare", "--teacher", teacher, "--data", str(data), "--student", "yolov8n.yaml", "--epochs", "1",
            "--imgsz", "64", "--batch", "8", "--seed", "0", "--device", "cpu", "--workers", "0",
            "--set", "plots=False", "--set", "warmup_epochs=0", "--project", str(project), "--name", "tiny",
            "--eval-batch", "8", "--bench-warmup", "1", "--bench-iters", "2", "--bench-time", "0.2", *extra]


def _group_table(md: str) -> dict:
    section = md.split("## AP per class group")[1].split("\n## ")[0]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in section.splitlines()
            if line.startswith("| ")]
    return {r[0]: r[1:] for r in rows}


@pytest.mark.slow
def test_compare_with_a_class_map_end_to_end(tmp_path, shapes_coco, teachers, capsys):
    project = tmp_path / "runs"
    assert main(_argv(teachers["partial"], shapes_coco, project, "--class-map", "ring=circle")) == 0
    out = capsys.readouterr().out
    assert "ring -> circle  [class map]" in out and "bus, car" in out  # the map, printed at the check
    md = (project / "tiny" / "report.md").read_text()
    table = _group_table(md)
    assert table["model"] == ["teacher's classes (3)", "new classes (1)", "all (4)"]
    assert set(table) == {"model", "teacher (3 of 4 classes)", "baseline", "distilled: detkd"}
    assert table["teacher (3 of 4 classes)"][1:] == ["-", "-"]
    assert all(c != "-" for c in table["distilled: detkd"] + table["baseline"])
    assert "## AP per class group" in out  # the console shows the report too
    report = json.loads((project / "tiny" / "report.json").read_text())
    rows = {r["key"]: r for r in report["rows"]}
    assert rows["teacher"]["scored_classes"] == ["circle", "square", "triangle"]
    assert report["class_groups"]["new classes"] == ["cross"]
    for key in ("baseline", "distilled-detkd"):  # `all` is the row's COCO AP
        assert rows[key]["class_groups"]["all"]["AP"] == pytest.approx(rows[key]["AP"], abs=1e-9)
    dets = json.loads((project / "tiny" / "eval" / "teacher" / "predictions.json").read_text())
    assert dets and {d["category_id"] for d in dets} <= {1, 2, 3}  # the data's ids of circle, square, triangle
    marker = json.loads((project / "tiny" / "train" / "distilled-detkd" / "compare_run.json").read_text())
    assert marker["fingerprint"]["kd"]["class_map"] == {"ring": "circle"}

    # another map: the distilled run is retrained (the old one kept), the baseline reused, the teacher re-scored
    assert main(_argv(teachers["partial"], shapes_coco, project, "--class-map", "ring,car=circle")) == 0
    again = capsys.readouterr().out
    assert again.count("same settings): no retraining") == 1 and "kd.class_map" in again
    assert again.count("(evaluation reused)") == 1  # the baseline's; the teacher is re-scored through the new map
    assert any(p.name.startswith("distilled-detkd.old-") for p in (project / "tiny" / "train").iterdir())


@pytest.mark.slow
def test_compare_keeping_the_teachers_classes_end_to_end(tmp_path, shapes_coco, capsys):
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    old = DetectionModel("yolov8n.yaml", nc=3, verbose=False)  # knows circle, square and 'car' (not in the data)
    old.names = {0: "circle", 1: "Square", 2: "car"}
    teacher = save_checkpoint(old, tmp_path / "old.pt")
    project = tmp_path / "runs"
    assert main(_argv(teacher, shapes_coco, project, "--keep-teacher-classes")) == 0
    out = capsys.readouterr().out
    report = json.loads((project / "tiny" / "report.json").read_text())
    rows = {r["key"]: r for r in report["rows"]}
    best = torch.load(rows["distilled-detkd"]["weights"], map_location="cpu", weights_only=False)["model"]
    assert list(best.names.values()) == ["circle", "Square", "car", "triangle", "cross"]  # kept + new classes
    assert "scored_classes" not in rows["distilled-detkd"]  # scored on every data class
    dets = json.loads((project / "tiny" / "eval" / "distilled-detkd" / "predictions.json").read_text())
    assert dets and {d["category_id"] for d in dets} <= {1, 2, 3, 4}  # 'car' detections dropped: no such class
    assert rows["teacher"]["label"] == "teacher (2 of 4 classes)"
    assert rows["teacher"]["scored_classes"] == ["circle", "square"]
    assert report["class_groups"] == {"teacher's classes": ["circle", "square"], "new classes": ["triangle", "cross"],
                                      "all": SHAPES}
    md = (project / "tiny" / "report.md").read_text()
    table = _group_table(md)
    assert table["model"] == ["teacher's classes (2)", "new classes (2)", "all (4)"]
    assert "not scored here" in md and "on the teacher's 2 classes (circle, square)" in md
    assert "keep_teacher_classes" in json.dumps(json.loads(
        (project / "tiny" / "train" / "distilled-detkd" / "compare_run.json").read_text())["fingerprint"]["kd"])
    assert "Traceback" not in out

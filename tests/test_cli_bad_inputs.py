"""Bad inputs found by trying the CLI as a new user would (each printed a traceback or ran on before; now one line,
exit 2, before any work)."""

from __future__ import annotations

import pytest

from detkd.config import KDConfig
from detkd.errors import ConfigError


@pytest.mark.parametrize("body, message", [
    ("kd: [1, 2]\n", "'kd:' must be a mapping"),
    ("kd:\n", "'kd:' must be a mapping"),
    ("kd: 5\n", "'kd:' must be a mapping"),
])
def test_a_config_whose_kd_is_not_a_mapping_is_one_line(tmp_path, body, message):
    cfg = tmp_path / "kd.yaml"
    cfg.write_text(body)
    with pytest.raises(ConfigError, match=message):
        KDConfig.from_yaml(cfg)


def test_a_config_that_is_not_utf8_or_a_folder_is_one_line(tmp_path):
    cfg = tmp_path / "kd.yaml"
    cfg.write_bytes(b"\xff\xfekd: 1\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        KDConfig.from_yaml(cfg)
    with pytest.raises(ConfigError, match="is a folder"):
        KDConfig.from_yaml(tmp_path)


def test_on_off_settings_read_as_the_word_says_and_refuse_anything_else():
    """A YAML's quoted "false" kept the setting on (a non-empty string is truthy)."""
    assert KDConfig.from_dict({"teacher": "t.pt", "validate_teacher": "false"}).validate_teacher is False
    assert KDConfig.from_dict({"teacher": "t.pt", "feat_fg_mask": "Yes"}).feat_fg_mask is True
    with pytest.raises(ConfigError, match="validate_teacher='maybe' must be true or false"):
        KDConfig.from_dict({"teacher": "t.pt", "validate_teacher": "maybe"})


def test_a_data_yaml_given_as_a_model_is_one_line(shapes_yaml, capsys):
    from detkd.cli import main

    assert main(["eval", "--model", shapes_yaml, "--data", shapes_yaml]) == 2
    err = capsys.readouterr().err
    assert "is not a model YAML" in err and "--data" in err and "Traceback" not in err


@pytest.mark.parametrize("argv, message", [
    (["eval", "--batch", "0"], "--batch 0 must be at least 1"),
    (["eval", "--conf", "2"], "--conf 2.0 must be a threshold in [0, 1]"),
    (["eval", "--iou", "-1"], "--iou -1.0 must be a threshold in [0, 1]"),
    (["eval", "--imgsz", "0"], "--imgsz 0 must be a positive multiple of 32"),
    (["eval", "--imgsz", "33"], "--imgsz 33 must be a positive multiple of 32"),
    (["eval", "--out", "CHECKPOINT"], "is a file: give a folder"),
    (["export", "--format", "onnx", "--conf", "5"], "--conf 5.0 must be a threshold"),
    (["export", "--format", "onnx", "--int8", "--max-int8-drop", "-1"], "--max-int8-drop -1.0 must be >= 0"),
])
def test_out_of_range_numbers_are_refused_before_any_work(argv, message, teacher_pt, shapes_yaml, capsys):
    from detkd.cli import main

    cmd, *rest = argv
    rest = [teacher_pt if r == "CHECKPOINT" else r for r in rest]
    extra = ["--data", shapes_yaml]
    assert main([cmd, "--model", teacher_pt, *extra, *rest]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def _refused(argv, capsys) -> str:
    from detkd.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("rest, message", [
    (["--kd", "x:cls_kd=[1"], "--kd x: cls_kd=[1 is not a value"),
    (["--seeds", "-1"], "seed -1: seeds must be >= 0"),
    (["--seed", "-2"], "seed -2: seeds must be >= 0"),
    (["--eval-batch", "0"], "--eval-batch 0 must be at least 1"),
    (["--conf", "5"], "--conf 5.0 must be a threshold in [0, 1]"),
    (["--bench-iters", "0"], "--bench-iters 0 must be at least 1"),
    (["--bench-time", "0"], "--bench-time 0.0 must be above 0"),
    (["--bench-imgsz", "-32"], "--bench-imgsz -32 must be at least 32"),
])
def test_compare_numbers_are_refused_before_the_first_run(rest, message, teacher_pt, shapes_yaml, tmp_path, capsys,
                                                         monkeypatch):
    """Each was refused by torch, Ultralytics or the timer only when the report was built, after every run trained
    (or, for --kd, a YAML traceback)."""
    import detkd.compare.experiment as experiment

    monkeypatch.setattr(experiment, "run_compare", lambda *a, **k: pytest.fail("compare started before refusing"))
    err = _refused(["compare", "--teacher", teacher_pt, "--data", shapes_yaml, "--epochs", "1", "--imgsz", "64",
                    "--project", str(tmp_path), *rest], capsys)
    assert message in err


@pytest.mark.parametrize("rest, message", [
    (["--json", "FOLDER"], "is a folder: give a file path"),
    (["--conf", "5"], "--conf 5.0 must be a threshold"),
    (["--source-shape", "0", "0"], "--source-shape 0 must be at least 1"),
    (["--batch", "1", "0"], "--batch 0 must be at least 1"),
    (["--iters", "0"], "--iters 0 must be at least 1"),
    (["--time-budget", "0"], "--time-budget 0.0 must be above 0"),
    (["--warmup", "-1"], "--warmup -1 must be >= 0"),
])
def test_bench_numbers_and_a_folder_as_json_are_refused_before_timing(rest, message, tmp_path, capsys, monkeypatch):
    import detkd.bench as bench

    monkeypatch.setattr(bench, "run_benchmarks", lambda *a, **k: pytest.fail("timed before refusing the setting"))
    rest = [str(tmp_path) if r == "FOLDER" else r for r in rest]
    assert message in _refused(["bench", "--models", "yolov8n.yaml", "--imgsz", "64", *rest], capsys)


@pytest.mark.parametrize("rest, message", [
    (["--batch", "0"], "batch=0: give images per batch"),
    (["--imgsz", "0"], "imgsz=0: the image size must be at least 32"),
    (["--workers", "-1"], "workers=-1 must be >= 0"),
    (["--cache", "rma"], "cache=rma: use ram, disk or false"),
])
def test_distill_sizes_ultralytics_would_train_on_anyway_are_refused(rest, message, teacher_pt, shapes_yaml, tmp_path,
                                                                     capsys, monkeypatch):
    """Ultralytics' get_cfg lets batch=0 (a batch of 16, with a warning) and imgsz=0 (32 px) through, and trains."""
    import detkd.api as api

    monkeypatch.setattr(api, "_train", lambda *a, **k: pytest.fail("trained before refusing"))
    assert message in _refused(["distill", "--teacher", teacher_pt, "--data", shapes_yaml, "--epochs", "1",
                                "--imgsz", "64", "--project", str(tmp_path), *rest], capsys)


@pytest.mark.parametrize("rest, message", [
    (["--n-val", "0"], "--n-val 0 must be at least 1"),
    (["--epochs", "0"], "--epochs 0 must be at least 1"),
    (["--imgsz", "16"], "--imgsz 16 must be at least 32"),
])
def test_demo_counts_are_refused_before_the_teacher_trains(rest, message, tmp_path, capsys, monkeypatch):
    import detkd.data.synthetic as synthetic

    monkeypatch.setattr(synthetic, "make_shapes_dataset", lambda *a, **k: pytest.fail("generated before refusing"))
    assert message in _refused(["demo", "--out", str(tmp_path), *rest], capsys)


def test_export_output_with_another_formats_suffix_is_refused(teacher_pt, tmp_path, capsys):
    """--format pt --output a.onnx made a folder 'a.onnx' holding the .pt."""
    err = _refused(["export", "--model", teacher_pt, "--format", "pt", "--output", str(tmp_path / "a.onnx")], capsys)
    assert "a '.onnx' file, but this format writes '.pt'" in err and "a.pt" in err
    assert not (tmp_path / "a.onnx").exists()


def test_eval_class_map_naming_no_class_is_refused_when_names_already_match(teacher_pt, shapes_yaml, capsys):
    """A --class-map was ignored when the model's names were the data's: a typo went unnoticed."""
    err = _refused(["eval", "--model", teacher_pt, "--data", shapes_yaml, "--imgsz", "64", "--class-map", "x=y"],
                   capsys)
    assert "--class-map x=y: 'x' is not a model class" in err


def test_eval_class_groups_are_checked_before_the_evaluation(teacher_pt, shapes_yaml, capsys, monkeypatch):
    import detkd.eval.coco_eval as coco_eval

    monkeypatch.setattr(coco_eval, "evaluate_coco", lambda *a, **k: pytest.fail("evaluated before refusing"))
    err = _refused(["eval", "--model", teacher_pt, "--data", shapes_yaml, "--class-groups", "old=nope"], capsys)
    assert "'nope' is not a class of the data" in err


def test_a_folder_or_a_list_yaml_given_as_a_model_is_one_line(teacher_pt, shapes_yaml, tmp_path, capsys):
    run = tmp_path / "run"
    (run / "weights").mkdir(parents=True)
    (run / "weights" / "best.pt").write_bytes(b"x")
    err = _refused(["eval", "--model", str(run), "--data", shapes_yaml], capsys)
    assert "is a folder without a model in it" in err and str(run / "weights" / "best.pt") in err
    err = _refused(["distill", "--teacher", str(run), "--data", shapes_yaml, "--epochs", "1"], capsys)
    assert "is a folder, not a checkpoint" in err and str(run / "weights" / "best.pt") in err
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    err = _refused(["distill", "--teacher", teacher_pt, "--student", str(listed), "--data", shapes_yaml,
                    "--epochs", "1", "--project", str(tmp_path)], capsys)
    assert "is not a model YAML" in err


def test_a_data_yaml_whose_nc_disagrees_with_names_says_so(teacher_pt, shapes_yaml, tmp_path, capsys):
    """The advice was to fix the path/train/val entries."""
    import yaml

    data = yaml.safe_load(open(shapes_yaml))
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**data, "nc": len(data["names"]) + 1}))
    err = _refused(["distill", "--teacher", teacher_pt, "--data", str(bad), "--epochs", "1", "--imgsz", "64",
                    "--project", str(tmp_path)], capsys)
    assert "Make 'nc' the number of 'names'" in err and "path/train/val" not in err

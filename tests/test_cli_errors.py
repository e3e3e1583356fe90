"""User errors at the edges: public API names, Ultralytics argument errors and KD settings as one clear message."""

from __future__ import annotations

import pytest


def test_public_api_exports_train_baseline():
    import detkd
    from detkd import train_baseline
    from detkd.api import train_baseline as original

    assert train_baseline is original
    assert "train_baseline" in detkd.__all__


def test_export_pt_without_output_goes_beside_the_source(tmp_path, capsys):
    import torch
    from ultralytics.nn.tasks import DetectionModel

    from detkd.cli import main

    net = DetectionModel("yolov8n.yaml", nc=2, verbose=False)
    net.names = {0: "a", 1: "b"}
    src = tmp_path / "best.pt"
    torch.save({"model": net, "train_args": {}, "epoch": 1}, src)
    before = src.read_bytes()

    assert main(["export", "--model", str(src), "--format", "pt"]) == 0
    out = tmp_path / "best_student.pt"
    assert out.is_file() and src.read_bytes() == before  # the source is untouched
    assert str(out) in capsys.readouterr().out


@pytest.mark.parametrize("extra, expected", [
    (["--epochs", "0"], "'epochs=0' is an invalid value"),
    (["--set", "epochz=3"], "'epochz' is not a valid YOLO argument"),
    (["--config", "CFG"], "'epoch' is not a valid YOLO argument"),  # a typo in the config's train: section
])
def test_ultralytics_argument_errors_are_one_message(capfd, tmp_path, shapes_yaml, teacher_pt, extra, expected):
    from detkd.cli import main

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("kd:\n  cls_kd: 1.0\ntrain:\n  epoch: 3\n")
    argv = ["distill", "--teacher", teacher_pt, "--data", shapes_yaml, "--project", str(tmp_path)]
    assert main(argv + [str(cfg) if a == "CFG" else a for a in extra]) == 2
    out, err = capfd.readouterr()
    assert expected in err and "detkd distill: error: invalid training argument" in err
    assert err.count("error:") == 1 and "Traceback" not in out + err
    assert "yolo TASK MODE ARGS" not in out + err  # Ultralytics' CLI help is not dumped on the user
    assert not any(tmp_path.glob("*/weights"))  # refused before any run folder was made


def test_compare_checks_its_training_arguments():
    from detkd.compare.experiment import CompareSettings
    from detkd.errors import ConfigError

    with pytest.raises(ConfigError, match=r"invalid training argument: 'epochz' is not a valid YOLO argument"):
        CompareSettings(teacher="t.pt", data="d.yaml", train_args={"epochz": 3}).validate()
    CompareSettings(teacher="t.pt", data="d.yaml", train_args={"mosaic": 0.5}).validate()


def test_kl_logit_kd_with_one_class_is_refused(capfd, tmp_path, shapes_yaml, teacher_pt):
    """Softmax over a single class is 1 for teacher and student alike: cls_kd would be 0 for the whole run."""
    from detkd.cli import main

    argv = ["distill", "--teacher", teacher_pt, "--data", shapes_yaml, "--project", str(tmp_path), "--device", "cpu",
            "--cls-mode", "kl", "--set", "single_cls=true"]
    assert main(argv) == 2
    err = capfd.readouterr().err
    assert "--cls-mode kl" in err and "one class" in err and "--cls-mode bce" in err and "Traceback" not in err


def test_help_states_each_default_once(capsys):
    """``detkd distill --help``: a KD option shows its recipe default in brackets, never a second, misleading
    "(default: None)" (None only means 'the recipe decides'); a real default is still shown."""
    from detkd.cli import main

    with pytest.raises(SystemExit):
        main(["distill", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in text and "(default: False)" not in text
    assert "weight of class-logit KD (0 = off) [1.0]" in text
    assert "(default: yolov8n.yaml)" in text


@pytest.mark.parametrize("case", ["config_train_list", "yaml_images_missing", "unlabeled_no_file_name"])
def test_more_bad_inputs_are_one_line_exit_2(capfd, tmp_path, shapes_yaml, teacher_pt, case):
    import json

    from detkd.cli import main

    argv = ["distill", "--teacher", teacher_pt, "--data", shapes_yaml, "--project", str(tmp_path), "--device", "cpu"]
    if case == "config_train_list":  # 'train:' must be a mapping of Ultralytics arguments
        cfg = tmp_path / "cfg.yaml"
        cfg.write_text("kd:\n  cls_kd: 1.0\ntrain: [epochs, 3]\n")
        argv += ["--config", str(cfg)]
        expected = "'train:' in"
    elif case == "yaml_images_missing":  # a plain Ultralytics data.yaml whose image folders are not there
        bad = tmp_path / "bad.yaml"
        bad.write_text(f"path: {tmp_path / 'nowhere'}\ntrain: images/train\nval: images/val\nnames: {{0: a, 1: b}}\n")
        argv[argv.index(shapes_yaml)] = str(bad)
        expected = "images not found"
    else:  # a COCO JSON of unlabelled images whose image entry has no file_name
        js = tmp_path / "unl.json"
        js.write_text(json.dumps({"images": [{"id": 1, "width": 64, "height": 64}], "annotations": []}))
        argv += ["--unlabeled", str(js)]
        expected = "file_name"
    assert main(argv) == 2
    out, err = capfd.readouterr()
    assert expected in err and err.count("error:") == 1 and "Traceback" not in out + err

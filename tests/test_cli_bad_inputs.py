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
    (["export", "--format", "onnx", "--conf", "5"], "--conf 5.0 must be a threshold"),
    (["export", "--format", "onnx", "--int8", "--max-int8-drop", "-1"], "--max-int8-drop -1.0 must be >= 0"),
])
def test_out_of_range_numbers_are_refused_before_any_work(argv, message, teacher_pt, shapes_yaml, capsys):
    from detkd.cli import main

    cmd, *rest = argv
    extra = ["--data", shapes_yaml]
    assert main([cmd, "--model", teacher_pt, *extra, *rest]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err

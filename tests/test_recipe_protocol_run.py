"""recipe_protocol_run builds each protocol run's distill_gain command from the committed protocol file."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture()
def runner():
    sys.path.insert(0, str(BENCH))
    import recipe_protocol_run

    return recipe_protocol_run


@pytest.fixture()
def protocol():
    return json.loads((BENCH / "recipe_protocol.json").read_text())


def test_the_command_carries_the_protocols_settings_for_that_dataset_and_teacher(runner, protocol):
    cmd = runner.build_command(protocol, "tables", "yolov8s")
    arg = lambda flag: cmd[cmd.index(flag) + 1]  # noqa: E731
    assert (arg("--data"), arg("--tag"), arg("--teacher-cfg"), arg("--teacher-epochs")) == \
        ("../shared/datasets/tables", "tables_v8s", "yolov8s.yaml", "30")
    assert (arg("--epochs"), arg("--imgsz"), arg("--batch"), arg("--device"), arg("--runs")) == \
        ("25", "256", "16", "cpu", "runs/protocol/tables_v8s")
    assert cmd[cmd.index("--seeds") + 1:cmd.index("--seeds") + 3] == ["0", "1"] and "--no-ablations" in cmd
    assert cmd[cmd.index("--only") + 1:] == ["teacher", "baseline", "detkd", "ultralytics_kd"]
    larger = runner.build_command(protocol, "chess", "yolov8m")
    assert larger[larger.index("--only") + 1:] == ["teacher", "detkd", "ultralytics_kd"]  # one baseline per dataset
    assert larger[larger.index("--teacher-epochs") + 1] == "50" and larger[larger.index("--imgsz") + 1] == "320"
    assert larger[larger.index("--baseline-from") + 1] == "chess_v8s" and "--baseline-from" not in cmd  # its report
    # says where the baseline is (before: "not run yet: baseline_s0, baseline_s1")


@pytest.mark.parametrize("args, message", [
    (("bccd", "yolov8s"), "not a dataset of the protocol"),
    (("tables", "yolov8l"), "not a teacher size of 'tables'"),
    (("tables", "yolov8s", ["mgd"]), "--only mgd"),
    (("tables", "yolov8m", ["baseline"]), "runs with the first teacher size"),
])
def test_what_the_protocol_does_not_allow_is_refused(runner, protocol, args, message):
    with pytest.raises(runner.ProtocolRunError, match=message):
        runner.build_command(protocol, *args)


def test_confirmation_data_takes_no_extra_arguments_tuning_data_does(runner, protocol, capsys):
    with pytest.raises(runner.ProtocolRunError, match="confirmation data"):
        runner.build_command(protocol, "plates", "yolov8s", extra=["--variant", 'x={"feat_kd": 0}'])
    assert runner.build_command(protocol, "raccoon", "yolov8s", extra=["--variant", "x={}"])[-2:] == \
        ["--variant", "x={}"]
    assert runner.main(["plates", "yolov8s", "--print", "--", "--kd", "{}"]) == 2
    assert "confirmation data" in capsys.readouterr().err


def test_waiting_and_reusing_are_allowed_on_confirmation_data_and_reach_distill_gain(runner, capsys):
    """--wait-for-teachers (when a run starts) and --reuse-results (runs recorded earlier) do not change what a run
    trains: confirmation data takes them (extra distill_gain arguments it refuses), and the command passes them on."""
    assert runner.main(["plates", "yolov8s", "--only", "detkd_s1", "--wait-for-teachers", "90", "--print"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed[-2:] == ["--wait-for-teachers", "90"] and printed[printed.index("--only") + 1] == "detkd_s1"
    assert runner.main(["plates", "yolov8s", "--reuse-results", "--print"]) == 0
    assert capsys.readouterr().out.split()[-1] == "--reuse-results"
    assert runner.main(["plates", "yolov8m", "--print", "--only", "detkd_s1"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("--only detkd_s1")


def test_yolo26_rows_reuse_the_main_protocols_yolov8s_teacher_and_share_one_baseline(runner, protocol, tmp_path):
    arg = lambda cmd, flag: cmd[cmd.index(flag) + 1]  # noqa: E731
    # no YOLOv8-s teacher trained yet under the runs root: trained with the main protocol's settings
    cmd = runner.build_yolo26_command(protocol, "tables", "yolov8s", runs_root=str(tmp_path))
    assert (arg(cmd, "--student"), arg(cmd, "--teacher-cfg"), arg(cmd, "--teacher-epochs")) == \
        ("yolo26n.yaml", "yolov8s.yaml", "30")
    assert (arg(cmd, "--epochs"), arg(cmd, "--imgsz"), arg(cmd, "--tag")) == ("25", "256", "tables_v8s_26n")
    assert cmd[cmd.index("--only") + 1:] == ["teacher", "baseline", "detkd", "ultralytics_kd"]
    # the main protocol's teacher exists: passed, not trained again
    teacher = tmp_path / "tables_v8s" / "teacher_s0" / "weights" / "best.pt"
    teacher.parent.mkdir(parents=True)
    teacher.write_bytes(b"x")
    (tmp_path / "tables_v8s" / "state.json").write_text(json.dumps({"teacher": str(teacher)}))
    cmd = runner.build_yolo26_command(protocol, "tables", "yolov8s", runs_root=str(tmp_path))
    assert arg(cmd, "--teacher") == str(teacher) and "--teacher-cfg" not in cmd
    assert cmd[cmd.index("--only") + 1:] == ["baseline", "detkd", "ultralytics_kd"]
    # the YOLO26-s teacher: trained for the YOLOv8-s teacher's epochs; the baseline comes from the first row
    cmd = runner.build_yolo26_command(protocol, "chess", "yolo26s", runs_root=str(tmp_path))
    assert (arg(cmd, "--teacher-cfg"), arg(cmd, "--teacher-epochs"), arg(cmd, "--imgsz")) == \
        ("yolo26s.yaml", "40", "320")
    assert arg(cmd, "--baseline-from") == "chess_v8s_26n"
    assert cmd[cmd.index("--only") + 1:] == ["teacher", "detkd", "ultralytics_kd"]


@pytest.mark.parametrize("args, message", [
    (("plates", "yolov8s"), "'plates' has no YOLO26-n rows"),
    (("tables", "yolov8m"), "not a YOLO26-n row's teacher"),
    (("tables", "yolo26s", ["baseline"]), "runs with the first teacher size .yolov8s."),
])
def test_yolo26_rows_the_protocol_does_not_list_are_refused(runner, protocol, args, message, tmp_path):
    with pytest.raises(runner.ProtocolRunError, match=message):
        runner.build_yolo26_command(protocol, *args, runs_root=str(tmp_path))

"""Issue 24 hardening at the edges: non-finite KD numbers, CUDA devices on a machine without CUDA, re-pointing one of
several teachers on resume, refused runs leaving no folder behind, and the wording of settings, help and warnings.
Tiny generated data (64 px), CPU."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from conftest import TINY_TRAIN
from detkd.config import KDConfig
from detkd.errors import ConfigError


def _one_error_line(err: str, *needles: str) -> None:
    assert err.count("error:") == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, (n, err)


# ------------------------------------------------------------------------------- item 7: non-finite KD numbers
NUMBERS = ["cls_kd", "cls_temperature", "box_kd", "box_temperature", "box_iou", "feat_kd", "one2one_kd",
           "feat_temperature", "mgd_mask_ratio", "schedule_final", "min_teacher_map", "unlabeled_ratio"]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("name", NUMBERS)
def test_every_non_finite_kd_number_is_refused(name, value):
    with pytest.raises(ConfigError, match=rf"^{name}={value} is not a finite number"):
        KDConfig(teacher="t.pt", **{name: value})


@pytest.mark.parametrize("weights", [[float("nan"), 1.0], [float("inf"), 1.0], [1.0, float("-inf")]])
def test_non_finite_teacher_weights_are_refused(weights):
    with pytest.raises(ConfigError, match=r"^teacher_weights .* not a finite number"):
        KDConfig(teacher=["a.pt", "b.pt"], teacher_weights=weights)


def test_non_finite_pseudo_conf_and_non_numbers_are_refused():
    with pytest.raises(ConfigError, match="pseudo_conf=nan"):
        KDConfig(teacher="t.pt", unlabeled="frames", pseudo_conf=float("nan"))
    with pytest.raises(ConfigError, match=r"^cls_kd='strong' is not a number"):
        KDConfig(teacher="t.pt", cls_kd="strong")


def test_non_finite_number_in_a_yaml_is_refused(tmp_path):
    cfg = tmp_path / "kd.yaml"
    cfg.write_text("kd:\n  teacher: t.pt\n  box_kd: .nan\n")
    with pytest.raises(ConfigError, match=r"^box_kd=nan is not a finite number"):
        KDConfig.from_yaml(cfg)


@pytest.mark.parametrize("flags", [["--cls-kd", "nan"], ["--teacher-weights", "nan", "1"],
                                   ["--teacher-weights", "inf", "1"], ["--kd-final", "inf"]])
def test_cli_refuses_non_finite_numbers_in_one_line(capfd, tmp_path, shapes_yaml, teacher_pt, flags):
    from detkd.cli import main

    second = tmp_path / "t2.pt"
    shutil.copy(teacher_pt, second)
    teachers = ["--teacher", teacher_pt] + (["--teacher", str(second)] if "--teacher-weights" in flags else [])
    assert main(["distill", *teachers, "--data", shapes_yaml, "--project", str(tmp_path), *flags]) == 2
    _one_error_line(capfd.readouterr().err, "not a finite number")
    assert not any(tmp_path.glob("*/weights"))


# ------------------------------------------------------------------------------- item 10: CUDA device without CUDA
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")


@no_cuda
@pytest.mark.parametrize("argv", [
    ["distill", "--teacher", "T", "--data", "Y", "--device", "0"],
    ["distill", "--teacher", "T", "--data", "Y", "--device", "0,1"],
    ["eval", "--model", "T", "--data", "C", "--device", "cuda:0"],
    ["compare", "--teacher", "T", "--data", "C", "--epochs", "1", "--device", "0"],
    ["compare", "--teacher", "T", "--data", "C", "--epochs", "1", "--eval-device", "0"],
    ["bench", "--models", "yolov8n.yaml", "--device", "0"],
    ["export", "--model", "T", "--device", "0"],
])
def test_cuda_device_without_cuda_is_one_line_everywhere(capfd, tmp_path, shapes_coco, shapes_yaml, teacher_pt, argv):
    """Real teacher and data, so that nothing but the device is wrong (before: Ultralytics' ValueError traceback)."""
    from detkd.cli import main

    files = {"T": teacher_pt, "Y": shapes_yaml, "C": str(shapes_coco)}
    argv = [files.get(a, a) for a in argv]
    if argv[0] in {"distill", "compare"}:
        argv += ["--project", str(tmp_path)]
    assert main(argv) == 2
    _one_error_line(capfd.readouterr().err, "CUDA is not available", "cpu")
    assert not any(tmp_path.iterdir())  # refused before any folder was made


@no_cuda
def test_python_api_refuses_a_cuda_device_without_cuda(shapes_yaml, teacher_pt, tmp_path):
    from detkd.api import distill

    with pytest.raises(ConfigError, match="device=0: CUDA is not available"):
        distill(teacher=teacher_pt, data=shapes_yaml, device=0, project=str(tmp_path))
    assert not any(tmp_path.iterdir())


def test_device_check_accepts_cpu_and_refuses_nonsense():
    from detkd.config import check_device

    for ok in (None, "", "cpu", "CPU"):
        check_device(ok)
    with pytest.raises(ConfigError, match="not understood"):
        check_device("gpu0")


# ------------------------------------------------------------------------------- item 13: re-point one of two teachers
class Interrupt(Exception):
    """Raised by a callback to cut a run off after its first checkpoint."""


def _stop(trainer):
    raise Interrupt


def _resumed_teachers(last: Path, given) -> list[str]:
    """The teachers a resume from ``last`` with ``--teacher given`` re-attaches (the trainer is only built)."""
    from detkd.engine.trainer import DistillationTrainer

    trainer = DistillationTrainer(overrides={"resume": str(last), "model": str(last)}, kd=KDConfig(teacher=given))
    return trainer.kd.teachers


@pytest.mark.slow
def test_resume_repoints_one_or_every_teacher_of_a_two_teacher_run(tmp_path, shapes_yaml, teacher_pt, capsys,
                                                                   ultralytics_log):
    from detkd.cli import main
    from detkd.engine.trainer import DistillationTrainer

    first, second = tmp_path / "a" / "t1.pt", tmp_path / "b" / "t2.pt"
    for t in (first, second):
        t.parent.mkdir()
        shutil.copy(teacher_pt, t)
    trainer = DistillationTrainer(
        overrides=dict(model="yolov8n.yaml", data=shapes_yaml, project=str(tmp_path), name="two", val=False,
                       **TINY_TRAIN),
        kd=KDConfig(teacher=[str(first), str(second)], teacher_weights=[0.7, 0.3], validate_teacher=False))
    trainer.add_callback("on_model_save", _stop)
    with pytest.raises(Interrupt):
        trainer.train()
    last = Path(trainer.last).resolve()
    moved = tmp_path / "moved" / "t2.pt"
    moved.parent.mkdir()
    second.rename(moved)

    # the advised form: --teacher NEW for the teacher that moved (the other stays), or once per teacher
    assert _resumed_teachers(last, str(moved)) == [str(first), str(moved)]
    assert _resumed_teachers(last, [str(first), str(moved)]) == [str(first), str(moved)]
    with pytest.raises(ConfigError, match=r"2 teachers .*1 not found \(.*t2\.pt\).*3 given"):
        _resumed_teachers(last, [str(first), str(moved), str(tmp_path / "c.pt")])
    # another model is not a moved teacher (before: accepted whenever the count matched), nor is a teacher file
    # overwritten in place: a resume distils from the files the run was trained with
    other = tmp_path / "other.pt"
    other.write_bytes(Path(teacher_pt).read_bytes() + b"\0")
    with pytest.raises(ConfigError, match=r"teacher '.*other\.pt' is not the file the run was trained with"):
        _resumed_teachers(last, [str(first), str(other)])
    original = first.read_bytes()
    first.write_bytes(original + b"\0")
    with pytest.raises(ConfigError, match=r"teacher '.*t1\.pt' is not the file the run was trained with"):
        _resumed_teachers(last, str(moved))
    first.write_bytes(original)

    ultralytics_log.clear()
    assert main(["distill", "--resume", str(last), "--teacher", str(moved)]) == 0
    kd = torch.load(last, map_location="cpu", weights_only=False)["train_args"]["kd"]
    assert kd["teacher"] == [str(first), str(moved)] and kd["teacher_weights"] == [0.7, 0.3]
    assert not [m for m in ultralytics_log if "Resume ignores" in m]  # no --project given: none 'ignored'


def test_resume_overrides_carry_no_default_project():
    """A resume keeps its run's project: the default one given to a fresh run made Ultralytics print
    "Resume ignores ['project']" for a run trained with --project."""
    from detkd.api import _train_overrides

    assert "project" not in _train_overrides(None, None, {"resume": "run/weights/last.pt"})
    assert _train_overrides(None, None, {"resume": "last.pt", "project": "p"})["project"] == "p"


# ------------------------------------------------------------------------------- item 14: refused runs leave no folder
@pytest.fixture(scope="module")
def two_class_teacher(tmp_path_factory) -> str:
    """A teacher for 2 classes: refused against the 4-class shapes data (class mismatch)."""
    from ultralytics.nn.tasks import DetectionModel

    net = DetectionModel("yolov8n.yaml", nc=2, verbose=False)
    net.names = {0: "a", 1: "b"}
    path = tmp_path_factory.mktemp("t2c") / "two_class.pt"
    torch.save({"model": net, "train_args": {}, "epoch": -1}, path)
    return str(path)


def test_a_refused_run_leaves_no_folder_and_the_rerun_keeps_its_name(tmp_path, shapes_yaml, teacher_pt,
                                                                     two_class_teacher):
    from detkd.api import distill
    from detkd.engine.trainer import DistillationTrainer
    from detkd.errors import IncompatibleModelsError

    train = dict(TINY_TRAIN, exist_ok=False, project=str(tmp_path), name="run")
    for _ in range(2):  # refused at setup (the teacher's classes): twice, and neither 'run' nor 'run2' is left
        with pytest.raises(IncompatibleModelsError):
            distill(teacher=two_class_teacher, data=shapes_yaml, kd={"validate_teacher": False}, **train)
        assert sorted(p.name for p in tmp_path.iterdir()) == []
    fixed = DistillationTrainer(overrides=dict(train, model="yolov8n.yaml", data=shapes_yaml),
                                kd=KDConfig(teacher=teacher_pt, validate_teacher=False))
    assert Path(fixed.save_dir) == (tmp_path / "run").resolve()  # the corrected run lands in 'run'


def test_a_run_refused_for_a_weak_teacher_leaves_no_folder(tmp_path, shapes_yaml, teacher_pt, monkeypatch):
    from detkd.api import distill
    from detkd.engine.trainer import DistillationTrainer

    monkeypatch.setattr(DistillationTrainer, "_quick_val", lambda *_, **__: {"mAP50-95": 0.0, "mAP50": 0.0})
    with pytest.raises(ConfigError, match="below --min-teacher-map 0.5"):
        distill(teacher=teacher_pt, data=shapes_yaml, kd={"min_teacher_map": 0.5},
                **dict(TINY_TRAIN, exist_ok=False, project=str(tmp_path), name="weak"))
    assert not any(tmp_path.iterdir())


def test_a_refused_run_keeps_a_folder_that_was_there_before(tmp_path, shapes_yaml, two_class_teacher):
    from detkd.api import distill
    from detkd.errors import IncompatibleModelsError

    done, notes = tmp_path / "done", tmp_path / "notes"
    (done / "weights").mkdir(parents=True)
    (done / "weights" / "best.pt").write_bytes(b"weights")
    notes.mkdir()
    (notes / "notes.txt").write_text("mine")
    for name in ("done", "notes"):  # exist_ok: the refused run wrote into a folder it did not create
        with pytest.raises(IncompatibleModelsError):
            distill(teacher=two_class_teacher, data=shapes_yaml, kd={"validate_teacher": False},
                    **dict(TINY_TRAIN, exist_ok=True, project=str(tmp_path), name=name))
    assert (done / "weights" / "best.pt").read_bytes() == b"weights" and (notes / "notes.txt").read_text() == "mine"


def test_a_run_refused_while_the_trainer_is_built_leaves_no_folder(capfd, tmp_path, shapes_yaml, teacher_pt):
    """``--cls-mode kl`` with one class is refused once the data is read, after Ultralytics made the run folder."""
    from detkd.cli import main

    argv = ["distill", "--teacher", teacher_pt, "--data", shapes_yaml, "--project", str(tmp_path), "--device", "cpu",
            "--name", "kl", "--cls-mode", "kl", "--set", "single_cls=true"]
    assert main(argv) == 2
    _one_error_line(capfd.readouterr().err, "--cls-mode kl")
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------------- item 18: wording, notes, warnings
def test_settings_block_does_not_claim_a_box_kd_path_it_does_not_know():
    """The pair's box-KD path (LD on shared DFL bins, or decoded distances for YOLO26 / reg_max=1 heads) is known
    only once the models are loaded: the settings block points to the 'KD paths' lines instead of claiming LD."""
    row = next(r for r in KDConfig(teacher="t.pt").summary().splitlines() if r.startswith("box_kd"))
    assert "LD on DFL bins" not in row and "decoded distances" in row and "KD paths" in row


def test_distill_help_states_the_training_defaults(capsys):
    from ultralytics.utils import DEFAULT_CFG_DICT

    from detkd.cli import main

    with pytest.raises(SystemExit):
        main(["distill", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("epochs", "imgsz", "batch"):
        entry = text.split(f"--{flag} {flag.upper()} ")[-1][:100]  # the option's help line (not the usage)
        assert f"[{DEFAULT_CFG_DICT[flag]}]" in entry, (flag, entry)
    assert "distillation on DFL bins [1.0]" not in text  # --box-kd: the path depends on the pair


def test_an_equal_teacher_is_not_called_weaker():
    from detkd.compare.report import teacher_verdict

    rows = [{"kind": "teacher", "AP": 0.3}, {"kind": "baseline", "AP": 0.3}]
    verdict = teacher_verdict(rows)
    assert "weaker" not in verdict and "as strong as" in verdict
    assert "weaker" in teacher_verdict([{"kind": "teacher", "AP": 0.2}, {"kind": "baseline", "AP": 0.3}])


def test_teacher_weights_without_a_teacher_name_the_missing_teacher(capfd, tmp_path, shapes_yaml):
    from detkd.cli import main

    with pytest.raises(ConfigError, match=r"^teacher_weights \[1.0, 1.0\] are given but no teacher"):
        KDConfig(teacher_weights=[1.0, 1.0])
    assert main(["distill", "--teacher-weights", "1", "1", "--data", shapes_yaml, "--project", str(tmp_path)]) == 2
    err = capfd.readouterr().err
    _one_error_line(err, "--teacher")
    assert "0 teachers" not in err


def test_settings_without_effect_are_noted(tmp_path, shapes_yaml, teacher_pt, ultralytics_log):
    from detkd.engine.trainer import DistillationTrainer

    DistillationTrainer(overrides=dict(model="yolov8n.yaml", data=shapes_yaml, project=str(tmp_path), **TINY_TRAIN),
                        kd=KDConfig(teacher=teacher_pt, ensemble_rule="losses"))
    assert any("ensemble_rule=losses" in m and "no effect with one teacher" in m for m in ultralytics_log)


@pytest.mark.parametrize("nb, epochs, accumulate, warmup, expected", [
    (6, 1, 6, 0, 1),      # batch 4, nbs 64 -> accumulate 16, capped by Ultralytics at the 6 batches of the run
    (6, 3, 16, 0, 1),     # one step every 16 batches of 18
    (6, 3, 1, 0, 18),     # every batch
    (10, 2, 4, 10, 7),    # warmup ramps accumulate 1 -> 4 over the first 10 batches: steps at 0 1 3 5 8 12 16
])
def test_optimizer_steps_follow_ultralytics_cadence(nb, epochs, accumulate, warmup, expected):
    from detkd.engine.baseline import optimizer_steps

    assert optimizer_steps(nb, epochs, accumulate, warmup) == expected


def test_a_run_with_few_optimizer_steps_warns(tmp_path, shapes_yaml, ultralytics_log):
    from detkd.engine.baseline import StudentTrainer

    trainer = StudentTrainer(overrides=dict(model="yolov8n.yaml", data=shapes_yaml, project=str(tmp_path),
                                            **dict(TINY_TRAIN, batch=4, epochs=1)))
    trainer.add_callback("on_train_start", _stop)
    with pytest.raises(Interrupt):
        trainer.train()
    assert any("only 1 optimizer step" in m and "nbs=64" in m for m in ultralytics_log), ultralytics_log

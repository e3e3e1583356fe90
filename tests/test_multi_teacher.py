"""Several teachers in one run, and teacher-assistant chains, end to end on tiny data (CPU)."""

from __future__ import annotations

import csv
import json
import re

import pytest
import torch

from conftest import TINY_TRAIN
from detkd.config import KDConfig
from detkd.errors import ConfigError


def _teacher(tmp_path, cfg: str, shapes_yaml, seed: int = 0) -> str:
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils import YAML

    names = YAML.load(shapes_yaml)["names"]
    torch.manual_seed(seed)
    net = DetectionModel(cfg, nc=len(names), verbose=False)
    net.names = dict(names) if isinstance(names, dict) else dict(enumerate(names))
    path = tmp_path / f"{cfg.replace('.yaml', '')}_{seed}.pt"
    torch.save({"model": net, "train_args": {}, "epoch": -1}, path)
    return str(path)


def test_teacher_list_settings_are_checked():
    assert KDConfig(teacher=["a.pt"]).teacher == "a.pt"  # one teacher in a list is the single-teacher path
    cfg = KDConfig(teacher=["a.pt", "b.pt"], teacher_weights=[3, 1])
    assert cfg.teachers == ["a.pt", "b.pt"] and cfg.teacher_weights == [3.0, 1.0]
    for bad in (dict(teacher=["a.pt", "b.pt"], teacher_weights=[1.0]), dict(teacher=["a.pt", "a.pt"]),
                dict(teacher=["a.pt", "b.pt"], teacher_weights=[0, 0]), dict(teacher="a.pt", drop_weak_teachers=True)):
        with pytest.raises(ConfigError):
            KDConfig(**bad)


@pytest.mark.slow
def test_two_teachers_of_different_families_train_one_student(tmp_path, shapes_yaml):
    from detkd.engine.trainer import DistillationTrainer
    from detkd.models.ensemble import TeacherEnsemble

    teachers = [_teacher(tmp_path, "yolov8s.yaml", shapes_yaml), _teacher(tmp_path, "yolo26n.yaml", shapes_yaml)]
    snapshot = {k: v.clone() for k, v in torch.load(teachers[0], weights_only=False)["model"].state_dict().items()}
    trainer = DistillationTrainer(
        overrides=dict(model="yolov8n.yaml", data=shapes_yaml, project=str(tmp_path), name="two",
                       **{**TINY_TRAIN, "epochs": 1}),
        kd=KDConfig(teacher=teachers, teacher_weights=[2, 1], validate_teacher=False))
    trainer.train()
    assert isinstance(trainer.teacher, TeacherEnsemble) and len(trainer.teacher.members) == 2
    assert trainer.teacher.reg_max == 1  # YOLOv8 (DFL) + YOLO26 (no bins): decoded-distance box KD
    with open(trainer.csv) as f:
        row = {k.strip(): float(v) for k, v in next(csv.DictReader(f)).items()}
    assert all(row[c] > 0 for c in ("train/cls_kd", "train/box_kd", "train/feat_kd"))
    # adapters map the student to both teachers' channels side by side
    assert trainer.adapters.align[0].out_channels == sum(m.channels[0] for m in trainer.teacher.members)
    after = torch.load(teachers[0], weights_only=False)["model"].state_dict()
    assert all(torch.equal(snapshot[k], after[k]) for k in snapshot)  # the teacher file is untouched


def test_chain_stage_states(tmp_path):
    from detkd.engine.checkpoints import run_state as _stage_state

    run = tmp_path / "assistant"
    assert _stage_state(run) == ("new", None)
    (run / "weights").mkdir(parents=True)
    torch.save({"epoch": 2}, run / "weights" / "last.pt")
    assert _stage_state(run) == ("interrupted", run / "weights" / "last.pt")
    torch.save({"epoch": -1}, run / "weights" / "last.pt")
    torch.save({"epoch": -1}, run / "weights" / "best.pt")
    assert _stage_state(run) == ("finished", run / "weights" / "best.pt")


@pytest.mark.slow
def test_assistant_chain_end_to_end_and_reuse(tmp_path, shapes_yaml, teacher_pt):
    from detkd.engine.assistant import distill_via_assistant

    train = {k: v for k, v in TINY_TRAIN.items() if k != "exist_ok"} | {"epochs": 1}
    kd = KDConfig(validate_teacher=False)
    out = distill_via_assistant(teacher_pt, "yolov8n.yaml", student="yolov8n.yaml", data=shapes_yaml, kd=kd,
                                project=str(tmp_path), name="chain", log=lambda *_: None, **train)
    record = json.loads((tmp_path / "chain" / "chain.json").read_text())
    assert record["student"]["teacher"] == record["assistant"]["best"]  # the student learnt from the assistant
    assert record["assistant"]["teacher"] == teacher_pt
    assert (tmp_path / "chain" / "student" / "weights" / "best.pt").is_file()
    lines = []
    again = distill_via_assistant(teacher_pt, "yolov8n.yaml", student="yolov8n.yaml", data=shapes_yaml, kd=kd,
                                  project=str(tmp_path), name="chain", log=lines.append, **train)
    assert all("finished before, reusing" in line for line in lines) and len(lines) == 2
    assert again["student"] == tmp_path / "chain" / "student" / "weights" / "best.pt"
    assert out["student"].best == again["student"]


@pytest.mark.slow
def test_assistant_chain_from_both_teaches_the_student_with_assistant_and_teacher(tmp_path, shapes_yaml, teacher_pt):
    from detkd.engine.assistant import distill_via_assistant

    train = {k: v for k, v in TINY_TRAIN.items() if k != "exist_ok"} | {"epochs": 1}
    out = distill_via_assistant(teacher_pt, "yolov8n.yaml", student="yolov8n.yaml", data=shapes_yaml,
                                kd=KDConfig(validate_teacher=False), from_both=True, project=str(tmp_path),
                                name="both", log=lambda *_: None, **train)
    record = json.loads((tmp_path / "both" / "chain.json").read_text())
    assistant_best = record["assistant"]["best"]
    assert record["student"]["teacher"] == str([assistant_best, teacher_pt])  # the ensemble of the two
    args = (tmp_path / "both" / "student" / "args.yaml").read_text()
    assert assistant_best in args and teacher_pt in args
    assert out["student"].best.is_file()


def _fake_val(scores: dict):
    """A stand-in for DistillationTrainer._quick_val returning fixed mAPs by label (validation itself is tested
    elsewhere); records what was validated."""
    seen = []

    def quick_val(self, model, what, *_):  # (a class map, when the teacher has other classes)
        seen.append(what)
        return {"mAP50-95": scores[what], "mAP50": scores[what]}
    return quick_val, seen


@pytest.mark.slow
def test_each_teacher_is_validated_and_weak_ones_are_dropped(tmp_path, shapes_yaml, monkeypatch):
    from detkd.engine.trainer import DistillationTrainer
    from detkd.models.teacher import FrozenTeacher

    teachers = [_teacher(tmp_path, "yolov8s.yaml", shapes_yaml), _teacher(tmp_path, "yolov8m.yaml", shapes_yaml)]
    quick_val, seen = _fake_val({"teacher 1": 0.5, "teacher 2": 0.05, "student (start)": 0.1})
    monkeypatch.setattr(DistillationTrainer, "_quick_val", quick_val)
    trainer = DistillationTrainer(
        overrides=dict(model="yolov8n.yaml", data=shapes_yaml, project=str(tmp_path), name="drop",
                       **{**TINY_TRAIN, "epochs": 1}),
        kd=KDConfig(teacher=teachers, drop_weak_teachers=True))
    trainer.train()
    assert seen == ["teacher 1", "teacher 2", "student (start)"]
    assert [m["teacher"] for m in trainer.teacher_metrics["members"]] == teachers
    assert isinstance(trainer.teacher, FrozenTeacher)  # the weak yolov8m teacher was left out
    assert trainer.adapters.align[0].out_channels == trainer.teacher.channels[0] == 128  # yolov8s P3 width
    ckpt = torch.load(trainer.last, weights_only=False)
    assert ckpt["train_args"]["kd"]["teacher"] == teachers[0]  # a resume re-attaches only the kept teacher


class _Interrupt(Exception):
    pass


def _interrupt(trainer):
    raise _Interrupt


@pytest.mark.slow
@pytest.mark.parametrize("n_teachers", [2, 3])
def test_a_run_that_dropped_weak_teachers_resumes_without_judging_them_again(tmp_path, shapes_yaml, monkeypatch,
                                                                              n_teachers):
    # The weak-teacher decision is taken once, against the untrained student. A resume must re-attach the kept
    # teacher(s) (one left used to make the saved settings invalid: resume refused) and not judge them against the
    # trained student (which could drop another teacher mid-run, or refuse every one).
    from detkd.api import distill
    from detkd.engine.trainer import DistillationTrainer

    teachers = [_teacher(tmp_path, "yolov8s.yaml", shapes_yaml, seed) for seed in range(n_teachers)]
    scores = {"teacher": 0.5, "teacher 1": 0.5, "teacher 2": 0.05, "teacher 3": 0.4, "student (start)": 0.1}
    quick_val, seen = _fake_val(scores)
    monkeypatch.setattr(DistillationTrainer, "_quick_val", quick_val)
    trainer = DistillationTrainer(
        overrides=dict(model="yolov8n.yaml", data=shapes_yaml, project=str(tmp_path), name="drop",
                       **{**TINY_TRAIN, "epochs": 2}),
        kd=KDConfig(teacher=teachers, drop_weak_teachers=True))
    trainer.add_callback("on_model_save", _interrupt)
    with pytest.raises(_Interrupt):
        trainer.train()
    kept = [t for i, t in enumerate(teachers) if i != 1]
    scores.update({"student (start)": 0.45})  # the resumed student is trained: above teacher 3 (0.4)
    seen.clear()
    run = distill(resume=str(trainer.last))
    saved = torch.load(run.last, weights_only=False)["train_args"]["kd"]["teacher"]
    assert saved == (kept[0] if len(kept) == 1 else kept)  # the same teachers to the end
    assert "student (start)" not in seen  # not judged again


def test_weak_teachers_refuse_or_warn_without_the_flag(tmp_path, shapes_yaml, monkeypatch):
    from detkd.engine.trainer import DistillationTrainer

    teachers = [_teacher(tmp_path, "yolov8s.yaml", shapes_yaml), _teacher(tmp_path, "yolov8s.yaml", shapes_yaml, 1)]
    quick_val, _ = _fake_val({"teacher 1": 0.5, "teacher 2": 0.05, "student (start)": 0.0})
    monkeypatch.setattr(DistillationTrainer, "_quick_val", quick_val)
    trainer = DistillationTrainer(
        overrides=dict(model="yolov8n.yaml", data=shapes_yaml, project=str(tmp_path), name="floor",
                       **{**TINY_TRAIN, "epochs": 1}),
        kd=KDConfig(teacher=teachers, min_teacher_map=0.2))
    with pytest.raises(ConfigError, match=r"teacher 2 .*below --min-teacher-map 0.2.*--drop-weak-teachers"):
        trainer.train()


@pytest.mark.slow
def test_cli_two_teachers_and_assistant_chain(tmp_path, shapes_yaml, teacher_pt, capsys):
    from detkd.cli import main

    common = ["--data", shapes_yaml, "--student", "yolov8n.yaml", "--epochs", "1", "--imgsz", "64", "--batch", "8",
              "--device", "cpu", "--workers", "0", "--teacher-val", "false", "--project", str(tmp_path),
              "--set", "plots=False", "--set", "warmup_epochs=0"]
    second = _teacher(tmp_path, "yolo11n.yaml", shapes_yaml)
    assert main(["distill", "--teacher", teacher_pt, "--teacher", second, "--teacher-weights", "3", "1",
                 "--ensemble-rule", "losses", "--name", "two", *common]) == 0
    args = (tmp_path / "two" / "args.yaml").read_text()
    assert second in args and "teacher_weights:\n  - 3.0\n  - 1.0" in args and "ensemble_rule: losses" in args
    assert main(["distill", "--teacher", teacher_pt, "--assistant", "yolov8n.yaml", "--name", "ta", *common]) == 0
    out = capsys.readouterr().out
    assert "[chain 1/2] assistant" in out and "[chain 2/2] student" in out
    assert (tmp_path / "ta" / "student" / "weights" / "best.pt").is_file()
    # the closing summary: each stage, what it learnt from and how it scored (not only where its weights are)
    assert re.search(r"assistant\s+yolov8n\.yaml\s+teacher\s+\d\.\d{4}\s+\d\.\d{4}\s+\S+assistant/weights/best\.pt", out), out
    assert re.search(r"student\s+yolov8n\.yaml\s+assistant\s+\d\.\d{4}\s+\d\.\d{4}\s+\S+student/weights/best\.pt", out), out
    assert main(["distill", "--teacher", teacher_pt, "--teacher", second, "--assistant", "yolov8n.yaml",
                 *common]) == 2  # a chain starts from one teacher
    assert "--assistant takes one --teacher" in capsys.readouterr().err


@pytest.mark.slow
def test_resume_reattaches_every_teacher(tmp_path, shapes_yaml, teacher_pt):
    from detkd.engine.trainer import DistillationTrainer
    from detkd.models.ensemble import TeacherEnsemble

    class Interrupt(Exception):
        pass

    def stop(trainer):
        raise Interrupt

    teachers = [teacher_pt, _teacher(tmp_path, "yolo26n.yaml", shapes_yaml)]
    trainer = DistillationTrainer(
        overrides=dict(model="yolov8n.yaml", data=shapes_yaml, project=str(tmp_path), name="r", **TINY_TRAIN),
        kd=KDConfig(teacher=teachers, teacher_weights=[1, 2], validate_teacher=False))
    trainer.add_callback("on_model_save", stop)
    with pytest.raises(Interrupt):
        trainer.train()
    resumed = DistillationTrainer(overrides={"resume": str(trainer.last), "model": str(trainer.last)})
    resumed.train()
    assert isinstance(resumed.teacher, TeacherEnsemble) and resumed.kd.teachers == teachers
    assert resumed.teacher.weights == pytest.approx([1 / 3, 2 / 3]) and resumed.start_epoch == 1


@pytest.mark.slow
def test_compare_adds_direct_and_via_assistant_rows(tmp_path, shapes_coco, teacher_pt, capsys):
    from detkd.cli import main

    argv = ["compare", "--teacher", teacher_pt, "--data", str(shapes_coco), "--assistant", "yolov8n.yaml",
            "--epochs", "1", "--imgsz", "64", "--batch", "8", "--device", "cpu", "--workers", "0",
            "--set", "plots=False", "--set", "warmup_epochs=0", "--project", str(tmp_path), "--name", "ta",
            "--eval-batch", "8", "--bench-warmup", "1", "--bench-iters", "2", "--bench-time", "0.2"]
    assert main(argv) == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "ta" / "report.json").read_text())
    rows = {r["key"]: r for r in report["rows"]}
    assert set(rows) == {"teacher", "baseline", "distilled-detkd", "assistant", "via-assistant"}
    args = (tmp_path / "ta" / "train" / "via-assistant" / "args.yaml").read_text()
    assert rows["assistant"]["weights"] in args  # the via-assistant student learnt from the assistant's best.pt
    assert "distilled: via assistant" in (tmp_path / "ta" / "report.md").read_text()


@pytest.mark.parametrize("extra, expected", [
    (["--assistant-both"], "--assistant-both needs --assistant"),
    (["--assistant", "nope_s.yaml"], "assistant config 'nope_s.yaml' not found"),
    (["--assistant", "yolov8s.yaml", "--student", "nope_n.yaml"], "student config 'nope_n.yaml' not found"),
])
def test_chain_arguments_are_checked_before_any_stage_trains(tmp_path, shapes_yaml, teacher_pt, capsys, extra,
                                                             expected):
    """A chain with a missing student must not spend the assistant's training first; a flag without the option it
    belongs to is refused, not silently ignored."""
    from detkd.cli import main

    argv = ["distill", "--teacher", teacher_pt, "--data", shapes_yaml, "--epochs", "1", "--imgsz", "64",
            "--device", "cpu", "--project", str(tmp_path), "--name", "chain", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("error:") == 1
    assert not (tmp_path / "chain").exists()  # nothing trained, no folder made


def test_missing_weights_message_lists_each_folder_once(monkeypatch):
    """Run from the repo root, ./weights is the repo's weights/ folder: the message names it once."""
    from detkd.models.loading import REPO_WEIGHTS_DIR, WeightsNotFoundError, resolve_model_path

    monkeypatch.chdir(REPO_WEIGHTS_DIR.parent)
    with pytest.raises(WeightsNotFoundError) as e:
        resolve_model_path("nope.pt", role="teacher")
    looked = str(e.value).split("looked in: ")[1].split(")")[0].split(", ")
    assert len(looked) == len(set(looked)), looked


def test_a_refused_teacher_among_several_is_named(tmp_path, shapes_yaml, capsys):
    """With two teachers, a refusal names which one (its number and path), not just 'the teacher'."""
    from detkd.cli import main

    good = _teacher(tmp_path, "yolov8s.yaml", shapes_yaml)
    net_path = tmp_path / "three_classes.pt"
    from ultralytics.nn.tasks import DetectionModel

    net = DetectionModel("yolov8n.yaml", nc=3, verbose=False)
    net.names = {0: "a", 1: "b", 2: "c"}
    torch.save({"model": net, "train_args": {}, "epoch": -1}, net_path)
    argv = ["distill", "--teacher", good, "--teacher", str(net_path), "--data", shapes_yaml, "--epochs", "1",
            "--imgsz", "64", "--device", "cpu", "--workers", "0", "--project", str(tmp_path), "--name", "two"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    # (issue 28: a teacher with other class names is mapped by name, refused when no class is shared)
    assert f"teacher 2 ({net_path}): the teacher and the data share no class" in err and err.count("error:") == 1


def test_weak_teacher_warning_names_the_teacher_and_the_metric(tmp_path, shapes_yaml, monkeypatch):
    """'teacher 2 (path) (mAP50-95 0.0000) is not better …', not 'the teacher 2 (path) (0.0000)'."""
    import detkd.engine.trainer as trainer_module
    from detkd.engine.trainer import DistillationTrainer

    teachers = [_teacher(tmp_path, "yolov8s.yaml", shapes_yaml), _teacher(tmp_path, "yolov8s.yaml", shapes_yaml, 1)]
    quick_val, _ = _fake_val({"teacher 1": 0.5, "teacher 2": 0.0, "student (start)": 0.0})
    monkeypatch.setattr(DistillationTrainer, "_quick_val", quick_val)
    warnings = []
    monkeypatch.setattr(trainer_module.LOGGER, "warning", lambda msg, *a, **k: warnings.append(str(msg)))
    trainer = DistillationTrainer(
        overrides=dict(model="yolov8n.yaml", data=shapes_yaml, project=str(tmp_path), name="warn",
                       **{**TINY_TRAIN, "epochs": 1}),
        kd=KDConfig(teacher=teachers, min_teacher_map=0.2))
    with pytest.raises(ConfigError, match=rf"^teacher 2 \({teachers[1]}\) scores mAP50-95 0\.0000"):
        trainer.train()
    assert any(f"teacher 2 ({teachers[1]}) (mAP50-95 0.0000) is not better than the student's starting point" in w
               for w in warnings), warnings

"""Issue 24 (teacher-assistant chain): a stage is reused only with the settings it was trained with (item 3), a
stage made with other settings is kept aside (item 6), and refusals name the model by its role (item 15).

``detkd.api.distill`` is replaced by a stand-in that writes a finished (or resumed) run without training, so these
tests check the chain's decisions, not training (that is tests/test_multi_teacher.py's slow chain tests)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from detkd.config import KDConfig
from detkd.errors import IncompatibleModelsError


class FakeDistill:
    """Records each call; writes ``<project>/<name>/weights/{last,best}.pt`` (finished, distinct bytes per call)."""

    def __init__(self):
        self.calls: list[dict] = []

    def __call__(self, teacher=None, student=None, data=None, kd=None, resume=None, **train):
        from detkd.api import RunResult

        self.calls.append({"teacher": teacher, "student": student, "resume": resume, **train})
        run = Path(resume).parent.parent if resume else Path(train["project"]) / train["name"]
        (run / "weights").mkdir(parents=True, exist_ok=True)
        tag = {"epoch": -1, "call": len(self.calls), "teacher": str(teacher), "student": str(student)}
        for f in ("last.pt", "best.pt"):
            torch.save(tag, run / "weights" / f)
        return RunResult(save_dir=run, best=run / "weights" / "best.pt", last=run / "weights" / "last.pt",
                         results_csv=run / "results.csv", metrics={"mAP50-95": 0.1, "mAP50": 0.2})


@pytest.fixture
def fake_distill(monkeypatch):
    import detkd.api

    fake = FakeDistill()
    monkeypatch.setattr(detkd.api, "distill", fake)
    return fake


@pytest.fixture
def fake_chain(fake_distill, monkeypatch):
    """The stand-in distill, and no model checks (each builds three models; they are tested on their own below)."""
    import detkd.engine.assistant

    monkeypatch.setattr(detkd.engine.assistant, "check_chain", lambda *a, **k: None)
    return fake_distill


def _chain(tmp_path, teacher, data, log=None, assistant="yolov8n.yaml", student="yolov8n.yaml", **kw):
    from detkd.engine.assistant import distill_via_assistant

    train = {"epochs": 3, "imgsz": 64, "batch": 8, "device": "cpu", "workers": 0} | kw.pop("train", {})
    return distill_via_assistant(teacher, assistant, student=student, data=data, kd=KDConfig(validate_teacher=False),
                                 project=str(tmp_path), name="chain", log=(log if log is not None else []).append,
                                 **kw, **train)


def _trained(fake, since: int) -> list[str]:
    """The stages trained by the calls after the first ``since``."""
    return [Path(c.get("name", "")).name or Path(c["resume"]).parent.parent.name for c in fake.calls[since:]]


def _second_teacher(tmp_path, shapes_yaml) -> str:
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils import YAML

    names = YAML.load(shapes_yaml)["names"]
    torch.manual_seed(1)
    net = DetectionModel("yolov8n.yaml", nc=len(names), verbose=False)
    net.names = dict(names) if isinstance(names, dict) else dict(enumerate(names))
    path = tmp_path / "other_teacher.pt"
    torch.save({"model": net, "train_args": {}, "epoch": -1}, path)
    return str(path)


def test_a_stage_is_reused_only_with_the_settings_it_was_trained_with(tmp_path, shapes_yaml, teacher_pt,
                                                                      fake_chain):
    """Before: any other teacher/assistant/student/--epochs/--assistant-both gave 'finished before, reusing' for both
    stages, and the table showed the old models."""
    _chain(tmp_path, teacher_pt, shapes_yaml)
    assert _trained(fake_chain, 0) == ["assistant", "student"]
    log: list = []
    _chain(tmp_path, teacher_pt, shapes_yaml, log=log)  # the same command again: both reused
    reused = [line for line in log if "finished before, reusing" in line]
    assert len(fake_chain.calls) == 2 and len(reused) == 2, log  # both stages said so, nothing trained

    cases = [  # (what changes, the stages it retrains)
        ({"train": {"epochs": 4}}, ["assistant", "student"]),  # every stage trains with it
        ({"train": {"epochs": 4}, "student": "yolov8s.yaml"}, ["student"]),
        ({"train": {"epochs": 4}, "student": "yolov8s.yaml", "from_both": True}, ["student"]),
        ({"train": {"epochs": 4}, "student": "yolov8s.yaml", "from_both": True, "assistant": "yolo11n.yaml"},
         ["assistant", "student"]),  # a new assistant is a new teacher for the student
    ]
    for change, stages in cases:
        n, log = len(fake_chain.calls), []
        _chain(tmp_path, teacher_pt, shapes_yaml, log=log, **change)
        assert _trained(fake_chain, n) == stages, (change, log)
        said = "\n".join(log)
        assert "settings changed" in said and ".old-" in said, said
    n, log = len(fake_chain.calls), []
    other = _second_teacher(tmp_path, shapes_yaml)
    _chain(tmp_path, other, shapes_yaml, log=log, train={"epochs": 4}, student="yolov8s.yaml", from_both=True,
           assistant="yolo11n.yaml")
    assert _trained(fake_chain, n) == ["assistant", "student"]
    assert "other_teacher.pt" in "\n".join(log)  # the setting that changed is named


def test_a_stage_with_other_settings_is_kept_aside_and_the_chain_table_is_the_new_one(tmp_path, shapes_yaml,
                                                                                      teacher_pt, fake_chain):
    from detkd.engine.assistant import chain_summary

    _chain(tmp_path, teacher_pt, shapes_yaml)
    first = (tmp_path / "chain" / "assistant" / "weights" / "best.pt").read_bytes()
    log: list = []
    _chain(tmp_path, teacher_pt, shapes_yaml, log=log, train={"epochs": 4})
    kept = sorted(p for p in (tmp_path / "chain").iterdir() if ".old-" in p.name)
    assert [p.name.split(".old-")[0] for p in kept] == ["assistant", "student"]
    assert (kept[0] / "weights" / "best.pt").read_bytes() == first  # the old assistant, intact
    assert any(str(kept[0]) in line and "epochs: 3 -> 4" in line for line in log), log
    table = chain_summary(tmp_path / "chain")
    assert ".old-" not in table and str(tmp_path / "chain" / "student" / "weights" / "best.pt") in table


def test_an_interrupted_stage_resumes_only_with_its_own_settings(tmp_path, shapes_yaml, teacher_pt, fake_chain):
    _chain(tmp_path, teacher_pt, shapes_yaml)
    last = tmp_path / "chain" / "student" / "weights" / "last.pt"
    torch.save({"epoch": 1}, last)  # the student stage cut off after epoch 2
    _chain(tmp_path, teacher_pt, shapes_yaml)
    assert fake_chain.calls[-1]["resume"] == str(last)  # same settings: resumed
    torch.save({"epoch": 1}, last)
    _chain(tmp_path, teacher_pt, shapes_yaml, from_both=True)  # other settings: not resumed, kept aside
    assert fake_chain.calls[-1]["resume"] is None and fake_chain.calls[-1]["name"] == "student"
    kept = [p for p in (tmp_path / "chain").iterdir() if p.name.startswith("student.old-")]
    assert len(kept) == 1 and torch.load(kept[0] / "weights" / "last.pt")["epoch"] == 1


def test_a_chain_made_before_stages_were_fingerprinted_is_not_trusted(tmp_path, shapes_yaml, teacher_pt,
                                                                      fake_chain):
    from detkd.engine.assistant import STAGE_RECORD

    _chain(tmp_path, teacher_pt, shapes_yaml)
    for stage in ("assistant", "student"):
        (tmp_path / "chain" / stage / STAGE_RECORD).unlink()
    log: list = []
    _chain(tmp_path, teacher_pt, shapes_yaml, log=log)
    assert _trained(fake_chain, 2) == ["assistant", "student"]
    assert "no record of the settings" in "\n".join(log)


def test_chain_refusals_name_the_assistant(tmp_path, shapes_yaml, teacher_pt, fake_distill):
    """Before: '... the teacher has 3 feature levels ... and the student 4' for --assistant yolov8s-p6.yaml."""
    with pytest.raises(IncompatibleModelsError) as e:
        _chain(tmp_path, teacher_pt, shapes_yaml, assistant="yolov8n-p6.yaml")
    assert "the assistant 4" in str(e.value) and "student" not in str(e.value), str(e.value)
    with pytest.raises(IncompatibleModelsError) as e:  # the second link is checked before the first one trains
        _chain(tmp_path, teacher_pt, shapes_yaml, student="yolov8n-p6.yaml")
    assert "the assistant has 3 feature levels" in str(e.value) and "the student 4" in str(e.value), str(e.value)
    assert fake_distill.calls == [] and not (tmp_path / "chain").exists()


def test_compare_refusal_names_the_assistant(shapes_yaml, teacher_pt):
    from detkd.compare.experiment import CompareSettings, check_models

    s = CompareSettings(teacher=teacher_pt, data=shapes_yaml, assistant="yolov8n-p6.yaml", epochs=1).validate()
    with pytest.raises(IncompatibleModelsError, match="the assistant 4"):
        check_models(s, shapes_yaml)


def _images(folder: Path, n: int, seed: int) -> None:
    import cv2
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        cv2.imwrite(str(folder / f"f{seed}_{i:03d}.png"), rng.integers(0, 255, (40, 48, 3), dtype=np.uint8))


def _chain_kd(tmp_path, teacher, data, kd, log):
    from detkd.engine.assistant import distill_via_assistant

    return distill_via_assistant(teacher, "yolov8n.yaml", student="yolov8n.yaml", data=data, kd=kd,
                                 project=str(tmp_path / "runs"), name="chain", log=log.append, epochs=3, imgsz=64,
                                 batch=8, device="cpu", workers=0)


def test_a_stage_is_not_reused_when_its_teacher_found_in_weights_changed(tmp_path, shapes_yaml, fake_chain,
                                                                          monkeypatch):
    """A teacher given by name and found where detkd looks for weights (``./weights/``) is fingerprinted by its file's
    hash, as one given by path (before: by its name, so a retrained ``yolov8l.pt`` there reused both stages)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights").mkdir()
    torch.save({"which": "teacher A"}, tmp_path / "weights" / "myteacher.pt")
    kd = KDConfig(validate_teacher=False)
    _chain_kd(tmp_path, "myteacher.pt", shapes_yaml, kd, [])
    _chain_kd(tmp_path, "myteacher.pt", shapes_yaml, kd, [])
    assert len(fake_chain.calls) == 2  # unchanged: reused
    torch.save({"which": "teacher B, retrained"}, tmp_path / "weights" / "myteacher.pt")
    _chain_kd(tmp_path, "myteacher.pt", shapes_yaml, kd, log := [])
    assert len(fake_chain.calls) == 4, "\n".join(log)


def test_a_stage_is_not_reused_when_its_unlabelled_images_changed(tmp_path, shapes_yaml, teacher_pt, fake_chain):
    """Other images behind the same ``--unlabeled`` path are other training data (before: only the path was in the
    fingerprint, so both stages were reused)."""
    frames = tmp_path / "frames"
    _images(frames, 4, seed=0)
    kd = KDConfig(validate_teacher=False, unlabeled=str(frames))
    _chain_kd(tmp_path, teacher_pt, shapes_yaml, kd, [])
    _chain_kd(tmp_path, teacher_pt, shapes_yaml, kd, [])
    assert len(fake_chain.calls) == 2  # unchanged: reused
    for f in frames.glob("*.png"):
        f.unlink()
    _images(frames, 6, seed=7)
    _chain_kd(tmp_path, teacher_pt, shapes_yaml, kd, log := [])
    assert len(fake_chain.calls) == 4, "\n".join(log)

"""Issue 24 (compare): a run made with other settings is kept, never overwritten (item 6)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch


class FakeTrainer:
    """Stands in for StudentTrainer / DistillationTrainer: writes a finished run (weights that differ per training,
    results.csv) where Ultralytics would, without training anything."""

    made: list = []

    def __init__(self, overrides=None, kd=None, **_):
        self.overrides = dict(overrides or {})
        self.save_dir = Path(self.overrides["project"]) / self.overrides["name"]
        self.wdir = self.save_dir / "weights"
        self.best, self.last, self.csv = self.wdir / "best.pt", self.wdir / "last.pt", self.save_dir / "results.csv"
        self.metrics = {"metrics/mAP50-95(B)": 0.1, "metrics/mAP50(B)": 0.2}
        FakeTrainer.made.append(self.overrides)

    def add_callback(self, *_):
        pass

    def train(self):
        self.wdir.mkdir(parents=True, exist_ok=True)
        tag = {"epoch": -1, "epochs": self.overrides["epochs"], "n": len(FakeTrainer.made)}
        torch.save(tag, self.last)
        torch.save(tag, self.best)
        self.csv.write_text("epoch\n1\n")


@pytest.fixture
def fake_trainer(monkeypatch):
    import detkd.engine.baseline as baseline

    FakeTrainer.made = []
    monkeypatch.setattr(baseline, "StudentTrainer", FakeTrainer)
    return FakeTrainer


def test_a_finished_run_with_other_settings_is_set_aside_not_overwritten(tmp_path, shapes_yaml, teacher_pt,
                                                                         fake_trainer):
    """Before: 'settings changed: retraining' trained into train/baseline-s0 again, destroying the finished run."""
    from detkd.compare.experiment import CompareSettings, plan, train_run

    s = CompareSettings(teacher=teacher_pt, data=shapes_yaml, epochs=4, seeds=[0, 1], project=str(tmp_path),
                        name="s2").validate()
    baseline = plan(s)[1]
    assert baseline.key == "baseline-s0"
    train_run(baseline, s, shapes_yaml, s.out_dir, log=lambda *_: None)
    run = s.out_dir / "train" / "baseline-s0"
    first = (run / "weights" / "best.pt").read_bytes()

    s.epochs, s.seeds = 3, [0]
    lines: list = []
    train_run(plan(s)[1], s, shapes_yaml, s.out_dir, log=lines.append)
    kept = [p for p in (s.out_dir / "train").iterdir() if p.name.startswith("baseline-s0.old-")]
    assert len(kept) == 1, sorted(p.name for p in (s.out_dir / "train").iterdir())
    assert (kept[0] / "weights" / "best.pt").read_bytes() == first  # the finished run is intact, moved aside
    assert json.loads((kept[0] / "compare_run.json").read_text())["fingerprint"]["epochs"] == 4
    said = "\n".join(lines)
    assert "epochs: 4 -> 3" in said and str(kept[0]) in said  # what changed, and where the old run is
    assert torch.load(run / "weights" / "best.pt", weights_only=False)["epochs"] == 3  # the new run in its place


def test_an_interrupted_run_with_other_settings_is_set_aside(tmp_path, shapes_yaml, teacher_pt, fake_trainer):
    """A run cut off with other settings is not resumed (as before) and now not overwritten either."""
    from detkd.compare.experiment import STARTED, CompareSettings, plan, train_fingerprint, train_run

    s = CompareSettings(teacher=teacher_pt, data=shapes_yaml, epochs=4, project=str(tmp_path), name="c").validate()
    spec = plan(s)[1]
    run = s.out_dir / "train" / spec.key
    (run / "weights").mkdir(parents=True)
    torch.save({"epoch": 1}, run / "weights" / "last.pt")
    (run / STARTED).write_text(json.dumps({"fingerprint": train_fingerprint(spec, s, shapes_yaml)}))
    s.epochs = 3
    lines: list = []
    train_run(plan(s)[1], s, shapes_yaml, s.out_dir, log=lines.append)
    kept = [p for p in run.parent.iterdir() if p.name.startswith(f"{spec.key}.old-")]
    assert len(kept) == 1 and torch.load(kept[0] / "weights" / "last.pt")["epoch"] == 1
    assert "resume" not in fake_trainer.made[-1]
    assert str(kept[0]) in "\n".join(lines)


def test_set_aside_never_reuses_a_folder_name(tmp_path):
    from detkd.engine.fingerprint import set_aside

    names = []
    for _ in range(3):
        (tmp_path / "run" / "weights").mkdir(parents=True)
        names.append(set_aside(tmp_path / "run").name)
    assert len(set(names)) == 3 and all(n.startswith("run.old-") for n in names)
    assert not (tmp_path / "run").exists()

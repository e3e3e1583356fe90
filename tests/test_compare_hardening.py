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
    import detkd.engine.trainer as trainer_module  # imported before StudentTrainer is faked: its real base class

    FakeTrainer.made = []
    monkeypatch.setattr(baseline, "StudentTrainer", FakeTrainer)
    monkeypatch.setattr(trainer_module, "DistillationTrainer", FakeTrainer)
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


# ------------------------------------------------------------------------------- item 18: help, flags, curves
def _help(capsys, command: str) -> str:
    from detkd.cli import main

    with pytest.raises(SystemExit):
        main([command, "--help"])
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines: compare the words


def test_compare_help_shows_each_default_once(capsys):
    """Before: '--kd ... (default: [])', '--set ... (default: [])', '--pseudo-conf ... [0.25] (default: 0.25)' and
    no default at all for --epochs, --imgsz, --batch, --seed."""
    text = _help(capsys, "compare")
    assert "(default: [])" not in text
    assert "[0.25] (default: 0.25)" not in text and "off: soft KD only" in text
    for flag, default in (("--epochs EPOCHS", "100"), ("--imgsz IMGSZ", "640"), ("--batch BATCH", "16")):
        block = text.split(flag, 2)[2].split(" --", 1)[0]  # the option's own help (after the usage line)
        assert f"(default: {default})" in block, (flag, block)
    assert "(default: [])" not in _help(capsys, "distill")  # the shared formatter: --set there too


@pytest.mark.parametrize("extra, expected", [
    (["--seed", "5", "--seeds", "0", "1"], "--seed 5 and --seeds [0, 1]"),
    (["--pseudo-conf", "0.3"], "--pseudo-conf labels unlabelled images: give them with --unlabeled PATH"),
    (["--pseudo-conf", "off"], "--pseudo-conf labels unlabelled images: give them with --unlabeled PATH"),
])
def test_compare_refuses_flags_it_would_ignore(capsys, tmp_path, shapes_yaml, teacher_pt, extra, expected,
                                              monkeypatch):
    """Before: --seed beside --seeds, and --pseudo-conf without --unlabeled, were silently ignored."""
    import detkd.compare.experiment
    from detkd.cli import main

    def not_refused(*_, **__):
        raise AssertionError("started the comparison instead of refusing")

    monkeypatch.setattr(detkd.compare.experiment, "run_compare", not_refused)

    argv = ["compare", "--teacher", teacher_pt, "--data", shapes_yaml, "--project", str(tmp_path), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("error:") == 1, err
    assert not any(tmp_path.iterdir())


def test_compare_settings_refuse_what_they_would_ignore(teacher_pt, shapes_yaml):
    from detkd.compare.experiment import CompareSettings
    from detkd.errors import ConfigError

    with pytest.raises(ConfigError, match="--seed 5 and --seeds"):
        CompareSettings(teacher=teacher_pt, data=shapes_yaml, seed=5, seeds=[0, 1]).validate()
    with pytest.raises(ConfigError, match="--unlabeled PATH"):
        CompareSettings(teacher=teacher_pt, data=shapes_yaml, pseudo_conf=0.4).validate()
    CompareSettings(teacher=teacher_pt, data=shapes_yaml, seeds=[0, 1]).validate()  # the defaults pass


def test_compare_pseudo_conf_off_is_soft_kd_only(capsys, tmp_path, teacher_pt, shapes_yaml):
    """Before: '--pseudo-conf off' was refused by compare (type=float) although distill accepts it."""
    import cv2
    import numpy as np

    from detkd.cli import build_parser
    from detkd.cli.compare import build_settings
    from detkd.compare.experiment import plan

    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(2):
        cv2.imwrite(str(frames / f"f{i}.jpg"), np.full((40, 48, 3), 60 * i, dtype=np.uint8))
    args = build_parser().parse_args(["compare", "--teacher", teacher_pt, "--data", shapes_yaml, "--unlabeled",
                                      str(frames), "--pseudo-conf", "off"])
    s = build_settings(args)
    specs = {r.key: r for r in plan(s)}
    assert specs["distilled-detkd-unlabeled"].kd["pseudo_conf"] is None  # soft KD only on the unlabelled images
    assert "pseudo-labels" not in specs  # the pseudo-label baseline has no labels to learn from
    args.pseudo_conf = "0.3"
    assert {r.key: r for r in plan(build_settings(args))}["pseudo-labels"].kd["pseudo_conf"] == 0.3


def test_training_curves_leave_out_panels_no_run_logged(tmp_path):
    """Before: the 'Ultralytics dis_loss' panel was always drawn, empty unless --with-ultralytics-kd."""
    from detkd.compare.plots import curve_panels, plot_training_curves

    logged = {"train/box_loss": [1.0], "train/cls_kd": [0.5], "train/box_kd": [0.5], "train/feat_kd": [0.5]}
    titles = [[t for _, t in row] for row in curve_panels([logged, {"train/box_loss": [2.0]}])]
    assert "Ultralytics dis_loss" not in titles[1] and titles[1] == ["detkd cls_kd", "detkd box_kd", "detkd feat_kd"]
    with_ukd = curve_panels([logged, {"train/dis_loss": [0.1]}])
    assert [t for _, t in with_ukd[1]][-1] == "Ultralytics dis_loss"
    csv_path = tmp_path / "results.csv"
    csv_path.write_text("epoch,train/box_loss,train/cls_kd\n1,1.0,0.5\n2,0.8,0.4\n")
    assert plot_training_curves([("distilled", "distilled", "distilled-detkd", str(csv_path))],
                                tmp_path / "curves.png").is_file()


def test_a_finished_run_is_reused_after_detkd_adds_a_kd_setting_at_its_default(tmp_path, shapes_yaml, teacher_pt,
                                                                             fake_trainer):
    """A run fingerprinted before a KD setting existed (here: teacher_overlap, class_map) has the same settings when
    the new one is at its default: reused, not retrained. Settings that do not change what is learnt (where the
    teacher runs) never count."""
    from detkd.compare.experiment import MARKER, CompareSettings, plan, train_fingerprint, train_run

    s = CompareSettings(teacher=teacher_pt, data=shapes_yaml, epochs=2, project=str(tmp_path), name="k").validate()
    spec = next(p for p in plan(s) if p.kind == "distilled")
    train_run(spec, s, shapes_yaml, s.out_dir, log=lambda *_: None)
    marker = s.out_dir / "train" / spec.key / MARKER
    record = json.loads(marker.read_text())
    from detkd.config import KDConfig

    older = {k: v for k, v in KDConfig(teacher="t").to_dict().items() if k not in {"teacher_overlap", "class_map"}}
    record["fingerprint"]["kd"] = {**older, "teacher": None, "teacher_overlap": False}
    marker.write_text(json.dumps(record))
    lines: list = []
    train_run(next(p for p in plan(s) if p.kind == "distilled"), s, shapes_yaml, s.out_dir, log=lines.append)
    assert len(fake_trainer.made) == 1 and any("reused" in line for line in lines), lines
    assert "teacher_overlap" not in train_fingerprint(spec, s, shapes_yaml)["kd"]  # where the teacher runs: never


def _pseudo_rows(tmp_path, teacher_pt, shapes_yaml, kd_configs):
    """(the distilled + unlabelled rows' KDConfigs by name, the pseudo-labels row's KDConfig) of a compare plan."""
    import cv2
    import numpy as np

    from detkd.compare.experiment import CompareSettings, kd_config, plan

    frames = tmp_path / "frames"
    frames.mkdir(exist_ok=True)
    for i in range(2):
        cv2.imwrite(str(frames / f"f{i}.jpg"), np.full((40, 48, 3), 60 * i, dtype=np.uint8))
    s = CompareSettings(teacher=teacher_pt, data=shapes_yaml, kd_configs=kd_configs, unlabeled=str(frames))
    s.validate()
    specs = {r.key: r for r in plan(s)}
    rows = {n: kd_config(specs[f"distilled-{n}-unlabeled"], s) for n in kd_configs}
    return rows, kd_config(specs["pseudo-labels"], s) if "pseudo-labels" in specs else None


def test_compare_pseudo_label_row_mixes_and_thresholds_as_the_distilled_unlabelled_row(tmp_path, teacher_pt,
                                                                                      shapes_yaml):
    """docs/unlabeled.md: the pseudo-labels row has the epoch composition and threshold of the detkd + unlabelled
    row, so the two differ only in the soft KD. Before: it took the global defaults (ratio 0.5, --pseudo-conf)
    whatever the KD configuration set."""
    from detkd.config import PSEUDO_CONF_DEFAULT

    rows, pseudo = _pseudo_rows(tmp_path, teacher_pt, shapes_yaml, {"detkd": {"unlabeled_ratio": 0.25,
                                                                              "pseudo_conf": 0.5}})
    assert (pseudo.unlabeled_ratio, pseudo.pseudo_threshold) == (rows["detkd"].unlabeled_ratio,
                                                                  rows["detkd"].pseudo_threshold) == (0.25, 0.5)
    assert (pseudo.cls_kd, pseudo.box_kd, pseudo.feat_kd) == (0, 0, 0)
    # a soft-KD-only configuration beside it does not decide the pseudo-label row
    rows, pseudo = _pseudo_rows(tmp_path, teacher_pt, shapes_yaml, {"a": {"pseudo_conf": "off"},
                                                                    "b": {"unlabeled_ratio": 0.25}})
    assert pseudo.unlabeled_ratio == 0.25 and rows["a"].pseudo_threshold is None
    # rows that differ among themselves (a threshold sweep): --pseudo-conf at the default composition
    rows, pseudo = _pseudo_rows(tmp_path, teacher_pt, shapes_yaml, {"a": {"unlabeled_ratio": 0.25}, "b": {}})
    assert (pseudo.unlabeled_ratio, pseudo.pseudo_threshold) == (0.5, PSEUDO_CONF_DEFAULT)

"""``detkd compare`` end to end on tiny generated data (CPU): report rows, plots, teacher verdict, run reuse."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from detkd.cli import main
from detkd.errors import ConfigError
from detkd.eval.metrics import BACKEND_LABEL, resolve_backend

pytestmark = pytest.mark.slow

ROWS = ("teacher", "baseline", "distilled: detkd", "ultralytics-kd")


def _argv(teacher, data, project):
    return ["compare", "--teacher", teacher, "--data", str(data), "--student", "yolov8n.yaml", "--epochs", "1",
            "--imgsz", "64", "--batch", "8", "--seed", "0", "--device", "cpu", "--workers", "0",
            "--set", "plots=False", "--set", "warmup_epochs=0", "--with-ultralytics-kd",
            "--project", str(project), "--name", "tiny", "--eval-batch", "8",
            "--bench-warmup", "1", "--bench-iters", "3", "--bench-time", "0.3"]


def _table_rows(md: str) -> dict:
    """report.md's results table as {row label: [cells]}."""
    rows = {}
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] in ROWS and len(cells) == 11:
            rows[cells[0]] = cells[1:]
    return rows


def test_compare_end_to_end_and_reuse(tmp_path, shapes_coco, teacher_pt, capsys, monkeypatch):
    project = tmp_path / "runs"
    assert main(_argv(teacher_pt, shapes_coco, project)) == 0
    out_dir = project / "tiny"
    first = capsys.readouterr().out
    assert "[3/8] training baseline" in first and "[8/8] writing report" in first

    md = (out_dir / "report.md").read_text()
    rows = _table_rows(md)
    assert set(rows) == set(ROWS), md
    for label, cells in rows.items():
        params, gflops, ap, ap50, _aps, _apm, _apl, p50, fps, delta = cells
        for v in (params, gflops, ap, ap50, p50, fps):  # every numeric column filled
            assert re.fullmatch(r"\d+\.\d+", v), (label, cells)
        assert float(p50) > 0 and float(fps) > 0
        assert re.fullmatch(r"[+-]\d\.\d{3}", delta) if label != "baseline" else delta == ""
    # the three students are one architecture (YOLOv8-n): timed once, so their speed cells are identical and a
    # Pareto front cannot rank them by timing noise; the teacher (YOLOv8-s) is timed on its own
    students = [rows[k] for k in ROWS if k != "teacher"]
    assert len({(c[0], c[1], c[7], c[8]) for c in students}) == 1, students
    assert first.count("same architecture as baseline: its speed") == 2, first
    assert "timed once per architecture" in md
    assert float(rows["teacher"][0]) > float(rows["baseline"][0])  # yolov8s teacher vs yolov8n student
    # a random-init teacher is no better than the baseline: the verdict says so in words (an equal AP is not 'weaker')
    assert re.search(r"\*\*Teacher verdict:\*\* this teacher is (weaker than|only as strong as) the student trained "
                     r"alone", md), md
    assert "distilling from it will not help" in md
    assert f"official COCO AP ({BACKEND_LABEL[resolve_backend()]}" in md

    for png in ("map_vs_fps.png", "training_curves.png"):
        data = (out_dir / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, png

    report = json.loads((out_dir / "report.json").read_text())
    assert [r["kind"] for r in report["rows"]] == ["teacher", "baseline", "distilled", "ultralytics_kd"]
    assert not any(r["reused"]["train"] for r in report["rows"] if r["kind"] != "teacher")
    weights = {r["key"]: r["weights"] for r in report["rows"]}
    mtimes = {k: (out_dir / "train" / k / "weights" / "best.pt").stat().st_mtime_ns for k in weights if k != "teacher"}
    csv = (out_dir / "train" / "distilled-detkd" / "results.csv").read_text()
    assert "cls_kd" in csv and "dis_loss" in (out_dir / "train" / "ultralytics-kd" / "results.csv").read_text()

    # second invocation: every run, evaluation and benchmark reused; no trainer may even start
    from ultralytics.engine.trainer import BaseTrainer

    def no_training(self, *a, **k):
        raise AssertionError("a run was retrained although it was finished with the same settings")

    monkeypatch.setattr(BaseTrainer, "train", no_training)
    assert main(_argv(teacher_pt, shapes_coco, project)) == 0
    second = capsys.readouterr().out
    assert second.count("same settings): no retraining") == 3
    assert second.count("(evaluation reused)") == 4 and second.count("FPS (reused)") == 2
    assert {k: (out_dir / "train" / k / "weights" / "best.pt").stat().st_mtime_ns for k in mtimes} == mtimes
    report2 = json.loads((out_dir / "report.json").read_text())
    assert all(r["reused"]["train"] for r in report2["rows"] if r["kind"] != "teacher")
    assert _table_rows((out_dir / "report.md").read_text()) == rows


def test_compare_user_errors(tmp_path, shapes_coco, teacher_pt, capsys):
    from detkd.cli.compare import parse_kd

    assert parse_kd([]) == {"detkd": {}}
    assert parse_kd(["mgd:feat_method=mgd,feat_kd=2", "plain"]) == {"mgd": {"feat_method": "mgd", "feat_kd": 2},
                                                                     "plain": {}}
    for bad in (["x:nope=1"], ["x:feat_method=abc"], ["a", "a"], ["x:cls_kd"], [":cls_kd=1"]):
        with pytest.raises(ConfigError):
            parse_kd(bad)
    # errors a user can cause end as one message (exit code 2), before any work
    argv = _argv(str(tmp_path / "missing.pt"), shapes_coco, tmp_path / "runs")
    assert main(argv) == 2
    assert "teacher" in capsys.readouterr().err
    assert main(_argv(teacher_pt, shapes_coco, tmp_path / "runs") + ["--kd", "x:bogus=1"]) == 2
    assert "unknown setting 'bogus'" in capsys.readouterr().err
    assert main(_argv(teacher_pt, shapes_coco, tmp_path / "runs") + ["--set", "epochs=3"]) == 2
    assert "--set" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "tiny" / "train").exists()


def test_kd_yaml_spec_and_fingerprints(tmp_path, teacher_pt, shapes_yaml):
    from detkd.cli.compare import parse_kd
    from detkd.compare.experiment import CompareSettings, plan, train_fingerprint
    from detkd.compare.plots import pareto_front

    spec = tmp_path / "kd.yaml"
    spec.write_text("kd:\n  feat_method: mgd\n  cls_kd: 0.5\n")
    assert parse_kd([f"mine:{spec},cls_kd=2"]) == {"mine": {"feat_method": "mgd", "cls_kd": 2}}

    s = CompareSettings(teacher=teacher_pt, data=shapes_yaml, kd_configs={"a": {}, "b": {"feat_kd": 2.0}},
                        with_ultralytics_kd=True, epochs=1).validate()
    specs = plan(s)
    assert [r.key for r in specs] == ["teacher", "baseline", "distilled-a", "distilled-b", "ultralytics-kd"]
    fps = {r.key: train_fingerprint(r, s, shapes_yaml) for r in specs[1:]}
    # a fingerprint holds the KD settings that differ from detkd's defaults (feat_kd 1.0 is the default)
    assert "feat_kd" not in fps["distilled-a"]["kd"] and fps["distilled-b"]["kd"]["feat_kd"] == 2.0
    assert "teacher" not in fps["baseline"] and fps["ultralytics-kd"]["teacher"]["sha256"]
    s.epochs = 2  # any setting change invalidates the finished runs
    assert train_fingerprint(specs[1], s, shapes_yaml) != fps["baseline"]
    s.device = "0"  # where it ran is not what it is
    s.epochs = 1
    assert train_fingerprint(specs[1], s, shapes_yaml) == fps["baseline"]

    # Pareto front: (FPS, AP); the slow-and-worse point is dominated
    assert pareto_front([(100, 0.30), (50, 0.40), (40, 0.35), (120, 0.10)]) == [1, 0, 3]


def test_plot_styles_one_colour_per_configuration_seeds_by_line_style():
    """Several seeds: every run of one configuration has its colour (baseline, each KD configuration), and the seeds
    of a configuration differ by line style, not colour (the curves of 'detkd seed 0' and 'detkd seed 1' read as one
    configuration)."""
    from detkd.compare.plots import DISTILLED_COLORS, COLORS, plot_styles

    runs = [("baseline", "baseline"), ("distilled", "detkd"), ("distilled", "mgd"),
            ("baseline", "baseline"), ("distilled", "detkd"), ("distilled", "mgd")]
    styles = plot_styles(runs)
    colours = [c for c, _ in styles]
    assert colours[:3] == [COLORS["baseline"], DISTILLED_COLORS[0], DISTILLED_COLORS[1]]
    assert colours[3:] == colours[:3]
    lines = [ls for _, ls in styles]
    assert lines[:3] == ["-"] * 3 and len(set(lines[3:])) == 1 and lines[3] != "-"


def test_map_vs_fps_points_are_one_per_configuration_with_the_seed_range():
    """Several seeds: the AP-vs-FPS plot has one point per configuration at the mean AP and FPS of its seeds, with the
    seeds' AP range as its error bar (eleven overlapping per-seed labels were unreadable); one seed: one point per run."""
    from detkd.compare.experiment import RunSpec
    from detkd.compare.plots import map_points

    def run(key, kind, config, ap, fps, label):
        return RunSpec(key, kind, label, config=config, metrics={"AP": ap}, speed={"fps": fps})

    specs = [run("teacher", "teacher", "teacher", 0.6, 10.0, "teacher"),
             run("baseline-s0", "baseline", "baseline", 0.20, 40.0, "baseline (seed 0)"),
             run("distilled-detkd-s0", "distilled", "distilled-detkd", 0.30, 38.0, "distilled: detkd (seed 0)"),
             run("baseline-s1", "baseline", "baseline", 0.30, 36.0, "baseline (seed 1)"),
             run("distilled-detkd-s1", "distilled", "distilled-detkd", 0.34, 42.0, "distilled: detkd (seed 1)")]
    pts = map_points(specs)
    assert [p["label"] for p in pts] == ["teacher", "baseline", "distilled: detkd"]
    base = pts[1]
    assert base["fps"] == pytest.approx(38.0) and base["ap"] == pytest.approx(0.25)
    assert (base["ap_lo"], base["ap_hi"], base["n"]) == (pytest.approx(0.20), pytest.approx(0.30), 2)
    one = map_points(specs[:3])
    assert [p["label"] for p in one] == ["teacher", "baseline (seed 0)", "distilled: detkd (seed 0)"]
    assert one[1]["n"] == 1 and one[1]["ap"] == one[1]["ap_lo"] == one[1]["ap_hi"] == pytest.approx(0.20)


def test_architecture_id_is_the_same_for_trained_copies_of_one_model_and_differs_between_models(tmp_path):
    """Speed depends on the architecture, not the weights: two checkpoints of one YOLOv8-n with different weights
    share an id (compare times them once); a YOLOv8-s, or a YOLOv8-n with another class count, does not."""
    import torch
    from ultralytics.nn.tasks import DetectionModel

    from detkd.compare.experiment import architecture_id

    def save(cfg, nc, seed, name):
        torch.manual_seed(seed)
        path = tmp_path / name
        torch.save({"model": DetectionModel(cfg, nc=nc, verbose=False).half(), "epoch": -1}, path)
        return str(path)

    a, b = save("yolov8n.yaml", 3, 0, "a.pt"), save("yolov8n.yaml", 3, 1, "b.pt")
    assert Path(a).read_bytes() != Path(b).read_bytes()
    assert architecture_id(a) == architecture_id(b)
    assert architecture_id(a) != architecture_id(save("yolov8s.yaml", 3, 0, "s.pt"))
    assert architecture_id(a) != architecture_id(save("yolov8n.yaml", 5, 0, "n5.pt"))

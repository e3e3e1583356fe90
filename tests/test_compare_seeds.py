"""``detkd compare --seeds``: runs repeated per seed, mean ± std, verdict beyond the spread, KD guard in the report."""

from __future__ import annotations

import json
import math

import pytest

from detkd.compare.seeds import aggregate, mean_std, verdict


def test_mean_std_by_hand():
    assert mean_std([0.30]) == (0.30, 0.0)
    m, s = mean_std([0.30, 0.34, 0.32])
    assert m == pytest.approx(0.32) and s == pytest.approx(0.02)  # sqrt((4e-4 + 4e-4 + 0) / 2)
    assert mean_std([1.0, 3.0])[1] == pytest.approx(math.sqrt(2.0))


@pytest.mark.parametrize("config, expected", [
    ({0: 0.40, 1: 0.42}, "better"),              # every seed above, worst KD 0.40 > best baseline 0.36
    ({0: 0.36, 1: 0.37}, "within the spread"),   # both seeds above their own baseline, but 0.36 ≤ best baseline 0.36
    ({0: 0.37, 1: 0.30}, "within the spread"),   # the sign depends on the seed
    ({0: 0.20, 1: 0.25}, "worse"),
])
def test_verdict_pairs_seeds(config, expected):
    baseline = {0: 0.35, 1: 0.36}
    assert verdict(config, baseline) == expected


def test_verdict_needs_two_paired_seeds():
    assert verdict({0: 0.5}, {0: 0.1}).startswith("single seed")
    assert verdict({0: 0.5, 2: 0.6}, {0: 0.1, 1: 0.1}).startswith("single seed")  # only seed 0 is paired


def test_aggregate_groups_configs_and_deltas():
    rows = [{"kind": "teacher", "config": "teacher", "seed": 0, "AP": 0.6}]
    for seed, b, d in ((0, 0.30, 0.36), (1, 0.34, 0.38)):
        rows += [{"kind": "baseline", "config": "baseline", "config_label": "baseline", "seed": seed, "AP": b},
                 {"kind": "distilled", "config": "distilled-x", "config_label": "distilled: x", "seed": seed, "AP": d}]
    base, kd = aggregate(rows)
    assert base["config"] == "baseline" and base["verdict"] is None and base["seeds"] == [0, 1]
    assert kd["mean"] == pytest.approx(0.37) and kd["delta_mean"] == pytest.approx(0.05)
    assert kd["verdict"] == "better" and kd["label"] == "distilled: x"


def test_plan_repeats_student_runs_per_seed(teacher_pt, shapes_yaml):
    from detkd.compare.experiment import CompareSettings, plan, train_fingerprint
    from detkd.errors import ConfigError

    s = CompareSettings(teacher=teacher_pt, data=shapes_yaml, seeds=[0, 3], epochs=1).validate()
    specs = plan(s)
    assert [r.key for r in specs] == ["teacher", "baseline-s0", "distilled-detkd-s0", "baseline-s3",
                                      "distilled-detkd-s3"]
    assert [r.seed for r in specs[1:]] == [0, 0, 3, 3] and specs[3].config == "baseline"
    assert specs[3].label == "baseline (seed 3)"
    assert train_fingerprint(specs[1], s, shapes_yaml)["seed"] == 0
    assert train_fingerprint(specs[3], s, shapes_yaml)["seed"] == 3
    one = CompareSettings(teacher=teacher_pt, data=shapes_yaml, seed=5, epochs=1).validate()
    assert [r.key for r in plan(one)] == ["teacher", "baseline", "distilled-detkd"] and plan(one)[1].seed == 5
    # --seeds names runs by seed even for one: seed lists run apart (two processes, two machines) share one folder,
    # and a later call with all the seeds reuses every run
    part = CompareSettings(teacher=teacher_pt, data=shapes_yaml, seeds=[3], epochs=1).validate()
    assert [r.key for r in plan(part)] == ["teacher", "baseline-s3", "distilled-detkd-s3"]
    assert plan(part)[1].label == "baseline (seed 3)"
    assert train_fingerprint(plan(part)[1], part, shapes_yaml) == train_fingerprint(specs[3], s, shapes_yaml)
    for bad in ([], [1, 1]):
        with pytest.raises(ConfigError, match="--seeds"):
            CompareSettings(teacher=teacher_pt, data=shapes_yaml, seeds=bad).validate()


def test_report_across_seeds_and_guard(tmp_path, teacher_pt, shapes_yaml):
    """The report of a two-seed comparison: per-seed deltas against the same seed, the seed table, the guard."""
    from detkd.compare.experiment import CompareSettings, plan
    from detkd.compare.report import build_rows, render_markdown

    s = CompareSettings(teacher=teacher_pt, data=shapes_yaml, seeds=[0, 1], epochs=1).validate()
    specs = plan(s)
    aps = {"teacher": 0.60, "baseline-s0": 0.30, "distilled-detkd-s0": 0.36, "baseline-s1": 0.34,
           "distilled-detkd-s1": 0.38}
    for r in specs:
        r.metrics, r.speed = {"AP": aps[r.key], "AP50": 0.5}, {"params_m": 3.0, "fps": 100.0, "latency_p50_ms": 5.0}
        run_dir = tmp_path / r.key
        run_dir.mkdir()
        r.train, r.weights = {"save_dir": str(run_dir), "median_epoch_s": 1.0}, str(run_dir / "weights" / "best.pt")
    guard = {"mode": "adapt", "threshold": 0.0, "patience": 3,
             "history": {"kd_align_cls": [0.2, -0.1, -0.2, -0.3], "kd_align_box": [0.5, 0.4, 0.3, 0.3],
                         "kd_align_feat": [0.1, -0.1, -0.2, -0.4]},
             "warned": {"kd_align_cls": 4, "kd_align_feat": 4}, "scales": {"kd_scale_cls": 0.5, "kd_scale_box": 1.0,
                                                                            "kd_scale_feat": 0.5},
             "scale_history": {"kd_scale_cls": [1.0, 1.0, 1.0, 0.5], "kd_scale_box": [1.0] * 4,
                               "kd_scale_feat": [1.0, 1.0, 1.0, 0.5]}}
    (tmp_path / "distilled-detkd-s1" / "kd_guard.json").write_text(json.dumps(guard))

    rows = build_rows(specs)
    delta = {r["key"]: r["delta_AP"] for r in rows}
    assert delta["distilled-detkd-s0"] == pytest.approx(0.06) and delta["distilled-detkd-s1"] == pytest.approx(0.04)
    from detkd.bench.machine import machine_info

    md = render_markdown(rows, s, shapes_yaml, True, machine_info("cpu"))
    assert "seeds 0 1" in md and "## Across seeds" in md
    assert "| distilled: detkd | 0 1 | 0.360, 0.380 | 0.370 ± 0.014 | +0.050 | better |" in md
    assert "**Outcome:** best configuration: distilled: detkd" in md
    assert "## KD guard" in md
    assert ("| distilled: detkd (seed 1) | +0.20 → -0.20 → -0.30 | +0.50 → +0.30 → +0.30 | +0.10 → -0.20 → -0.40 "
            "| cls KD from epoch 4, feat KD from epoch 4 | cls ×0.5, feat ×0.5 |") in md  # adapt: the final scales
    assert "| distilled: detkd (seed 0) |" not in md.split("## KD guard")[1].split("##")[0]  # no guard file: no row
    assert md.count("- **distilled: detkd**") == 1  # the configuration is described once
    assert "teacher is stronger than the student trained alone (AP 0.600 vs 0.320" in md  # baseline mean


@pytest.mark.slow
def test_compare_two_seeds_end_to_end(tmp_path, shapes_coco, teacher_pt, capsys):
    from detkd.cli import main

    argv = ["compare", "--teacher", teacher_pt, "--data", str(shapes_coco), "--epochs", "1", "--imgsz", "64",
            "--batch", "8", "--seeds", "0", "1", "--device", "cpu", "--workers", "0", "--set", "plots=False",
            "--set", "warmup_epochs=0", "--project", str(tmp_path), "--name", "seeds", "--eval-batch", "8",
            "--bench-warmup", "1", "--bench-iters", "2", "--bench-time", "0.2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "training baseline (seed 1) (1 epochs, 64 px, batch 8) ..." in out
    report = json.loads((tmp_path / "seeds" / "report.json").read_text())
    assert sorted(r["key"] for r in report["rows"]) == sorted(["teacher", "baseline-s0", "baseline-s1",
                                                               "distilled-detkd-s0", "distilled-detkd-s1"])
    md = (tmp_path / "seeds" / "report.md").read_text()
    assert "## Across seeds" in md and "## KD guard" in md
    first = {r["key"]: r for r in report["rows"]}
    # the two seeds really differ (their own augmentation stream and initialisation)
    assert first["baseline-s0"]["weights"] != first["baseline-s1"]["weights"]


def test_plan_with_an_assistant(teacher_pt, shapes_yaml):
    from detkd.compare.experiment import CompareSettings, plan, train_fingerprint, trained_model

    s = CompareSettings(teacher=teacher_pt, data=shapes_yaml, assistant="yolov8s.yaml", epochs=1).validate()
    specs = {r.key: r for r in plan(s)}
    assert list(specs) == ["teacher", "baseline", "distilled-detkd", "assistant", "via-assistant"]
    assert specs["via-assistant"].teacher_from == "assistant" and specs["via-assistant"].kind == "distilled"
    assert trained_model(specs["assistant"], s) == "yolov8s.yaml" and trained_model(specs["via-assistant"], s) == \
        "yolov8n.yaml"
    direct = train_fingerprint(specs["distilled-detkd"], s, shapes_yaml)
    specs["via-assistant"].teacher = shapes_yaml  # any file: the teacher's hash is part of the fingerprint
    assert train_fingerprint(specs["via-assistant"], s, shapes_yaml)["teacher"] != direct["teacher"]


def test_an_interrupted_compare_run_resumes_only_with_the_same_settings(tmp_path):
    import torch

    from detkd.compare.experiment import STARTED, interrupted_checkpoint

    run = tmp_path / "baseline"
    (run / "weights").mkdir(parents=True)
    fp = {"kind": "baseline", "epochs": 3}
    assert interrupted_checkpoint(run, fp) is None  # nothing there yet
    torch.save({"epoch": 1}, run / "weights" / "last.pt")
    assert interrupted_checkpoint(run, fp) is None  # no record of the settings it was started with
    (run / STARTED).write_text(json.dumps({"fingerprint": fp}))
    assert interrupted_checkpoint(run, fp) == run / "weights" / "last.pt"
    assert interrupted_checkpoint(run, {**fp, "epochs": 4}) is None  # other settings: retrain
    torch.save({"epoch": -1}, run / "weights" / "last.pt")  # finished: nothing to resume
    assert interrupted_checkpoint(run, fp) is None


def test_a_negative_delta_is_printed_with_its_sign_not_as_missing():
    from detkd.compare.report import format_table

    row = dict(params_m=3.2, gflops=8.7, AP=0.288, AP50=0.5, APs=-1.0, APm=0.2, APl=0.3, latency_p50_ms=5.0, fps=200.0)
    table = format_table([dict(row, label="baseline", kind="baseline", delta_AP=None, AP=0.300),
                          dict(row, label="distilled: detkd", kind="distilled", delta_AP=-0.012)])
    distilled = next(line for line in table.splitlines() if "distilled" in line)
    assert "-0.012" in distilled  # a loss is a number, not '-' (which means "no value")
    assert distilled.count(" - ") == 1  # APs: pycocotools' -1 (no ground truth of that size) stays '-'


def test_the_outcome_across_seeds_names_a_distilled_student_never_the_larger_assistant():
    from detkd.compare.report import outcome

    rows = []
    for seed, b, d, a in ((0, 0.30, 0.31, 0.45), (1, 0.31, 0.33, 0.46)):
        rows += [{"kind": "baseline", "config": "baseline", "config_label": "baseline", "seed": seed, "AP": b},
                 {"kind": "distilled", "config": "distilled", "config_label": "distilled: detkd", "seed": seed,
                  "AP": d},
                 {"kind": "assistant", "config": "assistant", "config_label": "assistant yolov8s (from teacher)",
                  "seed": seed, "AP": a}]
    text = outcome(rows)
    assert "distilled: detkd" in text and "assistant" not in text

"""The distillation-gain protocol runs end to end on tiny data (no accuracy thresholds: correctness only)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def test_protocol_writes_all_rows_and_reuses_runs(tmp_path, shapes_coco, capsys):
    sys.path.insert(0, str(BENCH))
    import distill_gain

    argv = ["--data", str(shapes_coco), "--tag", "tiny", "--teacher-cfg", "yolov8n.yaml", "--teacher-epochs", "1",
            "--epochs", "1", "--imgsz", "64", "--batch", "8", "--workers", "0", "--device", "cpu", "--seeds", "0", "1",
            "--runs", str(tmp_path / "runs"), "--out-dir", str(tmp_path / "out"),
            "--train-args", json.dumps({"warmup_epochs": 0, "val": False}),
            "--variant", 'verified={"anchor_weighting": "verified", "schedule": "cosine"}']
    # a partial protocol: what is missing is named in the results, and the time budget stops before a long run
    assert distill_gain.main([*argv, "--only", "teacher", "baseline_s0"]) == 0
    partial = json.loads((tmp_path / "out" / "distill_gain_tiny.json").read_text())
    assert set(partial["runs"]) == {"teacher_s0", "baseline_s0"} and "detkd_s0" in partial["pending"]
    assert "**Not run yet:** baseline_s1, detkd_s0" in (tmp_path / "out" / "distill_gain_tiny.md").read_text()
    capsys.readouterr()
    assert distill_gain.main([*argv, "--time-budget", "0.001"]) == 3  # nothing fits: nothing starts
    assert "baseline_s1: not started" in capsys.readouterr().out
    assert set(json.loads((tmp_path / "out" / "distill_gain_tiny.json").read_text())["runs"]) == set(partial["runs"])

    assert distill_gain.main(argv) == 0
    result = json.loads((tmp_path / "out" / "distill_gain_tiny.json").read_text())
    kinds = set(result["summary"])
    assert kinds == {"teacher", "baseline", "detkd", "ultralytics_kd", "verified", *distill_gain.ABLATIONS}
    assert result["summary"]["verified"]["seeds"] == [0, 1]  # a named variant runs on every seed
    curve = result["runs"]["verified_s0"]["curve"]
    assert curve["epoch"] == [1.0] and curve["train/cls_kd"][0] > 0  # per-epoch curves come from results.csv
    # each run records the KD settings it ran with (a default that changes later cannot relabel it)
    assert result["runs"]["verified_s0"]["kd"]["anchor_weighting"] == "verified"
    assert result["runs"]["verified_s0"]["kd"]["schedule"] == "cosine"
    assert result["runs"]["feat_only_mgd_s0"]["kd"]["feat_method"] == "mgd"
    assert result["runs"]["baseline_s0"]["kd"] is None and result["runs"]["ultralytics_kd_s0"]["kd"] is None
    assert result["summary"]["baseline"]["n"] == 2 and result["summary"]["detkd"]["seeds"] == [0, 1]
    for r in result["runs"].values():
        assert r["wall_s"] > 0 and 0.0 <= r["mAP50-95"] <= 1.0 and r["median_epoch_s"] > 0
    md = (tmp_path / "out" / "distill_gain_tiny.md").read_text()
    assert "| baseline (student alone) | 0,1 |" in md and "Ultralytics built-in distill_model" in md
    runs = result["runs"]  # each row also lists its seeds' values, in seed order
    row = next(line for line in md.splitlines() if line.startswith("| baseline (student alone)"))
    assert f"| {runs['baseline_s0']['mAP50-95']:.3f} / {runs['baseline_s1']['mAP50-95']:.3f} |" in row
    assert "variant `verified`" in md
    assert result["summary"]["ultralytics_kd"]["seeds"] == [0, 1] and result["pending"] == []
    assert "Not run yet" not in md
    assert result["verdict"]  # random teacher vs random student: a verdict is always stated

    capsys.readouterr()
    assert distill_gain.main(argv) == 0  # everything is reused, nothing retrained
    out = capsys.readouterr().out
    assert out.count("done before, reused") == len(result["runs"])


def test_recipe_summary_acceptance_checks(tmp_path):
    """Hand-made results: the three acceptance checks of the recipe protocol, and the curves plot."""
    sys.path.insert(0, str(BENCH))
    import recipe_summary
    from detkd.bench.machine import machine_info

    machine = machine_info("cpu")

    def kind(runs):
        return {"mAP50-95": sum(runs) / len(runs), "mAP50-95_runs": runs, "spread": (max(runs) - min(runs)) / 2,
                "seeds": list(range(len(runs))), "mAP50": 0.5}

    def result(tag, base, cand, builtin):
        runs = {f"{k}_s{i}": {"kind": k, "seed": i, "curve": {"metrics/mAP50-95(B)": [0.1, v]}}
                for k, vals in (("baseline", base), ("detkd", cand)) for i, v in enumerate(vals)}
        return {"settings": {"tag": tag, "student": "yolov8n.yaml", "epochs": 2, "imgsz": 64, "batch": 8,
                             "seeds": "[0, 1]", "data": tag},
                "machine": machine, "runs": runs,
                "summary": {"baseline": kind(base), "detkd": kind(cand), "ultralytics_kd": kind(builtin)}}

    results = {"a": result("a", [0.30, 0.32], [0.35, 0.36], [0.31, 0.31]),   # beyond spread
               "b": result("b", [0.30, 0.32], [0.31, 0.33], [0.33, 0.33]),   # above mean, within spread
               "c": result("c", [0.40, 0.42], [0.45, 0.47], [0.40, 0.40])}   # beyond spread
    checks = recipe_summary.acceptance(results, "detkd")
    assert checks["never_below_baseline"] and checks["beyond_spread_on_most"] and checks["above_builtin_on_average"]
    assert [v["beyond_spread"] for v in checks["datasets"].values()] == [True, False, True]
    results["b"] = result("b", [0.30, 0.32], [0.29, 0.30], [0.33, 0.33])  # below the baseline mean on one dataset
    assert not recipe_summary.acceptance(results, "detkd")["never_below_baseline"]
    png = recipe_summary.plot_curves(results, ["baseline", "detkd"], tmp_path / "curves.png")
    assert png.stat().st_size > 0
    assert "**no**" in recipe_summary.render(results, "detkd", recipe_summary.acceptance(results, "detkd"))


def test_recipe_summary_candidate_named_differently_per_dataset(tmp_path, monkeypatch):
    """The default recipe ran as variant 'combo' where it was a candidate and as 'detkd' once it was the default:
    with --candidate combo detkd each dataset is judged on the first of them it has; an earlier 'detkd' row (the
    previous default) beside a 'combo' row is not the candidate."""
    sys.path.insert(0, str(BENCH))
    import recipe_summary
    from detkd.bench.machine import machine_info

    def kind(runs):
        return {"mAP50-95": sum(runs) / len(runs), "mAP50-95_runs": runs, "spread": (max(runs) - min(runs)) / 2,
                "seeds": list(range(len(runs))), "mAP50": 0.5}

    def result(tag, **kinds):
        runs = {f"{k}_s{i}": {"kind": k, "seed": i, "curve": {"metrics/mAP50-95(B)": [0.1, v]}}
                for k, vals in kinds.items() for i, v in enumerate(vals)}
        return {"settings": {"tag": tag, "student": "yolov8n.yaml", "epochs": 2, "imgsz": 64, "batch": 8,
                             "seeds": "[0, 1]", "data": tag}, "machine": machine_info("cpu"), "runs": runs,
                "summary": {k: kind(v) for k, v in kinds.items()}}

    results = {"old": result("old", baseline=[0.30, 0.32], detkd=[0.20, 0.21], combo=[0.40, 0.41],
                             ultralytics_kd=[0.35, 0.35]),
               "new": result("new", baseline=[0.30, 0.32], detkd=[0.36, 0.37], ultralytics_kd=[0.38, 0.38])}
    checks = recipe_summary.acceptance(results, ["combo", "detkd"])
    assert {t: v["candidate"] for t, v in checks["datasets"].items()} == {"old": "combo", "new": "detkd"}
    assert checks["never_below_baseline"] and checks["beyond_spread_on_most"]
    assert abs(checks["mean_delta_vs_builtin"] - ((0.405 - 0.35) + (0.365 - 0.38)) / 2) < 1e-9
    md = recipe_summary.render(results, ["combo", "detkd"], checks)
    assert "| **combo** |" in md and "| **detkd** |" in md and "| detkd | 0,1 | 0.205" in md
    png = recipe_summary.plot_curves(results, ["baseline", "candidate"], tmp_path / "curves.png",
                                     candidates=["combo", "detkd"])
    assert png.stat().st_size > 0
    # a file without a baseline (the protocol's second teacher size) draws its dataset's shared one, labelled so
    from matplotlib.axes import Axes

    results["new_v8m"] = result("new_v8m", detkd=[0.37, 0.38])
    labels = []
    real_plot = Axes.plot
    monkeypatch.setattr(Axes, "plot", lambda ax, *a, **k: (labels.append(k.get("label")), real_plot(ax, *a, **k))[1])
    recipe_summary.plot_curves(results, ["baseline", "candidate"], tmp_path / "c2.png", ["combo", "detkd"],
                               baselines={"new_v8m": (results["new"]["summary"]["baseline"], "new")})
    assert labels[-2:] == ["baseline (from new) (n=2)", "candidate: detkd (n=2)"], labels


def test_a_cut_off_run_is_resumed_and_a_finished_one_is_not(tmp_path):
    import torch

    sys.path.insert(0, str(BENCH))
    import distill_gain

    run = tmp_path / "detkd_s0"
    (run / "weights").mkdir(parents=True)
    (run / "results.csv").write_text("epoch,x\n1,0\n")
    assert distill_gain.resume_point(run) is None  # no checkpoint: cut off in epoch 1, start afresh ...
    assert not (run / "results.csv").exists()  # ... without appending to the partial results.csv
    torch.save({"epoch": 4}, run / "weights" / "last.pt")
    assert distill_gain.resume_point(run) == run / "weights" / "last.pt"
    torch.save({"epoch": -1}, run / "weights" / "last.pt")  # Ultralytics' mark of a finished run
    assert distill_gain.resume_point(run) is None


@pytest.mark.slow
def test_protocol_with_two_teachers_and_an_assistant(tmp_path, shapes_coco):
    sys.path.insert(0, str(BENCH))
    import distill_gain

    argv = ["--data", str(shapes_coco), "--tag", "multi", "--teacher-cfg", "yolov8n.yaml", "--teacher-epochs", "1",
            "--teacher2-cfg", "yolov8n.yaml", "--assistant", "yolov8n.yaml", "--assistant-teacher", "teacher2",
            "--epochs", "1", "--imgsz", "64",
            "--batch", "8", "--workers", "0", "--device", "cpu", "--seeds", "0", "--no-ablations",
            "--no-ultralytics-kd", "--runs", str(tmp_path / "runs"), "--out-dir", str(tmp_path / "out"),
            "--train-args", json.dumps({"warmup_epochs": 0, "val": False})]
    assert distill_gain.main(argv) == 0
    result = json.loads((tmp_path / "out" / "distill_gain_multi.json").read_text())
    assert set(result["runs"]) == {"teacher_s0", "teacher2_s1", "assistant_s0", "baseline_s0", "detkd_s0",
                                   "two_teachers_s0", "two_teachers_losses_s0", "detkd_teacher2_s0",
                                   "via_assistant_s0"}
    assert result["runs"]["two_teachers_s0"]["kd"]["ensemble_rule"] == "targets"  # both combination rules measured
    assert result["runs"]["two_teachers_losses_s0"]["kd"]["ensemble_rule"] == "losses"
    state = json.loads((tmp_path / "runs" / "state.json").read_text())
    assert state["teacher2"] != state["teacher"] and state["assistant"].endswith("best.pt")
    args = (tmp_path / "runs" / "via_assistant_s0" / "args.yaml").read_text()
    assert state["assistant"] in args  # the chain's student learnt from the assistant
    assert state["teacher2"] in (tmp_path / "runs" / "two_teachers_s0" / "args.yaml").read_text()
    assert state["teacher2"] in (tmp_path / "runs" / "assistant_s0" / "args.yaml").read_text()  # --assistant-teacher
    alone = (tmp_path / "runs" / "detkd_teacher2_s0" / "args.yaml").read_text()  # the other single-teacher row
    assert state["teacher2"] in alone and state["teacher"] not in alone
    md = (tmp_path / "out" / "distill_gain_multi.md").read_text()
    assert "detkd, two teachers (ensemble)" in md and "detkd via the assistant (TA chain)" in md
    assert "detkd, two teachers (sum of per-teacher losses)" in md


def test_plan_with_an_existing_second_teacher():
    """--teacher2 PATH: no second teacher is trained, both two-teacher rows run on every seed."""
    import argparse

    sys.path.insert(0, str(BENCH))
    import distill_gain

    args = argparse.Namespace(teacher="t.pt", teacher2="t2.pt", teacher2_cfg=None, assistant=None, seeds=[0, 1],
                              ultralytics_kd=False, variants={}, ablations=False, only=None)
    runs = distill_gain.plan(args)
    assert ("teacher2", 1) not in runs and ("teacher", 0) not in runs
    assert {("two_teachers", 0), ("two_teachers", 1), ("two_teachers_losses", 0), ("two_teachers_losses", 1)} <= set(runs)
    assert {("detkd", 0), ("detkd_teacher2", 0), ("detkd_teacher2", 1)} <= set(runs)  # each teacher alone too


def test_report_names_the_teacher_epochs_it_was_trained_with():
    """A state whose teacher was trained with other --teacher-epochs than this call's flag reports the real count."""
    sys.path.insert(0, str(BENCH))
    import distill_gain

    from detkd.bench.machine import machine_info

    settings = {"tag": "t", "student": "yolov8n.yaml", "epochs": 5, "imgsz": 64, "batch": 8, "teacher": None,
                "teacher_cfg": "yolov8s.yaml", "teacher_epochs": "150", "data": "d", "variants": {}}
    runs = {"teacher_s0": {"kind": "teacher", "seed": 0, "epochs": 30, "mAP50-95": 0.2, "mAP50": 0.4, "wall_s": 1.0}}
    summary = {"teacher": {"n": 1, "seeds": [0], "mAP50-95": 0.2, "mAP50-95_runs": [0.2], "spread": None, "std": None,
                           "mAP50": 0.4, "wall_s": 1.0, "epoch_ratio": None}}
    text = distill_gain.render({"settings": settings, "machine": machine_info("cpu"), "summary": summary, "runs": runs,
                                "verdict": "", "pending": []})
    assert "yolov8s.yaml trained here, 30 epochs" in text


def test_a_run_waits_only_for_the_teachers_it_learns_from(tmp_path, shapes_coco):
    """The second teacher's own row needs the second teacher, not the first: on a CPU it can run on the free core
    while the large teacher still trains. A run that needs the missing teacher still stops with a clear message."""
    sys.path.insert(0, str(BENCH))
    import distill_gain

    argv = ["--data", str(shapes_coco), "--tag", "wait", "--teacher-cfg", "yolov8n.yaml", "--teacher-epochs", "1",
            "--teacher2-cfg", "yolov8n.yaml", "--epochs", "1", "--imgsz", "64", "--batch", "8", "--workers", "0",
            "--device", "cpu", "--seeds", "0", "--no-ablations", "--no-ultralytics-kd",
            "--runs", str(tmp_path / "runs"), "--out-dir", str(tmp_path / "out"),
            "--train-args", json.dumps({"warmup_epochs": 0, "val": False})]
    assert distill_gain.main([*argv, "--only", "teacher2", "detkd_teacher2"]) == 0
    state = json.loads((tmp_path / "runs" / "state.json").read_text())
    assert set(state["runs"]) == {"teacher2_s1", "detkd_teacher2_s0"} and "teacher" not in state
    with pytest.raises(SystemExit, match="no teacher yet: run the 'teacher' kind first"):
        distill_gain.main([*argv, "--only", "two_teachers"])


def test_a_teacher_another_process_trained_meanwhile_is_used(tmp_path, shapes_coco, monkeypatch):
    """A protocol split over two cores: this process starts while the other still trains the teacher, runs its
    baseline first, and by the time its distillation run is due the teacher is in the shared state. The run must use
    it — not stop with 'no teacher yet' because the state it read at its start had none."""
    sys.path.insert(0, str(BENCH))
    import distill_gain

    runs = tmp_path / "runs"
    used = {}

    def fake_run(kind, args, data_yaml, seed, teacher, name, others=None):
        if kind == "baseline":  # meanwhile the other process finishes the teacher and records it
            state_file = runs / "state.json"
            state = json.loads(state_file.read_text()) if state_file.exists() else {"runs": {}}
            state["runs"]["teacher_s0"] = {**record("teacher", 0), "best": "other/teacher.pt"}
            state["teacher"] = "other/teacher.pt"
            state_file.write_text(json.dumps(state))
        used[name] = teacher
        return record(kind, seed)

    def record(kind, seed):
        return {"kind": kind, "seed": seed, "epochs": 1, "wall_s": 1.0, "median_epoch_s": 1.0, "mAP50-95": 0.1,
                "mAP50": 0.2, "best": f"{kind}_s{seed}.pt", "resumed": False, "kd": None}

    monkeypatch.setattr(distill_gain, "train_run", fake_run)
    argv = ["--data", str(shapes_coco), "--tag", "lanes", "--teacher-cfg", "yolov8n.yaml", "--epochs", "1",
            "--imgsz", "64", "--device", "cpu", "--seeds", "1", "--no-ablations", "--runs", str(runs),
            "--out-dir", str(tmp_path / "out"), "--only", "baseline_s1", "detkd_s1", "ultralytics_kd_s1"]
    assert distill_gain.main(argv) == 0
    assert used == {"baseline_s1": None, "detkd_s1": "other/teacher.pt", "ultralytics_kd_s1": "other/teacher.pt"}
    state = json.loads((runs / "state.json").read_text())
    assert set(state["runs"]) == {"teacher_s0", "baseline_s1", "detkd_s1", "ultralytics_kd_s1"}


def test_wait_for_teachers_waits_for_the_other_process_then_gives_up_at_its_limit(tmp_path, shapes_coco, monkeypatch):
    """The second core's process starts with a distillation run while the first still trains the teacher: with
    --wait-for-teachers it reads the shared state again until the teacher is there and uses it; a teacher that never
    comes stops it after MIN minutes with the same 'no teacher yet' as without the option."""
    sys.path.insert(0, str(BENCH))
    import distill_gain

    runs, used, clock = tmp_path / "runs", {}, {"t": 0.0}
    state_file = runs / "state.json"

    def fake_sleep(seconds):  # the other process records its teacher after two polls
        clock["t"] += seconds
        if clock["t"] >= 2 * distill_gain.WAIT_POLL_S and teacher_arrives:
            state_file.write_text(json.dumps({"runs": {"teacher_s0": record("teacher", 0)},
                                              "teacher": "other/teacher.pt"}))

    def record(kind, seed):
        return {"kind": kind, "seed": seed, "epochs": 1, "wall_s": 1.0, "median_epoch_s": 1.0, "mAP50-95": 0.1,
                "mAP50": 0.2, "best": f"{kind}_s{seed}.pt", "resumed": False, "kd": None}

    def fake_run(kind, args, data_yaml, seed, teacher, name, others=None):
        used[name] = teacher
        return record(kind, seed)

    monkeypatch.setattr(distill_gain, "train_run", fake_run)
    monkeypatch.setattr(distill_gain.time, "sleep", fake_sleep)
    monkeypatch.setattr(distill_gain.time, "monotonic", lambda: clock["t"])
    argv = ["--data", str(shapes_coco), "--tag", "wait", "--teacher-cfg", "yolov8n.yaml", "--epochs", "1",
            "--imgsz", "64", "--device", "cpu", "--seeds", "1", "--no-ablations", "--runs", str(runs),
            "--out-dir", str(tmp_path / "out"), "--only", "detkd_s1", "--wait-for-teachers", "5"]
    teacher_arrives = False
    with pytest.raises(SystemExit, match="no teacher yet"):
        distill_gain.main(argv)
    assert clock["t"] == 5 * 60 and used == {}  # waited the whole limit, trained nothing
    teacher_arrives, clock["t"] = True, 0.0
    assert distill_gain.main(argv) == 0
    assert used == {"detkd_s1": "other/teacher.pt"} and clock["t"] == 2 * distill_gain.WAIT_POLL_S
    result = json.loads((tmp_path / "out" / "distill_gain_wait.json").read_text())
    assert "wait_for_teachers" not in result["settings"]  # when a run started is not part of what it measured


def test_reuse_results_takes_the_committed_baselines_on_a_fresh_machine_and_trains_the_rest(tmp_path, shapes_coco,
                                                                                          monkeypatch):
    """A session on a fresh machine: the run folders (state.json, checkpoints) are gone, the committed results file
    is there. --reuse-results takes its baselines (nothing later needs their checkpoints), trains the teacher and the
    distillation runs again, and the report says which runs were reused; a results file of other settings is refused
    rather than mixed in."""
    sys.path.insert(0, str(BENCH))
    import distill_gain

    trained = []

    def fake_run(kind, args, data_yaml, seed, teacher, name, others=None):
        trained.append(name)
        return {"kind": kind, "seed": seed, "epochs": 1, "wall_s": 1.0, "median_epoch_s": 1.0,
                "mAP50-95": 0.3 if kind == "teacher" else 0.1 + seed / 100, "mAP50": 0.2, "best": f"{name}.pt",
                "resumed": False, "kd": None}

    monkeypatch.setattr(distill_gain, "train_run", fake_run)
    out = tmp_path / "out"
    argv = ["--data", str(shapes_coco), "--tag", "fresh", "--teacher-cfg", "yolov8n.yaml", "--epochs", "1",
            "--imgsz", "64", "--device", "cpu", "--seeds", "0", "1", "--no-ablations", "--no-ultralytics-kd",
            "--out-dir", str(out)]
    assert distill_gain.main([*argv, "--runs", str(tmp_path / "first")]) == 0  # the earlier session
    assert sorted(trained) == ["baseline_s0", "baseline_s1", "detkd_s0", "detkd_s1", "teacher_s0"]

    trained.clear()  # the next session: a new runs folder, the results file kept
    assert distill_gain.main([*argv, "--runs", str(tmp_path / "second"), "--reuse-results"]) == 0
    assert sorted(trained) == ["detkd_s0", "detkd_s1", "teacher_s0"]
    result = json.loads((out / "distill_gain_fresh.json").read_text())
    assert result["runs"]["baseline_s1"]["mAP50-95"] == 0.11 and \
        result["runs"]["baseline_s1"]["reused_from"] == "distill_gain_fresh.json"
    assert "reused_from" not in result["runs"]["detkd_s1"] and result["pending"] == []
    assert "**Reused:** baseline_s0, baseline_s1" in (out / "distill_gain_fresh.md").read_text()

    trained.clear()
    with pytest.raises(SystemExit, match=r"--reuse-results: distill_gain_fresh.json was run with other settings: "
                                         r"epochs 1 \(now 2\)"):
        distill_gain.main([*argv[:argv.index("--epochs") + 1], "2", *argv[argv.index("--epochs") + 2:],
                           "--runs", str(tmp_path / "third"), "--reuse-results"])
    assert trained == []

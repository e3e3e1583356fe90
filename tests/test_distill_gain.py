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
            "--train-args", json.dumps({"warmup_epochs": 0, "val": False})]
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
    assert kinds == {"teacher", "baseline", "detkd", "ultralytics_kd", *distill_gain.ABLATIONS}
    assert result["summary"]["baseline"]["n"] == 2 and result["summary"]["detkd"]["seeds"] == [0, 1]
    for r in result["runs"].values():
        assert r["wall_s"] > 0 and 0.0 <= r["mAP50-95"] <= 1.0 and r["median_epoch_s"] > 0
    md = (tmp_path / "out" / "distill_gain_tiny.md").read_text()
    assert "| baseline (student alone) | 0,1 |" in md and "Ultralytics built-in distill_model" in md
    assert result["summary"]["ultralytics_kd"]["seeds"] == [0, 1] and result["pending"] == []
    assert "Not run yet" not in md
    assert result["verdict"]  # random teacher vs random student: a verdict is always stated

    capsys.readouterr()
    assert distill_gain.main(argv) == 0  # everything is reused, nothing retrained
    out = capsys.readouterr().out
    assert out.count("done before, reused") == len(result["runs"])

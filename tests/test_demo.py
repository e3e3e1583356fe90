"""`detkd demo` runs end to end (tiny settings) and prints the teacher / baseline / distilled table."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


def test_demo_tiny(tmp_path, capsys):
    from detkd.cli import main

    rc = main(["demo", "--out", str(tmp_path / "demo"), "--imgsz", "64", "--n-train", "16", "--n-val", "8",
               "--teacher-epochs", "1", "--epochs", "1", "--batch", "8"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "| teacher yolov8s |" in out and "| baseline yolov8n |" in out and "| distilled yolov8n |" in out
    report = json.loads((tmp_path / "demo" / "demo_results.json").read_text())
    assert set(report["rows"]) == {"teacher", "baseline", "distilled"}
    for r in report["rows"].values():
        assert 0.0 <= r["AP"] <= 1.0 and r["params_M"] > 0 and r["GFLOPs"] > 0
    assert report["rows"]["teacher"]["params_M"] > report["rows"]["baseline"]["params_M"]

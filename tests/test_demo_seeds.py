"""benchmarks/demo_seeds.py: the summary over seeds (hand-computed) and a tiny end-to-end run with reuse."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "demo_seeds.py"


def _load():
    spec = importlib.util.spec_from_file_location("demo_seeds", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _seed(seed, teacher, base, dist):
    return {"seed": seed, "rows": {"teacher": {"AP": teacher}, "baseline": {"AP": base}, "distilled": {"AP": dist}}}


def test_summary_mean_spread_and_robust_verdict():
    ds = _load()
    s = ds.summarize([_seed(0, 0.7, 0.20, 0.30), _seed(1, 0.7, 0.25, 0.28), _seed(2, 0.7, 0.22, 0.26)])
    assert s["distilled"]["mean"] == pytest.approx(0.28)
    assert s["distilled"]["spread"] == pytest.approx(0.02)  # half of 0.30 - 0.26
    assert s["baseline"]["max"] == pytest.approx(0.25)
    assert s["gain"]["mean"] == pytest.approx((0.10 + 0.03 + 0.04) / 3)
    assert s["distilled"]["std"] == pytest.approx(0.02)  # values 0.30, 0.28, 0.26
    assert s["robust"] is True and s["all_seeds_gain"] is True
    # the worst distilled seed (0.24) is below the best baseline seed (0.25): not robust, though each seed gains
    s = ds.summarize([_seed(0, 0.7, 0.20, 0.30), _seed(1, 0.7, 0.25, 0.28), _seed(2, 0.7, 0.22, 0.24)])
    assert s["robust"] is False and s["all_seeds_gain"] is True


@pytest.mark.slow
def test_demo_seeds_tiny_run_then_reuse(tmp_path, capsys):
    ds = _load()
    argv = ["--seeds", "0", "--imgsz", "64", "--n-teacher", "8", "--n-student", "4", "--n-val", "4",
            "--teacher-epochs", "1", "--epochs", "1", "--batch", "4", "--threads", "1", "--sequential",
            "--runs", str(tmp_path / "runs"), "--out-dir", str(tmp_path / "out"), "--tag", "testmachine"]
    assert ds.main(argv) == 0
    md = (tmp_path / "out" / "demo_seeds_testmachine.md").read_text()
    report = json.loads((tmp_path / "out" / "demo_seeds_testmachine.json").read_text())
    assert "| distilled | " in md and "mean ± spread" in md and "Worst distilled seed" in md
    assert [r["seed"] for r in report["per_seed"]] == [0]
    assert report["settings"]["parallel"] is False and report["settings"]["n_student"] == 4
    first = report["per_seed"][0]["rows"]["distilled"]["AP"]
    capsys.readouterr()
    assert ds.main(argv) == 0  # the finished seed is reused, not retrained
    assert "reusing " in capsys.readouterr().out
    again = json.loads((tmp_path / "out" / "demo_seeds_testmachine.json").read_text())
    assert again["per_seed"][0]["rows"]["distilled"]["AP"] == first

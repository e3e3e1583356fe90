"""benchmarks/teacher_precision.py: the BF16 vs FP32 teacher summary, hand-computed, and its report."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "teacher_precision.py"


def _load():
    spec = importlib.util.spec_from_file_location("teacher_precision", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _seed(seed, teacher, bf16, fp32):
    return {"seed": seed, "AP": {"teacher": teacher, "distilled_bf16": bf16, "distilled_fp32": fp32}}


def test_the_difference_is_judged_against_the_fp32_students_seed_spread():
    tp = _load()
    s = tp.summarise([_seed(0, 0.7, 0.43, 0.42), _seed(1, 0.7, 0.50, 0.52), _seed(2, 0.7, 0.53, 0.53)])
    assert s["rows"]["distilled_fp32"]["spread"] == pytest.approx(0.055)  # half of 0.53 - 0.42
    assert s["bf16_minus_fp32"]["per_seed"] == pytest.approx([0.01, -0.02, 0.0])
    assert s["bf16_minus_fp32"]["mean"] == pytest.approx(-0.01 / 3)
    assert s["verdict"] == "same"
    apart = tp.summarise([_seed(0, 0.7, 0.30, 0.42), _seed(1, 0.7, 0.31, 0.43)])
    assert apart["verdict"] == "different"  # -0.12 on average, the FP32 seeds 0.005 apart


def test_the_report_names_each_row_and_the_verdict():
    tp = _load()
    seeds = [_seed(0, 0.7, 0.43, 0.42), _seed(1, 0.7, 0.50, 0.52)]
    from detkd.bench.machine import machine_info

    r = {"machine": machine_info("cpu"),
         "amx": True, "settings": {"seeds": [0, 1], "imgsz": 64, "n_teacher": 600, "teacher_epochs": 12,
                                   "n_student": 100, "epochs": 30, "n_val": 150},
         "seeds": seeds, "summary": tp.summarise(seeds)}
    md = tp.render_markdown(r)
    assert "| distilled, BF16 teacher (default here) | 0.430 | 0.500 | 0.465 ± 0.035 |" in md
    assert "| Δ BF16 − FP32 | +0.010 | -0.020 |" in md and "**the same" in md

"""recipe_summary reports the protocol's tuning and confirmation sets separately, with Δ next to the gap closure
Δ / (teacher − baseline) (hand-computed on fabricated results), and refuses an unusable protocol."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
PROTOCOL_FILE = Path(__file__).resolve().parents[1] / "benchmarks" / "recipe_protocol.json"


@pytest.fixture()
def recipe_summary():
    sys.path.insert(0, str(BENCH))
    import recipe_summary

    return recipe_summary


def kind(runs: list[float]) -> dict:
    return {"mAP50-95": sum(runs) / len(runs), "mAP50-95_runs": runs, "spread": (max(runs) - min(runs)) / 2,
            "seeds": list(range(len(runs))), "mAP50": 0.5}


def result(tag: str, **kinds: list[float]) -> dict:
    from detkd.bench.machine import machine_info

    runs = {f"{k}_s{i}": {"kind": k, "seed": i, "mAP50-95": v, "curve": {"metrics/mAP50-95(B)": [0.1, v]}}
            for k, vals in kinds.items() for i, v in enumerate(vals)}
    return {"settings": {"tag": tag, "student": "yolov8n.yaml", "epochs": 2, "imgsz": 64, "batch": 8,
                         "seeds": "[0, 1]", "data": tag}, "machine": machine_info("cpu"), "runs": runs,
            "summary": {k: kind(v) for k, v in kinds.items()}}


def entry(**results: str) -> dict:
    return {"imgsz": 64, "epochs": 2, "results": results}


PROTOCOL = {"sets": {
    "tuning": {"a": entry(yolov8s="a_s")},
    "confirmation": {"b": entry(yolov8s="b_s", yolov8m="b_m"), "c": entry(yolov8s="c_s"), "d": entry(yolov8s="d_s"),
                     "e": entry(yolov8s="e_s")},
}}

# hand-computed: Δ = candidate − baseline, gap closure = Δ / (teacher − baseline), means over seeds
RESULTS = {
    # baseline 0.31, teacher 0.51, detkd 0.36: Δ +0.05, closure 0.05 / 0.20 = 25 %
    "a_s": result("a_s", baseline=[0.30, 0.32], teacher=[0.51], detkd=[0.35, 0.37]),
    # baseline 0.20, teacher 0.40, detkd 0.26: Δ +0.06, closure 0.06 / 0.20 = 30 %
    "b_s": result("b_s", baseline=[0.19, 0.21], teacher=[0.40], detkd=[0.25, 0.27]),
    # no baseline of its own: b_s's (0.20) serves both teacher sizes; teacher 0.38, detkd 0.182:
    # Δ −0.018, closure −0.018 / 0.18 = −10 % (below the baseline)
    "b_m": result("b_m", teacher=[0.38], detkd=[0.18, 0.184]),
    # teacher 0.48 below the baseline 0.50: no gap to close, Δ +0.02 still counts in the mean Δ
    "c_s": result("c_s", baseline=[0.50, 0.50], teacher=[0.48], detkd=[0.51, 0.53]),
    # its detkd runs exist, the baseline does not (in no results file of the dataset): still pending
    "e_s": result("e_s", teacher=[0.3], detkd=[0.2, 0.2]),
    # d_s never ran; 'extra' is a result the protocol does not name
    "extra": result("extra", baseline=[0.1, 0.1], teacher=[0.2], detkd=[0.15, 0.15]),
}


def test_gap_closure_and_means_per_set_are_the_hand_computed_ones(recipe_summary):
    report = recipe_summary.protocol_report(PROTOCOL, RESULTS, "detkd")
    tuning, confirmation = report["tuning"], report["confirmation"]
    assert [r["closure"] for r in tuning["rows"]] == [pytest.approx(0.25)]
    assert tuning["mean_closure"] == pytest.approx(0.25) and tuning["never_below_baseline"]

    rows = {(r["dataset"], r["teacher_size"]): r for r in confirmation["rows"]}
    assert rows["b", "yolov8s"]["delta"] == pytest.approx(0.06)
    assert rows["b", "yolov8s"]["closure"] == pytest.approx(0.30)
    assert rows["b", "yolov8m"]["delta"] == pytest.approx(-0.018)
    assert rows["b", "yolov8m"]["closure"] == pytest.approx(-0.10)
    assert rows["c", "yolov8s"]["closure"] is None and rows["c", "yolov8s"]["delta"] == pytest.approx(0.02)
    assert confirmation["mean_closure"] == pytest.approx((0.30 - 0.10) / 2)  # c has no gap: left out
    assert confirmation["mean_delta"] == pytest.approx((0.06 - 0.018 + 0.02) / 3)
    assert confirmation["per_teacher"]["yolov8s"]["mean_closure"] == pytest.approx(0.30)
    assert confirmation["per_teacher"]["yolov8s"]["mean_delta"] == pytest.approx((0.06 + 0.02) / 2)
    assert confirmation["per_teacher"]["yolov8m"]["mean_closure"] == pytest.approx(-0.10)
    assert not confirmation["never_below_baseline"]
    assert confirmation["no_gap"] == ["c (yolov8s)"]
    assert confirmation["pending"] == ["d (yolov8s): distill_gain_d_s", "e (yolov8s): distill_gain_e_s"]
    assert report["outside"] == ["extra"]

    md = recipe_summary.render_protocol(report)
    assert md.index("### Tuning set") < md.index("### Confirmation set")
    assert "| b | yolov8m | detkd | 0.380 | 0.200 | 0.182 | -0.018 | -10 % | **no** |" in md
    assert "| a | yolov8s | detkd | 0.510 | 0.310 | 0.360 | +0.050 | 25 % | yes |" in md
    assert "mean gap closure: **10 %**" in md and "mean gap closure: **25 %**" in md
    assert "**not run yet:** d (yolov8s): distill_gain_d_s" in md and "never below the baseline mean: **no**" in md
    # every seed above its own baseline seed: b_m's 0.180 / 0.184 against b_s's baseline seeds 0.19 / 0.21
    assert [r["seeds_above"] for r in confirmation["rows"]] == [True, False, True]
    assert tuning["every_seed_above"] and not confirmation["every_seed_above"]
    assert "every candidate seed above the baseline run of the same seed, on every row: **no**" in md


def test_seeds_are_paired_by_seed_not_by_the_order_runs_finished(recipe_summary):
    """Two lanes finish seed 1 before seed 0: the summary's list of values is then [s1, s0]."""
    res = result("x", baseline=[0.30, 0.28], teacher=[0.5], detkd=[0.33, 0.29])
    res["runs"] = dict(reversed(list(res["runs"].items())))  # finished in the other order
    assert recipe_summary.seeds_above(recipe_summary.seed_maps(res, "detkd"),
                                      recipe_summary.seed_maps(res, "baseline")) is True
    res["runs"]["detkd_s1"]["mAP50-95"] = 0.27  # seed 1 below its own baseline seed (0.28)
    assert recipe_summary.seeds_above(recipe_summary.seed_maps(res, "detkd"),
                                      recipe_summary.seed_maps(res, "baseline")) is False
    assert recipe_summary.seeds_above({0: 0.4}, {0: 0.3, 1: 0.3}) is None  # different seeds: nothing to pair


def test_each_datasets_table_lists_the_values_in_seed_order(recipe_summary):
    """The per-dataset table's values, seed 0 first, whatever order the lanes finished in (the summary's list was
    shown as it came: 0.074, 0.093 for seeds 0 / 1 that scored 0.093 / 0.074)."""
    res = result("x", baseline=[0.093, 0.074], teacher=[0.5], detkd=[0.101, 0.104])
    res["summary"]["baseline"]["mAP50-95_runs"] = [0.074, 0.093]  # seed 1 finished first
    md = recipe_summary.render({"x": res}, "detkd", recipe_summary.acceptance({"x": res}, "detkd")).splitlines()
    header = next(line for line in md if line.startswith("| run | seeds"))
    assert "| per seed |" in header
    assert "| 0.093 / 0.074 |" in next(line for line in md if line.startswith("| baseline |"))
    assert "| 0.101 / 0.104 |" in next(line for line in md if line.startswith("| **detkd** |"))


def test_acceptance_judges_a_results_file_against_its_datasets_shared_baseline(recipe_summary):
    # b_m has no baseline of its own (one per dataset serves both teacher sizes): the acceptance checks and its
    # per-file table must judge it against b_s's, not leave it out.
    results = {"b_s": RESULTS["b_s"], "b_m": dict(RESULTS["b_m"], summary={**RESULTS["b_m"]["summary"],
                                                                           "ultralytics_kd": kind([0.30, 0.30])})}
    baselines = recipe_summary.shared_baselines(PROTOCOL, results)
    checks = recipe_summary.acceptance(results, "detkd", baselines)
    assert sorted(checks["datasets"]) == ["b_m", "b_s"]
    assert checks["datasets"]["b_m"]["delta"] == pytest.approx(-0.018)
    assert not checks["never_below_baseline"]
    assert checks["mean_delta_vs_builtin"] == pytest.approx(0.182 - 0.30)
    md = recipe_summary.render(results, "detkd", checks, baselines)
    assert "| **detkd** | 0,1 | 0.182 ± 0.002 | 0.180 / 0.184 | -0.018 | 0.500 |" in md
    assert "the dataset's baseline: b_s's (0.200)" in md


@pytest.mark.parametrize("change, message", [
    (lambda p: p["sets"]["tuning"].update(e=entry(s="e"), f=entry(s="f"), g=entry(s="g")), "at most 3"),
    (lambda p: [p["sets"]["confirmation"].pop(k) for k in ("d", "e")], "at least 3"),
    (lambda p: p["sets"]["tuning"].update(b=entry(s="b2")), "b in both sets"),
    (lambda p: p["sets"]["confirmation"]["c"].pop("results"), "'c' names no results"),
    (lambda p: p["sets"].pop("confirmation"), "no confirmation set"),
])
def test_an_unusable_protocol_is_refused_with_the_fix(recipe_summary, change, message):
    protocol = json.loads(json.dumps(PROTOCOL))
    change(protocol)
    with pytest.raises(recipe_summary.ProtocolError, match=message):
        recipe_summary.check_protocol(protocol)


def run_summary(recipe_summary, tmp_path: Path, protocol: dict, results: dict) -> Path:
    """recipe_summary's CLI on ``results`` written as distill_gain files, judged by ``protocol``; its --out path."""
    results_dir = tmp_path / "results"
    results_dir.mkdir()
    for tag, r in results.items():
        (results_dir / f"distill_gain_{tag}.json").write_text(json.dumps(r))
    protocol_file = tmp_path / "protocol.json"
    protocol_file.write_text(json.dumps(protocol))
    out = tmp_path / "recipe"
    assert recipe_summary.main(["--protocol", str(protocol_file), "--results-dir", str(results_dir),
                                "--out", str(out)]) == 0
    return out


def test_cli_reads_the_protocols_results_and_reports_both_sets(recipe_summary, tmp_path, capsys):
    out = run_summary(recipe_summary, tmp_path, PROTOCOL, RESULTS)
    written = json.loads(out.with_suffix(".json").read_text())
    assert written["protocol"]["confirmation"]["mean_closure"] == pytest.approx(0.10)
    assert set(written["datasets"]) == {"a_s", "b_s", "b_m", "c_s", "e_s"}  # only what the protocol names
    assert "### Confirmation set" in out.with_suffix(".md").read_text()

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"sets": {"tuning": {}, "confirmation": {"b": entry(s="b_s")}}}))
    capsys.readouterr()
    assert recipe_summary.main(["--protocol", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "at least 3" in err


def test_the_committed_protocol_is_valid_and_keeps_tuning_data_out_of_confirmation(recipe_summary):
    protocol = recipe_summary.load_protocol(PROTOCOL_FILE)
    tuning, confirmation = protocol["sets"]["tuning"], protocol["sets"]["confirmation"]
    assert len(tuning) + len(confirmation) >= 6
    # the datasets that chose the current default (DeepPCB's screen, raccoon, aerial cars) can only tune
    assert {"raccoon", "deeppcb", "aerial_cars"} <= set(tuning)
    for name, e in {**tuning, **confirmation}.items():
        assert e["licence"] and e["source"] and e["why"] and e["data"], name
        assert 160 <= e["imgsz"] <= 320 and e["epochs"] > 0, name
        assert {"yolov8s", "yolov8m"} <= set(e["teachers"]), name  # issue 27 item 2: both teacher sizes
        assert set(e["results"]) == set(e["teachers"]), name  # one results file per teacher size
    assert not any("bccd" in n.lower() for n in {**tuning, **confirmation})


YOLO26_PROTOCOL = {**PROTOCOL, "yolo26_students": {"datasets": {"a": {"yolov8s": "a_26", "yolo26s": "a_2626"},
                                                                "b": {"yolov8s": "b_26", "yolo26s": "b_2626"}}}}
YOLO26_RESULTS = {
    **RESULTS,
    # the YOLO26-n alone 0.31; built-in 0.26; detkd 0.34: Δ +0.03, detkd − built-in +0.08
    "a_26": result("a_26", baseline=[0.30, 0.32], teacher=[0.40], ultralytics_kd=[0.25, 0.27], detkd=[0.33, 0.35]),
    # a_26's baseline serves it; built-in 0.32, detkd 0.30: Δ −0.01, detkd − built-in −0.02
    "a_2626": result("a_2626", teacher=[0.45], ultralytics_kd=[0.31, 0.33], detkd=[0.30, 0.30]),
}


def test_yolo26_students_are_judged_against_the_built_in_on_the_same_pair(recipe_summary, tmp_path):
    report = recipe_summary.yolo26_report(YOLO26_PROTOCOL, YOLO26_RESULTS, "detkd")
    rows = {(r["dataset"], r["teacher_size"]): r for r in report["rows"]}
    assert rows["a", "yolov8s"]["vs_builtin"] == pytest.approx(0.08)
    assert rows["a", "yolov8s"]["delta"] == pytest.approx(0.03)
    assert rows["a", "yolo26s"]["baseline"] == pytest.approx(0.31)  # shared from a_26
    assert rows["a", "yolo26s"]["vs_builtin"] == pytest.approx(-0.02)
    assert report["mean_vs_builtin"] == pytest.approx(0.03) and report["at_or_above_builtin"]
    assert report["pending"] == ["b (yolov8s): distill_gain_b_26", "b (yolo26s): distill_gain_b_2626"]
    partial = {**YOLO26_RESULTS, "b_26": {**result("b_26", baseline=[0.20, 0.22]),  # a session ran its baselines
                                          "pending": ["teacher_s0", "detkd_s0", "ultralytics_kd_s0"]}}
    assert recipe_summary.yolo26_report(YOLO26_PROTOCOL, partial, "detkd")["pending"][0] == \
        "b (yolov8s): distill_gain_b_26 (YOLO26-n alone 0.210 in; still to run: teacher_s0, detkd_s0, " \
        "ultralytics_kd_s0)"
    md = recipe_summary.render_yolo26(report)
    assert "| a | yolo26s | 0.450 | 0.310 | 0.320 | 0.300 | -0.010 | -0.020 |" in md
    assert "| +0.080 | 0.330 / 0.350 | 0.250 / 0.270 |" in md  # per seed, seed 0 first
    swapped = json.loads(json.dumps(YOLO26_RESULTS))  # seed 1 finished first (two lanes): the summary's order
    swapped["a_26"]["summary"]["detkd"]["mAP50-95_runs"].reverse()
    md = recipe_summary.render_yolo26(recipe_summary.yolo26_report(YOLO26_PROTOCOL, swapped, "detkd"))
    assert "| +0.080 | 0.330 / 0.350 | 0.250 / 0.270 |" in md
    assert "detkd at or above the built-in on average: yes (mean +0.030" in md

    out = run_summary(recipe_summary, tmp_path, YOLO26_PROTOCOL, YOLO26_RESULTS)
    written = json.loads(out.with_suffix(".json").read_text())
    assert written["yolo26"]["mean_vs_builtin"] == pytest.approx(0.03)
    assert "a_2626" not in written["protocol"]["outside"]
    assert "## YOLO26-n students" in out.with_suffix(".md").read_text()

"""benchmarks/class_incremental.py: the relabelled datasets (hand-counted boxes), the targets on hand-made numbers,
and the protocol end to end on generated data (64 px, 1 epoch; no accuracy thresholds)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _module():
    sys.path.insert(0, str(BENCH))
    try:
        import class_incremental
    finally:
        sys.path.remove(str(BENCH))
    return class_incremental


@pytest.fixture
def hand_made(tmp_path) -> Path:
    """6 train and 2 val images; each holds 2 'cat' (id 3), 1 'dog' (id 7), 1 'bird' (id 5) and 1 'fish' (id 9)."""
    root = tmp_path / "src"
    cats = [{"id": 3, "name": "cat"}, {"id": 5, "name": "bird"}, {"id": 7, "name": "dog"}, {"id": 9, "name": "fish"}]
    per_image = [3, 3, 7, 5, 9]
    ann_id = 1
    for split, n, first in (("train", 6, 1), ("val", 2, 100)):
        (root / split).mkdir(parents=True)
        coco = {"images": [], "annotations": [], "categories": cats}
        for i in range(n):
            name = f"{split}_{i}.jpg"
            cv2.imwrite(str(root / split / name), np.full((64, 64, 3), 128, np.uint8))
            coco["images"].append({"id": first + i, "file_name": name, "width": 64, "height": 64})
            for j, cid in enumerate(per_image):
                coco["annotations"].append({"id": ann_id, "image_id": first + i, "category_id": cid,
                                            "bbox": [2 + 10 * j, 4, 8, 8], "area": 64, "iscrowd": 0})
                ann_id += 1
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))
    return root


def _load(folder: Path, split: str) -> dict:
    return json.loads((folder / "annotations" / f"instances_{split}.json").read_text())


def _names(coco: dict) -> list[str]:
    by_id = {c["id"]: c["name"] for c in coco["categories"]}
    return sorted(by_id[a["category_id"]] for a in coco["annotations"])


def test_old_set_has_only_a_labels_new_only_b_and_their_images_are_disjoint(tmp_path, hand_made):
    ci = _module()
    out = ci.derive_datasets(hand_made, tmp_path / "d", ["cat", "dog"], ["bird"], 0.5, seed=0)
    f = out["folders"]
    old, new, new_all, joint = (_load(f[k], "train") for k in ("old", "new", "new_all", "joint"))
    old_ids, new_ids = {im["id"] for im in old["images"]}, {im["id"] for im in new["images"]}
    assert len(old_ids) == len(new_ids) == 3 and not old_ids & new_ids and old_ids | new_ids == set(range(1, 7))
    # 3 old images x (2 cat + 1 dog); 3 new images x 1 bird; fish (in neither list) nowhere
    assert _names(old) == ["cat"] * 6 + ["dog"] * 3
    assert _names(new) == ["bird"] * 3 and _names(new_all) == ["bird"] * 3
    assert {im["id"] for im in new_all["images"]} == new_ids
    assert _names(joint) == ["bird"] * 6 + ["cat"] * 12 + ["dog"] * 6 and len(joint["images"]) == 6
    # the classes, renumbered 1..n in the model's order: old's, then new's
    assert [(c["id"], c["name"]) for c in old["categories"]] == [(1, "cat"), (2, "dog")]
    assert [(c["id"], c["name"]) for c in new["categories"]] == [(1, "bird")]
    assert [c["name"] for c in new_all["categories"]] == [c["name"] for c in joint["categories"]] == \
        ["cat", "dog", "bird"]
    # every set keeps the whole val split, relabelled for its classes
    assert _names(_load(f["old"], "val")) == ["cat"] * 4 + ["dog"] * 2
    assert _names(_load(f["new"], "val")) == ["bird"] * 2 and len(_load(f["joint"], "val")["annotations"]) == 8
    assert out["counts"]["val"] == {"images": 2, "boxes": {"cat": 4, "dog": 2, "bird": 2}}
    assert out["counts"]["old"]["train_boxes"] == {"cat": 6, "dog": 3}
    assert (f["old"] / "train" / "train_0.jpg").is_file()  # the images are the source's, linked
    again = ci.derive_datasets(hand_made, tmp_path / "d", ["cat", "dog"], ["bird"], 0.5, seed=0)
    assert _load(again["folders"]["old"], "train") == old  # the same split when derived again


def test_a_bad_class_split_is_refused_in_one_line(tmp_path, hand_made):
    ci = _module()
    with pytest.raises(SystemExit, match="not classes of the data: horse"):
        ci.derive_datasets(hand_made, tmp_path / "d", ["cat", "horse"], ["bird"], 0.5, seed=0)
    with pytest.raises(SystemExit, match="on both sides: cat"):
        ci.derive_datasets(hand_made, tmp_path / "d", ["cat"], ["cat", "bird"], 0.5, seed=0)


def _run(kind, seed, old, new, all_):
    return {"kind": kind, "seed": seed, "epochs": 1, "wall_s": 10.0,
            "eval": {"groups": {"old": {"AP": old}, "new": {"AP": new}, "all": {"AP": all_}}}}


def test_targets_on_hand_made_numbers():
    ci = _module()
    runs = {"ft0": _run("finetune", 0, 0.02, 0.30, 0.16), "ft1": _run("finetune", 1, 0.06, 0.32, 0.19),
            "in0": _run("incremental", 0, 0.30, 0.28, 0.29), "in1": _run("incremental", 1, 0.40, 0.30, 0.35),
            "jo0": _run("joint", 0, 0.40, 0.40, 0.40), "jo1": _run("joint", 1, 0.36, 0.36, 0.36),
            "ol0": _run("old", 0, 0.30, 0.0, 0.15), "ol1": _run("old", 1, 0.20, 0.0, 0.10),
            "su0": _run("superset", 0, 0.31, 0.0, 0.155), "su1": _run("superset", 1, 0.19, 0.0, 0.095)}
    summary = ci.summarise(runs)
    assert summary["incremental"]["old"]["mean"] == pytest.approx(0.35)
    assert summary["incremental"]["old"]["spread"] == pytest.approx(0.05)
    t = ci.targets(summary, 0.85)
    assert t["keeps_old_classes"]["met"] and t["keeps_old_classes"]["finetune_best_seed"] == 0.06
    # 0.32 / 0.38 = 0.842 < 0.85
    assert t["reaches_joint_share"]["ratio"] == pytest.approx(0.32 / 0.38) and not t["reaches_joint_share"]["met"]
    # superset vs its baseline (the old model) on A, seed 1: 0.19 < 0.20 — below on one seed, the means equal
    assert not t["superset_never_below_baseline"]["met"]
    assert t["superset_never_below_baseline"]["delta_mean"] == pytest.approx(0.0)
    runs["su1"] = _run("superset", 1, 0.20, 0.0, 0.10)
    assert ci.targets(ci.summarise(runs), 0.85)["superset_never_below_baseline"]["met"]  # equal is not below
    # for scale: forgetting nothing (the old model's A: 0.25) and learning B as fine-tuning does (0.31), over 2 A + 1
    # B classes: (2 * 0.25 + 0.31) / 3 = 0.27 = 0.711x joint's 0.38
    bound = ci.targets(summary, 0.85, n_old=2, n_new=1)["no_forgetting_bound"]
    assert bound["all"] == pytest.approx(0.27) and bound["ratio"] == pytest.approx(0.27 / 0.38)
    assert ci.targets(summary, 0.85)["no_forgetting_bound"] is None  # class counts unknown: not computed


@pytest.mark.slow
def test_protocol_runs_every_row_reports_and_reuses_runs(tmp_path, shapes_coco, capsys):
    ci = _module()
    out = tmp_path / "out"
    argv = ["--data", str(shapes_coco), "--tag", "tiny", "--old", "circle", "square", "--new", "triangle",
            "--old-epochs", "2", "--epochs", "1", "--imgsz", "64", "--batch", "8", "--workers", "0", "--device", "cpu", "--seeds", "0",
            "--runs", str(tmp_path / "runs"), "--out-dir", str(out), "--train-args", '{"warmup_epochs": 0}',
            "--variant", 'nofeat={"feat_kd": 0}']
    assert ci.main([*argv, "--only", "old"]) == 0
    (report,) = out.glob("class_incremental_tiny_*.json")
    partial = json.loads(report.read_text())
    assert partial["runs"]["old_s0"]["epochs"] == 2
    assert set(partial["runs"]) == {"old_s0"} and "incremental_s0" in partial["pending"]
    assert ci.main(argv) == 0
    result = json.loads(report.read_text())
    assert set(result["runs"]) == {"old_s0", "finetune_s0", "incremental_s0", "new_only_s0", "joint_s0",
                                   "superset_s0", "incremental_nofeat_s0"} and result["pending"] == []
    # each detkd row records the KD settings it ran with; a variant row adds its own
    assert result["runs"]["incremental_nofeat_s0"]["kd"] == {"feat_kd": 0, "keep_teacher_classes": True}
    assert result["runs"]["superset_s0"]["kd"] == {} and result["runs"]["joint_s0"]["kd"] is None
    assert set(result["targets"]["variants"]["nofeat"]) == {"keeps_old_classes", "reaches_joint_share"}
    assert all(r["median_epoch_s"] > 0 for r in result["runs"].values())
    ev = {k: r["eval"] for k, r in result["runs"].items()}
    assert ev["old_s0"]["classes"] == ev["superset_s0"]["classes"] == ["circle", "square"]
    assert ev["old_s0"]["per_class"]["triangle"] == 0.0 and ev["superset_s0"]["eval_data"] == "old"
    assert ev["new_only_s0"]["classes"] == ["triangle"] and ev["new_only_s0"]["per_class"]["circle"] == 0.0
    for k in ("finetune_s0", "incremental_s0", "joint_s0"):  # the old classes first, then the new
        assert ev[k]["classes"] == ["circle", "square", "triangle"] and ev[k]["eval_data"] == "joint"
    assert "cross" not in ev["joint_s0"]["per_class"] and result["split"]["dropped"] == ["cross"]
    for r in ev.values():  # 'all' is the mean over the classes, those a model does not predict at 0
        per = [v for v in r["per_class"].values() if v is not None]
        assert r["groups"]["all"]["AP"] == pytest.approx(sum(per) / len(per))
    assert set(result["targets"]) == {"keeps_old_classes", "reaches_joint_share", "superset_never_below_baseline",
                                      "no_forgetting_bound", "variants"}
    bound, summary = result["targets"]["no_forgetting_bound"], result["summary"]  # 2 old classes, 1 new
    if summary["joint"]["all"]["mean"] == 0:  # tiny runs may score 0: no ratio to give
        assert bound is None
    else:
        assert bound["all"] == pytest.approx((2 * summary["old"]["old"]["mean"] + summary["finetune"]["new"]["mean"])
                                             / 3)
    md = report.with_suffix(".md").read_text()
    assert "## New classes on top of an old model" in md and "## A teacher with more classes" in md
    assert "| fine-tuning the old model on the new data | 1 | 0 |" in md and "left out: cross" in md
    assert result["runs"]["superset_s0"]["epochs"] == 2 and result["runs"]["joint_s0"]["epochs"] == 1
    assert "Not run yet" not in md and "Targets (detkd's default recipe):" in md
    assert "| detkd `--keep-teacher-classes`, feat_kd=0 (`incremental_nofeat`) | 1 | 0 |" in md
    assert "The same targets for detkd `--keep-teacher-classes`, feat_kd=0" in md
    capsys.readouterr()
    assert ci.main(argv) == 0  # everything reused
    assert capsys.readouterr().out.count("done before, reused") == 7

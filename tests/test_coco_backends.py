"""faster-coco-eval (the default COCOeval) against pycocotools (the reference): the same 12 stats and per-class AP on
generated cases (random boxes, many classes, crowd regions, empty images, non-contiguous ids, maxDets edge cases),
on the real raccoon ground truth, and through the backend option; the speed benchmark's own run."""

from __future__ import annotations

import contextlib
import io
import json
import sys

import numpy as np
import pytest

from detkd.errors import ConfigError
from detkd.eval.metrics import STAT_KEYS, coco_box_metrics, load_gt, resolve_backend
from detkd.eval.synthetic import synthetic_eval_case

TOL = 1e-12  # the C++ sums in another order: differences of a few ulps (1e-16), never more


def both(gt, dets, img_ids=None) -> tuple[dict, dict]:
    return (coco_box_metrics(gt, dets, img_ids=img_ids, backend="faster"),
            coco_box_metrics(gt, dets, img_ids=img_ids, backend="pycocotools"))


def assert_agree(fast: dict, ref: dict) -> None:
    assert fast["coco_backend"] == "faster" and ref["coco_backend"] == "pycocotools"
    for k in STAT_KEYS:
        assert fast[k] == pytest.approx(ref[k], abs=TOL), k
    for key in ("per_class", "per_class_AP50"):
        assert list(fast[key]) == list(ref[key])
        for name, v in ref[key].items():
            assert (fast[key][name] is None) if v is None else fast[key][name] == pytest.approx(v, abs=TOL), name
    assert fast["per_class_instances"] == ref["per_class_instances"]
    assert (fast["n_images"], fast["n_detections"]) == (ref["n_images"], ref["n_detections"])


def pycocotools_direct(gt: dict, dets: list, img_ids=None) -> list[float]:
    """pycocotools exactly as its README calls it, on copies (it adds keys in place)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = json.loads(json.dumps(gt))
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(json.loads(json.dumps(dets))), "bbox")
        if img_ids is not None:
            ev.params.imgIds = sorted(img_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float(x) for x in ev.stats]


# ------------------------------------------------------------------------------------------------ generated cases
CASES = {
    "random_6_classes": dict(n_images=40, category_ids=(1, 2, 3, 4, 5, 6), dets_per_image=30, seed=1),
    "coco_80_classes": dict(n_images=60, dets_per_image=60, seed=2),
    "many_crowd_regions": dict(n_images=40, category_ids=(1, 2, 3), crowd_frac=0.25, dets_per_image=25, seed=3),
    "empty_images": dict(n_images=50, category_ids=(1, 2, 3, 4), empty_frac=0.4, no_det_frac=0.3,
                         dets_per_image=20, seed=4),
    "non_contiguous_ids": dict(n_images=40, category_ids=(3, 17, 58, 90, 1000), dets_per_image=30, seed=5,
                               first_image_id=900_000),
    "over_maxdets_with_ties": dict(n_images=25, category_ids=(7, 9), gt_per_image=20, dets_per_image=160,
                                   score_decimals=1, seed=6),
    "tied_scores": dict(n_images=40, category_ids=(1, 2, 3), dets_per_image=30, score_decimals=2, seed=7),
    "one_class": dict(n_images=40, category_ids=(42,), dets_per_image=15, seed=8),
}


@pytest.mark.parametrize("name", list(CASES))
def test_generated_case_agrees(name):
    gt, dets = synthetic_eval_case(**CASES[name])
    fast, ref = both(gt, dets)
    assert_agree(fast, ref)
    assert 0.05 < ref["AP"] < 0.95  # a non-trivial case: neither all right nor all wrong
    assert [ref[k] for k in STAT_KEYS] == pycocotools_direct(gt, dets)  # the reference is pycocotools itself
    sub = [im["id"] for im in gt["images"][::3]]
    fast, ref = both(gt, dets, img_ids=sub)
    assert_agree(fast, ref)
    assert [ref[k] for k in STAT_KEYS] == pycocotools_direct(gt, dets, sub)


def test_generated_cases_cover_their_edge():
    """Each case has the feature it is named after (else the agreement above proves nothing about it)."""
    gt, dets = synthetic_eval_case(**CASES["over_maxdets_with_ties"])
    per_img = np.bincount([d["image_id"] for d in dets])
    assert (per_img > 100).sum() > 10 and len({d["score"] for d in dets}) <= 11
    gt, dets = synthetic_eval_case(**CASES["empty_images"])
    with_gt, with_dets = {a["image_id"] for a in gt["annotations"]}, {d["image_id"] for d in dets}
    ids = {im["id"] for im in gt["images"]}
    assert ids - with_gt - with_dets and (ids - with_gt) & with_dets and (ids - with_dets) & with_gt
    gt, _ = synthetic_eval_case(**CASES["many_crowd_regions"])
    assert sum(a["iscrowd"] for a in gt["annotations"]) > 20


def test_synthetic_case_has_coco_val_statistics():
    gt, dets = synthetic_eval_case(n_images=600, seed=11)
    area = np.array([a["area"] for a in gt["annotations"] if not a["iscrowd"]])
    assert 6.5 < len(gt["annotations"]) / 600 < 8.5 and 85 < len(dets) / 600 < 115
    assert len(gt["categories"]) == 80 and max(c["id"] for c in gt["categories"]) == 90
    assert 0.35 < (area < 32**2).mean() < 0.47 and 0.17 < (area >= 96**2).mean() < 0.30


# ------------------------------------------------------------------------------------------------ hand-computed edges
def one_image(n_fp: int, tp_score: float, fp_score: float, tp_first: bool) -> tuple[dict, list]:
    """One 640x480 image, one 50x50 box of class 1; ``n_fp`` far-away false positives and one exact detection."""
    gt = {"images": [{"id": 1, "width": 640, "height": 480, "file_name": "a.jpg"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [300, 200, 50, 50], "area": 2500,
                           "iscrowd": 0}],
          "categories": [{"id": 1, "name": "a"}]}
    fps = [{"image_id": 1, "category_id": 1, "bbox": [5 + k % 10 * 20, 5 + k // 10 * 15, 10, 10], "score": fp_score}
           for k in range(n_fp)]
    tp = [{"image_id": 1, "category_id": 1, "bbox": [300, 200, 50, 50], "score": tp_score}]
    return gt, (tp + fps if tp_first else fps + tp)


@pytest.mark.parametrize("n_fp, tp_score, tp_first, ap, ar100", [
    (99, 0.5, False, 0.01, 1.0),   # the hit is the 100th detection: kept; precision 1/100 at recall 1
    (100, 0.5, False, 0.0, 0.0),   # the 101st: cut by maxDets=100
    (100, 0.9, False, 0.0, 0.0),   # same score as the 100 others, listed last: the stable sort puts it 101st
    (100, 0.9, True, 1.0, 1.0),    # same score, listed first: kept, and first in the ranking -> precision 1
])
def test_maxdets_cut_and_ties_known_values(n_fp, tp_score, tp_first, ap, ar100):
    gt, dets = one_image(n_fp, tp_score, 0.9, tp_first)
    fast, ref = both(gt, dets)
    assert_agree(fast, ref)
    assert ref["AP"] == pytest.approx(ap) and ref["AR100"] == pytest.approx(ar100)
    assert ref["AR1"] == pytest.approx(1.0 if tp_first else 0.0)
    assert ref["APs"] == ref["APl"] == -1.0  # one medium box: no small or large ground truth


def test_no_detection_at_all():
    gt, _ = one_image(0, 0.5, 0.5, True)
    fast, ref = both(gt, [])
    assert_agree(fast, ref)
    assert ref["AP"] == ref["AR100"] == 0.0 and ref["APs"] == -1.0 and ref["per_class"] == {"a": 0.0}
    gt["annotations"] = []  # nothing to find either: every number is "no ground truth"
    fast, ref = both(gt, [])
    assert_agree(fast, ref)
    assert all(ref[k] == -1.0 for k in STAT_KEYS) and ref["per_class"] == {"a": None}


def test_string_image_ids():
    """faster-coco-eval wants int image ids (int('abc') fails): detkd maps them, in pycocotools' order."""
    gt, dets = synthetic_eval_case(n_images=30, category_ids=(1, 2), dets_per_image=20, score_decimals=1, seed=9)
    name = {im["id"]: f"img_{im['id'] * 7 % 31}" for im in gt["images"]}  # an order unlike the int one
    for im in gt["images"]:
        im["id"] = name[im["id"]]
    for x in gt["annotations"] + dets:
        x["image_id"] = name[x["image_id"]]
    fast, ref = both(gt, dets)
    assert_agree(fast, ref)
    assert [ref[k] for k in STAT_KEYS] == pycocotools_direct(gt, dets)
    assert_agree(*both(gt, dets, img_ids=list(name.values())[:12]))


def test_ground_truth_prepared_alike_for_both():
    """Missing area/iscrowd and annotation id 0 or repeated: both backends evaluate the repaired ground truth (before,
    pycocotools raised KeyError('area') and faster-coco-eval put the boxes in no size range)."""
    gt, dets = synthetic_eval_case(n_images=30, category_ids=(1, 2, 3), dets_per_image=20, seed=10)
    repaired = json.loads(json.dumps(gt))
    for k, a in enumerate(repaired["annotations"]):
        a["area"] = a["bbox"][2] * a["bbox"][3]
        a["iscrowd"] = 0 if k % 2 else a["iscrowd"]
        a["id"] = k + 1
    for k, a in enumerate(gt["annotations"]):
        del a["area"]
        if k % 2:
            del a["iscrowd"]
        a["id"] = k // 2  # 0 and repeats
    fast, ref = both(gt, dets)
    assert_agree(fast, ref)
    assert [ref[k] for k in STAT_KEYS] == pycocotools_direct(repaired, dets)
    assert "area" not in gt["annotations"][0]  # the caller's dict is left as it was


# ------------------------------------------------------------------------------------------------ real data
@pytest.mark.parametrize("split", ["train", "val"])
def test_raccoon_ground_truth_agrees(raccoon, split):
    gt = json.loads((raccoon / "annotations" / f"instances_{split}.json").read_text())
    rng = np.random.default_rng(0)
    dets = []
    for a in gt["annotations"]:  # 1-3 jittered hits per box, and false positives on every image
        x, y, w, h = a["bbox"]
        for _ in range(rng.integers(1, 4)):
            j = rng.normal(0, 0.15, 4) * [w, h, w, h]
            dets.append({"image_id": a["image_id"], "category_id": a["category_id"], "score": float(rng.random()),
                         "bbox": [x + j[0], y + j[1], max(w + j[2], 1.0), max(h + j[3], 1.0)]})
    for im in gt["images"]:
        for _ in range(5):
            dets.append({"image_id": im["id"], "category_id": gt["categories"][0]["id"],
                         "score": float(rng.random() * 0.5), "bbox": [*(rng.random(2) * 200), 40.0, 60.0]})
    fast, ref = both(raccoon / "annotations" / f"instances_{split}.json", dets)
    assert_agree(fast, ref)
    assert 0.05 < ref["AP"] < 0.95 and ref["per_class_instances"] == {"raccoon": len(gt["annotations"])}


# ------------------------------------------------------------------------------------------------ the option
def test_backend_option(monkeypatch):
    gt, dets = one_image(3, 0.5, 0.9, False)
    monkeypatch.delenv("DETKD_COCO_BACKEND", raising=False)
    assert resolve_backend() == "faster" and coco_box_metrics(gt, dets)["coco_backend"] == "faster"
    assert type(load_gt(gt)).__module__.startswith("faster_coco_eval")
    assert type(load_gt(gt, "pycocotools")).__module__.startswith("pycocotools")
    monkeypatch.setenv("DETKD_COCO_BACKEND", "pycocotools")
    assert coco_box_metrics(gt, dets)["coco_backend"] == "pycocotools"
    assert coco_box_metrics(gt, dets, backend="faster")["coco_backend"] == "faster"  # the argument wins
    monkeypatch.setenv("DETKD_COCO_BACKEND", "fast")
    with pytest.raises(ConfigError, match=r"\$DETKD_COCO_BACKEND is 'fast': use one of faster, pycocotools"):
        coco_box_metrics(gt, dets)
    with pytest.raises(ConfigError, match="the COCO backend is 'cocoapi'"):
        resolve_backend("cocoapi")


def test_faster_backend_missing_says_how_to_fix(monkeypatch):
    gt, dets = one_image(3, 0.5, 0.9, False)
    monkeypatch.setitem(sys.modules, "faster_coco_eval", None)  # import fails as if not installed
    with pytest.raises(ConfigError, match="pip install 'faster-coco-eval>=1.8'.*--coco-backend pycocotools"):
        coco_box_metrics(gt, dets, backend="faster")
    assert coco_box_metrics(gt, dets, backend="pycocotools")["AR100"] == 1.0


def test_cached_ground_truth_reused_per_backend():
    gt, dets = one_image(3, 0.5, 0.9, False)
    fast_gt, ref_gt = load_gt(gt, "faster"), load_gt(gt, "pycocotools")
    assert load_gt(fast_gt, "faster") is fast_gt and load_gt(ref_gt, "pycocotools") is ref_gt
    converted = load_gt(ref_gt, "faster")  # a COCO of the other library is rebuilt from its dataset
    assert type(converted).__module__.startswith("faster_coco_eval")
    for _ in range(2):  # evaluating twice on one COCO object (every epoch) gives the same numbers
        assert_agree(coco_box_metrics(fast_gt, dets, backend="faster"),
                     coco_box_metrics(ref_gt, dets, backend="pycocotools"))


# ------------------------------------------------------------------------------------------------ the benchmark
def test_speed_benchmark_small_run(tmp_path):
    """benchmarks/coco_eval_speed.py at 60 images: both backends, their agreement and the files (not the timings)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "coco_eval_speed.py"
    spec = importlib.util.spec_from_file_location("coco_eval_speed", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--images", "60", "--out-dir", str(tmp_path), "--tag", "t", "--note", "a test run"]) == 0
    r = json.loads((tmp_path / "coco_eval_speed_t.json").read_text())
    assert r["identical"] and r["case"]["images"] == 60 and r["case"]["detections"] > 3000
    assert set(r["runs"]) == {"faster", "pycocotools"} and r["machine"]["cpu"]["logical_cores"] > 0
    assert r["runs"]["faster"]["stats"]["AP"] == pytest.approx(r["runs"]["pycocotools"]["stats"]["AP"], abs=TOL)
    md = (tmp_path / "coco_eval_speed_t.md").read_text()
    assert "faster-coco-eval" in md and "pycocotools" in md and "a test run" in md and "the same numbers" in md

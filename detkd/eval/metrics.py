"""Official COCO box metrics with pycocotools, and their tables.

:func:`coco_box_metrics` runs ``COCOeval(iouType='bbox')`` on a ground-truth instances JSON and a COCO *results*
list/file (``[{'image_id', 'category_id', 'bbox': [x, y, w, h] px, 'score'}]``) and returns::

    {'AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'AR1', 'AR10', 'AR100', 'ARs', 'ARm', 'ARl',   # COCOeval.stats[0..11]
     'per_class': {name: AP or None}, 'per_class_AP50': {name: AP50 or None},
     'per_class_instances': {name: n}, 'n_images': int, 'n_detections': int}

Values are exactly pycocotools' (``-1.0`` where pycocotools gives -1: no ground truth in that size range).
Per-class AP is the mean of ``eval['precision'][:, :, k, area=all, maxDets=100]`` over valid entries, as
detectron2 computes it; ``None`` for a class with no ground truth.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path

import numpy as np

from detkd.errors import DatasetError

STAT_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def load_gt(gt) -> "COCO":  # noqa: F821
    """A pycocotools ``COCO`` from a path, a dict, or a ``COCO`` (returned as is); pycocotools' prints silenced."""
    from pycocotools.coco import COCO

    if isinstance(gt, COCO):
        return gt
    with contextlib.redirect_stdout(io.StringIO()):
        if isinstance(gt, dict):
            coco = COCO()
            coco.dataset = copy.deepcopy(gt)
            coco.createIndex()
            return coco
        return COCO(str(gt))


def _load_dets(dets) -> list:
    if isinstance(dets, (str, Path)):
        try:
            dets = json.loads(Path(dets).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DatasetError(f"detections file '{dets}' unreadable: {e}") from None
    if not isinstance(dets, list):
        raise DatasetError("detections must be a COCO results list [{image_id, category_id, bbox, score}, ...].")
    return copy.deepcopy(dets)  # pycocotools' loadRes adds keys in place


def coco_box_metrics(gt, dets, img_ids: list | None = None) -> dict:
    """Evaluate ``dets`` (path or list) against ``gt`` (path, dict or COCO) on ``img_ids`` (default: all GT images).

    Raises :class:`DatasetError` when a detection names an image or category absent from the ground truth.
    """
    from pycocotools.cocoeval import COCOeval

    coco_gt = load_gt(gt)
    dets = _load_dets(dets)
    gt_imgs, gt_cats = set(coco_gt.getImgIds()), set(coco_gt.getCatIds())
    bad_img = {d.get("image_id") for d in dets} - gt_imgs
    bad_cat = {d.get("category_id") for d in dets} - gt_cats
    if bad_img or bad_cat:
        raise DatasetError(
            "detections do not match the ground truth: "
            + (f"unknown image ids {sorted(map(str, bad_img))[:5]} " if bad_img else "")
            + (f"unknown category ids {sorted(map(str, bad_cat))[:5]} " if bad_cat else "")
            + "- were they produced on this dataset, with the original COCO ids?")
    img_ids = list(gt_imgs if img_ids is None else set(img_ids) & gt_imgs)
    try:
        img_ids.sort()  # pycocotools' own order (it matters for tied scores)
    except TypeError:
        img_ids.sort(key=str)
    cats = coco_gt.loadCats(coco_gt.getCatIds())
    names = _unique_names(cats)
    n_inst = {names[c["id"]]: len(coco_gt.getAnnIds(imgIds=img_ids, catIds=[c["id"]], iscrowd=False)) for c in cats}
    out = {"n_images": len(img_ids), "n_detections": len(dets), "per_class_instances": n_inst}
    if not dets:  # pycocotools' loadRes cannot take an empty list: nothing detected, recall and precision are 0
        has_gt = any(n_inst.values())
        out.update({k: 0.0 if has_gt else -1.0 for k in STAT_KEYS})
        out["per_class"] = {n: (0.0 if k else None) for n, k in n_inst.items()}
        out["per_class_AP50"] = dict(out["per_class"])
        return out
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(dets)
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.params.imgIds = img_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    out.update({k: float(v) for k, v in zip(STAT_KEYS, ev.stats)})
    precision = ev.eval["precision"]  # [T IoU, R recall, K classes, A areas, M maxDets]
    ap, ap50 = {}, {}
    for k, cid in enumerate(ev.params.catIds):
        p = precision[:, :, k, 0, -1]
        p50 = precision[0, :, k, 0, -1]
        ap[names[cid]] = float(np.mean(p[p > -1])) if (p > -1).any() else None
        ap50[names[cid]] = float(np.mean(p50[p50 > -1])) if (p50 > -1).any() else None
    out["per_class"], out["per_class_AP50"] = ap, ap50
    return out


def _unique_names(cats: list[dict]) -> dict:
    """{category id: name}, names made unique with the id where two categories share one."""
    count: dict = {}
    for c in cats:
        count[c.get("name")] = count.get(c.get("name"), 0) + 1
    return {c["id"]: (str(c.get("name")) if count[c.get("name")] == 1 else f"{c.get('name')} ({c['id']})")
            for c in cats}


def _fmt(v) -> str:
    return "-" if v is None or v < 0 else f"{v:.3f}"


def format_table(m: dict, title: str = "COCO bbox") -> str:
    """Overall table (12 COCOeval numbers) and per-class table (instances, AP, AP50) of a metrics dict."""
    w = 7
    lines = [f"{title}: {m.get('n_images', '?')} images, {m.get('n_detections', '?')} detections"]
    lines.append("".join(f"{k:>{w}}" for k in STAT_KEYS))
    lines.append("".join(f"{_fmt(m.get(k)):>{w}}" for k in STAT_KEYS))
    pc = m.get("per_class") or {}
    if pc:
        nw = max(12, *(len(n) for n in pc)) + 2
        lines.append("")
        lines.append(f"{'class':<{nw}}{'instances':>10}{'AP':>{w}}{'AP50':>{w}}")
        inst, ap50 = m.get("per_class_instances", {}), m.get("per_class_AP50", {})
        for n, ap in pc.items():
            lines.append(f"{n:<{nw}}{inst.get(n, 0):>10}{_fmt(ap):>{w}}{_fmt(ap50.get(n)):>{w}}")
    return "\n".join(lines)

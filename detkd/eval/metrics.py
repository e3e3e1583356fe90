"""Official COCO box metrics (``COCOeval``, iouType 'bbox') and their tables.

:func:`coco_box_metrics` evaluates a COCO *results* list/file (``[{'image_id', 'category_id', 'bbox': [x, y, w, h]
px, 'score'}]``) against a ground-truth instances JSON and returns::

    {'AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'AR1', 'AR10', 'AR100', 'ARs', 'ARm', 'ARl',   # COCOeval.stats[0..11]
     'per_class': {name: AP or None}, 'per_class_AP50': {name: AP50 or None},
     'per_class_instances': {name: n}, 'n_images': int, 'n_detections': int, 'coco_backend': str}

Two backends compute the same numbers (``-1.0`` where COCOeval gives -1: no ground truth in that size range):

* ``'faster'`` (default): faster-coco-eval's ``COCOeval_faster``, pycocotools' algorithm in C++ (7.7x faster on a
  COCO-val-sized evaluation on 2 CPU cores: ``benchmarks/coco_eval_speed.py``);
* ``'pycocotools'``: the reference. ``tests/test_coco_backends.py`` checks that both agree on all 12 stats and the
  per-class AP.

Pick one with ``backend=``, ``detkd eval --coco-backend`` or the ``DETKD_COCO_BACKEND`` environment variable (which
also reaches ``detkd distill --coco-eval``). Per-class AP is the mean of
``eval['precision'][:, :, k, area=all, maxDets=100]`` over valid entries, as detectron2 computes it; ``None`` for a
class with no ground truth.

Both backends see the same ground truth, prepared once by :func:`load_gt` as detkd's dataset repair does: missing
``area`` = box w*h (pycocotools raises KeyError, faster-coco-eval silently leaves the box out of every size range),
missing ``iscrowd`` = 0, annotation ids renumbered 1..N when one is missing, not a positive int, or repeated (both
use the id as the "matched" marker, so id 0 counted as unmatched). faster-coco-eval also needs int image ids
(pycocotools accepts strings): other ids are mapped to ints in pycocotools' own (sorted) order, and back. A
detection list with no entry is evaluated too (pycocotools' ``loadRes`` cannot take one: its empty result set is
built directly). Other documented differences do not reach detkd: faster-coco-eval's summary uses
``maxDets[-1]`` where pycocotools hard-codes 100 (the same with COCO's [1, 10, 100]), and it logs instead of printing.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import time
from pathlib import Path

import numpy as np

from detkd.errors import ConfigError, DatasetError

STAT_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
BACKENDS = ("faster", "pycocotools")
DEFAULT_BACKEND = "faster"
BACKEND_ENV = "DETKD_COCO_BACKEND"
BACKEND_LABEL = {"faster": "faster-coco-eval", "pycocotools": "pycocotools"}


def resolve_backend(backend: str | None = None) -> str:
    """``backend``, else ``$DETKD_COCO_BACKEND``, else 'faster'; :class:`ConfigError` for an unknown name."""
    b = backend or os.environ.get(BACKEND_ENV) or DEFAULT_BACKEND
    if b not in BACKENDS:
        src = f"${BACKEND_ENV}" if not backend else "the COCO backend"
        raise ConfigError(f"{src} is '{b}': use one of {', '.join(BACKENDS)} (faster = faster-coco-eval, the "
                          f"default; pycocotools = the reference).")
    return b


def _silent(*args, **kwargs) -> None:
    pass


def _api(backend: str):
    """(COCO class, ``make_eval(gt, dt)``) of a backend."""
    if backend == "faster":
        try:
            from faster_coco_eval import COCO, COCOeval_faster
        except ImportError as e:
            raise ConfigError(f"the 'faster' COCO backend needs faster-coco-eval ({e}): pip install "
                              f"'faster-coco-eval>=1.8', or evaluate with pycocotools (detkd eval --coco-backend "
                              f"pycocotools, or {BACKEND_ENV}=pycocotools).") from None
        return COCO, lambda gt, dt: COCOeval_faster(gt, dt, iouType="bbox", print_function=_silent)
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    return COCO, lambda gt, dt: COCOeval(gt, dt, iouType="bbox")


def _backend_of(coco) -> str | None:
    """'faster' / 'pycocotools' for a COCO object of either library, None for anything else."""
    mod = type(coco).__module__
    if not (hasattr(coco, "dataset") and hasattr(coco, "loadRes")):
        return None
    return "faster" if mod.startswith("faster_coco_eval") else "pycocotools" if mod.startswith("pycocotools") else None


def _prepared(dataset: dict) -> dict:
    """The ground truth both backends evaluate (see the module docstring); ``dataset`` is not modified."""
    anns = [dict(a) for a in dataset.get("annotations", [])]
    for a in anns:
        if "area" not in a:
            bb = a.get("bbox") or [0, 0, 0, 0]
            a["area"] = float(bb[2]) * float(bb[3])
        a.setdefault("iscrowd", 0)
    ids = [a.get("id") for a in anns]
    if any(not isinstance(i, (int, np.integer)) or isinstance(i, bool) or i < 1 for i in ids) \
            or len(set(ids)) != len(ids):
        for k, a in enumerate(anns):
            a["id"] = k + 1
    return {**dataset, "images": [dict(im) for im in dataset.get("images", [])], "annotations": anns,
            "categories": [dict(c) for c in dataset.get("categories", [])]}


def _int_image_ids(dataset: dict) -> dict | None:
    """{original id: int} when some image id is not an int (faster-coco-eval needs ints), in pycocotools' order
    (np.unique: ids compared as strings); the dataset's ids are replaced in place. None when all are ints."""
    ids = [im["id"] for im in dataset["images"]]
    if all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in ids):
        return None
    to_int = {i: k + 1 for k, i in enumerate(sorted(set(ids), key=str))}
    for im in dataset["images"]:
        im["id"] = to_int[im["id"]]
    for a in dataset["annotations"]:
        a["image_id"] = to_int.get(a.get("image_id"), a.get("image_id"))
    return to_int


def load_gt(gt, backend: str | None = None) -> "COCO":  # noqa: F821
    """The ground truth as a ``COCO`` of ``backend`` (see :func:`resolve_backend`), from a path, a dict, or a
    ``COCO`` of either library (one of ``backend`` made by this function is returned as is), prepared as the module
    docstring says. Libraries' prints are silenced. ``coco.detkd_image_ids`` is the {original: int} image id map
    when ids had to be made ints (else None)."""
    backend = resolve_backend(backend)
    if _backend_of(gt) is not None:
        if _backend_of(gt) == backend and hasattr(gt, "detkd_image_ids"):
            return gt
        gt = gt.dataset
    if not isinstance(gt, dict):
        try:
            gt = json.loads(Path(gt).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DatasetError(f"ground-truth file '{gt}' unreadable: {e}") from None
        if not isinstance(gt, dict):
            raise DatasetError("ground truth must be a COCO instances JSON object {images, annotations, categories}.")
    dataset = _prepared(gt)
    image_ids = _int_image_ids(dataset) if backend == "faster" else None
    COCO, _ = _api(backend)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = dataset
        coco.createIndex()
    coco.detkd_image_ids = image_ids
    return coco


def _load_dets(dets) -> list:
    if isinstance(dets, (str, Path)):
        try:
            dets = json.loads(Path(dets).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DatasetError(f"detections file '{dets}' unreadable: {e}") from None
        if isinstance(dets, list) and all(isinstance(d, dict) for d in dets):
            return dets  # fresh from the file: loadRes may add its keys
    if not isinstance(dets, list) or not all(isinstance(d, dict) for d in dets):
        raise DatasetError("detections must be a COCO results list [{image_id, category_id, bbox, score}, ...].")
    return [dict(d) for d in dets]  # loadRes adds keys ('area', 'id', 'segmentation', ...) to each dict in place


def _empty_results(coco_gt, COCO):
    """The results ``COCO`` of no detection (pycocotools' ``loadRes`` indexes the first result)."""
    res = COCO()
    res.dataset = {"images": list(coco_gt.dataset["images"]), "annotations": [],
                   "categories": copy.deepcopy(coco_gt.dataset.get("categories", []))}
    with contextlib.redirect_stdout(io.StringIO()):
        res.createIndex()
    return res


def coco_box_metrics(gt, dets, img_ids: list | None = None, backend: str | None = None,
                     timings: dict | None = None) -> dict:
    """Evaluate ``dets`` (path or list) against ``gt`` (path, dict or COCO) on ``img_ids`` (default: all GT images)
    with ``backend`` ('faster' default, 'pycocotools' the reference; see :func:`resolve_backend`).

    ``timings``: a dict that receives the seconds of each phase: ``load_gt``, ``load_dets`` (read + checks),
    ``load_res`` (``loadRes``), ``evaluate``, ``accumulate``, ``summarize``.
    Raises :class:`DatasetError` when a detection names an image or category absent from the ground truth.
    """
    clock = time.perf_counter
    t = {} if timings is None else timings
    backend = resolve_backend(backend)
    COCO, make_eval = _api(backend)
    t0 = clock()
    coco_gt = load_gt(gt, backend)
    t["load_gt"], t0 = clock() - t0, clock()
    dets = _load_dets(dets)
    to_int = coco_gt.detkd_image_ids
    gt_imgs, gt_cats = set(to_int) if to_int else set(coco_gt.getImgIds()), set(coco_gt.getCatIds())
    bad_img = {d.get("image_id") for d in dets} - gt_imgs
    bad_cat = {d.get("category_id") for d in dets} - gt_cats
    if bad_img or bad_cat:
        raise DatasetError(
            "detections do not match the ground truth: "
            + (f"unknown image ids {sorted(map(str, bad_img))[:5]} " if bad_img else "")
            + (f"unknown category ids {sorted(map(str, bad_cat))[:5]} " if bad_cat else "")
            + "- were they produced on this dataset, with the original COCO ids?")
    img_ids = list(gt_imgs if img_ids is None else set(img_ids) & gt_imgs)
    if to_int:
        img_ids = [to_int[i] for i in img_ids]
        for d in dets:
            d["image_id"] = to_int[d["image_id"]]
    try:
        img_ids.sort()  # pycocotools' own order (it matters for tied scores)
    except TypeError:
        img_ids.sort(key=str)
    cats = coco_gt.loadCats(coco_gt.getCatIds())
    names = _unique_names(cats)
    eval_imgs, n_by_cat = set(img_ids), {c["id"]: 0 for c in cats}
    for a in coco_gt.dataset["annotations"]:
        if a["image_id"] in eval_imgs and not a.get("iscrowd") and a["category_id"] in n_by_cat:
            n_by_cat[a["category_id"]] += 1
    n_inst = {names[c["id"]]: n_by_cat[c["id"]] for c in cats}
    out = {"n_images": len(img_ids), "n_detections": len(dets), "per_class_instances": n_inst,
           "coco_backend": backend}
    t["load_dets"], t0 = clock() - t0, clock()
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(dets) if dets else _empty_results(coco_gt, COCO)
        ev = make_eval(coco_gt, coco_dt)
        ev.params.imgIds = img_ids
        t["load_res"], t0 = clock() - t0, clock()
        ev.evaluate()
        t["evaluate"], t0 = clock() - t0, clock()
        ev.accumulate()
        t["accumulate"], t0 = clock() - t0, clock()
        ev.summarize()
        t["summarize"] = clock() - t0
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

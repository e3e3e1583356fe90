"""Synthetic COCO ground truth + detections with COCO val2017's statistics, for evaluation tests and benchmarks.

:func:`synthetic_eval_case` returns ``(gt, dets)``: an instances dict and a COCO results list. With the defaults
and ``n_images=5000`` it is COCO-val sized: ~37k boxes (7.4 per image, negative-binomial, ~2% images empty),
~500k detections (100 per image on average, Poisson: about half the images have more than COCOeval's maxDets=100),
80 categories with COCO's non-contiguous ids (1..90) and a long-tailed frequency, box sizes log-normal so that
~41% are small (< 32² px), ~35% medium, ~24% large, ~1% ``iscrowd`` regions. Detections: 1-3 jittered copies of
each box (IoU spread over 0.5..0.95, 10% with a wrong class, scores ~ Beta(4, 2)) and background false positives
(scores ~ Beta(1, 6)), rounded as Ultralytics writes them (bbox 3 decimals, score 5 decimals: ties exist).
"""

from __future__ import annotations

import numpy as np

COCO_CATEGORY_IDS = tuple(i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83))
IMAGE_SIZES = ((640, 480), (480, 640), (640, 427), (427, 640), (640, 424), (500, 375))
# box side ~ LogNormal(MU, SIGMA), area = 40-90% of the box (a mask): 41% small, 35% medium, 24% large (COCO val)
SIZE_MU, SIZE_SIGMA = 3.95, 1.176


def _boxes(rng, n: int, wh: np.ndarray) -> np.ndarray:
    """``n`` [x, y, w, h] boxes inside images of size ``wh`` (n, 2), sizes from COCO's distribution."""
    side = np.exp(rng.normal(SIZE_MU, SIZE_SIGMA, n))
    aspect = np.exp(rng.normal(0.0, 0.5, n))
    w = np.clip(side * np.sqrt(aspect), 2.0, wh[:, 0])
    h = np.clip(side / np.sqrt(aspect), 2.0, wh[:, 1])
    x = rng.uniform(0, 1, n) * (wh[:, 0] - w)
    y = rng.uniform(0, 1, n) * (wh[:, 1] - h)
    return np.stack([x, y, w, h], 1)


def synthetic_eval_case(n_images: int = 5000, category_ids=COCO_CATEGORY_IDS, gt_per_image: float = 7.4,
                        dets_per_image: float = 100.0, crowd_frac: float = 0.011, empty_frac: float = 0.0,
                        no_det_frac: float = 0.0, score_decimals: int = 5, seed: int = 0,
                        first_image_id: int = 1) -> tuple[dict, list[dict]]:
    """``(gt, dets)`` with COCO val's statistics (module docstring).

    ``empty_frac``: extra share of images forced to have no ground truth (they still get false positives);
    ``no_det_frac``: share of images with no detection at all; ``score_decimals``: rounding of the scores (fewer
    decimals = more ties); image ids start at ``first_image_id``.
    """
    rng = np.random.default_rng(seed)
    cats = np.asarray(category_ids, dtype=np.int64)
    freq = 1.0 / np.arange(1, len(cats) + 1) ** 1.1  # long tail: the first category is ~20% of the boxes
    freq /= freq.sum()
    sizes = np.asarray(IMAGE_SIZES, dtype=np.float64)[rng.integers(0, len(IMAGE_SIZES), n_images)]
    img_ids = np.arange(first_image_id, first_image_id + n_images)
    n_gt = rng.negative_binomial(3, 3 / (3 + gt_per_image), n_images)
    n_gt[rng.random(n_images) < empty_frac] = 0
    images = [{"id": int(i), "file_name": f"{i:012d}.jpg", "width": int(w), "height": int(h)}
              for i, (w, h) in zip(img_ids, sizes)]

    # ground truth
    g_img = np.repeat(np.arange(n_images), n_gt)
    g_box = _boxes(rng, len(g_img), sizes[g_img])
    g_cat = rng.choice(len(cats), len(g_img), p=freq)
    g_crowd = rng.random(len(g_img)) < crowd_frac
    g_area = g_box[:, 2] * g_box[:, 3] * np.where(g_crowd, 1.0, rng.uniform(0.4, 0.9, len(g_img)))  # mask area
    annotations = [{"id": k + 1, "image_id": int(img_ids[i]), "category_id": int(cats[c]),
                    "bbox": [round(v, 2) for v in b], "area": round(float(a), 2), "iscrowd": int(cr)}
                   for k, (i, b, c, a, cr) in enumerate(zip(g_img, g_box.tolist(), g_cat, g_area, g_crowd))]

    # detections: jittered copies of the boxes, then background false positives up to the image's count
    copies = rng.integers(1, 4, len(g_img))
    t_src = np.repeat(np.arange(len(g_img)), copies)
    t_img = g_img[t_src]
    wh = np.repeat(g_box[:, 2:], copies, 0)
    jitter = rng.normal(0, 1, (len(t_src), 4)) * rng.uniform(0.01, 0.25, (len(t_src), 1))
    t_box = g_box[t_src] + jitter * np.concatenate([wh, wh], 1)
    t_box[:, 2:] = np.maximum(t_box[:, 2:], 1.0)
    t_cat = np.where(rng.random(len(t_src)) < 0.1, rng.choice(len(cats), len(t_src), p=freq), g_cat[t_src])
    t_score = rng.beta(4, 2, len(t_src))
    n_det = rng.poisson(dets_per_image, n_images)
    n_fp = np.maximum(n_det - np.bincount(t_img, minlength=n_images), 0)
    f_img = np.repeat(np.arange(n_images), n_fp)
    f_box = _boxes(rng, len(f_img), sizes[f_img])
    f_cat = rng.choice(len(cats), len(f_img), p=freq)
    f_score = rng.beta(1, 6, len(f_img))

    d_img = np.concatenate([t_img, f_img])
    keep = ~np.isin(d_img, np.flatnonzero(rng.random(n_images) < no_det_frac))
    d_img = d_img[keep]
    d_box = np.round(np.concatenate([t_box, f_box])[keep], 3)
    d_cat = cats[np.concatenate([t_cat, f_cat])[keep]]
    d_score = np.round(np.clip(np.concatenate([t_score, f_score])[keep], 1e-5, 1.0), score_decimals)
    order = np.argsort(d_img, kind="stable")  # grouped by image, as a validator writes them
    dets = [{"image_id": int(img_ids[i]), "category_id": int(c), "bbox": b, "score": float(s)}
            for i, c, b, s in zip(d_img[order], d_cat[order], d_box[order].tolist(), d_score[order])]
    gt = {"info": {"description": f"detkd synthetic COCO-val-like case (seed {seed})"}, "images": images,
          "annotations": annotations, "categories": [{"id": int(c), "name": f"class{c}"} for c in cats]}
    return gt, dets

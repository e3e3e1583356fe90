"""Procedural COCO-format detection dataset: coloured shapes on cluttered backgrounds.

Used by ``detkd demo``, the test-suite and the CPU benchmarks, so that everything runs offline with no
downloaded data. The output has exactly the layout users bring::

    root/
      train/*.jpg   val/*.jpg
      annotations/instances_train.json   annotations/instances_val.json

Difficulty comes from what makes detection hard for a small model: objects from ~6 % to ~45 % of the image side,
several per image, partial occlusion (later shapes are drawn over earlier ones), low-contrast colours, background
clutter (lines, blobs, noise) and distractor shapes of no class.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

SHAPE_CLASSES = ("circle", "square", "triangle", "cross")


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate. ``category_ids`` may be non-contiguous (as in COCO's 1..90)."""

    n_train: int = 160
    n_val: int = 40
    imgsz: int = 128
    max_objects: int = 4
    classes: tuple[str, ...] = SHAPE_CLASSES
    category_ids: tuple[int, ...] | None = None  # default 1..nc
    seed: int = 0
    # difficulty knobs (defaults: the hard, cluttered data described above)
    min_objects: int = 1
    object_size: tuple[float, float] = (0.03, 0.22)  # circumradius range, fraction of the image side
    distractor_p: float = 0.5  # probability of one no-class blob per image
    clutter_lines: tuple[int, int] = (2, 7)  # random lines per background, [low, high)
    noise_std: float = 6.0  # Gaussian sensor noise (grey levels)
    class_colors: tuple[tuple[int, int, int], ...] | None = None  # fixed BGR per class (±jitter); None: random
    color_jitter: int = 30  # per-channel ± range around a class colour
    separated: bool = False  # objects wholly inside the image and not overlapping (no occlusion)


def _draw_shape(img: np.ndarray, kind: str, cx: float, cy: float, r: float, angle: float, color) -> None:
    """Draw one filled shape of circumradius ``r`` centred at (cx, cy)."""
    if kind == "circle":
        cv2.circle(img, (int(cx), int(cy)), int(r), color, -1, lineType=cv2.LINE_AA)
        return
    if kind == "square":
        corners = [angle + np.pi / 4 + k * np.pi / 2 for k in range(4)]
        pts = [(cx + r * np.cos(a), cy + r * np.sin(a)) for a in corners]
    elif kind == "triangle":
        pts = [(cx + r * np.cos(angle + k * 2 * np.pi / 3), cy + r * np.sin(angle + k * 2 * np.pi / 3)) for k in range(3)]
    elif kind == "cross":
        w = r / 3
        base = [(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w), (-r, w), (-r, -w), (-w, -w)]
        c, s = np.cos(angle), np.sin(angle)
        pts = [(cx + x * c - y * s, cy + x * s + y * c) for x, y in base]
    else:  # distractor: an irregular blob of no class
        n = 7
        pts = [(cx + r * (0.6 + 0.4 * np.sin(3 * k)) * np.cos(angle + k * 2 * np.pi / n),
                cy + r * (0.6 + 0.4 * np.sin(3 * k)) * np.sin(angle + k * 2 * np.pi / n)) for k in range(n)]
    cv2.fillPoly(img, [np.round(np.array(pts)).astype(np.int32)], color, lineType=cv2.LINE_AA)


def _shape_extent(kind: str, cx: float, cy: float, r: float, angle: float, size: int) -> list[float] | None:
    """Tight xywh box of a drawn shape, clipped to the image; None when too little of it is visible."""
    mask = np.zeros((size, size), np.uint8)
    _draw_shape(mask, kind, cx, cy, r, angle, 255)
    ys, xs = np.nonzero(mask > 127)
    if len(xs) < 12:
        return None
    x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    return [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]


def _background(rng: np.random.Generator, size: int, lines: tuple[int, int] = (2, 7)) -> np.ndarray:
    """Smooth colour gradient + random lines (sensor noise is added after the shapes)."""
    c0, c1 = rng.integers(40, 215, 3), rng.integers(40, 215, 3)
    t = np.linspace(0, 1, size)[None, :, None]
    img = (c0 * (1 - t) + c1 * t).repeat(size, 0).astype(np.float32)
    img = np.ascontiguousarray(img.astype(np.uint8))
    for _ in range(rng.integers(*lines) if lines[1] > lines[0] else 0):
        p0, p1 = rng.integers(0, size, 2), rng.integers(0, size, 2)
        cv2.line(img, tuple(int(v) for v in p0), tuple(int(v) for v in p1),
                 tuple(int(v) for v in rng.integers(0, 255, 3)), int(rng.integers(1, 3)))
    return img


def _render(rng: np.random.Generator, spec: SyntheticSpec) -> tuple[np.ndarray, list[tuple[int, list[float]]]]:
    """One image and its (class index, xywh box) annotations, occluded shapes' boxes recomputed."""
    size = spec.imgsz
    img = _background(rng, size, spec.clutter_lines)
    objects = []
    for _ in range(rng.integers(spec.min_objects, spec.max_objects + 1)):
        r = rng.uniform(*spec.object_size) * size
        if spec.separated:
            placed = _place_apart(rng, r, size, objects)
            if placed is None:  # no room left: fewer objects in this image
                continue
            cx, cy = placed
        else:
            cx, cy = rng.uniform(0, size), rng.uniform(0, size)
        objects.append((int(rng.integers(len(spec.classes))), cx, cy, r, rng.uniform(0, 2 * np.pi)))
    if rng.random() < spec.distractor_p:  # a distractor that belongs to no class
        objects.insert(int(rng.integers(len(objects) + 1)),
                       (-1, rng.uniform(0, size), rng.uniform(0, size), rng.uniform(0.05, 0.15) * size, 0.0))
    canvas_ids = np.full((size, size), -1, np.int32)  # which object owns each pixel (for occlusion)
    for k, (cls, cx, cy, r, angle) in enumerate(objects):
        kind = spec.classes[cls] if cls >= 0 else "blob"
        if spec.class_colors is not None and cls >= 0:
            base = np.array(spec.class_colors[cls % len(spec.class_colors)])
            jitter = rng.integers(-spec.color_jitter, spec.color_jitter + 1, 3)
            color = tuple(int(v) for v in np.clip(base + jitter, 0, 255))
        else:
            color = tuple(int(v) for v in rng.integers(0, 255, 3))
        _draw_shape(img, kind, cx, cy, r, angle, color)
        m = np.zeros((size, size), np.uint8)
        _draw_shape(m, kind, cx, cy, r, angle, 255)
        canvas_ids[m > 127] = k
    annotations = []
    for k, (cls, cx, cy, r, angle) in enumerate(objects):
        if cls < 0:
            continue
        full = _shape_extent(spec.classes[cls], cx, cy, r, angle, size)
        visible = np.argwhere(canvas_ids == k)
        if full is None or len(visible) < 0.35 * full[2] * full[3] * 0.5:  # mostly hidden: not labelled
            continue
        ys, xs = visible[:, 0], visible[:, 1]
        box = [float(xs.min()), float(ys.min()), float(xs.max() + 1 - xs.min()), float(ys.max() + 1 - ys.min())]
        annotations.append((cls, box))
    noise = rng.normal(0, spec.noise_std, img.shape)
    img = np.clip(img.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    return img, annotations


def _place_apart(rng: np.random.Generator, r: float, size: int, objects: list, tries: int = 30):
    """A centre for a shape of circumradius ``r`` wholly inside the image and clear of ``objects``; None if none found."""
    if 2 * r >= size:
        return None
    for _ in range(tries):
        cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
        if all((cx - ox) ** 2 + (cy - oy) ** 2 > (r + orr + 1) ** 2 for _, ox, oy, orr, _ in objects):
            return cx, cy
    return None


def make_shapes_dataset(root: str | Path, spec: SyntheticSpec = SyntheticSpec()) -> Path:
    """Write the dataset under ``root`` (idempotent: an existing complete dataset is reused). Returns ``root``."""
    root = Path(root)
    ids = spec.category_ids or tuple(range(1, len(spec.classes) + 1))
    if len(ids) != len(spec.classes):
        raise ValueError(f"category_ids has {len(ids)} ids for {len(spec.classes)} classes")
    marker = root / "annotations" / ".complete.json"
    if marker.exists() and json.loads(marker.read_text()) == _spec_dict(spec):
        return root
    rng = np.random.default_rng(spec.seed)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    ann_id = 1
    for split, n in (("train", spec.n_train), ("val", spec.n_val)):
        (root / split).mkdir(parents=True, exist_ok=True)
        coco = {
            "info": {"description": "detkd procedural shapes", "version": "1"},
            "images": [],
            "annotations": [],
            "categories": [{"id": cid, "name": name, "supercategory": "shape"} for cid, name in zip(ids, spec.classes)],
        }
        for i in range(n):
            img, anns = _render(rng, spec)
            name = f"{split}_{i:05d}.jpg"
            cv2.imwrite(str(root / split / name), img, [cv2.IMWRITE_JPEG_QUALITY, 92])
            image_id = i + 1 if split == "train" else 100000 + i
            coco["images"].append({"id": image_id, "file_name": name, "width": spec.imgsz, "height": spec.imgsz})
            for cls, box in anns:
                coco["annotations"].append({
                    "id": ann_id, "image_id": image_id, "category_id": ids[cls], "bbox": [round(v, 2) for v in box],
                    "area": round(box[2] * box[3], 2), "iscrowd": 0,
                })
                ann_id += 1
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))
    marker.write_text(json.dumps(_spec_dict(spec)))
    return root


def _spec_dict(spec: SyntheticSpec) -> dict:
    d = dict(spec.__dict__)
    d["classes"], d["category_ids"] = list(spec.classes), list(spec.category_ids or [])
    d["object_size"], d["clutter_lines"] = list(spec.object_size), list(spec.clutter_lines)
    d["class_colors"] = [list(c) for c in spec.class_colors] if spec.class_colors is not None else None
    return d

"""Read and validate one COCO ``instances`` JSON against its image folder.

Problems a user can fix by choosing another file (not JSON, not COCO, no categories, no usable image) raise one
:class:`~detkd.errors.DatasetError` naming the problem and the fix. Everything else is *counted*, handled the way
COCO tooling does, and reported at the end as a table (:meth:`ValidationReport.table`):

=============================  ==========================================================================
issue key                      what happens
=============================  ==========================================================================
images_missing                 image file not found: image skipped (with its annotations)
images_corrupt                 file cannot be decoded (or truncated JPEG): skipped
images_unsupported_format      extension Ultralytics cannot read: skipped
images_too_small               a side under 10 px (Ultralytics rejects these): skipped
images_32bit                   32-bit samples (float or int TIFF: depth, thermal): OpenCV cannot read them: skipped
images_malformed               image entry without ``id``/``file_name``: skipped
images_duplicate_id            a later image with an ``id`` already seen: skipped, the first one is kept
images_name_clash              same path but extension as another image (a.jpg / a.png): skipped (YOLO layout)
images_non_rgb                 grayscale / RGBA / palette / CMYK / 16-bit: kept (the loader converts to RGB)
images_size_mismatch           ``width``/``height`` in the JSON differ from the file: the file's size is used
images_exif_rotated            EXIF orientation 2-8: kept; labels written in the displayed frame (see below)
images_exif_stored_frame       of those, the JSON's boxes are in the stored (un-rotated) frame: labels turned
images_background              no training box: kept as a background image (empty label file)
annotations_unknown_image      ``image_id`` names no image: skipped
annotations_unknown_category   ``category_id`` names no category: skipped
annotations_malformed_bbox     ``bbox`` missing or not 4 finite numbers: skipped
annotations_nonpositive_size   width or height <= 0: skipped
annotations_outside_image      box entirely outside the image: skipped
annotations_clipped            box partly outside the image: clipped to it (training labels)
annotations_crowd              ``iscrowd=1``: ignored for training, kept for evaluation (as COCO does)
annotations_on_skipped_image   box of an image that was skipped: skipped
annotations_duplicate_id       annotation ``id`` missing or repeated: renumbered in the evaluation copy
=============================  ==========================================================================

Issues that would make pycocotools crash or silently mis-evaluate (duplicate image ids, dangling or malformed
annotations, missing ``area``/``iscrowd``/``id``) set :attr:`CocoSplit.needs_repair`; evaluation then uses the
repaired copy from :func:`repaired_ground_truth` instead of the original JSON.

EXIF orientation (:mod:`detkd.data.exif`): Ultralytics loads every image upright, in its *displayed* frame (EXIF
tag applied), so the YOLO labels are always in that frame and :attr:`CocoImage.width`/``height`` are its size. The
JSON's boxes stay in the frame the JSON uses, decided per image by :func:`detkd.data.exif.decide_frames` (boxes
that fit only one frame, then the JSON's ``width``/``height``, else the displayed frame) and stored in
:attr:`CocoImage.json_frame`; bounds checks and clipping happen in that frame, and ``images_size_mismatch``
compares the JSON's size with the file's size in that frame.

Box format throughout: COCO ``[x, y, w, h]`` in pixels, top-left origin, in the JSON's frame.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from detkd.data.exif import SWAPS, box_to_displayed, decide_frames, displayed_size, image_orientation
from detkd.errors import DatasetError

COCO_FORMAT_URL = "https://cocodataset.org/#format-data"

# issue key -> (effect, whether it is a skip of data). Order = report order.
ISSUES: dict[str, str] = {
    "images_missing": "skipped",
    "images_corrupt": "skipped",
    "images_unsupported_format": "skipped",
    "images_too_small": "skipped",
    "images_32bit": "skipped (32-bit samples: OpenCV, Ultralytics' loader, cannot read them; save as 8 or 16 bit)",
    "images_malformed": "skipped",
    "images_duplicate_id": "skipped (first kept)",
    "images_name_clash": "skipped (same label file name as another image)",
    "images_non_rgb": "kept, converted to RGB by the loader",
    "images_size_mismatch": "kept, size read from the file",
    "images_exif_rotated": "kept, labels in the displayed (EXIF-rotated) frame Ultralytics loads",
    "images_exif_stored_frame": "JSON boxes in the stored frame: labels turned, predictions turned back",
    "images_background": "kept as background",
    "annotations_unknown_image": "skipped",
    "annotations_unknown_category": "skipped",
    "annotations_malformed_bbox": "skipped",
    "annotations_nonpositive_size": "skipped",
    "annotations_outside_image": "skipped",
    "annotations_clipped": "clipped to the image (training)",
    "annotations_crowd": "ignored for training, kept for evaluation",
    "annotations_on_skipped_image": "skipped",
    "annotations_duplicate_id": "renumbered (evaluation copy)",
}
# Issues after which the original JSON is not fit for pycocotools as is.
_STRUCTURAL = {
    "images_duplicate_id", "images_malformed", "annotations_unknown_image", "annotations_unknown_category",
    "annotations_malformed_bbox", "annotations_duplicate_id", "annotations_nonpositive_size",
}


@dataclass
class ValidationReport:
    """Counts (and up to 3 examples) of every issue met while reading one split."""

    split: str
    json_path: Path
    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    n_images: int = 0  # usable images
    n_boxes: int = 0  # training boxes written
    n_annotations: int = 0  # annotation entries in the JSON
    category_ids: list = field(default_factory=list)  # ids the JSON's 'categories' define

    def add(self, key: str, example: str = "") -> None:
        self.counts[key] += 1
        ex = self.examples.setdefault(key, [])
        if example and len(ex) < 3:
            ex.append(example)

    def table(self) -> str:
        """Readable multi-line report; empty issues are left out."""
        head = f"{self.split}: {self.n_images} images, {self.n_boxes} training boxes ({self.json_path.name})"
        rows = [(k, self.counts[k], ISSUES[k], "; ".join(self.examples.get(k, []))) for k in ISSUES if self.counts[k]]
        if not rows:
            return head + " - no issues"
        w = max(len(r[0]) for r in rows)
        lines = [head, f"  {'issue':<{w}}  {'count':>6}  effect  (examples)"]
        lines += [f"  {k:<{w}}  {n:>6}  {eff}" + (f"  ({ex})" if ex else "") for k, n, eff, ex in rows]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"split": self.split, "json": str(self.json_path), "n_images": self.n_images, "n_boxes": self.n_boxes,
                "n_annotations": self.n_annotations, "category_ids": list(self.category_ids),
                "counts": {k: self.counts[k] for k in ISSUES if self.counts[k]}, "examples": self.examples}


_WHY = {  # what a dropped annotation means, for a split left without boxes
    "annotations_unknown_category": "category_id not among the ids in 'categories' {ids}",
    "annotations_unknown_image": "image_id names no image of the JSON",
    "annotations_on_skipped_image": "their images were skipped (missing, corrupt or unsupported files)",
    "annotations_crowd": "iscrowd=1 boxes are ignored for training",
    "annotations_outside_image": "the box lies outside its image",
    "annotations_nonpositive_size": "width or height <= 0",
    "annotations_malformed_bbox": "bbox is not 4 finite numbers",
}


def why_no_boxes(report: dict) -> str:
    """Why a split (``ValidationReport.to_dict()``) has no training box: no annotation at all, or which checks
    dropped how many of them, with examples."""
    n = report.get("n_annotations", 0)
    if not n:
        return f"its JSON has no annotations ({report['n_images']} images, all background)"
    ids = ", ".join(map(str, report.get("category_ids", [])))
    parts = []
    for k, why in _WHY.items():
        if report["counts"].get(k):
            ex = "; ".join(report["examples"].get(k, [])[:2])
            parts.append(f"{report['counts'][k]} {k} ({why.format(ids=ids)}" + (f"; e.g. {ex})" if ex else ")"))
    return f"all {n} annotations were dropped: " + ", ".join(parts)


@dataclass
class CocoImage:
    """One usable image: COCO ``id``, ``file_name`` (relative to the split's image dir), size from the file in the
    displayed frame (EXIF orientation applied: what Ultralytics loads), and the frame of the JSON's boxes."""

    id: int | str
    file_name: str
    path: Path
    width: int  # displayed frame
    height: int
    copy: bool = False  # True when the file must be copied, not linked (Ultralytics rewrites it in place)
    orientation: int = 1  # EXIF orientation tag (1 = none)
    json_frame: str = "displayed"  # frame of the JSON's boxes: 'displayed' or 'stored' (see detkd.data.exif)

    @property
    def json_size(self) -> tuple[int, int]:
        """``(width, height)`` in the JSON's frame."""
        return displayed_size(self.width, self.height, self.orientation) if self.json_frame == "stored" \
            else (self.width, self.height)

    def to_displayed(self, box) -> list[float]:
        """A ``[x, y, w, h]`` box of the JSON -> the displayed frame (the YOLO labels' frame)."""
        return box_to_displayed(box, self.orientation, *self.json_size) if self.json_frame == "stored" else list(box)


@dataclass
class CocoSplit:
    """A validated split. ``boxes[image_id]`` = training boxes ``[(category_id, [x, y, w, h])]``, clipped, in the
    JSON's frame (:meth:`CocoImage.to_displayed` gives the labels' frame)."""

    split: str
    json_path: Path
    image_dir: Path
    categories: list[dict]  # [{'id': int, 'name': str}], sorted by id
    images: list[CocoImage]
    boxes: dict
    report: ValidationReport
    needs_repair: bool
    raw: dict  # the parsed JSON (used to build the repaired evaluation copy)
    crowd: dict = field(default_factory=dict)  # image_id -> number of crowd boxes (kept for evaluation)


def load_coco_json(path: str | Path) -> dict:
    """Parse ``path`` and check it is a COCO instances file (top-level ``images``, ``annotations``, ``categories``)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"COCO annotation file '{path}' not found. Check the path (expected "
                           f"annotations/instances_<split>.json).")
    try:
        with open(path, encoding="utf-8") as f:
            coco = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"'{path}' is not valid JSON ({e}). Re-export the annotations as COCO JSON.") from None
    if not isinstance(coco, dict):
        raise DatasetError(f"'{path}' is not a COCO instances file: the top level is a {type(coco).__name__}, "
                           f"expected an object with 'images', 'annotations' and 'categories' ({COCO_FORMAT_URL}).")
    missing = [k for k in ("images", "annotations", "categories") if k not in coco]
    if missing:
        raise DatasetError(f"'{path}' is not a COCO instances file: missing top-level key(s) "
                           f"{', '.join(repr(k) for k in missing)}. A COCO detection JSON has 'images', "
                           f"'annotations' and 'categories' lists ({COCO_FORMAT_URL}).")
    for k in ("images", "annotations", "categories"):
        if not isinstance(coco[k], list):
            raise DatasetError(f"'{path}': '{k}' must be a list, got {type(coco[k]).__name__} ({COCO_FORMAT_URL}).")
    return coco


def parse_categories(coco: dict, path: Path) -> list[dict]:
    """``[{'id', 'name'}]`` sorted by id; duplicate/malformed categories are errors (they change the class list)."""
    cats: dict[int, str] = {}
    for c in coco["categories"]:
        if not isinstance(c, dict) or not isinstance(c.get("id"), int) or isinstance(c.get("id"), bool):
            raise DatasetError(f"'{path}': category {c!r} has no integer 'id'. Every category needs "
                               f"{{'id': int, 'name': str}}.")
        name = str(c.get("name", f"class_{c['id']}"))
        if c["id"] in cats and cats[c["id"]] != name:
            raise DatasetError(f"'{path}': category id {c['id']} is defined twice ('{cats[c['id']]}' and '{name}'). "
                               f"Give each category a unique id.")
        cats[c["id"]] = name
    if not cats:
        raise DatasetError(f"'{path}' defines no categories. Add a 'categories' list of {{'id', 'name'}}.")
    phantom = dataset_supercategory(coco, cats)
    return [{"id": i, "name": cats[i]} for i in sorted(cats) if i != phantom]


def dataset_supercategory(coco: dict, cats: dict[int, str]) -> int | None:
    """The id of a category that only names the dataset, or None: Roboflow's COCO exports list the dataset as a
    category (id 0, e.g. 'raccoons') that is the ``supercategory`` of every other category and has no annotation.
    Kept, it would be a class the detector learns only as background (a one-class dataset trained as two)."""
    for c in coco["categories"]:
        others = [x for x in coco["categories"] if x is not c]
        if others and all(isinstance(x, dict) and x.get("supercategory") == cats[c["id"]] for x in others) \
                and not any(isinstance(a, dict) and a.get("category_id") == c["id"] for a in coco["annotations"]):
            return c["id"]
    return None


PIL_STORED_SIZE_FORMATS = {"JPEG", "MPO", "PNG", "AVIF"}  # Pillow reports their stored (un-turned) size


def _stored_size_from_loaded(path: Path, w: int, h: int) -> tuple[int, int]:
    """The stored size of an image turned by EXIF 5-8 whose format Pillow may report already turned (TIFF, WebP:
    it varies with Pillow and OpenCV versions): the transpose of the size Ultralytics' loader gives (decoded, as
    Ultralytics' ``exif_size`` does for these formats); Pillow's ``(w, h)`` when it cannot be decoded."""
    from ultralytics.utils.patches import imread

    loaded = imread(str(path))
    return (w, h) if loaded is None else (loaded.shape[0], loaded.shape[1])


def _check_image(path: Path) -> tuple[str | None, int, int, str, bool, int]:
    """Open an image without decoding it fully. Returns (problem or None, stored width, stored height, PIL mode,
    needs_copy, EXIF orientation)."""
    from PIL import Image

    if not path.is_file():
        return "images_missing", 0, 0, "", False, 1
    try:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:  # verify() leaves the object unusable; re-open for size/mode
            w, h, mode, fmt, orientation = im.width, im.height, im.mode, im.format, image_orientation(im)
        needs_copy = False
        if fmt == "JPEG":
            with open(path, "rb") as f:
                f.seek(-2, 2)
                if f.read() != b"\xff\xd9":  # no end-of-image marker: truncated, or trailing bytes
                    with Image.open(path) as im:
                        im.load()  # raises on a truncated file
                    needs_copy = True  # decodable, but Ultralytics re-saves such files in place: don't link
    except Exception:
        return "images_corrupt", 0, 0, "", False, 1
    if orientation in SWAPS and fmt not in PIL_STORED_SIZE_FORMATS:
        w, h = _stored_size_from_loaded(path, w, h)
    if min(w, h) < 10:
        return "images_too_small", w, h, mode, False, orientation
    if mode == "F" or (mode == "I" and fmt == "TIFF"):  # 32-bit float / int samples: cv2.imread gives None (a
        # 16-bit PNG is 'I;16', and 'I' in old Pillow: OpenCV reads those)
        return "images_32bit", w, h, mode, False, orientation
    return None, w, h, mode, needs_copy, orientation


def _finite_box(b) -> list[float] | None:
    if not isinstance(b, (list, tuple)) or len(b) != 4:
        return None
    try:
        v = [float(x) for x in b]
    except (TypeError, ValueError):
        return None
    return v if all(math.isfinite(x) for x in v) else None


def validate_coco(coco: dict, json_path: str | Path, image_dir: str | Path, split: str = "val",
                  check_images: bool = True, progress: bool = True) -> CocoSplit:
    """Validate a parsed COCO dict (see :func:`load_coco_json`) whose ``file_name``s are relative to ``image_dir``.

    ``check_images=False`` trusts the JSON's width/height and skips opening files (statistics only); an image the
    JSON gives no size is still opened for it.
    """
    from ultralytics.data.utils import IMG_FORMATS

    json_path, image_dir = Path(json_path), Path(image_dir)
    report = ValidationReport(split, json_path)
    categories = parse_categories(coco, json_path)
    cat_ids = {c["id"] for c in categories}

    # Images: structure first, then the files (in parallel: I/O bound)
    seen: dict = {}
    entries = []
    for im in coco["images"]:
        if not isinstance(im, dict) or "id" not in im or not isinstance(im.get("file_name"), str) \
                or isinstance(im["id"], (list, dict, float)):
            report.add("images_malformed", str(im)[:60])
            continue
        if im["id"] in seen:
            report.add("images_duplicate_id", f"id {im['id']}: {im['file_name']}")
            continue
        seen[im["id"]] = im
        if im["file_name"].rpartition(".")[-1].lower() not in IMG_FORMATS:
            report.add("images_unsupported_format", im["file_name"])
            continue
        entries.append(im)

    def check(im):
        p = image_dir / im["file_name"]
        w, h = im.get("width"), im.get("height")
        trusted = not check_images and all(isinstance(v, (int, float)) and v > 0 for v in (w, h))
        return (im, p, None, w, h, "RGB", False, 1) if trusted else (im, p, *_check_image(p))  # no size: read it

    results = []
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        it = pool.map(check, entries)
        if progress and check_images and len(entries) > 50:
            from ultralytics.utils import TQDM

            it = TQDM(it, total=len(entries), desc=f"detkd: checking {split} images")
        results = list(it)

    images: dict = {}
    for im, p, problem, w, h, mode, needs_copy, orientation in results:
        if problem:
            report.add(problem, im["file_name"])
            continue
        if mode not in ("RGB",):
            report.add("images_non_rgb", f"{im['file_name']} ({mode})")
        dw, dh = displayed_size(int(w), int(h), orientation)
        images[im["id"]] = CocoImage(im["id"], im["file_name"], p, dw, dh, needs_copy, orientation)

    # Annotations: structure first; bounds once the frame of each image's boxes is known
    pending: dict = {i: [] for i in images}  # image id -> [(ann id, category id, box, crowd)]
    crowd: dict = {}
    ann_ids = set()
    for a in coco["annotations"]:
        if not isinstance(a, dict):
            report.add("annotations_malformed_bbox", str(a)[:60])
            continue
        aid = a.get("id")
        if aid is None or aid in ann_ids:
            report.add("annotations_duplicate_id", f"id {aid}")
        ann_ids.add(aid)
        img_id = a.get("image_id")
        if img_id not in seen:
            report.add("annotations_unknown_image", f"ann {aid} -> image_id {img_id}")
            continue
        if a.get("category_id") not in cat_ids:
            report.add("annotations_unknown_category", f"ann {aid} -> category_id {a.get('category_id')}")
            continue
        if img_id not in images:
            report.add("annotations_on_skipped_image", f"ann {aid}")
            continue
        box = _finite_box(a.get("bbox"))
        if box is None:
            report.add("annotations_malformed_bbox", f"ann {aid}: bbox {a.get('bbox')!r}")
            continue
        x, y, w, h = box
        if w <= 0 or h <= 0:
            report.add("annotations_nonpositive_size", f"ann {aid}: bbox {box}")
            continue
        pending[img_id].append((aid, a["category_id"], box, bool(a.get("iscrowd", 0))))

    _exif_frames(images, seen, pending, report, check_images)
    boxes: dict = {i: [] for i in images}
    for img_id, anns in pending.items():
        W, H = images[img_id].json_size
        for aid, cid, box, is_crowd in anns:
            if is_crowd:
                report.add("annotations_crowd", f"ann {aid}")
                crowd[img_id] = crowd.get(img_id, 0) + 1
                continue
            x, y, w, h = box
            x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + w, W), min(y + h, H)
            if x1 <= x0 or y1 <= y0:
                report.add("annotations_outside_image", f"ann {aid}: bbox {box} in {W}x{H}")
                continue
            if (x0, y0, x1, y1) != (x, y, x + w, y + h):
                if max(x0 - x, y0 - y, x + w - x1, y + h - y1) > 1e-3:  # not float noise of a box on the border
                    report.add("annotations_clipped", f"ann {aid}: bbox {box} in {W}x{H}")
                box = [x0, y0, x1 - x0, y1 - y0]
            boxes[img_id].append((cid, box))

    for i, b in boxes.items():
        if not b:
            report.add("images_background", images[i].file_name)
    if not images:
        raise DatasetError(
            f"{split} split of '{json_path}': none of its {len(coco['images'])} images is usable "
            f"({', '.join(f'{k}: {n}' for k, n in report.counts.items())}). Check that the images lie in "
            f"'{image_dir}' under their 'file_name' (or name the image folder in a detkd COCO YAML).")
    needs_repair = any(report.counts[k] for k in _STRUCTURAL) or any(
        isinstance(a, dict) and ("area" not in a or "iscrowd" not in a) for a in coco["annotations"])
    report.n_images = len(images)
    report.n_boxes = sum(len(b) for b in boxes.values())
    report.n_annotations = len(coco["annotations"])
    report.category_ids = sorted(cat_ids)
    return CocoSplit(split, json_path, image_dir, categories, list(images.values()), boxes, report, needs_repair,
                     coco, crowd)


def _exif_frames(images: dict, entries: dict, pending: dict, report: ValidationReport, check_images: bool) -> None:
    """Set each image's :attr:`CocoImage.json_frame` (EXIF-rotated images only, :func:`decide_frames`) and report
    EXIF-rotated images and JSON sizes that differ from the file's in the JSON's frame."""
    def json_wh(i):
        wh = (entries[i].get("width"), entries[i].get("height"))
        return wh if all(isinstance(v, (int, float)) for v in wh) else None

    rotated = {i: im for i, im in images.items() if im.orientation != 1}
    frames = decide_frames({i: (displayed_size(im.width, im.height, im.orientation), (im.width, im.height),
                                json_wh(i), [b for _, _, b, _ in pending[i]]) for i, im in rotated.items()})
    for i, im in images.items():
        if i in frames:
            im.json_frame, reason = frames[i]
            sw, sh = displayed_size(im.width, im.height, im.orientation)
            report.add("images_exif_rotated", f"{im.file_name}: orientation {im.orientation}, stored {sw}x{sh}, "
                                              f"displayed {im.width}x{im.height}, JSON boxes in the {im.json_frame} "
                                              f"frame ({reason})")
            if im.json_frame == "stored":
                report.add("images_exif_stored_frame", im.file_name)
        jw, jh = entries[i].get("width"), entries[i].get("height")
        if check_images and (jw, jh) != im.json_size:
            where = f" ({im.json_frame} frame)" if i in frames else ""
            report.add("images_size_mismatch", f"{im.file_name}: JSON {jw}x{jh}, file {'x'.join(map(str, im.json_size))}"
                                               f"{where}")


def repaired_ground_truth(s: CocoSplit) -> dict:
    """A pycocotools-safe copy of the split's JSON: first of duplicate image ids kept, dangling/malformed/empty
    annotations dropped, missing ``area``/``iscrowd`` filled, annotation ids made unique. Boxes are NOT clipped:
    evaluation sees the dataset's own boxes, as COCO does. Images skipped as unreadable stay in the file (their
    ids are simply not evaluated)."""
    cat_ids = {c["id"] for c in s.categories}
    images, seen = [], set()
    for im in s.raw["images"]:
        if isinstance(im, dict) and "id" in im and isinstance(im.get("file_name"), str) and im["id"] not in seen:
            seen.add(im["id"])
            images.append(im)
    anns, next_id, used = [], 1, set()
    for a in s.raw["annotations"]:
        if not isinstance(a, dict) or a.get("image_id") not in seen or a.get("category_id") not in cat_ids:
            continue
        box = _finite_box(a.get("bbox"))
        if box is None or box[2] <= 0 or box[3] <= 0:
            continue
        a = {**a, "bbox": box, "iscrowd": int(bool(a.get("iscrowd", 0)))}
        a.setdefault("area", box[2] * box[3])
        if a.get("id") is None or a["id"] in used:
            while next_id in used:
                next_id += 1
            a["id"] = next_id
        used.add(a["id"])
        anns.append(a)
    return {**{k: v for k, v in s.raw.items() if k not in ("images", "annotations", "categories")},
            "images": images, "annotations": anns, "categories": [dict(c) for c in s.categories]}

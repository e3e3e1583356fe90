"""Convert between validated COCO splits and the Ultralytics YOLO layout, both directions.

COCO -> YOLO (:func:`write_yolo_layout`) writes::

    out_dir/
      data.yaml                       Ultralytics data.yaml + COCO mapping keys (below)
      images/<split>/<file_name>      symlinks to the original images (copies where linking is impossible)
      labels/<split>/<stem>.txt       one line per box: ``class_index cx cy w h``, normalised to [0, 1]
      image_ids_<split>.json          {file_name: COCO image id} of the images in images/<split>
      exif_stored_<split>.json        {file_name: EXIF orientation} of the images whose JSON boxes are in the stored
                                      (un-rotated) frame (see below)
      annotations/instances_<split>.json   only when the original JSON needed repairs for pycocotools
      report.json                     validation counts per split

Extra ``data.yaml`` keys (ignored by Ultralytics, used by detkd's evaluation):
``category_ids`` (COCO id of each class index), ``coco`` {split: original JSON}, ``coco_eval`` {split: JSON
evaluated against: the original, or its repaired copy}, ``images`` {split: original image dir}, ``image_ids``
{split: file name of the id map}, ``exif_stored`` {split: file name of the EXIF map}.

EXIF orientation (:mod:`detkd.data.exif`): images are linked unchanged and Ultralytics loads them upright (EXIF
applied), so labels are written in that displayed frame and normalised by its size. Where the JSON's boxes are in
the stored frame, they are turned into the displayed frame here, and everything that returns to COCO
coordinates (:class:`~detkd.eval.validator.COCOEvalDetectionValidator`'s predictions, :func:`yolo_to_coco`) turns
them back with the ``exif_stored`` map, so predictions land in the JSON's own frame.

YOLO -> COCO (:func:`yolo_to_coco`) rebuilds a COCO dict from a data.yaml's split, restoring the original category
and image ids when the data.yaml carries them.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import yaml

from detkd.data.validate import CocoSplit, repaired_ground_truth
from detkd.errors import DatasetError

LABEL_FMT = "{:.10g}"  # 10 significant digits: boxes survive a round trip to ~1e-9 relative


def _safe_rel(file_name: str) -> Path:
    rel = Path(file_name)
    if rel.is_absolute() or ".." in rel.parts:
        return Path(rel.name)
    return rel


def _place(src: Path, dst: Path, link: bool) -> None:
    """Symlink ``dst`` -> ``src``; fall back to a hard link, then a copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if link:
        try:
            os.symlink(src.resolve(), dst)
            return
        except OSError:
            try:
                os.link(src, dst)
                return
            except OSError:
                pass
    shutil.copy2(src, dst)


def yolo_label_lines(boxes: list, class_index: dict, width: int, height: int) -> list[str]:
    """COCO ``[(category_id, [x, y, w, h])]`` in pixels -> YOLO lines ``"cls cx cy w h"`` normalised by the size."""
    lines = []
    for cid, (x, y, w, h) in boxes:
        vals = ((x + w / 2) / width, (y + h / 2) / height, w / width, h / height)
        lines.append(f"{class_index[cid]} " + " ".join(LABEL_FMT.format(v) for v in vals))
    return lines


def write_yolo_layout(splits: dict[str, CocoSplit], categories: list[dict], out_dir: str | Path, link: bool = True,
                      extra: dict | None = None, progress: bool = True) -> Path:
    """Write the YOLO layout of validated ``splits`` into ``out_dir`` and return its ``data.yaml``.

    ``categories``: ``[{'id', 'name'}]`` in class-index order (index i = YOLO class i). ``splits`` must contain
    'val'; a missing 'train' points at the val images (evaluation-only datasets).
    """
    from ultralytics.data.utils import img2label_paths
    from ultralytics.utils import TQDM

    out_dir = Path(out_dir)
    class_index = {c["id"]: i for i, c in enumerate(categories)}
    data = {"path": str(out_dir.resolve())}
    coco, coco_eval, image_dirs, id_maps, exif_maps, reports = {}, {}, {}, {}, {}, {}
    for split, s in splits.items():
        img_root = out_dir / "images" / split
        img_root.mkdir(parents=True, exist_ok=True)
        id_map, exif_map, used_labels = {}, {}, set()
        it = TQDM(s.images, desc=f"detkd: writing YOLO {split} labels") if progress and len(s.images) > 200 \
            else s.images
        for im in it:
            rel = _safe_rel(im.file_name)
            dst = img_root / rel
            label = Path(img2label_paths([str(dst)])[0])
            if label in used_labels or dst.exists() or dst.is_symlink():
                s.report.add("images_name_clash", im.file_name)
                continue
            used_labels.add(label)
            _place(im.path, dst, link and not im.copy)
            label.parent.mkdir(parents=True, exist_ok=True)
            shown = [(cid, im.to_displayed(box)) for cid, box in s.boxes[im.id]]  # Ultralytics' (EXIF) frame
            label.write_text("\n".join(yolo_label_lines(shown, class_index, im.width, im.height)))
            id_map[rel.as_posix()] = im.id
            if im.json_frame == "stored" and im.orientation != 1:
                exif_map[rel.as_posix()] = im.orientation
        s.report.n_images = len(id_map)
        (out_dir / f"image_ids_{split}.json").write_text(json.dumps(id_map))
        (out_dir / f"exif_stored_{split}.json").write_text(json.dumps(exif_map))
        exif_maps[split] = f"exif_stored_{split}.json"
        data[split] = f"images/{split}"
        coco[split] = str(s.json_path.resolve())
        if s.needs_repair:
            fixed = out_dir / "annotations" / f"instances_{split}.json"
            fixed.parent.mkdir(parents=True, exist_ok=True)
            fixed.write_text(json.dumps(repaired_ground_truth(s)))
            coco_eval[split] = str(fixed.resolve())
        else:
            coco_eval[split] = coco[split]
        image_dirs[split] = str(s.image_dir.resolve())
        id_maps[split] = f"image_ids_{split}.json"
        reports[split] = s.report.to_dict()
    if "train" not in splits:
        data["train"] = data["val"]  # evaluation-only dataset
    data.update({
        "nc": len(categories),
        "names": {i: c["name"] for i, c in enumerate(categories)},
        "category_ids": [c["id"] for c in categories],
        "coco": coco, "coco_eval": coco_eval, "images": image_dirs, "image_ids": id_maps, "exif_stored": exif_maps,
        "splits": list(splits),
        **(extra or {}),
    })
    (out_dir / "report.json").write_text(json.dumps(reports, indent=1))
    yaml_path = out_dir / "data.yaml"
    yaml_path.write_text("# Written by detkd from a COCO dataset; class i has COCO category_ids[i].\n"
                         + yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return yaml_path


def _split_images(spec, root: Path) -> list[Path]:
    """Image files of a data.yaml split entry (a dir, a .txt list, or a list of those), sorted."""
    from ultralytics.data.utils import IMG_FORMATS

    files = []
    for p in spec if isinstance(spec, list) else [spec]:
        p = Path(p) if Path(p).is_absolute() else root / p
        if p.is_dir():
            files += [f for f in p.rglob("*.*") if f.suffix[1:].lower() in IMG_FORMATS]
        elif p.is_file():
            for line in p.read_text(encoding="utf-8-sig").splitlines():
                if line.strip():
                    files.append(p.parent / line.strip()[2:] if line.startswith("./") else Path(line.strip()))
        else:
            raise DatasetError(f"data.yaml split path '{p}' does not exist.")
    return sorted(files)


def yolo_to_coco(data_yaml: str | Path, split: str = "val", category_ids: list[int] | None = None) -> dict:
    """Rebuild a COCO instances dict from the YOLO labels of ``split`` of an Ultralytics ``data_yaml``.

    Category ids: ``category_ids`` if given, else the data.yaml's ``category_ids`` (written by detkd), else 1..nc.
    Image ids and file names: the data.yaml's ``image_ids`` map when present, else a numeric file stem, else 1..N
    in sorted order. Boxes are ``[x, y, w, h]`` pixels of the image as Ultralytics loads it (EXIF orientation
    applied, size from ``exif_size``), turned back into the stored frame for the images of the data.yaml's
    ``exif_stored`` map (a COCO JSON in that frame), so the result is in the frame of the original JSON.
    """
    from PIL import Image
    from ultralytics.data.utils import exif_size, img2label_paths

    from detkd.data.exif import box_to_stored, displayed_size

    data_yaml = Path(data_yaml)
    if not data_yaml.is_file():
        raise DatasetError(f"data.yaml '{data_yaml}' not found.")
    data = yaml.safe_load(data_yaml.read_text()) or {}
    if not data.get(split):
        raise DatasetError(f"'{data_yaml}' has no '{split}:' split (splits: "
                           f"{[k for k in ('train', 'val', 'test') if data.get(k)]}).")
    root = Path(data.get("path") or data_yaml.parent)
    if not root.is_absolute():
        root = (data_yaml.parent / root).resolve()
    names = data.get("names") or {i: f"class_{i}" for i in range(int(data.get("nc", 0)))}
    names = dict(enumerate(names)) if isinstance(names, list) else {int(k): v for k, v in names.items()}
    ids = list(category_ids or data.get("category_ids") or range(1, len(names) + 1))
    if len(ids) != len(names):
        raise DatasetError(f"{len(ids)} category ids for {len(names)} classes in '{data_yaml}'.")
    id_map = {}
    if isinstance(data.get("image_ids"), dict) and data["image_ids"].get(split):
        id_map = json.loads((root / data["image_ids"][split]).read_text())
    exif_stored = {}
    if isinstance(data.get("exif_stored"), dict) and data["exif_stored"].get(split):
        exif_stored = json.loads((root / data["exif_stored"][split]).read_text())
    split_dir = root / data[split] if isinstance(data[split], str) else None

    images, anns = [], []
    for k, (f, lb) in enumerate(zip(files := _split_images(data[split], root),
                                    img2label_paths([str(f) for f in files]))):
        rel = os.path.relpath(f, split_dir).replace(os.sep, "/") if split_dir and split_dir.is_dir() else f.name
        image_id = id_map.get(rel, int(f.stem) if not id_map and f.stem.isdigit() else None)
        if image_id is None:
            image_id = k + 1
        with Image.open(f) as im:
            w, h = exif_size(im)  # the frame the labels are in
        orientation = int(exif_stored.get(rel, 1))
        json_w, json_h = displayed_size(w, h, orientation)  # the stored frame's size (swap is its own inverse)
        images.append({"id": image_id, "file_name": rel, "width": json_w, "height": json_h})
        lb = Path(lb)
        for line in (lb.read_text().splitlines() if lb.is_file() else []):
            v = line.split()
            if len(v) < 5:
                continue
            c = int(float(v[0]))
            if len(v) == 5:
                cx, cy, bw, bh = map(float, v[1:])
            else:  # segment polygon: its bounding box
                xs, ys = [float(x) for x in v[1::2]], [float(y) for y in v[2::2]]
                cx, cy, bw, bh = (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2, max(xs) - min(xs), max(ys) - min(ys)
            box = box_to_stored([(cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h], orientation, w, h)
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": ids[c], "bbox": box,
                         "area": box[2] * box[3], "iscrowd": 0})
    cats = [{"id": ids[i], "name": names[i]} for i in sorted(names)]
    return {"info": {"description": f"converted by detkd from {data_yaml} ({split})"}, "images": images,
            "annotations": anns, "categories": cats}

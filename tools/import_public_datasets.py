"""Convert public detection datasets (fetched git snapshots) into COCO-format folders for the recipe protocol.

The recipe protocol (``benchmarks/recipe_protocol.json``: which datasets tune the recipe, which only confirm it)
measures detkd on several real datasets of different kinds. Besides ``../shared/datasets/raccoon`` it uses public
datasets converted here from their git repositories (fetched snapshots; never committed: the output goes outside the
repository, to ``../shared/datasets/<name>``)::

    python tools/import_public_datasets.py deeppcb  /path/to/DeepPCB/repo              ../shared/datasets/deeppcb
    python tools/import_public_datasets.py aerial   /path/to/aerial-cars-dataset/repo  ../shared/datasets/aerial_cars
    python tools/import_public_datasets.py plates   /path/to/license-plate-dataset/repo ../shared/datasets/plates
    python tools/import_public_datasets.py tables   /path/to/table-detection-dataset/repo ../shared/datasets/tables
    python tools/import_public_datasets.py chess    /path/to/yolo_object_detection/repo ../shared/datasets/chess
    python tools/import_public_datasets.py aquarium /path/to/underwater-object-detection/repo ../shared/datasets/aquarium

* ``deeppcb`` — tangsanli5201/DeepPCB (MIT licence): 640×640 binarised PCB scans, 6 defect classes (open, short,
  mousebite, spur, copper, pin-hole), 3–12 small defects per image. Its own trainval/test lists give the split;
  ``--n-train/--n-val`` take a deterministic subset (the CPU budget).
* ``aerial`` — jekhor/aerial-cars-dataset: drone/aerial photos with many small vehicles (car, truck, bus, minibus,
  cyclist). Only the images with a permissive licence are used: KIT AIS (``MOS*``, ``MunichStreet*``, CC-BY 3.0)
  and the author's own photos (``DJI*``, ``yakubava*``, CC-BY-SA); the ``harlem`` video frames (YouTube licence)
  are left out. Large frames are cut into ``--tile`` px tiles (a box is kept when ≥ 50 % of it lies in the tile),
  so vehicles stay ~20–40 px; the split is by source photo (tiles of one photo never straddle train and val).
* ``plates`` — RobertLucian/license-plate-dataset (MIT licence): 534 dash-cam frames (1280×720, day and night rides,
  Romania), one class (license-plate), 1–4 plates per frame, VOC XML. Its own 80/20 split interleaves neighbouring
  frames of one video (t=1054 s in train, t=1056 s in val: near-duplicates across the split), so the split here is
  by ``--block-s`` second blocks of each video (a block never straddles splits), seeded, train/val/test
  70/20/10. Frames are stored at ``--max-side`` px (plates ~30×8 px at 640).
* ``tables`` — sgrpanchal31/table-detection-dataset (MIT licence): 403 scanned document pages (2544×3300 PNG), one
  class (table), 1–3 tables per page, large objects; its own train.csv / val.csv split (by document, 4 of 279
  documents on both sides) is kept. Pages are stored as JPEG at ``--max-side`` px.
* ``chess`` — the RF100 "chess pieces" export (roboflow-100/chess-pieces-mjzgj v2, CC BY 4.0; created by J. Nelson and
  B. Dwyer), as committed in abhijeetsourav/yolo_object_detection (``chess-pieces-2/``, YOLO txt labels): 289 photos
  (2048×1371) of boards, 12 piece classes (black/white × 6; the RF100 super-class 'bishop', one box, is dropped),
  ~10 pieces per image. Its own train/valid/test split is kept; images stored at ``--max-side`` px.
* ``aquarium`` — Roboflow's "Aquarium Combined" v2 raw-1024 export (CC BY 4.0, Roboflow; photos from the Henry
  Doorly Zoo and the National Aquarium, Baltimore), as committed in sumit2011/underwater-object-detection
  (``dataset/aquarium_pretrain/``, YOLO txt labels): 638 photos (1024 px), 7 classes (fish, jellyfish, penguin,
  puffin, shark, starfish, stingray), from one to dozens of animals per image. Its own train/valid/test split is
  kept; images stored at ``--max-side`` px.

The output has the layout detkd reads: ``<out>/{train,val}/*.jpg`` and ``<out>/annotations/instances_{train,val}.json``.
Reads the snapshot with ``git show`` (the fetched mirrors are bare repositories).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np

DEEPPCB_CLASSES = ["open", "short", "mousebite", "spur", "copper", "pin-hole"]
AERIAL_CLASSES = ["car", "truck", "bus", "minibus", "cyclist"]
AERIAL_PERMISSIVE_PREFIXES = ("MOS", "MunichStreet", "DJI", "yakubava")
PLATES_CLASSES = ["license-plate"]
TABLES_CLASSES = ["table"]
CHESS_DIR = "chess-pieces-2"
CHESS_SOURCE_CLASSES = ["bishop", "black-bishop", "black-king", "black-knight", "black-pawn", "black-queen",
                        "black-rook", "white-bishop", "white-king", "white-knight", "white-pawn", "white-queen",
                        "white-rook"]  # the export's data.yaml order (YOLO class ids)
CHESS_CLASSES = CHESS_SOURCE_CLASSES[1:]  # 'bishop' is RF100's super-class (one box in the whole set): dropped
AQUARIUM_DIR = "dataset/aquarium_pretrain"
AQUARIUM_CLASSES = ["fish", "jellyfish", "penguin", "puffin", "shark", "starfish", "stingray"]  # its data.yaml order
ROBOFLOW_EXPORTS = {  # dataset: (folder in its repository, the export's class ids, the classes kept)
    "chess": (CHESS_DIR, CHESS_SOURCE_CLASSES, CHESS_CLASSES),
    "aquarium": (AQUARIUM_DIR, AQUARIUM_CLASSES, AQUARIUM_CLASSES),
}


def git_files(repo: Path) -> list[str]:
    out = subprocess.run(["git", "-C", str(repo), "ls-tree", "-r", "--name-only", "HEAD"], check=True,
                         capture_output=True, text=True).stdout
    return out.split()


def git_bytes(repo: Path, path: str) -> bytes:
    return subprocess.run(["git", "-C", str(repo), "show", f"HEAD:{path}"], check=True, capture_output=True).stdout


def decode(data: bytes) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError("undecodable image")
    return img


def stable_fraction(key: str) -> float:
    """A deterministic number in [0, 1) per key (split and subset selection that never change between runs)."""
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) / 2**32


class CocoWriter:
    """Accumulates one split's images and boxes and writes the COCO JSON."""

    def __init__(self, out: Path, split: str, classes: list[str]):
        self.out, self.split, self.classes = out, split, classes
        (out / split).mkdir(parents=True, exist_ok=True)
        self.images, self.annotations = [], []

    def add(self, name: str, img: np.ndarray, boxes_xyxy: list[tuple[float, float, float, float, int]]) -> None:
        cv2.imwrite(str(self.out / self.split / name), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
        image_id = len(self.images) + 1
        h, w = img.shape[:2]
        self.images.append({"id": image_id, "file_name": name, "width": w, "height": h})
        for x0, y0, x1, y1, cls in boxes_xyxy:
            bw, bh = x1 - x0, y1 - y0
            self.annotations.append({"id": len(self.annotations) + 1, "image_id": image_id, "category_id": cls + 1,
                                     "bbox": [round(x0, 2), round(y0, 2), round(bw, 2), round(bh, 2)],
                                     "area": round(bw * bh, 2), "iscrowd": 0})

    def write(self) -> dict:
        (self.out / "annotations").mkdir(parents=True, exist_ok=True)
        cats = [{"id": i + 1, "name": n} for i, n in enumerate(self.classes)]
        coco = {"images": self.images, "annotations": self.annotations, "categories": cats}
        (self.out / "annotations" / f"instances_{self.split}.json").write_text(json.dumps(coco))
        return {"images": len(self.images), "boxes": len(self.annotations)}


def import_deeppcb(repo: Path, out: Path, n_train: int, n_val: int) -> dict:
    lists = {"train": git_bytes(repo, "PCBData/trainval.txt").decode().split("\n"),
             "val": git_bytes(repo, "PCBData/test.txt").decode().split("\n")}
    limits = {"train": n_train, "val": n_val}
    summary = {}
    for split, lines in lists.items():
        pairs = [ln.split() for ln in lines if ln.strip()]
        pairs.sort(key=lambda p: stable_fraction(p[0]))
        writer = CocoWriter(out, split, DEEPPCB_CLASSES)
        for img_rel, ann_rel in pairs[: limits[split]]:
            img_path = "PCBData/" + img_rel.replace(".jpg", "_test.jpg")  # the tested (defective) image
            img = decode(git_bytes(repo, img_path))
            boxes = []
            for row in git_bytes(repo, "PCBData/" + ann_rel).decode().split("\n"):
                parts = row.replace(",", " ").split()
                if len(parts) == 5:
                    x0, y0, x1, y1, t = (float(v) for v in parts)
                    boxes.append((x0, y0, x1, y1, int(t) - 1))  # types 1..6 -> classes 0..5
            writer.add(Path(img_rel).name, img, boxes)
        summary[split] = writer.write()
    return summary


def _tiles(length: int, tile: int) -> list[int]:
    """Start offsets covering [0, length) with tiles of ``tile`` (the last one flush with the end)."""
    if length <= tile:
        return [0]
    n = int(np.ceil(length / tile))
    return [int(round(i * (length - tile) / (n - 1))) for i in range(n)]


def import_aerial(repo: Path, out: Path, tile: int, val_fraction: float) -> dict:
    files = set(git_files(repo))
    images = sorted(f for f in files if f.lower().endswith((".jpg", ".png")) and f.startswith(AERIAL_PERMISSIVE_PREFIXES)
                    and Path(f).with_suffix(".txt").as_posix() in files)
    writers = {s: CocoWriter(out, s, AERIAL_CLASSES) for s in ("train", "val")}
    missing = []
    for f in images:
        split = "val" if stable_fraction(f) < val_fraction else "train"
        try:  # a snapshot may list its largest files without holding them
            img = decode(git_bytes(repo, f))
        except (subprocess.CalledProcessError, ValueError):
            missing.append(f)
            continue
        h, w = img.shape[:2]
        boxes = []
        for row in git_bytes(repo, Path(f).with_suffix(".txt").as_posix()).decode().split("\n"):
            parts = row.split()
            if len(parts) == 5:
                c, xc, yc, bw, bh = int(parts[0]), *(float(v) for v in parts[1:])
                boxes.append(((xc - bw / 2) * w, (yc - bh / 2) * h, (xc + bw / 2) * w, (yc + bh / 2) * h, c))
        for ty in _tiles(h, tile):
            for tx in _tiles(w, tile):
                crop = img[ty:ty + tile, tx:tx + tile]
                ch, cw = crop.shape[:2]
                kept = []
                for x0, y0, x1, y1, c in boxes:
                    cx0, cy0 = max(x0 - tx, 0), max(y0 - ty, 0)
                    cx1, cy1 = min(x1 - tx, cw), min(y1 - ty, ch)
                    if cx1 <= cx0 or cy1 <= cy0:
                        continue
                    if (cx1 - cx0) * (cy1 - cy0) >= 0.5 * (x1 - x0) * (y1 - y0):
                        kept.append((cx0, cy0, cx1, cy1, c))
                if kept:
                    writers[split].add(f"{Path(f).stem}_{ty}_{tx}.jpg", crop, kept)
    return {**{s: w.write() for s, w in writers.items()}, "source_images_missing": len(missing)}


def resize_max_side(img: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """The image scaled down so its longer side is ``max_side`` px (never up), and the scale applied."""
    h, w = img.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if scale < 1.0:
        img = cv2.resize(img, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    return img, scale


def split_of(key: str, val_fraction: float, test_fraction: float) -> str:
    """A fixed split per group key: 'test' for the first ``test_fraction`` of [0, 1), then 'val', else 'train'."""
    u = stable_fraction(key)
    return "test" if u < test_fraction else "val" if u < test_fraction + val_fraction else "train"


def voc_boxes(xml_text: str, classes: list[str]) -> list[tuple[float, float, float, float, int]]:
    """(x0, y0, x1, y1, class index) of each object in a Pascal VOC annotation (float corners are kept)."""
    boxes = []
    for obj in ET.fromstring(xml_text).iter("object"):
        bb = obj.find("bndbox")
        x0, y0, x1, y1 = (float(bb.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax"))
        boxes.append((x0, y0, x1, y1, classes.index(obj.find("name").text.strip())))
    return boxes


def plates_group(path: str, block_s: int) -> str:
    """The split group of a frame named ``<video>.mp4#t=<seconds>.jpg``: its video and ``block_s``-second block."""
    m = re.search(r"([^/]+)#t=(\d+)", path)
    if m is None:
        raise ValueError(f"not a <video>#t=<s> frame name: {path}")
    return f"{m.group(1)}:{int(m.group(2)) // block_s}"


def import_plates(repo: Path, out: Path, max_side: int, block_s: int, val_fraction: float,
                  test_fraction: float) -> dict:
    files = git_files(repo)
    annots = sorted(f for f in files if f.startswith("dataset/") and f.endswith(".xml"))
    writers = {s: CocoWriter(out, s, PLATES_CLASSES) for s in ("train", "val", "test")}
    for ann in annots:
        img_path = ann.replace("/annots/", "/images/")[: -len(".xml")] + ".jpg"
        img, scale = resize_max_side(decode(git_bytes(repo, img_path)), max_side)
        boxes = [(x0 * scale, y0 * scale, x1 * scale, y1 * scale, c)
                 for x0, y0, x1, y1, c in voc_boxes(git_bytes(repo, ann).decode(), PLATES_CLASSES)]
        split = split_of(plates_group(ann, block_s), val_fraction, test_fraction)
        name = Path(img_path).name.replace(".mp4#t=", "_t")  # '#' is awkward in paths and URLs
        writers[split].add(name, img, boxes)
    return {s: w.write() for s, w in writers.items()}


def import_tables(repo: Path, out: Path, max_side: int) -> dict:
    summary = {}
    for split, csv in (("train", "train.csv"), ("val", "val.csv")):
        per_image: dict[str, list] = {}
        for row in git_bytes(repo, csv).decode().split("\n"):
            parts = row.strip().split(",")
            if len(parts) == 6:
                name, x0, y0, x1, y1, cls = parts
                per_image.setdefault(name, []).append((float(x0), float(y0), float(x1), float(y1),
                                                       TABLES_CLASSES.index(cls)))
        writer = CocoWriter(out, split, TABLES_CLASSES)
        for name in sorted(per_image):
            img, scale = resize_max_side(decode(git_bytes(repo, f"images/{name}")), max_side)
            boxes = [(x0 * scale, y0 * scale, x1 * scale, y1 * scale, c) for x0, y0, x1, y1, c in per_image[name]]
            writer.add(Path(name).with_suffix(".jpg").name, img, boxes)
        summary[split] = writer.write()
    return summary


def yolo_boxes(label_text: str, w: int, h: int, source_classes: list[str], classes: list[str]
               ) -> list[tuple[float, float, float, float, int]]:
    """(x0, y0, x1, y1, class index in ``classes``) in px of a YOLO label file (normalised centre, size); boxes of
    a source class not in ``classes`` are dropped."""
    boxes = []
    for row in label_text.split("\n"):
        parts = row.split()
        if len(parts) != 5:
            continue
        name = source_classes[int(parts[0])]
        if name not in classes:
            continue
        xc, yc, bw, bh = (float(v) for v in parts[1:])
        boxes.append(((xc - bw / 2) * w, (yc - bh / 2) * h, (xc + bw / 2) * w, (yc + bh / 2) * h, classes.index(name)))
    return boxes


def import_roboflow_yolo(repo: Path, out: Path, max_side: int, root: str, source_classes: list[str],
                         classes: list[str]) -> dict:
    """A Roboflow YOLO export (``<root>/{train,valid,test}/{images,labels}``), its own split kept (valid -> val)."""
    files = git_files(repo)
    summary = {}
    for split, source_split in (("train", "train"), ("val", "valid"), ("test", "test")):
        writer = CocoWriter(out, split, classes)
        prefix = f"{root}/{source_split}/images/"
        for f in sorted(x for x in files if x.startswith(prefix)):
            img = decode(git_bytes(repo, f))
            h, w = img.shape[:2]
            label = f.replace("/images/", "/labels/").rsplit(".", 1)[0] + ".txt"
            boxes = yolo_boxes(git_bytes(repo, label).decode(), w, h, source_classes, classes)
            img, scale = resize_max_side(img, max_side)
            writer.add(Path(f).stem + ".jpg", img, [(x0 * scale, y0 * scale, x1 * scale, y1 * scale, c)
                                                    for x0, y0, x1, y1, c in boxes])
        summary[split] = writer.write()
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", choices=["deeppcb", "aerial", "plates", "tables", *ROBOFLOW_EXPORTS])
    p.add_argument("repo", type=Path, help="the fetched repository (a git directory)")
    p.add_argument("out", type=Path, help="output folder (COCO layout)")
    p.add_argument("--n-train", type=int, default=300, help="deeppcb: training images kept")
    p.add_argument("--n-val", type=int, default=100, help="deeppcb: validation images kept")
    p.add_argument("--tile", type=int, default=640, help="aerial: tile size in px")
    p.add_argument("--val-fraction", type=float, default=None,
                   help="aerial: share of source photos for val (default 0.2); plates: share of blocks (0.2)")
    p.add_argument("--test-fraction", type=float, default=0.1, help="plates: share of blocks for test")
    p.add_argument("--block-s", type=int, default=30, help="plates: frames of one video within this many seconds "
                                                           "share a split")
    p.add_argument("--max-side", type=int, default=None,
                   help="plates/tables/chess/aquarium: longer image side stored, px (default: plates 640, others 1024)")
    a = p.parse_args(argv)
    if not (a.repo / "HEAD").exists() and not (a.repo / ".git").exists():
        print(f"error: {a.repo} is not a git repository", file=sys.stderr)
        return 2
    if a.dataset == "deeppcb":
        summary = import_deeppcb(a.repo, a.out, a.n_train, a.n_val)
    elif a.dataset == "aerial":
        summary = import_aerial(a.repo, a.out, a.tile, 0.2 if a.val_fraction is None else a.val_fraction)
    elif a.dataset == "plates":
        summary = import_plates(a.repo, a.out, a.max_side or 640, a.block_s,
                                0.2 if a.val_fraction is None else a.val_fraction, a.test_fraction)
    elif a.dataset == "tables":
        summary = import_tables(a.repo, a.out, a.max_side or 1024)
    else:
        summary = import_roboflow_yolo(a.repo, a.out, a.max_side or 1024, *ROBOFLOW_EXPORTS[a.dataset])
    print(json.dumps({"dataset": a.dataset, "out": str(a.out), **summary}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

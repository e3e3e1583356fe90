"""Convert public detection datasets (fetched git snapshots) into COCO-format folders for the recipe protocol.

The recipe protocol (``benchmarks/recipe_protocol.py``) measures detkd on several real datasets of different kinds.
Besides ``../shared/datasets/raccoon`` it uses two public datasets, converted here from their git repositories
(never committed: the output goes to the git-ignored ``datasets/``)::

    python tools/import_public_datasets.py deeppcb  /path/to/DeepPCB/repo      datasets/deeppcb
    python tools/import_public_datasets.py aerial   /path/to/aerial-cars-dataset/repo  datasets/aerial_cars

* ``deeppcb`` — tangsanli5201/DeepPCB (MIT licence): 640×640 binarised PCB scans, 6 defect classes (open, short,
  mousebite, spur, copper, pin-hole), 3–12 small defects per image. Its own trainval/test lists give the split;
  ``--n-train/--n-val`` take a deterministic subset (the CPU budget).
* ``aerial`` — jekhor/aerial-cars-dataset: drone/aerial photos with many small vehicles (car, truck, bus, minibus,
  cyclist). Only the images with a permissive licence are used: KIT AIS (``MOS*``, ``MunichStreet*``, CC-BY 3.0)
  and the author's own photos (``DJI*``, ``yakubava*``, CC-BY-SA); the ``harlem`` video frames (YouTube licence)
  are left out. Large frames are cut into ``--tile`` px tiles (a box is kept when ≥ 50 % of it lies in the tile),
  so vehicles stay ~20–40 px; the split is by source photo (tiles of one photo never straddle train and val).

The output has the layout detkd reads: ``<out>/{train,val}/*.jpg`` and ``<out>/annotations/instances_{train,val}.json``.
Reads the snapshot with ``git show`` (the fetched mirrors are bare repositories).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

DEEPPCB_CLASSES = ["open", "short", "mousebite", "spur", "copper", "pin-hole"]
AERIAL_CLASSES = ["car", "truck", "bus", "minibus", "cyclist"]
AERIAL_PERMISSIVE_PREFIXES = ("MOS", "MunichStreet", "DJI", "yakubava")


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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", choices=["deeppcb", "aerial"])
    p.add_argument("repo", type=Path, help="the fetched repository (a git directory)")
    p.add_argument("out", type=Path, help="output folder (COCO layout)")
    p.add_argument("--n-train", type=int, default=300, help="deeppcb: training images kept")
    p.add_argument("--n-val", type=int, default=100, help="deeppcb: validation images kept")
    p.add_argument("--tile", type=int, default=640, help="aerial: tile size in px")
    p.add_argument("--val-fraction", type=float, default=0.2, help="aerial: share of source photos for val")
    a = p.parse_args(argv)
    if not (a.repo / "HEAD").exists() and not (a.repo / ".git").exists():
        print(f"error: {a.repo} is not a git repository", file=sys.stderr)
        return 2
    if a.dataset == "deeppcb":
        summary = import_deeppcb(a.repo, a.out, a.n_train, a.n_val)
    else:
        summary = import_aerial(a.repo, a.out, a.tile, a.val_fraction)
    print(json.dumps({"dataset": a.dataset, "out": str(a.out), **summary}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

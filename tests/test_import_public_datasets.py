"""tools/import_public_datasets.py turns each source's layout (git snapshot) into the COCO folders detkd reads, with
the split the protocol states; here on tiny generated repositories with the sources' layouts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

TOOLS = Path(__file__).resolve().parents[1] / "tools"


@pytest.fixture()
def importer():
    sys.path.insert(0, str(TOOLS))
    import import_public_datasets

    return import_public_datasets


def git_repo(root: Path, files: dict[str, bytes]) -> Path:
    """A committed git repository holding ``files`` (what ``fetch`` brings, read with ``git show``)."""
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    git = ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "data"], check=True)
    return root


def jpg(w: int, h: int) -> bytes:
    return cv2.imencode(".jpg", np.full((h, w, 3), 128, np.uint8))[1].tobytes()


def voc(x0: float, y0: float, x1: float, y1: float) -> bytes:
    return (f"<annotation><object><name>license-plate</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
            f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object></annotation>").encode()


def coco(out: Path, split: str) -> dict:
    return json.loads((out / "annotations" / f"instances_{split}.json").read_text())


def test_plates_split_by_time_block_never_separates_neighbouring_frames(importer, tmp_path):
    frames = {("a", t) for t in (1, 2, 3, 29, 31, 95)} | {("b", t) for t in range(0, 300, 7)}
    files = {}
    for video, t in frames:
        split = "train" if t % 2 else "valid"  # the source's own split interleaves neighbours: ignored
        files[f"dataset/{split}/images/{video}.mp4#t={t}.jpg"] = jpg(128, 72)
        files[f"dataset/{split}/annots/{video}.mp4#t={t}.xml"] = voc(10.0, 20.0, 50.5, 30.0)
    repo = git_repo(tmp_path / "plates_src", files)
    out = tmp_path / "plates"
    assert importer.main(["plates", str(repo), str(out), "--max-side", "64"]) == 0  # one command

    where, boxes = {}, 0
    for split in ("train", "val", "test"):
        c = coco(out, split)
        for img in c["images"]:
            assert "#" not in img["file_name"] and (out / split / img["file_name"]).exists()
            assert (img["width"], img["height"]) == (64, 36)  # longer side brought to --max-side
            where[img["file_name"]] = split
        for ann in c["annotations"]:
            assert ann["bbox"] == [5.0, 10.0, 20.25, 5.0]  # the box scaled with the image (0.5)
        boxes += len(c["annotations"])
    assert len(where) == len(frames) and boxes == len(frames)  # one box per frame, none lost
    assert where["a_t1.jpg"] == where["a_t2.jpg"] == where["a_t3.jpg"] == where["a_t29.jpg"]  # one 30-s block
    assert len(set(where.values())) == 3  # 14 blocks land in all three splits
    again = tmp_path / "plates_again"
    importer.main(["plates", str(repo), str(again), "--max-side", "64"])
    assert {s: coco(again, s)["images"] for s in ("train", "val", "test")} == \
        {s: coco(out, s)["images"] for s in ("train", "val", "test")}  # the split is fixed, not drawn per run


def test_tables_keep_the_source_split_and_every_box_of_a_page(importer, tmp_path):
    page = cv2.imencode(".png", np.full((300, 200, 3), 255, np.uint8))[1].tobytes()
    repo = git_repo(tmp_path / "tables_src", {
        "images/0001_001.png": page, "images/0002_001.png": page,
        "train.csv": b"0001_001.png,10,20,110,220,table\n0001_001.png,10,230,190,290,table\n",
        "val.csv": b"0002_001.png,0,0,200,100,table\n"})
    out = tmp_path / "tables"
    assert importer.main(["tables", str(repo), str(out), "--max-side", "150"]) == 0
    train, val = coco(out, "train"), coco(out, "val")
    assert [i["file_name"] for i in train["images"]] == ["0001_001.jpg"] and len(val["images"]) == 1
    assert [a["bbox"] for a in train["annotations"]] == [[5.0, 10.0, 50.0, 100.0], [5.0, 115.0, 90.0, 30.0]]
    assert train["categories"] == [{"id": 1, "name": "table"}]


def test_chess_drops_the_rf100_super_class_and_renames_valid_to_val(importer, tmp_path):
    repo = git_repo(tmp_path / "chess_src", {
        "chess-pieces-2/train/images/a.jpg": jpg(200, 100),
        "chess-pieces-2/train/labels/a.txt": b"0 0.5 0.5 0.1 0.2\n4 0.25 0.5 0.1 0.2\n",
        "chess-pieces-2/valid/images/b.jpg": jpg(200, 100),
        "chess-pieces-2/valid/labels/b.txt": b"12 0.5 0.5 0.5 0.5\n",
        "chess-pieces-2/test/images/c.jpg": jpg(200, 100),
        "chess-pieces-2/test/labels/c.txt": b""})
    out = tmp_path / "chess"
    assert importer.main(["chess", str(repo), str(out)]) == 0
    train = coco(out, "train")
    assert len(train["categories"]) == 12 and train["categories"][3]["name"] == "black-pawn"
    assert [(a["category_id"], a["bbox"]) for a in train["annotations"]] == [(4, [40.0, 40.0, 20.0, 20.0])]
    assert coco(out, "val")["annotations"][0]["category_id"] == 12  # white-rook
    assert coco(out, "test")["annotations"] == []


def test_aquarium_keeps_every_class_in_its_data_yaml_order(importer, tmp_path):
    root = "dataset/aquarium_pretrain"
    repo = git_repo(tmp_path / "aquarium_src", {
        f"{root}/train/images/a.jpg": jpg(200, 100),
        f"{root}/train/labels/a.txt": b"0 0.5 0.5 0.1 0.2\n6 0.25 0.5 0.1 0.2\n",
        f"{root}/valid/images/b.jpg": jpg(200, 100),
        f"{root}/valid/labels/b.txt": b"4 0.5 0.5 0.5 0.5\n",
        f"{root}/test/images/c.jpg": jpg(200, 100),
        f"{root}/test/labels/c.txt": b""})
    out = tmp_path / "aquarium"
    assert importer.main(["aquarium", str(repo), str(out)]) == 0
    train = coco(out, "train")
    assert [c["name"] for c in train["categories"]] == ["fish", "jellyfish", "penguin", "puffin", "shark",
                                                        "starfish", "stingray"]
    assert [(a["category_id"], a["bbox"]) for a in train["annotations"]] == [(1, [90.0, 40.0, 20.0, 20.0]),
                                                                             (7, [40.0, 40.0, 20.0, 20.0])]
    assert coco(out, "val")["annotations"][0]["category_id"] == 5  # shark
    assert coco(out, "test")["annotations"] == []

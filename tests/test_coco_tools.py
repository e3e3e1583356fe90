"""tools/coco2yolo.py (both directions) and tools/dataset_stats.py, run as their users run them (main(argv))."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from detkd.data.synthetic import SyntheticSpec, make_shapes_dataset

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def tool(name: str):
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("tools"), SyntheticSpec(
        n_train=4, n_val=4, imgsz=64, category_ids=(5, 6, 50, 80), seed=7))


def test_coco2yolo_and_back(ds, tmp_path, capsys):
    t = tool("coco2yolo")
    assert t.main(["coco2yolo", str(ds), "--out", str(tmp_path / "y"), "--copy"]) == 0
    img = next((tmp_path / "y" / "images" / "val").iterdir())
    assert img.is_file() and not img.is_symlink()  # --copy
    out = tmp_path / "back.json"
    assert t.main(["yolo2coco", str(tmp_path / "y" / "data.yaml"), "--split", "val", "--out", str(out)]) == 0
    back, orig = json.loads(out.read_text()), json.loads((ds / "annotations" / "instances_val.json").read_text())
    assert [c["id"] for c in back["categories"]] == [5, 6, 50, 80]
    key = lambda a: (a["image_id"], a["category_id"], a["bbox"][0], a["bbox"][1])  # noqa: E731
    a, b = sorted(orig["annotations"], key=key), sorted(back["annotations"], key=key)
    assert [key(x)[:2] for x in a] == [key(x)[:2] for x in b]
    np.testing.assert_allclose([x["bbox"] for x in b], [x["bbox"] for x in a], rtol=1e-6)
    # explicit ids for a plain YOLO dataset; a non-empty --out folder is refused
    assert t.main(["yolo2coco", str(tmp_path / "y" / "data.yaml"), "--out", str(out), "--category-ids", "1,2,3,4"]) == 0
    assert [c["id"] for c in json.loads(out.read_text())["categories"]] == [1, 2, 3, 4]
    with pytest.raises(SystemExit, match="not empty"):
        t.main(["coco2yolo", str(ds), "--out", str(tmp_path / "y")])
    assert t.main(["yolo2coco", str(tmp_path / "y" / "data.yaml"), "--out", str(out), "--category-ids", "1"]) == 2
    assert "1 category ids for 4 classes" in capsys.readouterr().err


def test_dataset_stats(ds, tmp_path, capsys):
    t = tool("dataset_stats")
    assert t.main([str(ds), "--json", str(tmp_path / "s.json")]) == 0
    printed = capsys.readouterr().out
    stats = json.loads((tmp_path / "s.json").read_text())
    for st in stats:
        coco = json.loads((ds / "annotations" / f"instances_{st['split']}.json").read_text())
        assert st["images"] == len(coco["images"]) and st["instances"] == len(coco["annotations"])
        assert sum(st["sizes"].values()) == st["instances"]
        for name, row in st["per_class"].items():
            cid = row["id"]
            anns = [a for a in coco["annotations"] if a["category_id"] == cid]
            assert row["instances"] == len(anns)
            assert row["small"] == sum(a["area"] < 32 ** 2 for a in anns)
    assert "box sizes" in printed and "triangle" in printed
    # the same numbers from the YOLO layout
    y = tool("coco2yolo")
    y.main(["coco2yolo", str(ds), "--out", str(tmp_path / "y")])
    assert t.main([str(tmp_path / "y" / "data.yaml"), "--split", "val", "--json", str(tmp_path / "s2.json")]) == 0
    s2 = json.loads((tmp_path / "s2.json").read_text())[0]
    val = [s for s in stats if s["split"] == "val"][0]
    assert s2["instances"] == val["instances"] and s2["per_class"] == val["per_class"]


def test_dataset_stats_without_checking_images_reads_sizes_the_json_lacks(ds, tmp_path):
    """``--no-check-images`` trusts the JSON's width/height; where an image has none, its size is read from the file
    (before: 0x0, so every box of it was reported outside the image and left out of the statistics)."""
    import shutil

    copy = tmp_path / "ds"
    shutil.copytree(ds, copy)
    js = copy / "annotations" / "instances_val.json"
    coco = json.loads(js.read_text())
    for im in coco["images"]:
        im.pop("width"), im.pop("height")
    js.write_text(json.dumps(coco))
    t = tool("dataset_stats")
    assert t.main([str(copy), "--split", "val", "--no-check-images", "--json", str(tmp_path / "s.json")]) == 0
    st = json.loads((tmp_path / "s.json").read_text())[0]
    assert st["instances"] == len(coco["annotations"]) > 0
    assert sum(st["sizes"].values()) == st["instances"]

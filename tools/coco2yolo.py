#!/usr/bin/env python
"""Convert a COCO detection dataset to the Ultralytics YOLO layout, or a YOLO split back to a COCO JSON.

    # COCO -> YOLO (images symlinked, labels written, data.yaml with category_ids / coco / image_ids keys)
    python tools/coco2yolo.py coco2yolo path/to/coco_dataset --out datasets/mydata_yolo
    python tools/coco2yolo.py coco2yolo path/to/coco.yaml            # into detkd's cache, as `detkd eval` does

    # YOLO -> COCO (original category/image ids restored when the data.yaml was written by detkd)
    python tools/coco2yolo.py yolo2coco datasets/mydata_yolo/data.yaml --split val --out instances_val.json
    python tools/coco2yolo.py yolo2coco data.yaml --split val --out val.json --category-ids 1,3,8

COCO input: a folder with annotations/instances_<split>*.json and the images, or a detkd COCO YAML
(see detkd/data/coco.py). Problems in the data are counted and reported (see detkd/data/validate.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def coco2yolo(args) -> int:
    from detkd.data.coco import CocoSource, convert_coco_source, describe_dataset, prepare_dataset

    if args.out is None:
        print(prepare_dataset(args.data))
        return 0
    src = describe_dataset(args.data)
    if not isinstance(src, CocoSource):
        raise SystemExit(f"'{args.data}' is already a YOLO data.yaml.")
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"output folder '{out}' is not empty; choose a new one.")
    data_yaml = convert_coco_source(src, out, link=not args.copy)
    for r in json.loads((out / "report.json").read_text()).values():
        print(f"{r['split']}: {r['n_images']} images, {r['n_boxes']} boxes, issues: {r['counts'] or 'none'}")
    print(data_yaml)
    return 0


def yolo2coco(args) -> int:
    from detkd.data.yolo_layout import yolo_to_coco

    ids = [int(x) for x in args.category_ids.split(",")] if args.category_ids else None
    coco = yolo_to_coco(args.data, args.split, category_ids=ids)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(coco))
    print(f"{args.out}: {len(coco['images'])} images, {len(coco['annotations'])} annotations, "
          f"category ids {[c['id'] for c in coco['categories']]}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="direction", required=True)
    a = sub.add_parser("coco2yolo", help="COCO dataset -> YOLO layout")
    a.add_argument("data", help="COCO dataset folder or detkd COCO YAML")
    a.add_argument("--out", help="output folder (default: detkd's cache, reused while the JSON and the image files are unchanged)")
    a.add_argument("--copy", action="store_true", help="copy images instead of symlinking them")
    a.set_defaults(fn=coco2yolo)
    b = sub.add_parser("yolo2coco", help="YOLO split -> COCO instances JSON")
    b.add_argument("data", help="Ultralytics data.yaml")
    b.add_argument("--split", default="val")
    b.add_argument("--out", required=True, help="output JSON file")
    b.add_argument("--category-ids", help="comma-separated COCO id per class index (default: data.yaml's "
                                          "category_ids, else 1..nc)")
    b.set_defaults(fn=yolo2coco)
    args = p.parse_args(argv)
    from detkd.errors import DetKDError

    try:
        return args.fn(args)
    except DetKDError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

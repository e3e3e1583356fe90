#!/usr/bin/env python
"""Print dataset statistics: images, instances per class, box-size histogram (COCO small/medium/large).

    python tools/dataset_stats.py path/to/coco_dataset
    python tools/dataset_stats.py path/to/coco.yaml --split val --json stats.json
    python tools/dataset_stats.py path/to/data.yaml            # an Ultralytics YOLO dataset works too
    python tools/dataset_stats.py path/to/coco_dataset --no-check-images   # trust the JSON, don't open images
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def collect(data: str, split: str | None = None, check_images: bool = True) -> list[dict]:
    """Statistics of each split (or of ``split``) of a COCO dataset, detkd COCO YAML or Ultralytics data.yaml."""
    import yaml

    from detkd.data.coco import CocoSource, describe_dataset, load_split
    from detkd.data.stats import split_stats
    from detkd.data.validate import validate_coco
    from detkd.data.yolo_layout import yolo_to_coco
    from detkd.errors import DatasetError

    src = describe_dataset(data)
    out = []
    if isinstance(src, CocoSource):
        splits = [split] if split else list(src.splits)
        for s in splits:
            if s not in src.splits:
                raise DatasetError(f"no '{s}' split (has: {', '.join(src.splits)}).")
            js, img = src.splits[s]
            out.append(split_stats(load_split(js, img, src.root, s, check_images=check_images)))
        return out
    cfg = yaml.safe_load(Path(src).read_text()) or {}
    root = Path(cfg.get("path") or Path(src).parent)
    root = root if root.is_absolute() else (Path(src).parent / root).resolve()
    for s in [split] if split else [k for k in ("train", "val", "test") if cfg.get(k)]:
        coco = yolo_to_coco(src, s)
        image_dir = root / cfg[s] if isinstance(cfg[s], str) else root
        out.append(split_stats(validate_coco(coco, Path(src), image_dir, s, check_images=check_images)))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", help="COCO dataset folder, detkd COCO YAML, or Ultralytics data.yaml")
    p.add_argument("--split", help="only this split (train, val, test)")
    p.add_argument("--json", help="also write the statistics to this JSON file")
    p.add_argument("--no-check-images", action="store_true", help="do not open the images (faster)")
    args = p.parse_args(argv)
    from detkd.data.stats import format_stats
    from detkd.errors import DetKDError

    try:
        stats = collect(args.data, args.split, check_images=not args.no_check_images)
    except DetKDError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for st in stats:
        print(format_stats(st))
        print()
    if args.json:
        Path(args.json).write_text(json.dumps(stats, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Dataset statistics of COCO splits: images, instances per class, COCO box-size histogram.

Size classes follow COCO's evaluation: small ``area < 32**2``, medium ``32**2 <= area < 96**2``, large otherwise,
with ``area`` the annotation's ``area`` field when present (what COCOeval uses), else ``w * h``.
"""

from __future__ import annotations

from detkd.data.validate import CocoSplit

SMALL, MEDIUM = 32 ** 2, 96 ** 2


def split_stats(s: CocoSplit) -> dict:
    """``{'split', 'images', 'background_images', 'instances', 'crowd', 'per_class': {name: {'id', 'instances',
    'images', 'small', 'medium', 'large'}}, 'sizes': {'small', 'medium', 'large'}, 'issues': {key: count}}``."""
    names = {c["id"]: c["name"] for c in s.categories}
    per = {n: {"id": cid, "instances": 0, "images": 0, "small": 0, "medium": 0, "large": 0}
           for cid, n in names.items()}
    areas = {}
    for a in s.raw["annotations"]:  # the JSON's own 'area' where it is usable
        if isinstance(a, dict) and isinstance(a.get("area"), (int, float)) and a.get("id") is not None:
            areas[(a.get("image_id"), a.get("category_id"), tuple(a.get("bbox") or ()))] = a["area"]
    sizes = {"small": 0, "medium": 0, "large": 0}
    for im in s.images:
        seen = set()
        for cid, box in s.boxes.get(im.id, []):
            area = areas.get((im.id, cid, tuple(box)), box[2] * box[3])
            size = "small" if area < SMALL else "medium" if area < MEDIUM else "large"
            row = per[names[cid]]
            row["instances"] += 1
            row[size] += 1
            sizes[size] += 1
            seen.add(cid)
        for cid in seen:
            per[names[cid]]["images"] += 1
    return {
        "split": s.split, "images": len(s.images), "background_images": sum(1 for b in s.boxes.values() if not b),
        "instances": sum(sizes.values()), "crowd": sum(s.crowd.values()), "per_class": per, "sizes": sizes,
        "issues": dict(s.report.counts),
    }


def format_stats(st: dict) -> str:
    """Readable table of :func:`split_stats`' output."""
    lines = [f"{st['split']}: {st['images']} images ({st['background_images']} without boxes), "
             f"{st['instances']} instances, {st['crowd']} crowd boxes (ignored for training)"]
    w = max(12, *(len(n) for n in st["per_class"])) + 2
    lines.append(f"  {'class':<{w}}{'id':>6}{'images':>8}{'instances':>11}{'small':>8}{'medium':>8}{'large':>8}")
    for n, r in st["per_class"].items():
        lines.append(f"  {n:<{w}}{r['id']:>6}{r['images']:>8}{r['instances']:>11}{r['small']:>8}{r['medium']:>8}"
                     f"{r['large']:>8}")
    total = max(st["instances"], 1)
    lines.append("  box sizes (COCO area ranges): " + ", ".join(
        f"{k} {v} ({100 * v / total:.0f}%)" for k, v in st["sizes"].items()))
    hist = [f"  {k:<7}{'#' * round(40 * v / total)}" for k, v in st["sizes"].items()]
    lines += hist
    if st["issues"]:
        lines.append("  issues: " + ", ".join(f"{k}={v}" for k, v in st["issues"].items()))
    return "\n".join(lines)

"""EXIF orientation: which frame a COCO JSON's boxes are in, and boxes moved between the two frames.

A JPEG (or PNG, ...) may store its pixels in one orientation and carry an EXIF ``Orientation`` tag (0x0112,
values 1-8) saying how to turn them for display. Two frames exist for such an image:

* **stored**: the pixels as written in the file, size ``W x H`` (what ``PIL.Image.open(f).size`` reports);
* **displayed**: the pixels after applying the tag (browsers, ``cv2.imread``, ``ImageOps.exif_transpose``), size
  ``H x W`` for orientations 5-8. **Ultralytics trains and predicts in this frame**: its loader decodes with
  OpenCV (EXIF applied) and its label check measures ``exif_size``.

COCO tools and annotation apps differ in the frame they write boxes (and ``width``/``height``) in. detkd's
convention: the YOLO labels, hence training, are always in the displayed frame; the COCO JSON keeps its own
frame, decided per image by :func:`decide_frames`, and everything that goes back to COCO coordinates
(predictions, ``yolo_to_coco``) is turned back into that frame with :func:`box_to_stored`.

Orientation -> point mapping stored ``(x, y)`` -> displayed ``(x', y')`` for a stored ``W x H`` image::

    1: ( x,     y    )   2: ( W - x, y    )   3: ( W - x, H - y )   4: ( x,     H - y )
    5: ( y,     x    )   6: ( H - y, x    )   7: ( H - y, W - x )   8: ( y,     W - x )
"""

from __future__ import annotations

ORIENTATION_TAG = 0x0112
FRAMES = ("displayed", "stored")
SWAPS = {5, 6, 7, 8}  # orientations that exchange width and height
_INVERSE = {6: 8, 8: 6}  # the rest are their own inverse


def image_orientation(im) -> int:
    """EXIF orientation (1-8) of an open PIL image; 1 when absent or invalid."""
    try:
        o = (im.tag_v2 if im.format == "TIFF" else im.getexif()).get(ORIENTATION_TAG, 1)
        return int(o) if int(o) in range(1, 9) else 1
    except Exception:
        return 1


def displayed_size(width: int, height: int, orientation: int) -> tuple[int, int]:
    """Size in the displayed frame of a stored ``width x height`` image."""
    return (height, width) if orientation in SWAPS else (width, height)


def _point(x: float, y: float, o: int, w: float, h: float) -> tuple[float, float]:
    return {1: (x, y), 2: (w - x, y), 3: (w - x, h - y), 4: (x, h - y),
            5: (y, x), 6: (h - y, x), 7: (h - y, w - x), 8: (y, w - x)}[o]


def _box(box, o: int, w: float, h: float) -> list[float]:
    x, y, bw, bh = box
    (ax, ay), (bx, by) = _point(x, y, o, w, h), _point(x + bw, y + bh, o, w, h)
    return [min(ax, bx), min(ay, by), abs(bx - ax), abs(by - ay)]


def box_to_displayed(box, orientation: int, stored_w: float, stored_h: float) -> list[float]:
    """COCO ``[x, y, w, h]`` in the stored frame of a ``stored_w x stored_h`` image -> the displayed frame."""
    return _box(box, orientation, stored_w, stored_h) if orientation != 1 else list(box)


def box_to_stored(box, orientation: int, displayed_w: float, displayed_h: float) -> list[float]:
    """COCO ``[x, y, w, h]`` in the displayed frame (``displayed_w x displayed_h``) -> the stored frame."""
    if orientation == 1:
        return list(box)
    return _box(box, _INVERSE.get(orientation, orientation), displayed_w, displayed_h)


def fits(boxes, w: float, h: float, tol: float = 2.0) -> bool:
    """Every ``[x, y, w, h]`` box ends inside ``w x h`` (``tol`` px of slack for annotation tools' rounding)."""
    return all(b[0] + b[2] <= w + tol and b[1] + b[3] <= h + tol for b in boxes)


def _majority(votes: list) -> str | None:
    votes = [v for v in votes if v]
    if not votes:
        return None
    return max(FRAMES, key=votes.count) if votes.count("displayed") != votes.count("stored") else "displayed"


def decide_frames(cands: dict) -> dict:
    """The frame of the JSON's boxes for each EXIF-rotated image.

    ``cands``: ``{image_id: (stored (w, h), displayed (w, h), json (w, h) or None, [boxes in the JSON])}``.
    Returns ``{image_id: (frame, reason)}`` with frame ``'displayed'`` or ``'stored'``, in this order of evidence:

    1. the image's own boxes, when they fit inside only one of the two frames (``'boxes'``);
    2. the frame the boxes of the split's other rotated images decided (majority; ``'boxes of the split'``):
       one tool wrote the file, so one frame;
    3. the JSON's ``width``/``height``, when they equal only one of the two sizes (``'width/height'``);
    4. the frame the JSON's sizes of the split's rotated images decided (majority; ``'width/height of the split'``);
    5. the displayed frame (``'default'``): square images, 180-degree turns and mirrors look the same in both.
    """
    box_vote, size_vote = {}, {}
    for i, (stored, disp, js, boxes) in cands.items():
        in_s, in_d = fits(boxes, *stored), fits(boxes, *disp)
        box_vote[i] = "stored" if boxes and in_s and not in_d else "displayed" if boxes and in_d and not in_s else None
        size_vote[i] = ("stored" if js == tuple(stored) and js != tuple(disp) else
                        "displayed" if js == tuple(disp) and js != tuple(stored) else None)
    split_boxes, split_sizes = _majority(list(box_vote.values())), _majority(list(size_vote.values()))
    out = {}
    for i in cands:
        for frame, reason in ((box_vote[i], "boxes"), (split_boxes, "boxes of the split"),
                              (size_vote[i], "width/height"), (split_sizes, "width/height of the split"),
                              ("displayed", "default")):
            if frame:
                out[i] = (frame, reason)
                break
    return out

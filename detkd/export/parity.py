"""Torch vs ONNX Runtime parity of an exported student: same images, raw outputs and post-NMS detections compared.

End-to-end students (YOLO26) output a top-K list ``(N, K, 6)`` (x1, y1, x2, y2, score, class; K = min(300, anchors)),
sorted by score. Rows of tied scores may come out in another order in each runtime, and where rows tie at the list's
cut (its last score) each runtime may keep other ones: a random-init head ties everywhere, which used to read as
"max|diff| 56" element-wise. So the rows are compared order-free (each torch row against the ONNX row of its class and
score), only those scoring above the cut by more than ``score_atol`` (decidable); their detections are the decidable
rows at or above ``conf`` (NMS-free, as deployed).
Other raw outputs are the detector's decoded predictions, shape ``(N, 4 + nc, A)``: rows 0-3 are xywh boxes in input pixels,
the rest class scores in [0, 1], ``A`` anchors (8400 at 640 px). Boxes and scores are compared separately (pixels vs
probabilities). Detections come from Ultralytics' ``non_max_suppression`` on both outputs and are matched per image by
class and IoU; a detection missing on one side only counts as a disagreement when it is not borderline (score within
``score_margin`` of ``conf``, or a near-tie NMS choice between overlapping boxes of almost equal score).

When no detection reaches ``conf`` on either side, detections are compared at :data:`LOW_CONF` instead (and the report
says so); a check that compared nothing at all reports "NOTHING COMPARED", never PASS.
"""

from __future__ import annotations

from copy import deepcopy
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from detkd.errors import DetKDError
from detkd.models.compat import is_end_to_end

# precision -> (box_atol in pixels per 640 px of input, box_rtol, score_atol, IoU needed to call two detections the
# same). Boxes pass when |torch - onnx| <= box_atol + box_rtol * |torch| everywhere (as numpy.allclose).
TOLERANCES = {"fp32": (0.05, 1e-4, 1e-3, 0.95), "fp16": (1.0, 4e-3, 2e-2, 0.85)}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
LOW_CONF = 0.001  # Ultralytics' validation threshold: detections are compared there when none reaches ``conf``


@dataclass
class ParityReport:
    """Outcome of :func:`check_onnx_parity`.

    ``passed``: something was compared and no tolerance was exceeded; ``checked`` False means nothing could be compared
    (no decidable output row, no detection even at :data:`LOW_CONF`): neither PASS nor FAIL.
    """

    n_images: int
    precision: str
    provider: str
    compared: str  # what the raw comparison covered, in words
    n_compared: int  # raw values compared: anchors x images (one-to-many), decidable rows (end-to-end)
    max_abs_diff: float  # over what was compared
    box_max_abs_diff: float  # pixels
    score_max_abs_diff: float
    box_atol: float
    box_rtol: float
    score_atol: float
    boxes_within_tol: bool
    conf: float  # the asked threshold
    det_conf: float  # the threshold detections were compared at (LOW_CONF when none reached conf)
    n_det_torch: int
    n_det_onnx: int
    n_matched: int
    n_borderline: int
    n_mismatched: int
    detections_agree: bool
    checked: bool
    passed: bool

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def state(self) -> str:
        """'FAIL' (a tolerance exceeded), else 'PASS' or, when nothing could be compared, 'NOTHING COMPARED'."""
        if not self.within_tolerance:
            return "FAIL"
        return "PASS" if self.checked else "NOTHING COMPARED"

    @property
    def within_tolerance(self) -> bool:
        return self.detections_agree and self.boxes_within_tol and self.score_max_abs_diff <= self.score_atol

    def summary(self) -> str:
        """One line for logs, naming what was compared."""
        head = f"parity {self.state} ({self.precision}, {self.provider}, {self.n_images} images): "
        if self.state == "NOTHING COMPARED":
            return head + (f"{self.compared}; no decidable detection at conf {self.conf:g} or {self.det_conf:g}. "
                           f"The file was not verified (an untrained head?): pass --parity-images with images of "
                           f"your classes.")
        lowered = f" (none reached conf {self.conf:g})" if self.det_conf < self.conf else ""
        return (head + f"{self.compared}: max|diff| {self.max_abs_diff:.3g} (boxes {self.box_max_abs_diff:.3g} px, "
                f"tol {self.box_atol:.3g} px + {self.box_rtol:.0e}*|box| "
                f"{'ok' if self.boxes_within_tol else 'EXCEEDED'}; scores {self.score_max_abs_diff:.3g} <= "
                f"{self.score_atol:.3g}); detections at conf {self.det_conf:g}{lowered}: torch {self.n_det_torch} / "
                f"onnx {self.n_det_onnx}: {self.n_matched} matched, {self.n_borderline} borderline, "
                f"{self.n_mismatched} disagree")


def load_parity_images(source: str | Path | list[Path] | None = None, n: int = 4) -> list[np.ndarray]:
    """Up to ``n`` BGR uint8 images (H, W, 3): from a file, a directory or a list of files (a split's), else
    Ultralytics' bundled sample images."""
    import cv2

    if source is None:
        from ultralytics.utils import ASSETS

        files = sorted(Path(ASSETS).glob("*.jpg"))
    elif isinstance(source, (list, tuple)):
        files = [Path(f) for f in source]
    else:
        p = Path(source)
        files = [p] if p.is_file() else sorted(f for f in p.glob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DetKDError(f"no images found at --parity-images '{source}' (expected a file or a folder of "
                             f"{'/'.join(IMAGE_SUFFIXES)}).")
    images = [im for im in (cv2.imread(str(f)) for f in files[:n]) if im is not None]
    if not images:
        raise DetKDError(f"could not read any image from {source or 'Ultralytics assets'}.")
    return images


def preprocess(images: list[np.ndarray], imgsz: int) -> torch.Tensor:
    """Letterbox (Ultralytics ``LetterBox``, square ``imgsz``) and normalise BGR uint8 images.

    Returns:
        float32 tensor (N, 3, imgsz, imgsz), RGB, values in [0, 1] — the layout both runtimes take.
    """
    from ultralytics.data.augment import LetterBox

    lb = LetterBox((imgsz, imgsz), auto=False)
    batch = np.stack([lb(image=im) for im in images])[..., ::-1]  # BGR -> RGB
    return torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2))).float() / 255.0


def torch_outputs(net: torch.nn.Module, x: torch.Tensor, device: torch.device, half: bool) -> np.ndarray:
    """Raw decoded output of the fused student, float32 numpy (N, 4 + nc, A)."""
    model = deepcopy(net).float().eval().to(device)
    if is_end_to_end(model):
        model.end2end = True  # the NMS-free one-to-one head, as exported and deployed
    model = model.fuse(verbose=False) if hasattr(model, "fuse") else model
    if half:
        model = model.half()
    with torch.inference_mode():
        y = model(x.to(device).half() if half else x.to(device))
    y = y[0] if isinstance(y, (list, tuple)) else y
    return y.float().cpu().numpy()


def ort_session(path: str | Path, device: torch.device):
    """An ONNX Runtime session on CUDA when asked for and available, else CPU. Returns (session, provider name)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise DetKDError("ONNX parity needs onnxruntime: pip install onnxruntime (or onnxruntime-gpu), or skip the "
                         "check with --no-parity.") from None
    available = ort.get_available_providers()
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in available:
        providers = [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
    session = ort.InferenceSession(str(path), providers=providers)
    return session, session.get_providers()[0]


def onnx_outputs(session, x: torch.Tensor) -> np.ndarray:
    """Run ``x`` (N, 3, H, W) through the session in chunks of its static batch; float32 numpy (N, 4 + nc, A)."""
    inp = session.get_inputs()[0]
    dtype = np.float16 if "float16" in inp.type else np.float32
    b = inp.shape[0] if isinstance(inp.shape[0], int) else len(x)
    outs = []
    for i in range(0, len(x), b):
        chunk = x[i:i + b].numpy()
        pad = b - len(chunk)
        if pad:
            chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
        y = session.run(None, {inp.name: chunk.astype(dtype)})[0]
        outs.append(y[: b - pad] if pad else y)
    return np.concatenate(outs).astype(np.float32)


def _nms(raw: np.ndarray, conf: float, iou: float) -> list[torch.Tensor]:
    from ultralytics.utils.nms import non_max_suppression

    return non_max_suppression(torch.from_numpy(raw), conf, iou, max_time_img=10.0)


def _row_box_diff(ref: np.ndarray, out: np.ndarray, score_atol: float) -> np.ndarray:
    """End-to-end outputs (N, K, 6) are top-K lists: rows of (almost) tied scores may come out in another order.
    Per torch row, the box difference to the nearest ONNX row of the same class and a score within ``score_atol``
    (N, K, 4): element-wise when the orders agree, order-free otherwise."""
    diffs = np.empty(ref.shape[:-1] + (4,), np.float32)
    for n in range(ref.shape[0]):
        box = np.abs(ref[n, :, None, :4] - out[n, None, :, :4])  # (K, K, 4)
        ok = (np.abs(ref[n, :, None, 4] - out[n, None, :, 4]) <= score_atol) & (ref[n, :, None, 5] == out[n, None, :, 5])
        worst = np.where(ok, box.max(-1), np.inf)  # (K, K)
        best = worst.argmin(1)
        diffs[n] = box[np.arange(box.shape[0]), best]
        diffs[n][~ok.any(1)] = np.inf  # no ONNX row with this score and class at all
    return diffs


def top_k_cut(ref: np.ndarray, out: np.ndarray, score_atol: float) -> np.ndarray:
    """Per image, the score a row of an end-to-end output (N, K, 6) must exceed to be in the list whatever the
    tie-breaking: the list's last (lowest) score on either side plus ``score_atol``. Returns (N,)."""
    return np.maximum(ref[:, -1, 4], out[:, -1, 4]) + score_atol


def _nms_free(raw: np.ndarray, thresholds: np.ndarray) -> list[torch.Tensor]:
    """Detections of an end-to-end output (N, K, 6): per image ``n`` the rows scoring at least ``thresholds[n]``
    (same layout as NMS output)."""
    return [torch.from_numpy(r[r[:, 4] >= t]) for r, t in zip(raw, thresholds)]


def compare_detections(a: list[torch.Tensor], b: list[torch.Tensor], conf, nms_iou: float, match_iou: float,
                       score_margin: float) -> tuple[int, int, int]:
    """Match two sets of per-image detections (each (n, 6): x1, y1, x2, y2, score, class).

    ``conf`` is the threshold they were cut at: one float, or one per image (end-to-end cuts differ per image).

    Returns:
        ``(matched, borderline, mismatched)`` counts over all images (an unmatched detection counts once, from the
        side it appears on).
    """
    from ultralytics.utils.metrics import box_iou

    matched = borderline = mismatched = 0
    confs = np.broadcast_to(np.asarray(conf, dtype=np.float64), (len(a),))
    for da, db, conf in zip(a, b, confs.tolist()):
        iou = box_iou(da[:, :4], db[:, :4]) if len(da) and len(db) else torch.zeros(len(da), len(db))
        if len(da) and len(db):  # coincident boxes are the same detection, even degenerate ones (IoU undefined)
            iou = torch.where((da[:, None, :4] - db[None, :, :4]).abs().amax(-1) <= 1e-3, torch.ones_like(iou), iou)
        same_cls = da[:, 5:6] == db[:, 5].unsqueeze(0) if len(da) and len(db) else torch.zeros(len(da), len(db), dtype=torch.bool)
        cand = torch.where(same_cls, iou, torch.zeros_like(iou))
        used_b = set()
        unmatched_a = []
        for i in torch.argsort(da[:, 4], descending=True).tolist() if len(da) else []:
            order = torch.argsort(cand[i], descending=True).tolist() if len(db) else []
            j = next((j for j in order if j not in used_b and cand[i, j] >= match_iou), None)
            if j is None:
                unmatched_a.append(i)
            else:
                used_b.add(j)
                matched += 1
        unmatched_b = [j for j in range(len(db)) if j not in used_b]
        for dets, other, idx, ov in ((da, db, unmatched_a, cand), (db, da, unmatched_b, cand.T)):
            for k in idx:
                near_conf = float(dets[k, 4]) < conf + score_margin
                # suppressed on the other side by a near-tie neighbour of the same class
                near_tie = bool(len(other)) and bool(((ov[k] > nms_iou - 0.15)
                                                      & ((other[:, 4] - dets[k, 4]).abs() <= 2 * score_margin)).any())
                if near_conf or near_tie:
                    borderline += 1
                else:
                    mismatched += 1
    return matched, borderline, mismatched


def compare_raw_dense(ref: np.ndarray, out: np.ndarray, box_atol: float, box_rtol: float) -> dict:
    """Element-wise comparison of one-to-many outputs (N, 4 + nc, A): rows 0-3 xywh boxes (pixels), then scores.

    Returns:
        ``compared`` (words), ``n_compared`` (anchors x images), ``max_abs_diff``, ``box_diff`` (px), ``score_diff``,
        ``boxes_ok`` (|diff| <= box_atol + box_rtol * |box| everywhere).
    """
    diff = np.abs(ref - out)
    return {"compared": f"raw outputs {tuple(ref.shape)} (boxes and class scores of every anchor) element-wise",
            "n_compared": int(ref.shape[0] * ref.shape[2]), "max_abs_diff": float(diff.max()),
            "box_diff": float(diff[:, :4].max()), "score_diff": float(diff[:, 4:].max()),
            "boxes_ok": bool((diff[:, :4] <= box_atol + box_rtol * np.abs(ref[:, :4])).all())}


def compare_raw_end_to_end(ref: np.ndarray, out: np.ndarray, box_atol: float, box_rtol: float,
                           score_atol: float) -> dict:
    """Order-free comparison of end-to-end top-K lists (N, K, 6): x1, y1, x2, y2, score, class; sorted by score.

    Scores are compared element-wise (a sorted list of values does not depend on how ties were broken); boxes per
    decidable torch row (score above :func:`top_k_cut`) against the ONNX row of its class and score. Returns the keys
    of :func:`compare_raw_dense` (``n_compared``: decidable rows) and ``cut`` (N,).
    """
    n, k = ref.shape[:2]
    cut = top_k_cut(ref, out, score_atol)
    rows = ref[..., 4] > cut[:, None]  # (N, K)
    n_rows = int(rows.sum())
    row_diff = np.where(rows[..., None], _row_box_diff(ref, out, score_atol), 0.0)  # (N, K, 4)
    box_diff = float(row_diff.max()) if n_rows else 0.0
    score_diff = float(np.abs(ref[..., 4] - out[..., 4]).max())
    ties = (f" (the other {n * k - n_rows} score within {score_atol:g} of the list's last score: each runtime may keep "
            f"other rows there)" if n_rows < n * k else "")
    return {"compared": f"end-to-end top-{k} rows order-free (by class and score): {n_rows} of {n * k}{ties}",
            "n_compared": n_rows, "max_abs_diff": max(box_diff, score_diff), "box_diff": box_diff,
            "score_diff": score_diff, "cut": cut,
            "boxes_ok": bool((row_diff <= box_atol + box_rtol * np.abs(ref[..., :4])).all())}


def _detections(ref: np.ndarray, out: np.ndarray, conf: float, iou: float, cut: np.ndarray | None):
    """(torch detections, ONNX detections, per-image thresholds used): NMS for one-to-many outputs; for end-to-end
    ones (``cut`` given) the rows at or above both ``conf`` and the decidable cut."""
    if cut is None:
        return _nms(ref, conf, iou), _nms(out, conf, iou), conf
    thresholds = np.maximum(conf, cut)
    return _nms_free(ref, thresholds), _nms_free(out, thresholds), thresholds


def check_onnx_parity(net: torch.nn.Module, onnx_path: str | Path, images: list[np.ndarray] | torch.Tensor | None = None,
                      imgsz: int = 640, half: bool = False, device: str = "cpu", conf: float = 0.25, iou: float = 0.7,
                      box_atol: float | None = None, box_rtol: float | None = None, score_atol: float | None = None,
                      raise_on_fail: bool = True,
                      verbose: bool = True) -> ParityReport:
    """Run the same images through the torch student and the ONNX file; compare raw outputs and NMS detections.

    Args:
        net: the bare student ``DetectionModel`` the file was exported from.
        onnx_path: the exported ``.onnx``.
        images: BGR uint8 images (letterboxed to ``imgsz``) or a ready (N, 3, imgsz, imgsz) float tensor in [0, 1];
            None uses :func:`load_parity_images`.
        half: the file holds FP16 weights (tolerances for fp16; torch runs FP16 too when on CUDA).
        device: 'cpu' or a CUDA index; ORT uses its CUDA provider there when installed, else CPU.
        conf, iou: detection thresholds (NMS for one-to-many outputs; ``iou`` unused end-to-end). When no detection
            reaches ``conf`` on either side, detections are compared at :data:`LOW_CONF` (``report.det_conf``).
        box_atol (pixels), box_rtol, score_atol: allowed |torch - onnx| (boxes: atol + rtol * |value|); defaults
            from :data:`TOLERANCES`, box_atol scaled by imgsz / 640.
        raise_on_fail: raise :class:`DetKDError` when parity breaks (default), else only report. A check that
            compared nothing (``report.state == "NOTHING COMPARED"``) warns and returns ``passed=False``.
    """
    from ultralytics.utils import LOGGER
    from ultralytics.utils.torch_utils import select_device

    precision = "fp16" if half else "fp32"
    box_tol, rtol, score_tol, match_iou = TOLERANCES[precision]
    box_atol = box_tol * imgsz / 640 if box_atol is None else box_atol
    box_rtol = rtol if box_rtol is None else box_rtol
    score_atol = score_tol if score_atol is None else score_atol
    dev = select_device(device, verbose=False)
    x = images if isinstance(images, torch.Tensor) else preprocess(images or load_parity_images(), imgsz)
    x = x.float().cpu()
    ref = torch_outputs(net, x, dev, half=half and dev.type == "cuda")
    session, provider = ort_session(onnx_path, dev)
    out = onnx_outputs(session, x)
    if ref.shape != out.shape:
        raise DetKDError(f"ONNX output shape {out.shape} differs from torch {ref.shape}: the export is broken.")
    if is_end_to_end(net):  # (N, K, 6) top-K detections, no NMS
        raw = compare_raw_end_to_end(ref, out, box_atol, box_rtol, score_atol)
    else:  # (N, 4 + nc, A): decoded boxes then class scores, NMS on both
        raw = compare_raw_dense(ref, out, box_atol, box_rtol)
    det_conf = conf
    det_t, det_o, thresholds = _detections(ref, out, conf, iou, raw.get("cut"))
    if not any(len(d) for d in det_t + det_o) and conf > LOW_CONF:  # nothing to match at conf: look lower
        det_conf = LOW_CONF
        det_t, det_o, thresholds = _detections(ref, out, LOW_CONF, iou, raw.get("cut"))
    matched, borderline, mismatched = compare_detections(det_t, det_o, thresholds, iou, match_iou,
                                                         score_margin=score_atol)
    n_det_t, n_det_o = sum(len(d) for d in det_t), sum(len(d) for d in det_o)
    agree = mismatched == 0
    checked = raw["n_compared"] > 0 or n_det_t + n_det_o > 0
    within = agree and raw["boxes_ok"] and raw["score_diff"] <= score_atol
    report = ParityReport(
        n_images=len(x), precision=precision, provider=provider, compared=raw["compared"],
        n_compared=raw["n_compared"], max_abs_diff=raw["max_abs_diff"], box_max_abs_diff=raw["box_diff"],
        score_max_abs_diff=raw["score_diff"], box_atol=box_atol, box_rtol=box_rtol, score_atol=score_atol,
        boxes_within_tol=raw["boxes_ok"], conf=conf, det_conf=det_conf, n_det_torch=n_det_t, n_det_onnx=n_det_o,
        n_matched=matched, n_borderline=borderline, n_mismatched=mismatched, detections_agree=agree,
        checked=checked, passed=within and checked,
    )
    if verbose:
        {"PASS": LOGGER.info, "FAIL": LOGGER.error}.get(report.state, LOGGER.warning)(report.summary())
        if checked and det_conf < conf:
            LOGGER.warning(f"parity: no detection reached conf={conf:g} on these images, so detections were compared "
                           f"at conf={det_conf:g} (pass --parity-images with images of your classes to compare them "
                           f"at your threshold).")
    if raise_on_fail and report.state == "FAIL":
        raise DetKDError(f"ONNX export {onnx_path} does not match the torch model: {report.summary()}. Do not deploy "
                         f"it; try another --opset, drop --half, or report the model.")
    return report


# ------------------------------------------------------------------------------------------- INT8 artefacts
# INT8 changes every activation by up to half a quantization step, so raw outputs are not compared element-wise: the
# INT8 check is on detections. Two detections are the same when their class agrees and IoU >= match_iou; a detection
# found on one side only is borderline (not counted against parity) when its score is within score_margin of the
# threshold or a near-tie NMS choice; the check fails when more than max_disagree of the detections (the larger side)
# are found by one side only and not borderline (at least two are tolerated). They are compared on INT8_PARITY_IMAGES
# images of the evaluation split: enough detections for a rate.
INT8_TOLERANCE = {"match_iou": 0.5, "score_margin": 0.1, "max_disagree": 0.2}
# Measured (shapes student, AP 0.11, 96 px, 2-core EPYC): OpenVINO INT8 (AP +0.001) flipped 2 of 9 detections at conf
# 0.25 on 32 val images (class confusions of low-score objects), ONNX Runtime INT8 none; a broken export disagrees on
# most. So 20% of the detections, and at least 2, may differ.
INT8_PARITY_IMAGES = 32


@dataclass
class Int8ParityReport:
    """Outcome of :func:`check_int8_parity`: detections of the torch FP32 student vs the INT8 artefact."""

    n_images: int
    runtime: str  # the artefact's backend ('onnx', 'openvino')
    conf: float
    det_conf: float  # the threshold detections were compared at (LOW_CONF when none reached conf)
    n_det_torch: int
    n_det_int8: int
    n_matched: int
    n_borderline: int
    n_mismatched: int
    match_iou: float
    score_margin: float
    max_disagree: float
    reference: str = "torch FP32"  # the torch side: the FP32 student, or a QAT student's fake-quantized model

    def to_dict(self) -> dict:
        return {**asdict(self), "checked": self.checked, "passed": self.passed, "state": self.state}

    @property
    def checked(self) -> bool:
        """A detection was decided: matched, or found by one side only and not borderline (a borderline one — score
        within ``score_margin`` of the threshold — decides nothing, so a head whose scores all sit there is not
        verified)."""
        return self.n_matched + self.n_mismatched > 0

    @property
    def passed(self) -> bool:
        return self.state == "PASS"

    @property
    def allowed(self) -> int:
        """How many detections may be found by one side only (not borderline): ``max_disagree`` of the larger side,
        and at least two (on a handful of detections a flip or two is not a rate)."""
        return max(2, int(self.max_disagree * max(self.n_det_torch, self.n_det_int8)))

    @property
    def state(self) -> str:
        if self.n_mismatched > self.allowed:
            return "FAIL"
        return "PASS" if self.checked else "NOTHING COMPARED"

    def summary(self) -> str:
        head = f"INT8 parity {self.state} ({self.reference} vs {self.runtime} INT8, {self.n_images} val images): "
        if self.state == "NOTHING COMPARED":
            return head + (f"no decidable detection at conf {self.conf:g} or {self.det_conf:g} (torch "
                           f"{self.n_det_torch} / int8 {self.n_det_int8}, all within {self.score_margin:g} of the "
                           f"threshold); the INT8 file was not verified (an untrained head?): pass --parity-images "
                           f"with images of your classes.")
        lowered = f" (none reached conf {self.conf:g})" if self.det_conf < self.conf else ""
        return (head + f"detections at conf {self.det_conf:g}{lowered} matched by class and IoU >= "
                f"{self.match_iou:g}: torch {self.n_det_torch} / int8 {self.n_det_int8}: {self.n_matched} matched, "
                f"{self.n_borderline} borderline (score within {self.score_margin:g} of the threshold or an NMS "
                f"near-tie), {self.n_mismatched} disagree (allowed {self.allowed}: {self.max_disagree:.0%}, at least "
                f"2)")


def artefact_outputs(path: str | Path, x: torch.Tensor) -> np.ndarray:
    """Raw output of an exported artefact (ONNX, OpenVINO) run by Ultralytics' ``AutoBackend``, image by image
    (exports have a static batch): float32 numpy (N, 4 + nc, A), or (N, K, 6) for end-to-end models."""
    from detkd.deploy.backends import load_backend

    net = load_backend(path, device="cpu")
    outs = []
    for i in range(len(x)):
        y = net(x[i:i + 1])
        y = y[0] if isinstance(y, (list, tuple)) else y
        outs.append(np.asarray(y.cpu().numpy() if isinstance(y, torch.Tensor) else y, dtype=np.float32))
    return np.concatenate(outs)


def check_int8_parity(net: torch.nn.Module, path: str | Path, images: list[np.ndarray] | torch.Tensor,
                      imgsz: int = 640, conf: float = 0.25, iou: float = 0.7, match_iou: float | None = None,
                      score_margin: float | None = None, max_disagree: float | None = None,
                      verbose: bool = True) -> Int8ParityReport:
    """Compare the detections of the FP32 torch student and its INT8 artefact on the same letterboxed images (a
    quantization-aware trained student: its fake-quantized model, the one it trained and validated as).

    Detections: NMS at ``conf``/``iou`` on one-to-many outputs, the rows scoring >= ``conf`` on end-to-end ones; when
    none reaches ``conf`` on either side, compared at :data:`LOW_CONF`. Tolerances default to :data:`INT8_TOLERANCE`.
    Never raises on disagreement: the caller decides (``detkd export --int8`` fails with exit 1).
    """
    from ultralytics.utils import LOGGER

    from detkd.engine.qat import is_quantized

    tol = {**INT8_TOLERANCE, **{k: v for k, v in (("match_iou", match_iou), ("score_margin", score_margin),
                                                   ("max_disagree", max_disagree)) if v is not None}}
    x = images if isinstance(images, torch.Tensor) else preprocess(images, imgsz)
    x = x.float().cpu()
    ref = torch_outputs(net, x, torch.device("cpu"), half=False)
    out = artefact_outputs(path, x)
    if ref.shape != out.shape:
        raise DetKDError(f"INT8 output shape {out.shape} differs from torch {ref.shape}: the export is broken.")
    end_to_end = is_end_to_end(net)

    def detections(threshold: float):
        if end_to_end:
            t = np.full(len(ref), threshold)
            return _nms_free(ref, t), _nms_free(out, t)
        return _nms(ref, threshold, iou), _nms(out, threshold, iou)

    det_conf = conf
    det_t, det_q = detections(conf)
    if not any(len(d) for d in det_t + det_q) and conf > LOW_CONF:
        det_conf = LOW_CONF
        det_t, det_q = detections(LOW_CONF)
    matched, borderline, mismatched = compare_detections(det_t, det_q, det_conf, iou, tol["match_iou"],
                                                         score_margin=tol["score_margin"])
    n_t, n_q = sum(len(d) for d in det_t), sum(len(d) for d in det_q)
    runtime = "openvino" if Path(str(path)).is_dir() else Path(str(path)).suffix.lstrip(".")
    report = Int8ParityReport(n_images=len(x), runtime=runtime, conf=conf, det_conf=det_conf, n_det_torch=n_t,
                              n_det_int8=n_q, n_matched=matched, n_borderline=borderline, n_mismatched=mismatched,
                              reference="torch QAT (fake-quantized)" if is_quantized(net) else "torch FP32", **tol)
    if verbose:
        {"PASS": LOGGER.info, "FAIL": LOGGER.error}.get(report.state, LOGGER.warning)(report.summary())
    return report

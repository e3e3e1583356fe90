"""How the training criterion treats unlabelled images (``--unlabeled``; loading and mixing: ``data/unlabeled.py``).

An unlabelled image has no ground truth, so it must not be read as "background everywhere" — which is what the
detection loss would do with its empty label list. On a batch with ``labeled`` (B,) flags:

* detection loss: computed on the labelled images only (the head outputs and targets of those rows; the assigner
  never sees the unlabelled ones). Its foreground mask is scattered back to the whole batch (unlabelled rows: none).
  With ``pseudo_conf`` set, the teacher's detections at or above that confidence (after NMS) become the unlabelled
  images' targets instead, and the detection loss covers the whole batch (hard pseudo-labels, as the
  semi-supervised detectors Efficient Teacher / Dense Teacher add to their soft targets).
* KD (logit and box): every image; on unlabelled images each anchor is weighted by the teacher's confidence
  w_a = max_c σ(t_ac) (no assigned anchors and no labels to verify exist there). Feature KD needs no labels.
* logging: a batch of unlabelled images only (soft KD, no pseudo-labels) has no detection loss and logs 0 for it;
  Ultralytics averages every loss item over all of the epoch's batches, so :class:`LabeledBatchMean` gives the
  items that need labels (detection loss, KD/label gradient alignment) their mean over the batches that had
  labelled images: ``train/box_loss`` etc. in results.csv read as without unlabelled images, whatever the ratio.
"""

from __future__ import annotations

import torch

PSEUDO_NMS_IOU = 0.7  # Ultralytics' default NMS IoU for predictions
PSEUDO_MAX_DET = 300


def labeled_flags(batch: dict, batch_size: int, device) -> torch.Tensor | None:
    """(B,) bool of the batch's labelled images, or None when every image is labelled (no ``labeled`` key)."""
    flags = batch.get("labeled")
    if flags is None:
        return None
    flags = torch.as_tensor(flags, dtype=torch.bool, device=device).view(-1)
    if flags.numel() != batch_size:
        raise RuntimeError(f"batch['labeled'] has {flags.numel()} flags for {batch_size} images")
    return None if bool(flags.all()) else flags


def select_images(outputs, keep: torch.Tensor):
    """Head outputs (tensors with the batch first, lists and dicts of them) restricted to images ``keep`` (B,)."""
    if isinstance(outputs, torch.Tensor):
        return outputs[keep]
    if isinstance(outputs, dict):
        return {k: select_images(v, keep) for k, v in outputs.items()}
    if isinstance(outputs, (list, tuple)):
        return type(outputs)(select_images(v, keep) for v in outputs)
    return outputs


def select_targets(batch: dict, keep: torch.Tensor) -> dict:
    """The batch's targets (``batch_idx``, ``cls``, ``bboxes``) of images ``keep``, renumbered 0..K-1."""
    keep = keep.to(batch["batch_idx"].device)
    new_index = torch.cumsum(keep.long(), 0) - 1  # old image index → position among kept images
    image = batch["batch_idx"].long().view(-1)
    rows = keep[image]
    return {**batch, "batch_idx": new_index[image[rows]].to(batch["batch_idx"].dtype), "cls": batch["cls"][rows],
            "bboxes": batch["bboxes"][rows]}


def scatter_rows(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """(K, ...) values of the kept images → (B, ...) with zeros (False) on the others."""
    out = values.new_zeros((keep.numel(), *values.shape[1:]))
    out[keep.to(values.device)] = values
    return out


def teacher_confidence_weights(weights: torch.Tensor, teacher_logits: torch.Tensor,
                               labeled: torch.Tensor) -> torch.Tensor:
    """Anchor weights (B, A): ``weights`` on labelled images, the teacher's confidence max_c σ(t_ac) on the others.

    Shapes: weights (B, A), teacher_logits (B, A, C), labeled (B,) bool.
    """
    conf = teacher_logits.detach().float().sigmoid().amax(-1)
    return torch.where(labeled.view(-1, 1).to(weights.device), weights, conf.to(weights.dtype))


def pseudo_label_targets(batch: dict, labeled: torch.Tensor, teacher_boxes_px: torch.Tensor,
                         teacher_logits: torch.Tensor, conf: float, label_iou: float | None = None) -> dict:
    """``batch`` with the teacher's detections on the unlabelled images added as targets.

    Per unlabelled image: class-wise NMS (IoU 0.7, at most 300) over anchors whose best class probability is
    ≥ ``conf``; boxes go in as Ultralytics' normalised xywh, classes as floats; the targets stay grouped by image in
    image order, as Ultralytics' loss expects. With ``label_iou``, a detection overlapping one of the image's own
    labels at IoU ≥ ``label_iou`` is left out: that object is labelled already, and the label wins.

    Shapes: teacher_boxes_px (B, A, 4) xyxy pixels of the batch's letterboxed images, teacher_logits (B, A, C),
    labeled (B,) bool.
    """
    import torchvision
    from ultralytics.utils import ops

    h, w = batch["img"].shape[2:]
    scale = teacher_boxes_px.new_tensor([w, h, w, h])
    idx, cls, boxes = [batch["batch_idx"].view(-1)], [batch["cls"].view(-1, 1)], [batch["bboxes"]]
    probs = teacher_logits.detach().float().sigmoid()
    for i in torch.nonzero(~labeled.to(probs.device)).view(-1).tolist():
        score, label = probs[i].max(-1)
        keep = score >= conf
        if not bool(keep.any()):
            continue
        b, s, c = teacher_boxes_px[i][keep].float(), score[keep], label[keep]
        kept = torchvision.ops.batched_nms(b, s, c, PSEUDO_NMS_IOU)[:PSEUDO_MAX_DET]
        if label_iou is not None:
            kept = kept[~_on_a_label(b[kept], batch, i, scale, label_iou)]
        xywh = ops.xyxy2xywh((b[kept] / scale).clamp(0, 1))
        idx.append(torch.full((len(kept),), i, dtype=batch["batch_idx"].dtype, device=idx[0].device))
        cls.append(c[kept].to(cls[0].dtype).view(-1, 1).to(cls[0].device))
        boxes.append(xywh.to(boxes[0].dtype).to(boxes[0].device))
    idx, cls, boxes = torch.cat(idx), torch.cat(cls), torch.cat(boxes)
    order = torch.sort(idx, stable=True).indices  # each image's targets together, in image order (Ultralytics' loss)
    return {**batch, "batch_idx": idx[order], "cls": cls[order], "bboxes": boxes[order]}


def _on_a_label(boxes_px: torch.Tensor, batch: dict, image: int, scale: torch.Tensor, iou: float) -> torch.Tensor:
    """(N,) bool: which of ``boxes_px`` (N, 4) xyxy px overlap one of image ``image``'s labels at IoU ≥ ``iou``."""
    import torchvision
    from ultralytics.utils import ops

    mine = batch["batch_idx"].view(-1) == image
    if not bool(mine.any()):
        return torch.zeros(len(boxes_px), dtype=torch.bool, device=boxes_px.device)
    labels = ops.xywh2xyxy(batch["bboxes"][mine.to(batch["bboxes"].device)].to(boxes_px)) * scale
    return (torchvision.ops.box_iou(boxes_px, labels) >= iou).any(1)


class LabeledBatchMean:
    """Epoch means of the loss items that need labelled images, over the batches that had some.

    Ultralytics keeps ``tloss``, the running mean of every loss item over the epoch's batches; a batch of unlabelled
    images only logs 0 for the detection loss (and the gradient alignment with it), which would dilute that mean by
    the share of such batches. After Ultralytics' update of each batch, :meth:`update` replaces those items of
    ``tloss`` by their mean over the labelled batches so far (0 until the first); every other item keeps
    Ultralytics' mean over all batches. :meth:`reset` at each epoch start, as Ultralytics resets ``tloss``.
    """

    def __init__(self, names):
        self.names = tuple(names)
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def update(self, items: dict, labeled: bool, tloss: dict) -> dict:
        """Record this batch's ``items`` (name → scalar tensor) if ``labeled``; return ``tloss`` corrected."""
        names = [k for k in self.names if k in items]
        if labeled:
            self.count += 1
            for k in names:
                self.sums[k] = self.sums.get(k, 0.0) + items[k].detach()
        return {**tloss, **{k: self.sums[k] / self.count if self.count else torch.zeros_like(items[k])
                            for k in names}}

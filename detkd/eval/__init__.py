"""COCO evaluation: COCOeval metrics, faster-coco-eval or pycocotools (:mod:`.metrics`), a COCO-scoring Ultralytics
validator (:mod:`.validator`) and the ``evaluate_coco`` entry point (:mod:`.coco_eval`)."""

from __future__ import annotations

__all__ = ["evaluate_coco", "coco_box_metrics", "format_table", "COCOEvalDetectionValidator"]


def __getattr__(name):  # lazy: importing detkd.eval does not import ultralytics/pycocotools
    if name == "evaluate_coco":
        from detkd.eval.coco_eval import evaluate_coco

        return evaluate_coco
    if name in ("coco_box_metrics", "format_table"):
        from detkd.eval import metrics

        return getattr(metrics, name)
    if name == "COCOEvalDetectionValidator":
        from detkd.eval.validator import COCOEvalDetectionValidator

        return COCOEvalDetectionValidator
    raise AttributeError(f"module 'detkd.eval' has no attribute {name!r}")

"""A DetectionValidator whose verdict is the official COCO AP on the dataset's own COCO JSON.

Ultralytics' ``DetectionValidator`` already serialises predictions to COCO results (``save_json``,
``pred_to_json``, ``class_map``) and evaluates them in ``eval_json``; it is only wired for the official COCO/LVIS
files and maps image ids from numeric file stems. This subclass changes the narrowest points:

* ``init_metrics``: a standalone run matches the model's classes to the data's by name
  (:mod:`detkd.eval.class_match`: ``class_match``; ``class_map_spec`` = ``--class-map``), refusing a data class the
  model does not have; ``class_map`` = the data.yaml's ``category_ids`` (original, possibly non-contiguous COCO ids);
  the file -> COCO ``image_id`` map comes from the data.yaml's ``image_ids``; Ultralytics' rebuilt-from-labels
  ground truth (``gdict``) is turned off: the dataset's own JSON is the ground truth.
* ``postprocess``: a model matched by name answers in the data's classes
  (:func:`~detkd.models.class_map.map_inference_output`, before NMS; its classes the data lacks dropped).
* ``pred_to_json``: Ultralytics' boxes (scaled to the original image, ``[x, y, w, h]``), with the true image id,
  in the frame of the JSON's boxes: Ultralytics predicts on the EXIF-rotated (displayed) image, so images whose
  JSON is in the stored frame (the data.yaml's ``exif_stored`` map, see :mod:`detkd.data.exif`) get their boxes
  turned back.
* ``eval_json``: ``COCOeval`` (:func:`detkd.eval.metrics.coco_box_metrics`; backend ``coco_backend``: faster-coco-eval
  by default, pycocotools with ``DETKD_COCO_BACKEND=pycocotools``) on the data.yaml's
  ``coco_eval[split]`` JSON, restricted to the images the dataloader saw. Sets ``stats['fitness']`` = COCO AP, so
  a trainer selects ``best.pt`` on official AP, and adds ``metrics/AP(COCO)``, ``metrics/AP50(COCO)``,
  ``metrics/AP75(COCO)``, ``metrics/AR100(COCO)`` and ``metrics/mAP_{small,medium,large}(B)``.

The data must come from :func:`detkd.data.coco.prepare_dataset` (a COCO dataset; its data.yaml has the keys).

Plug it into a trainer (what ``--coco-eval`` does)::

    from copy import copy
    from detkd.eval.validator import COCOEvalDetectionValidator

    class MyTrainer(DetectionTrainer):
        def get_validator(self):
            return COCOEvalDetectionValidator(self.test_loader, save_dir=self.save_dir, args=copy(self.args),
                                              _callbacks=self.callbacks)

    trainer = MyTrainer(overrides={"data": str(prepare_dataset("path/to/coco")), "model": "yolov8n.yaml"})

Standalone: ``v = COCOEvalDetectionValidator(args={"data": data_yaml, "split": "val"}); v(model=net)``; the
metrics dict is then ``v.coco_metrics`` (see :func:`detkd.eval.coco_eval.evaluate_coco`).
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

from ultralytics.models.yolo.detect import DetectionValidator
from ultralytics.utils import LOGGER

from detkd.data.exif import box_to_stored
from detkd.errors import DatasetError, IncompatibleModelsError
from detkd.eval.class_match import ClassMatch, match_classes, model_class_names
from detkd.eval.metrics import BACKEND_LABEL, coco_box_metrics, format_table, load_gt, resolve_backend
from detkd.models.class_map import map_inference_output


def describe_run(model, path=None) -> dict:
    """``{'backend', 'weights', 'precision', 'precision_detail'}`` of the ``AutoBackend`` a standalone validation
    runs: torch / onnxruntime / openvino, the precision stored in the artefact at ``path`` and the one read back from
    the backend (OpenVINO may run an FP32 model in BF16)."""
    from detkd.deploy.backends import executed_precision, inspect_artefact

    fmt = getattr(model, "format", "pt")
    ran = executed_precision(model)
    weights = inspect_artefact(path).weights if fmt in {"onnx", "openvino"} and path else ran["precision"]
    return {"backend": {"pt": "torch", "onnx": "onnxruntime"}.get(fmt, fmt), "weights": weights,
            "precision": ran["precision"], "precision_detail": ran["detail"]}


@contextmanager
def _named(model, names):
    """``model.names`` = ``names`` meanwhile (an ``AutoBackend`` gets them as its own attribute, then its backend's
    again)."""
    own = "names" in vars(model)
    before = vars(model).get("names")
    model.names = dict(names)
    try:
        yield
    finally:
        if own:
            model.names = before
        else:
            del model.names


class COCOEvalDetectionValidator(DetectionValidator):
    """DetectionValidator scoring with COCOeval on the dataset's own JSON (see module docstring)."""

    def __init__(self, dataloader=None, save_dir=None, args=None, _callbacks=None):
        super().__init__(dataloader, save_dir, args, _callbacks)
        self.args.save_json = True  # makes the base class collect self.jdict and call eval_json
        self.coco_metrics: dict | None = None
        self.ran: dict | None = None  # standalone runs: backend, stored weights and the precision that really ran
        self.openvino_precision: str | None = None  # fp32/bf16/fp16 for an OpenVINO model; None = its default
        self.coco_backend = resolve_backend()  # 'faster' or 'pycocotools' (evaluate_coco sets it)
        self.class_map_spec = None  # --class-map: model classes named otherwise than the data's (model=data)
        self.class_match: ClassMatch | None = None  # standalone runs: how the model's classes were matched
        self._gt_cache: dict = {}

    @property
    def split(self) -> str:
        return self.args.split or "val"

    def __call__(self, trainer=None, model=None, **kwargs):
        self.coco_metrics = None
        stats = super().__call__(trainer=trainer, model=model, **kwargs)
        if trainer is None and self.coco_metrics is None and self.data is not None:  # no detection at all
            stats = self.eval_json(stats or {})
        return stats

    def init_metrics(self, model) -> None:
        self.class_match = None if self.training else match_classes(
            model_class_names(model), self.data["names"], self.class_map_spec)
        if self.class_match is not None and self.class_match.class_map is not None:
            with _named(model, self.data["names"]):  # Ultralytics reads the classes (count, names) from the model
                super().init_metrics(model)
        else:
            super().init_metrics(model)
        if not self.training:
            path = self.args.model if isinstance(self.args.model, str) else None
            if self.openvino_precision and getattr(model, "format", None) == "openvino":
                from detkd.deploy.backends import set_openvino_precision

                set_openvino_precision(model, self.openvino_precision, path)
            self.ran = describe_run(model, path)
        ids = self.data.get("category_ids")
        if ids is None or "coco_eval" not in self.data:
            raise DatasetError("COCO evaluation needs a data.yaml made by detkd from a COCO dataset (keys "
                               "'category_ids', 'coco_eval', 'image_ids'): pass the COCO dataset folder or detkd COCO "
                               "YAML as --data (detkd.data.coco.prepare_dataset).")
        if len(ids) != self.nc:
            raise IncompatibleModelsError(
                f"the model predicts {self.nc} classes but the dataset has {len(ids)} "
                f"({', '.join(map(str, list(self.data['names'].values())[:5]))}...). Evaluate a model trained on "
                f"this dataset's classes.")
        self.class_map = [int(i) for i in ids]
        self.is_custom_json, self.build_gdict, self.gdict, self.eval_ids = False, False, None, None
        root = Path(self.data["path"])
        id_file = (self.data.get("image_ids") or {}).get(self.split)
        if not id_file:
            raise DatasetError(f"data.yaml has no image id map for split '{self.split}' "
                               f"(splits: {list(self.data.get('coco_eval', {}))}).")
        split_dir = Path(self.data[self.split] if isinstance(self.data.get(self.split), str) else
                         root / "images" / self.split)
        rel_ids = json.loads((root / id_file).read_text())
        self._image_ids = {os.path.normpath(split_dir / rel): i for rel, i in rel_ids.items()}
        exif_file = (self.data.get("exif_stored") or {}).get(self.split)
        exif = json.loads((root / exif_file).read_text()) if exif_file else {}
        self._exif_stored = {os.path.normpath(split_dir / rel): int(o) for rel, o in exif.items()}
        files = [os.path.normpath(f) for f in self.dataloader.dataset.im_files]
        self._eval_img_ids = [self._image_ids[f] for f in files if f in self._image_ids]

    def postprocess(self, preds):
        cmap = self.class_match.class_map if self.class_match is not None else None
        if cmap is not None:  # matched by name: the model's inference output in the data's classes, before NMS
            y = preds[0] if isinstance(preds, (list, tuple)) else preds  # (inference, raw) of a torch model
            y = y[0] if isinstance(y, (list, tuple)) else y  # Segment: (inference, mask protos)
            preds = map_inference_output(y, cmap, self.end2end)
        return super().postprocess(preds)

    def pred_to_json(self, predn, pbatch) -> None:
        n = len(self.jdict)
        super().pred_to_json(predn, pbatch)
        image_id = self._image_ids.get(os.path.normpath(pbatch["im_file"]))
        if image_id is None:
            raise DatasetError(f"image '{pbatch['im_file']}' is not in the dataset's image id map: the YOLO cache "
                               f"is out of date. Delete {self.data['path']} and run again.")
        orientation = self._exif_stored.get(os.path.normpath(pbatch["im_file"]), 1)
        h, w = (int(v) for v in pbatch["ori_shape"])  # the displayed frame the boxes were scaled to
        for d in self.jdict[n:]:
            d["image_id"] = image_id
            if orientation != 1:  # the JSON's boxes are in the stored frame
                d["bbox"] = [round(v, 3) for v in box_to_stored(d["bbox"], orientation, w, h)]

    def eval_json(self, stats: dict) -> dict:
        gt_path = str(self.data["coco_eval"][self.split])
        backend = resolve_backend(self.coco_backend)
        if (gt_path, backend) not in self._gt_cache:
            self._gt_cache = {(gt_path, backend): load_gt(gt_path, backend)}  # parsed once, reused every epoch
        m = coco_box_metrics(self._gt_cache[gt_path, backend], self.jdict, img_ids=self._eval_img_ids,
                             backend=backend)
        m["gt_json"] = gt_path
        self.coco_metrics = m
        stats.update({"metrics/AP(COCO)": m["AP"], "metrics/AP50(COCO)": m["AP50"], "metrics/AP75(COCO)": m["AP75"],
                      "metrics/AR100(COCO)": m["AR100"], "metrics/mAP_small(B)": m["APs"],
                      "metrics/mAP_medium(B)": m["APm"], "metrics/mAP_large(B)": m["APl"]})
        stats["fitness"] = max(m["AP"], 0.0)
        if self.training:
            LOGGER.info(f"{'COCO (' + BACKEND_LABEL[backend] + ')':>22}  AP {m['AP']:.4f}  AP50 {m['AP50']:.4f}  "
                        f"AP75 {m['AP75']:.4f}  AR100 {m['AR100']:.4f}")
        elif self.args.verbose:
            LOGGER.info(format_table(m, title=f"COCO bbox ({self.split})"))
        return stats

    def get_desc(self) -> str:
        return super().get_desc() if self.training else f"detkd eval: {self.split} images (batches)"

    def print_results(self) -> None:
        if self.training:  # standalone runs print the COCO table in eval_json instead of Ultralytics' own
            super().print_results()

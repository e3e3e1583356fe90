"""``evaluate_coco``: run a detector on a COCO split and score it with COCOeval against the dataset's own JSON
(faster-coco-eval by default, pycocotools as the reference: ``backend``, see :mod:`detkd.eval.metrics`).

Inference is Ultralytics' validation loop (letterboxed rectangular batches, NMS) through
:class:`~detkd.eval.validator.COCOEvalDetectionValidator`, so the numbers are those the distillation trainer
selects ``best.pt`` on. The model's classes are matched to the data's by name (:mod:`detkd.eval.class_match`: the
same names in another order, or more classes than the data's, are mapped; a data class the model lacks is refused;
a model without class names is scored by index, and said so). Detections are written as a COCO results JSON with the
ORIGINAL image and category ids::

    out_dir/predictions.json   [{"image_id", "category_id", "bbox": [x, y, w, h] px, "score", "file_name"}]
    out_dir/metrics.json       see evaluate_coco()
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from detkd.errors import DetKDError, WeightsNotFoundError
from detkd.eval.metrics import BACKEND_LABEL, STAT_KEYS, format_table


def resolve_model(model, nc: int, names=None):
    """What the validator can run: an ``nn.Module`` or a local weights path (never downloads).

    ``model``: a ``YOLO``/``Model`` object, an ``nn.Module`` (``DetectionModel``), a checkpoint path (``.pt``), an
    exported model path (``.onnx``, ``.torchscript``, ``*_openvino_model/`` ... whatever ``YOLO()`` loads), or a model
    YAML (random initialisation with ``nc`` classes, named ``names`` (the data's: it is built for them); a baseline
    for the pipeline, AP ~ 0).
    """
    import torch

    from detkd.models.class_map import names_list
    from detkd.models.loading import YAML_SUFFIXES, WEIGHT_SUFFIXES, load_detection_model, resolve_model_path

    if hasattr(model, "predictor") and hasattr(model, "model"):  # ultralytics Model (YOLO) object
        inner = model.model
        return inner if isinstance(inner, torch.nn.Module) else str(inner)
    if isinstance(model, torch.nn.Module):
        return model
    name = str(model)
    suffix = Path(name).suffix.lower()
    if suffix in YAML_SUFFIXES:
        net = load_detection_model(name, nc=nc)
        if names is not None:
            net.names = dict(enumerate(names_list(names)))
        return net
    if suffix in WEIGHT_SUFFIXES or not suffix and not Path(name).exists() and not _is_openvino_name(name):
        return resolve_model_path(name)
    if not Path(name).exists():
        raise WeightsNotFoundError(f"model '{name}' not found. Pass a local checkpoint (.pt), an exported model "
                                   f"(.onnx, an *_openvino_model/ folder) or a model YAML.")
    from detkd.deploy.backends import ARTEFACT_HELP, inspect_artefact

    if suffix in {".onnx", ".xml"} or Path(name).is_dir():
        return str(inspect_artefact(name).path)  # one clear error for an unreadable ONNX / OpenVINO artefact
    from ultralytics.nn.autobackend import AutoBackend

    if AutoBackend._model_type(name) is None:
        raise DetKDError(f"model '{name}': unsupported file type '{suffix or Path(name).name}'. Pass {ARTEFACT_HELP}, "
                         f"or another format Ultralytics exports (.torchscript, ...).")
    return name


def evaluate_coco(model, data, split: str = "val", imgsz: int = 640, conf: float = 0.001, iou: float = 0.7,
                  batch: int = 16, device: str = "cpu", out_dir=None, verbose: bool = True,
                  backend: str | None = None, precision: str | None = None, class_map=None) -> dict:
    """Evaluate ``model`` on ``split`` of ``data`` (COCO folder, detkd COCO YAML, or a data.yaml from
    :func:`~detkd.data.coco.prepare_dataset`) with COCOeval of ``backend`` ('faster' = faster-coco-eval, default;
    'pycocotools' = the reference; default from ``$DETKD_COCO_BACKEND``). ``precision``: OpenVINO inference precision
    ('fp32', 'bf16', 'fp16'; None = OpenVINO's default, BF16 on CPUs with BF16 units) of an ``*_openvino_model/``.
    ``class_map``: model classes named otherwise than the data's, ``'model_name=data_name;...'`` or a mapping (see
    :func:`~detkd.models.class_map.parse_class_map`), on top of the matching by name.

    The model's classes are matched to the data's by name (:func:`~detkd.eval.class_match.match_classes`); raises
    :class:`~detkd.errors.IncompatibleModelsError` when a data class is none of the model's.

    Returns (and writes to ``out_dir/metrics.json``)::

        {'AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'AR1', 'AR10', 'AR100', 'ARs', 'ARm', 'ARl': float (-1 = no GT),
         'per_class': {name: AP | None}, 'per_class_AP50': {...}, 'per_class_instances': {...}, 'coco_backend',
         'n_images', 'n_detections', 'seconds' (all), 'seconds_per_1000_images' (the validation run: inference,
         NMS, COCOeval), 'ms_per_image' (Ultralytics' preprocess/inference/postprocess split), 'model', 'data', 'split', 'imgsz',
         'conf', 'iou', 'gt_json', 'detections_json',
         'class_match': {'how': 'same names' | 'by name' | 'by index', 'dropped': [model classes not in the data],
                         'model_to_data': {model class: data class} (by name)}}

    ``out_dir`` defaults to a new ``runs/detkd/eval/exp*``. Progress is shown by Ultralytics' bar; the table is
    printed when ``verbose``.
    """
    from ultralytics.utils.files import increment_path

    from detkd.data.coco import load_coco_meta, prepare_dataset
    from detkd.errors import DatasetError
    from detkd.eval.metrics import resolve_backend
    from detkd.eval.validator import COCOEvalDetectionValidator

    t0 = time.perf_counter()
    backend = resolve_backend(backend)
    data_yaml = prepare_dataset(data, verbose=verbose)
    meta = load_coco_meta(data_yaml)
    if split not in meta["coco_eval"]:
        raise DatasetError(f"dataset has no '{split}' split with COCO annotations (has: {', '.join(meta['coco'])}).")
    from detkd.models.class_map import parse_class_map

    parse_class_map(class_map)  # a malformed --class-map is refused before the model is loaded
    net = resolve_model(model, nc=len(meta["category_ids"]), names=meta.get("names"))
    out_dir = Path(out_dir) if out_dir else increment_path(Path("runs/detkd/eval/exp"), mkdir=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    args = dict(task="detect", mode="val", data=str(data_yaml), split=split, imgsz=imgsz, conf=conf, iou=iou,
                batch=batch, device=device, plots=False, save_json=True, verbose=False,
                model=net if isinstance(net, str) else None)
    nms_free = _is_end_to_end(net)
    if nms_free:  # YOLO26: score the deployed NMS-free one-to-one head, not one-to-many + NMS
        args["nms"] = False
    validator = COCOEvalDetectionValidator(save_dir=out_dir, args=args)
    validator.coco_backend = backend
    validator.class_map_spec = class_map
    validator.openvino_precision = check_precision_request(precision, net)
    t1 = time.perf_counter()
    validator(model=net)
    t_run = time.perf_counter() - t1  # model set-up + inference + NMS + COCOeval
    m = dict(validator.coco_metrics)
    seconds = time.perf_counter() - t0

    dets_file = out_dir / "predictions.json"  # Ultralytics' validator writes it only when anything was detected:
    dets_file.write_text(json.dumps(validator.jdict))  # always this run's (a folder scored again holds the last's)
    m.update(validator.ran or {})
    match = validator.class_match
    if match is not None:
        m["class_match"] = match.to_dict()
    m.update({
        "n_images": m["n_images"], "seconds": round(seconds, 3),
        "seconds_per_1000_images": round(1000 * t_run / max(m["n_images"], 1), 1),
        "ms_per_image": {k: round(v, 2) for k, v in validator.speed.items()},
        "model": _describe(model), "data": str(data), "data_yaml": str(data_yaml), "split": split,
        "imgsz": _imgsz_used(validator.args.imgsz, imgsz),
        "conf": conf, "iou": iou, "detections_json": str(dets_file),
        "postprocess": "NMS-free (one-to-one head)" if nms_free else f"NMS (iou {iou:g})",
    })
    ordered = {k: m[k] for k in STAT_KEYS} | {k: v for k, v in m.items() if k not in STAT_KEYS}
    (out_dir / "metrics.json").write_text(json.dumps(ordered, indent=1))
    if verbose:
        if validator.ran:
            print(f"{_describe(model)}: {validator.ran['backend']}, weights {validator.ran['weights']}, ran "
                  f"{validator.ran['precision']} ({validator.ran['precision_detail']}), {ordered['imgsz']} px")
        if match is not None and match.describe():
            print(match.describe())
        print(format_table(ordered, title=f"COCO bbox ({BACKEND_LABEL[backend]}), {split} of {Path(str(data)).name}, "
                                          f"{ordered['postprocess']}"))
        print(f"{seconds:.1f} s ({ordered['seconds_per_1000_images']:.1f} s per 1000 images). "
              f"Results in {out_dir}: metrics.json, {dets_file.name}")
    return ordered


def _is_end_to_end(net) -> bool:
    """An end-to-end (YOLO26) detector given as a module or a .pt checkpoint; exported files decide for themselves."""
    import torch

    from detkd.models.compat import is_end_to_end

    if isinstance(net, torch.nn.Module):
        return is_end_to_end(net)
    if str(net).lower().endswith((".pt", ".pth")):
        from detkd.models.loading import load_detection_model

        return is_end_to_end(load_detection_model(net))
    return False


def check_precision_request(precision: str | None, net) -> str | None:
    """The OpenVINO inference precision to run (fp32, bf16, fp16) or None (OpenVINO's default for the device);
    :class:`DetKDError` when one is asked for a model that is not an OpenVINO folder."""
    if precision is None:
        return None
    from detkd.deploy.backends import OPENVINO_HINTS, artefact_kind

    key = str(precision).strip().lower()
    if key not in OPENVINO_HINTS:
        raise DetKDError(f"--precision '{precision}' not understood: use one of {', '.join(OPENVINO_HINTS)}.")
    if not isinstance(net, str) or artefact_kind(net) != "openvino":
        raise DetKDError("--precision applies to OpenVINO models only (an *_openvino_model/ folder); other models run "
                         "in their stored precision.")
    return key


def _is_openvino_name(name: str) -> bool:
    """A path named like an OpenVINO export (``*_openvino_model`` folder): reported as such when it is missing."""
    return Path(name.rstrip("/\\")).name.lower().endswith("_openvino_model")


def _imgsz_used(validator_imgsz, requested: int) -> int:
    """The inference size that ran: a static export sets its own (Ultralytics reads it from the metadata)."""
    if isinstance(validator_imgsz, (list, tuple)):
        return int(max(validator_imgsz))
    return int(validator_imgsz or requested)


def _describe(model) -> str:
    if isinstance(model, (str, Path)):
        return str(model)
    return getattr(model, "ckpt_path", None) or getattr(model, "pt_path", None) or type(model).__name__

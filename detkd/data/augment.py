"""User-defined albumentations pipelines for training, applied on top of Ultralytics' own augmentation.

Ultralytics (8.4) takes a training argument ``augmentations=[...]`` (a list of albumentations transforms). Its
``v8_transforms`` puts them in ``ultralytics.data.augment.Albumentations`` after mosaic / random-perspective /
mixup and before HSV / flips. There they are composed box-aware: as soon as one transform is spatial (an
``A.DualTransform``: flips, affine, crops, ...) the ``A.Compose`` gets ``BboxParams(format='yolo')`` and the labels
move with the image (boxes leaving the image are dropped); pixel-only transforms change the image alone. The
trainer stores them in checkpoints as ``A.to_dict`` dicts, so ``A.Lambda`` is refused (not serialisable).

:func:`load_augmentations` reads such a list from

* a YAML file, in either form::

      # short form: one {TransformName: {arguments}} per item; compositions nest via 'transforms'
      - RandomBrightnessContrast: {brightness_limit: 0.2, contrast_limit: 0.2, p: 0.3}
      - OneOf:
          p: 0.2
          transforms:
            - MotionBlur: {blur_limit: 5}
            - GaussNoise: {}

  or albumentations' own serialisation (``A.save(A.Compose([...]), 'aug.yaml', data_format='yaml')``, i.e. the
  ``A.to_dict`` layout with ``__class_fullname__``); a top-level ``transforms:`` key around the list is accepted;
* ``"path/to/module.py:function"`` or ``"package.module:function"``: a function returning a list of transforms
  (or an ``A.Compose``);
* a list of transforms or of the dicts above.

Use in training: ``overrides["augmentations"] = load_augmentations("aug.yaml")`` (see ``tools/example_augmentations.yaml``).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import warnings
from pathlib import Path

from detkd.errors import ConfigError


def _albumentations():
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations as A

    return A


def _to_serialized(item, where: str) -> dict:
    """Short form ``{Name: {args}}`` (or ``{'__class_fullname__': ...}``) -> albumentations' dict layout."""
    if not isinstance(item, dict):
        raise ConfigError(f"{where}: expected a transform mapping like '{{Blur: {{p: 0.1}}}}', got {item!r}.")
    if "__class_fullname__" in item:
        out = dict(item)
    else:
        if len(item) != 1:
            raise ConfigError(f"{where}: one transform per list item ({{Name: {{arguments}}}}), got keys "
                              f"{list(item)}.")
        (name, args), = item.items()
        args = {} if args is None else args
        if not isinstance(args, dict):
            raise ConfigError(f"{where}: arguments of '{name}' must be a mapping, got {args!r}.")
        out = {"__class_fullname__": name, **args}
    out.setdefault("p", 0.5 if out["__class_fullname__"] not in ("Compose", "OneOf", "SomeOf", "Sequential")
                   else 1.0)
    if "transforms" in out:
        out["transforms"] = [_to_serialized(t, f"{where} > {out['__class_fullname__']}") for t in out["transforms"]]
    return out


def _from_dict(d: dict, where: str):
    A = _albumentations()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            t = A.from_dict({"transform": d})
        except KeyError as e:
            raise ConfigError(f"{where}: unknown albumentations transform {e} (albumentations {A.__version__}; "
                              f"see https://albumentations.ai/docs/reference/supported-targets-by-transform/).") from None
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{where}: invalid arguments for '{d.get('__class_fullname__')}': {e}") from None
    bad = [str(w.message) for w in caught if "not valid for transform" in str(w.message)]
    if bad:
        raise ConfigError(f"{where}: {bad[0]}.")
    return t


def _check(transforms: list, where: str) -> list:
    A = _albumentations()
    out = []
    for t in transforms:
        if isinstance(t, dict):
            t = _from_dict(_to_serialized(t, where), where)
        if isinstance(t, A.Compose):  # a whole pipeline: its members (Ultralytics composes them itself)
            out += _check(list(t.transforms), where)
            continue
        if not isinstance(t, (A.BasicTransform, A.BaseCompose)):
            raise ConfigError(f"{where}: {t!r} is not an albumentations transform (nor a mapping like "
                              f"'{{Blur: {{p: 0.1}}}}').")
        if _holds_lambda(t, A):
            raise ConfigError(f"{where}: A.Lambda cannot be stored in checkpoints. Subclass A.ImageOnlyTransform "
                              f"or A.DualTransform in an importable module instead.")
        out.append(t)
    return out


def _holds_lambda(t, A) -> bool:
    """``t`` is an ``A.Lambda`` or holds one at any depth (``OneOf``, ``SomeOf``, ``Sequential`` ...)."""
    return isinstance(t, A.Lambda) or any(_holds_lambda(x, A) for x in getattr(t, "transforms", None) or [])


def _load_yaml(path: Path) -> list:
    import yaml

    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"augmentations file '{path}' is not valid YAML: {e}") from None
    if isinstance(cfg, dict) and "transform" in cfg:  # albumentations' own A.save() layout
        cfg = cfg["transform"]
    if isinstance(cfg, dict) and "transforms" in cfg and (len(cfg) == 1 or "__class_fullname__" in cfg):
        cfg = cfg["transforms"]
    if not isinstance(cfg, list):
        raise ConfigError(f"augmentations file '{path}' must hold a list of transforms (or a 'transforms:' list).")
    return cfg


def _load_callable(spec: str) -> list:
    target, _, func = spec.rpartition(":")
    try:
        if target.endswith(".py"):
            file = Path(target).expanduser()
            if not file.is_file():
                raise ConfigError(f"augmentations module '{file}' not found.")
            mod_spec = importlib.util.spec_from_file_location(file.stem, file)
            module = importlib.util.module_from_spec(mod_spec)
            mod_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(f"augmentations '{spec}': cannot import '{target}' ({type(e).__name__}: {e}).") from None
    fn = getattr(module, func, None)
    if not callable(fn):
        raise ConfigError(f"augmentations '{spec}': '{target}' has no function '{func}'.")
    try:
        result = fn()
    except Exception as e:
        raise ConfigError(f"augmentations '{spec}': calling {func}() failed ({type(e).__name__}: {e}).") from None
    return list(result.transforms) if hasattr(result, "transforms") and not isinstance(result, list) else result


def load_augmentations(spec) -> list:
    """Albumentations transforms from a YAML file, ``module.py:function`` / ``package.module:function``, or a list.

    Returns a flat list (a top-level ``A.Compose`` is unpacked; nested ``OneOf``/``SomeOf`` stay). Raises
    :class:`~detkd.errors.ConfigError` naming the bad item (unknown transform, bad argument, ``A.Lambda``).
    """
    if isinstance(spec, (list, tuple)):
        items, where = list(spec), "augmentations"
    else:
        s = str(spec)
        path = Path(s).expanduser()
        if path.suffix.lower() in (".yaml", ".yml"):
            if not path.is_file():
                raise ConfigError(f"augmentations file '{path}' not found.")
            items, where = _load_yaml(path), str(path)
        elif ":" in s and not path.exists():
            items, where = _load_callable(s), s
        else:
            raise ConfigError(f"augmentations '{s}': expected a .yaml file or 'module.py:function' / "
                              f"'package.module:function'.")
        if not isinstance(items, list):
            raise ConfigError(f"augmentations '{s}' returned {type(items).__name__}, expected a list of transforms.")
    return _check(items, where)

"""Accept COCO-format datasets everywhere ``--data`` is taken, by converting them once into a cached YOLO layout.

``--data`` may be

1. an Ultralytics ``data.yaml`` (returned as is);
2. a COCO dataset folder::

       dataset/annotations/instances_train*.json   dataset/annotations/instances_val*.json
       dataset/<images>/...                        (<images> = train, train2017, images/train, images, or .)

   or a Roboflow-style export (``dataset/{train,valid,test}/_annotations.coco.json`` beside the images);
3. a detkd COCO YAML naming the files (paths relative to ``path:``, default the YAML's folder)::

       format: coco            # optional marker
       path: /data/coco
       train: {json: annotations/instances_train2017.json, images: train2017}
       val:   {json: annotations/instances_val2017.json,   images: val2017}

The conversion (:mod:`detkd.data.yolo_layout`) lands in ``<dataset>/.detkd_cache/<name>-<hash>/`` (or
``$DETKD_CACHE_DIR`` / ``~/.cache/detkd/`` when the dataset folder is read-only), keyed by the SHA-256 of the JSON
files and the listing of the image files (names, sizes, modification times), and is reused while they do not
change. A cache folder that cannot be written is one :class:`~detkd.errors.DatasetError` saying where to point
``DETKD_CACHE_DIR``. Validation counts (:mod:`detkd.data.validate`) are printed at the end of a conversion and
whenever the cache is reused; ``prepare_dataset(..., for_training=True)`` refuses a dataset whose train or val
split has no usable box (:func:`check_trainable`).

EXIF orientation: labels are written in the frame Ultralytics loads (EXIF applied); the JSON keeps its own frame,
detected per image (see :mod:`detkd.data.exif`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from detkd.errors import DatasetError

CONVERTER_VERSION = "4"  # 2: labels in the EXIF-rotated frame; exif_stored maps. 3: data.yaml retargeted whole.
# 4: no Roboflow dataset category; TIFF/WebP EXIF sizes as decoded; 32-bit TIFFs skipped
SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


@dataclass
class CocoSource:
    """A COCO dataset: ``splits[split] = (instances JSON, image dir or None = guess)``; ``root`` hosts the cache."""

    name: str
    root: Path
    splits: dict


def _log(msg: str) -> None:
    from ultralytics.utils import LOGGER

    LOGGER.info(msg)


# --------------------------------------------------------------------------------------------- input recognition
def _coco_yaml_splits(cfg: dict) -> bool:
    return cfg.get("format") == "coco" or any(
        isinstance(cfg.get(k), dict) and ("json" in cfg[k] or "annotations" in cfg[k]) for k in SPLITS)


def _from_folder(root: Path) -> CocoSource | None:
    """Find ``annotations/instances_<split>*.json`` (or Roboflow ``<split>/_annotations.coco.json``) in ``root``."""
    splits = {}
    ann = root / "annotations"
    for split in SPLITS:
        found = sorted(ann.glob(f"instances_{split}*.json")) if ann.is_dir() else []
        if len(found) > 1:
            raise DatasetError(f"'{root}': several {split} annotation files ({', '.join(f.name for f in found)}). "
                               f"Name the one to use in a detkd COCO YAML ("
                               f"'{split}: {{json: annotations/{found[0].name}, images: ...}}').")
        if found:
            splits[split] = (found[0], None)
    if not splits:  # Roboflow COCO export
        for d in sorted(p for p in root.iterdir() if p.is_dir()):
            split = _SPLIT_ALIASES.get(d.name.lower())
            if split and (d / "_annotations.coco.json").is_file():
                splits[split] = (d / "_annotations.coco.json", d)
    return CocoSource(root.name, root, splits) if splits else None


def _from_yaml(path: Path, cfg: dict) -> CocoSource:
    root = Path(cfg.get("path") or path.parent).expanduser()
    root = root if root.is_absolute() else (path.parent / root).resolve()
    splits = {}
    for key, value in cfg.items():
        split = _SPLIT_ALIASES.get(str(key).lower())
        if split is None or value is None:
            continue
        if not isinstance(value, dict) or not (value.get("json") or value.get("annotations")):
            raise DatasetError(f"'{path}': split '{key}' must be a mapping {{json: <instances JSON>, images: <dir>}}, "
                               f"got {value!r}.")
        js = Path(value.get("json") or value["annotations"]).expanduser()
        img = value.get("images") or value.get("image_dir") or value.get("img_dir")
        splits[split] = (js if js.is_absolute() else root / js,
                         None if img is None else (Path(img) if Path(img).is_absolute() else root / img))
    if "val" not in splits:
        raise DatasetError(f"'{path}' names no 'val' split. Add 'val: {{json: ..., images: ...}}'.")
    return CocoSource(cfg.get("name") or path.stem, path.parent, splits)


def describe_dataset(data: str | Path) -> CocoSource | Path:
    """Recognise ``data``: a :class:`CocoSource` for COCO input, or the path of an Ultralytics data.yaml."""
    path = Path(str(data)).expanduser()
    if not path.exists():
        raise DatasetError(f"dataset '{data}' not found. Pass a COCO dataset folder (annotations/instances_*.json "
                           f"+ images), a detkd COCO YAML, or an Ultralytics data.yaml.")
    if path.is_dir():
        src = _from_folder(path)
        if src:
            return src
        yamls = sorted(path.glob("*.yaml")) + sorted(path.glob("*.yml"))
        if len(yamls) == 1:
            return describe_dataset(yamls[0])
        raise DatasetError(f"'{path}' is neither a COCO dataset folder (no annotations/instances_<split>*.json) nor "
                           f"a folder with one data.yaml. Expected layout: {path}/annotations/instances_val.json and "
                           f"the images in {path}/val/ - or pass a YAML naming the JSON files and image folders.")
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise DatasetError(f"'{path}' is not valid YAML: {e}") from None
        if not isinstance(cfg, dict):
            raise DatasetError(f"'{path}' is not a dataset YAML (expected a mapping with train/val entries).")
        return _from_yaml(path, cfg) if _coco_yaml_splits(cfg) else path
    if path.suffix.lower() == ".json":
        raise DatasetError(f"'{path}' is a single JSON file. Pass its dataset folder (with annotations/ and the "
                           f"image folders), or a detkd COCO YAML: 'val: {{json: {path}, images: <image dir>}}'.")
    raise DatasetError(f"'{path}': unrecognised dataset (expected a folder, a .yaml or .yml file).")


def _image_dir_candidates(json_path: Path, root: Path, split: str) -> list[Path]:
    tag = json_path.stem.removeprefix("instances_")
    return list(dict.fromkeys([root / tag, root / split, root / "images" / tag, root / "images" / split,
                               root / "images", root, json_path.parent]))


def guess_image_dir(json_path: Path, root: Path, split: str, file_names: list[str]) -> Path:
    """The folder under which most sampled ``file_names`` exist (candidates: ``<tag>``, ``<split>``,
    ``images/<tag>``, ``images/<split>``, ``images``, ``.`` below ``root``, tag = ``train2017`` for
    ``instances_train2017.json``)."""
    cands = _image_dir_candidates(Path(json_path), Path(root), split)
    sample = file_names[:: max(1, len(file_names) // 20)][:20]
    if not sample:
        return cands[1] if cands[1].is_dir() else root
    best = max(cands, key=lambda d: sum((d / f).is_file() for f in sample))
    if not any((best / f).is_file() for f in sample):
        raise DatasetError(f"images of '{json_path.name}' not found: none of {sample[:3]} exists under "
                           f"{', '.join(str(c) for c in cands[:5])}. Put them in {root / split}/ or name the "
                           f"folder in a detkd COCO YAML ('{split}: {{json: ..., images: <dir>}}').")
    return best


# --------------------------------------------------------------------------------------------- cache
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def image_listing(folder: Path, exclude: Path | None = None) -> str:
    """SHA-256 of the image files below ``folder``: relative path, size and modification time of each (no file is
    read). Hidden folders (``.detkd_cache``) and ``exclude`` (a cache inside the dataset) are left out."""
    from ultralytics.data.utils import IMG_FORMATS

    folder, rows = Path(folder), []
    skip = os.path.realpath(exclude) if exclude is not None else None
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                             and os.path.realpath(os.path.join(dirpath, d)) != skip)
        for f in filenames:
            if f.rpartition(".")[-1].lower() in IMG_FORMATS:
                p = os.path.join(dirpath, f)
                try:
                    st = os.stat(p)
                except OSError:  # dangling link
                    continue
                rows.append(f"{os.path.relpath(p, folder)}|{st.st_size}|{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(sorted(rows)).encode()).hexdigest()


def cache_key(splits: dict, root: Path, exclude: Path | None = None) -> str:
    """Hash of the converter version, each split's JSON content, its image folder (given, or guessed below the
    dataset ``root``) and the listing of the image files there (:func:`image_listing`), so images that appear,
    disappear or change reconvert. A guessed folder is not known before the JSON is parsed: the listing then
    covers every existing candidate of :func:`guess_image_dir` below ``root`` (``<tag>``, ``<split>``,
    ``images/...``), or all of ``root`` when none exists (images beside the annotations)."""
    h = hashlib.sha256(CONVERTER_VERSION.encode())
    listings: dict = {}
    for split in sorted(splits):
        js, img = splits[split]
        if img is not None:
            dirs = [Path(img).resolve()]
        else:
            cands = [c.resolve() for c in _image_dir_candidates(Path(js), Path(root), split)[:5] if c.is_dir()]
            dirs = [c for c in cands if not any(o != c and c.is_relative_to(o) for o in cands)]  # outermost
            dirs = dirs or [Path(root).resolve()]
        parts = []
        for d in dirs:
            if d not in listings:
                listings[d] = image_listing(d, exclude) if d.is_dir() else "missing"
            parts.append(f"{d}:{listings[d]}")
        h.update(f"{split}|{_sha256(js)}|{'' if img is not None else 'guess|'}{'|'.join(parts)}".encode())
    return h.hexdigest()[:16]


def default_cache_root(dataset_root: Path) -> Path:
    """``<dataset>/.detkd_cache`` when writable, else ``$DETKD_CACHE_DIR`` or ``~/.cache/detkd`` (which may not be
    writable either: :func:`prepare_dataset` says so)."""
    local = dataset_root / ".detkd_cache"
    try:
        # permission bits too: root can write anywhere, but a dataset marked read-only (r-x) must stay untouched
        if local.is_dir() or (os.access(dataset_root, os.W_OK) and dataset_root.stat().st_mode & 0o222):
            local.mkdir(exist_ok=True)
            if os.access(local, os.W_OK) and local.stat().st_mode & 0o222:
                return local
    except OSError:
        pass
    return Path(os.environ.get("DETKD_CACHE_DIR") or Path("~/.cache/detkd").expanduser())


_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


@contextlib.contextmanager
def writing_to(folder: Path, dataset_root: Path | None = None, explicit: bool = False):
    """Turn a permission (or disk-full) error while writing below ``folder`` into one :class:`DatasetError` that
    says where the cache can go instead. ``dataset_root``: the dataset whose cache this is (named in the message);
    ``explicit``: ``folder`` was chosen by the caller (an argument), not by the default rule."""
    try:
        yield
    except OSError as e:
        if e.errno not in _NOT_WRITABLE + (errno.ENOSPC, errno.EDQUOT):
            raise
        folder = Path(folder).absolute()
        if e.filename is not None and not Path(os.path.abspath(e.filename)).is_relative_to(folder):  # not a write into the cache: a file of the dataset cannot be read
            raise DatasetError(f"cannot read '{e.filename}' ({e.strerror}). Make the dataset readable by this "
                               f"user.") from None
        problem = "has no space left" if e.errno in (errno.ENOSPC, errno.EDQUOT) else "is not writable"
        if explicit:
            raise DatasetError(f"cannot write the YOLO conversion of the COCO dataset: '{folder}' {problem} "
                               f"({e.strerror}). Choose a writable output folder.") from None
        env = os.environ.get("DETKD_CACHE_DIR")
        in_dataset = dataset_root is not None and folder.resolve().is_relative_to(Path(dataset_root).resolve())
        where = (f"'{folder}'" if in_dataset else f"DETKD_CACHE_DIR={env}" if env else
                 f"'{folder}' (the fallback cache: $HOME/.cache/detkd)")
        ro = "" if in_dataset or dataset_root is None else \
            f"the dataset folder '{dataset_root}' is read-only, so the conversion goes to "
        fix = "a writable folder" if problem == "is not writable" else "a folder on a disk with free space"
        raise DatasetError(f"cannot write the YOLO conversion of the COCO dataset: {ro}{where}, which {problem} "
                           f"({e.strerror}). Point DETKD_CACHE_DIR at {fix}, e.g. "
                           f"`export DETKD_CACHE_DIR=/tmp/detkd_cache`, and run again.") from None


# --------------------------------------------------------------------------------------------- public API
def load_split(json_path: Path, image_dir: Path | None, root: Path, split: str, check_images: bool = True,
               progress: bool = True):
    """Read + validate one split (:class:`~detkd.data.validate.CocoSplit`), guessing the image dir if None."""
    from detkd.data.validate import load_coco_json, validate_coco

    coco = load_coco_json(json_path)
    if image_dir is None:
        names = [im.get("file_name") for im in coco["images"] if isinstance(im, dict)
                 and isinstance(im.get("file_name"), str)]
        image_dir = guess_image_dir(Path(json_path), root, split, names)
    elif not Path(image_dir).is_dir():
        raise DatasetError(f"image folder '{image_dir}' of the {split} split does not exist.")
    return validate_coco(coco, json_path, image_dir, split, check_images=check_images, progress=progress)


def merge_categories(splits: dict) -> list[dict]:
    """Union of the splits' categories sorted by id; one id with two names, or one name with two ids, across splits
    is an error (the splits would not mean the same classes)."""
    cats: dict = {}
    ids: dict = {}  # name -> (id, the json it came from)
    for s in splits.values():
        for c in s.categories:
            if cats.setdefault(c["id"], c["name"]) != c["name"]:
                raise DatasetError(f"category id {c['id']} is '{cats[c['id']]}' in one split and '{c['name']}' in "
                                   f"'{s.json_path}'. All splits must share one category list.")
            first_id, where = ids.setdefault(c["name"], (c["id"], s.json_path))
            if first_id != c["id"]:
                raise DatasetError(f"'{c['name']}' is category id {first_id} in '{where}' and {c['id']} in "
                                   f"'{s.json_path}': two classes of one name. All splits must share one category "
                                   f"list (give each category the same id in every split).")
    return [{"id": i, "name": cats[i]} for i in sorted(cats)]


def convert_coco_source(src: CocoSource, out_dir: str | Path, link: bool = True, verbose: bool = True) -> Path:
    """Validate every split of ``src`` and write its YOLO layout to ``out_dir`` (no caching). Returns data.yaml."""
    with writing_to(Path(out_dir), explicit=True):
        return _convert(src, out_dir, link, verbose)


def _convert(src: CocoSource, out_dir: str | Path, link: bool = True, verbose: bool = True) -> Path:
    from detkd.data.yolo_layout import write_yolo_layout

    splits = {s: load_split(js, img, src.root, s, progress=verbose) for s, (js, img) in src.splits.items()}
    if "val" not in splits:
        raise DatasetError(f"'{src.root}' has no val split (annotations/instances_val*.json). COCO evaluation and "
                           f"training need one.")
    out = write_yolo_layout(splits, merge_categories(splits), out_dir, link=link, progress=verbose)
    if "train" not in splits and verbose:
        _log(f"detkd: '{src.name}' has no train split; data.yaml points 'train' at the val images "
             f"(fine for evaluation, not for training).")
    return out


def prepare_dataset(data: str | Path, cache_dir: str | Path | None = None, verbose: bool = True,
                    for_training: bool = False) -> Path:
    """Return the path of an Ultralytics-ready data.yaml for ``data`` (see module docstring for the inputs).

    COCO input is converted once into ``<cache_dir or default>/<name>-<hash>/`` and reused; the data.yaml carries
    ``path, train, val, nc, names`` plus ``category_ids, coco, coco_eval, images, image_ids, exif_stored`` (see
    :mod:`detkd.data.yolo_layout`). Raises :class:`~detkd.errors.DatasetError` for unusable input, an unwritable
    cache folder, and (``for_training``) a train or val split without a usable box (:func:`check_trainable`).
    """
    src = describe_dataset(data)
    if isinstance(src, Path):
        return src
    for split, (js, img) in src.splits.items():
        if not Path(js).is_file():
            raise DatasetError(f"{split} annotations '{js}' not found.")
    root = Path(cache_dir) if cache_dir else default_cache_root(src.root)
    with writing_to(root, src.root, explicit=cache_dir is not None):
        final = root / f"{src.name}-{cache_key(src.splits, src.root, exclude=root)}"
        if (final / "data.yaml").is_file():
            if verbose:
                _log(f"detkd: using cached YOLO conversion {final}")
                _log_reports(final)
        else:
            _convert_into(src, root, final, verbose)
    if for_training:
        check_trainable(final / "data.yaml")
    return final / "data.yaml"


def _convert_into(src: CocoSource, root: Path, final: Path, verbose: bool) -> None:
    """Convert ``src`` into a temporary folder of ``root``, then rename it to ``final`` (atomic for readers)."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    if verbose:
        _log(f"detkd: converting COCO dataset '{src.name}' to the YOLO layout in {final} (once)")
    try:
        _convert(src, tmp, verbose=verbose)
        _retarget(tmp, final)
        try:
            os.rename(tmp, final)
        except OSError:  # another process finished first: use its copy
            if not (final / "data.yaml").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if verbose:
        _log_reports(final)


def check_trainable(data_yaml: str | Path) -> None:
    """Refuse (:class:`DatasetError`) training on a converted COCO dataset whose train split (the val images when
    there is none) or val split has no usable box, saying which split and why (from its validation report): the
    detector would learn only background, and validation without ground truth gives mAP -1."""
    from detkd.data.validate import why_no_boxes

    folder = Path(data_yaml).parent
    reports = json.loads((folder / "report.json").read_text())
    for split in dict.fromkeys(("train" if "train" in reports else "val", "val")):
        r = reports.get(split)
        if r is not None and r["n_boxes"] == 0:
            use = ("training would learn only background" if split == "train" else
                   "validation has no ground truth (mAP -1) to select best.pt on")
            also = "" if "train" in reports else " (no train split: training uses the val images)"
            raise DatasetError(f"{split} split of '{r['json']}' has no usable box{also}: {why_no_boxes(r)}. "
                               f"Without boxes {use}. Fix the annotations (see {folder / 'report.json'}).")


def _retarget(tmp: Path, final: Path) -> None:
    """Rewrite the temporary folder's own path inside its data.yaml to the final one: in the parsed values (YAML
    wraps a long path with spaces over two lines and quotes one with ': ', so the text may not hold it whole)."""
    import yaml

    y = tmp / "data.yaml"
    text = y.read_text()
    header = "".join(f"{line}\n" for line in text.splitlines()[:1] if line.startswith("#"))
    old, new = str(tmp.resolve()), str(final.resolve())

    def moved(v):
        if isinstance(v, str):
            return new + v[len(old):] if v == old or v.startswith(old + os.sep) else v
        if isinstance(v, dict):
            return {k: moved(x) for k, x in v.items()}
        return [moved(x) for x in v] if isinstance(v, list) else v

    y.write_text(header + yaml.safe_dump(moved(yaml.safe_load(text)), sort_keys=False, allow_unicode=True))


def _log_reports(folder: Path) -> None:
    from detkd.data.validate import ISSUES

    reports = json.loads((folder / "report.json").read_text())
    for r in reports.values():
        counts = ", ".join(f"{k}={n}" for k, n in r["counts"].items() if k in ISSUES)
        _log(f"detkd: {r['split']}: {r['n_images']} images, {r['n_boxes']} boxes" + (f" | {counts}" if counts else
                                                                                      " | no issues"))


def load_coco_meta(data_yaml: str | Path) -> dict:
    """COCO mapping of a data.yaml written by :func:`prepare_dataset`.

    Returns ``{'path': Path, 'names': {i: name}, 'category_ids': [id per class index], 'coco': {split: Path},
    'coco_eval': {split: Path}, 'images': {split: Path}, 'image_ids': {split: {file_name: image_id}},
    'splits': [...]}``. A plain Ultralytics data.yaml raises :class:`DatasetError` (no COCO ground truth).
    """
    data_yaml = Path(data_yaml)
    if not data_yaml.is_file():
        raise DatasetError(f"data.yaml '{data_yaml}' not found.")
    d = yaml.safe_load(data_yaml.read_text(encoding="utf-8")) or {}
    if "category_ids" not in d or "coco" not in d:
        raise DatasetError(f"'{data_yaml}' is a YOLO data.yaml without COCO ground truth. COCO evaluation needs the "
                           f"COCO dataset itself: pass its folder (annotations/instances_val.json + images) or a "
                           f"detkd COCO YAML.")
    root = Path(d["path"])
    names = d["names"] if isinstance(d["names"], dict) else dict(enumerate(d["names"]))
    return {
        "path": root,
        "names": {int(k): v for k, v in names.items()},
        "category_ids": [int(i) for i in d["category_ids"]],
        "coco": {k: Path(v) for k, v in d["coco"].items()},
        "coco_eval": {k: Path(v) for k, v in (d.get("coco_eval") or d["coco"]).items()},
        "images": {k: Path(v) for k, v in (d.get("images") or {}).items()},
        "image_ids": {k: json.loads((root / v).read_text()) for k, v in (d.get("image_ids") or {}).items()},
        "splits": d.get("splits") or list(d["coco"]),
    }

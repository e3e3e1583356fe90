"""Unlabelled images in training: where they come from, how they are loaded, how an epoch mixes them in.

* :func:`resolve_unlabeled` — the image files behind ``--unlabeled PATH``: a folder (searched recursively), a text
  file listing images (one per line, relative to the file), a COCO JSON (its images without annotations), or a
  YAML with an ``unlabeled:`` entry (one of those, or ``{json: <COCO JSON>, images: <folder>}``). The ``--data``
  YAML may carry that entry: :func:`unlabeled_source` uses it when ``--unlabeled`` is not given.
* :class:`UnlabeledDataset` — Ultralytics' ``YOLODataset`` (same loading, augmentation, mosaic, letterbox) whose
  labels are empty by construction: no label file is read, no ``.cache`` is written beside the user's images.
  Images that cannot be read are counted and skipped (never rewritten, unlike Ultralytics' JPEG repair): at the
  start (PIL header check) and as the loader reads them (OpenCV decode, e.g. a truncated JPEG: the next readable
  image stands in, the file is flagged in memory shared with the loader workers and counted in the results).
* :class:`MixedDataset` — labelled dataset, then unlabelled pool, one index space. Each sample carries
  ``labeled`` (True/False); the criterion masks the detection loss on unlabelled images. **Mosaics never mix the
  two kinds**: each dataset builds its mosaics from its own images (Ultralytics' ``Mosaic`` draws the other tiles
  from the dataset it belongs to), so an image is labelled or unlabelled as a whole and no tile of a labelled
  mosaic is background by omission.
* :class:`MixSampler` — what an epoch is: every labelled image once, plus ``round(r / (1 - r) · n_labelled)``
  unlabelled images (``r`` = ``unlabeled_ratio``, the unlabelled share of the epoch) taken in turn from a shuffled
  pool that is cycled (reshuffled each pass) — so a large pool is covered over several epochs, a small one repeats.
  Deterministic from the seed and the trainer's epoch (whatever was drawn before: resets, resumes, rebuilds); under
  DDP each rank takes its shard of the same epoch order.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from detkd.errors import ConfigError

YAML_SUFFIXES = (".yaml", ".yml")
IMAGE_SUFFIXES = (".bmp", ".dng", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp", ".pfm", ".heic")


# ------------------------------------------------------------------------------------------- sources
def resolve_unlabeled(path: str | Path) -> list[str]:
    """Absolute image paths behind ``path`` (folder, .txt list, COCO .json, or a YAML with an ``unlabeled:`` entry),
    sorted, duplicates removed.

    Raises:
        ConfigError: the path does not exist, or holds no image.
    """
    p = Path(str(path)).expanduser()
    if not p.exists():
        raise ConfigError(f"--unlabeled '{path}' not found: give a folder of images, a .txt listing images, a "
                          f"COCO .json, or a YAML with an 'unlabeled:' entry.")
    what = _kind(p)
    found = _from_coco_json(p) if what == "COCO JSON" else _from_yaml(p) if what == "YAML" else _listed(p)
    files = sorted(dict.fromkeys(str(f.resolve()) for f in found))
    if not files:
        raise ConfigError(f"--unlabeled {what} '{path}' holds no image ({', '.join(IMAGE_SUFFIXES[:6])}, ...). "
                          f"Point it at the unlabelled frames.")
    return files


def _kind(p: Path) -> str:
    suffix = p.suffix.lower()
    return "folder" if p.is_dir() else "COCO JSON" if suffix == ".json" else "YAML" if suffix in YAML_SUFFIXES \
        else "list"


def _from_yaml(p: Path) -> list[Path]:
    """The images named by the ``unlabeled:`` entry of YAML ``p`` (a data YAML, or one written for --unlabeled):
    a folder, a .txt list or a COCO JSON, or ``{json: <COCO JSON>, images: <image folder>}``; relative paths are
    below the YAML's ``path:`` (itself relative to the YAML's folder), else the YAML's folder."""
    entry = _yaml_mapping(p).get("unlabeled")
    if not entry:
        raise ConfigError(f"--unlabeled '{p}' is a YAML without an 'unlabeled:' entry. Add one: 'unlabeled: "
                          f"<folder, .txt list or COCO JSON>' or 'unlabeled: {{json: <COCO JSON>, images: <folder>}}'.")
    if isinstance(entry, dict):
        js, images = entry.get("json") or entry.get("annotations"), entry.get("images")
        if not js and not images:
            raise ConfigError(f"'{p}': 'unlabeled:' must name 'json' (a COCO JSON) and/or 'images' (a folder), got "
                              f"{entry!r}.")
        folder = _yaml_relative(p, images) if images else None
        if not js:
            return _listed(folder) if folder.is_dir() else []
        return _from_coco_json(_yaml_relative(p, js), folder)
    target = _yaml_relative(p, entry)
    if not target.exists():
        raise ConfigError(f"'{p}': 'unlabeled: {entry}' not found (looked for {target}).")
    if _kind(target) == "YAML":
        raise ConfigError(f"'{p}': 'unlabeled:' names another YAML ({target}); name the images instead.")
    return _from_coco_json(target) if _kind(target) == "COCO JSON" else _listed(target)


def _yaml_mapping(p: Path) -> dict:
    import yaml

    try:
        cfg = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"'{p}' cannot be read as YAML ({type(e).__name__}).") from None
    return cfg if isinstance(cfg, dict) else {}


def _yaml_relative(p: Path, value) -> Path:
    """``value`` (a path in YAML ``p``) as a path: absolute as is, else below ``path:`` when that holds it, else
    below the YAML's folder."""
    v = Path(str(value)).expanduser()
    if v.is_absolute():
        return v
    root = _yaml_mapping(p).get("path")
    if root:
        base = Path(str(root)).expanduser()
        base = base if base.is_absolute() else p.parent / base
        if (base / v).exists():
            return base / v
    return p.parent / v


def unlabeled_in_data(data) -> Path | None:
    """The ``--data`` YAML (given, or the one YAML of a given folder) when it has an ``unlabeled:`` entry, else
    None. :func:`resolve_unlabeled` reads that entry when this path is given as the unlabelled source."""
    if not data:
        return None
    p = Path(str(data)).expanduser()
    if p.is_dir():
        yamls = [f for f in sorted(p.iterdir()) if f.suffix.lower() in YAML_SUFFIXES and f.is_file()]
        p = yamls[0] if len(yamls) == 1 else p
    if not (p.is_file() and p.suffix.lower() in YAML_SUFFIXES):
        return None
    return p.resolve() if _yaml_mapping(p).get("unlabeled") else None


def unlabeled_source(given, data) -> str | None:
    """The unlabelled source of a run: ``given`` (--unlabeled), else the ``unlabeled:`` entry of the --data YAML.
    Either way a data YAML's entry is never ignored silently: using it, or not using it, is logged."""
    from ultralytics.utils import LOGGER

    in_data = unlabeled_in_data(data)
    if in_data is None:
        return str(given) if given else None
    if given:
        if Path(str(given)).expanduser().resolve() != in_data:
            LOGGER.info(f"detkd: --unlabeled {given} is used; the 'unlabeled:' entry of {in_data.name} is not.")
        return str(given)
    LOGGER.info(f"detkd: unlabelled images from the 'unlabeled:' entry of {in_data} (as --unlabeled {in_data}).")
    return str(in_data)


def image_files(paths) -> list[str]:
    """The images of an Ultralytics split entry (folder, .txt list, or a list of them); missing paths give none."""
    out = []
    for p in paths if isinstance(paths, (list, tuple)) else [paths] if paths else []:
        if Path(str(p)).exists():
            out += [str(f) for f in _listed(Path(str(p)))]
    return out


def _listed(p: Path) -> list[Path]:
    """Images in folder ``p`` (recursively) or listed in text file ``p``."""
    if p.is_dir():
        return [f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()]
    return _from_list(p)


def _from_list(p: Path) -> list[Path]:
    try:
        lines = p.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--unlabeled '{p}' cannot be read as a text list of images ({type(e).__name__}).") from None
    out = []
    for line in (x.strip() for x in lines):
        if line and not line.startswith("#"):
            f = Path(line) if Path(line).is_absolute() else p.parent / line
            if f.suffix.lower() in IMAGE_SUFFIXES:
                out.append(f)
    return out


def _from_coco_json(p: Path, image_dir: Path | None = None) -> list[Path]:
    """The images of a COCO JSON that have no annotation (labelled ones belong in the training split), below
    ``image_dir`` (None: the folder where they are found, as for a ``--data`` COCO dataset)."""
    from detkd.data.coco import guess_image_dir
    from detkd.errors import DatasetError

    try:
        coco = json.loads(p.read_text())
        images = coco["images"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"--unlabeled '{p}' is not a COCO JSON with an 'images' list ({type(e).__name__}).") from None
    annotated = {a.get("image_id") for a in coco.get("annotations") or []}
    unnamed = [im.get("id") if isinstance(im, dict) else im for im in images
               if not isinstance(im, dict) or not isinstance(im.get("file_name"), str)]
    if unnamed:
        raise ConfigError(f"--unlabeled '{p}': {len(unnamed)} image entr{'y has' if len(unnamed) == 1 else 'ies have'} "
                          f"no file_name (image id {unnamed[0]}): give each image its file name, relative to the "
                          f"image folder.")
    names = [im["file_name"] for im in images if im.get("id") not in annotated]
    if not names:
        raise ConfigError(f"--unlabeled '{p}': every image in it has annotations. Unlabelled images are those "
                          f"without; add labelled ones to the training split instead.")
    if image_dir is not None:
        return [image_dir / n for n in names]
    root = p.parent.parent if p.parent.name == "annotations" else p.parent
    try:
        folder = guess_image_dir(p, root, "unlabeled", names)
    except DatasetError:
        raise ConfigError(f"images of --unlabeled '{p}' not found: none of {names[:3]} is below {root}/unlabeled, "
                          f"{root}/images or {p.parent}. Name their folder in a YAML and give that to --unlabeled: "
                          f"'unlabeled: {{json: {p}, images: <image folder>}}' (or add that entry to the --data "
                          f"YAML).") from None
    return [folder / n for n in names]


def drop_overlap(files: list[str], *others: list[str]) -> tuple[list[str], int]:
    """``files`` without those whose content is also in ``others`` (labelled train or val images: training on a val
    image, even without its labels, leaks it into the model), and how many were left out.

    Compared by content: SHA-256 of the file bytes, computed only for files whose size equals the size of an image
    of ``others`` (a copy, a link or the same path alike). Files that cannot be read are kept here (the loader
    skips and counts them).
    """
    taken_by_size: dict[int, list[str]] = {}
    for f in (f for group in others for f in group):
        size = _file_size(f)
        if size is not None:
            taken_by_size.setdefault(size, []).append(f)
    candidates = [f for f in files if _file_size(f) in taken_by_size]
    same_size = list(dict.fromkeys(t for f in candidates for t in taken_by_size[_file_size(f)]))
    with ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:
        taken = set(pool.map(_content_key, same_size))
        leaked = {f for f, key in zip(candidates, pool.map(_content_key, candidates)) if key in taken}
    kept = [f for f in files if f not in leaked]
    return kept, len(files) - len(kept)


def _file_size(path: str) -> int | None:
    try:
        return os.path.getsize(path)
    except OSError:
        return None


def _content_key(path: str) -> str:
    """SHA-256 of the file's bytes (its real path when it cannot be read)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError:
        return "path:" + os.path.realpath(path)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------ datasets
def _image_shape(im_file: str) -> tuple[int, int] | None:
    """(h, w) as Ultralytics loads the image (EXIF orientation applied: its ``exif_size``), or None when it cannot be
    read."""
    from PIL import Image
    from ultralytics.data.utils import exif_size

    try:
        with Image.open(im_file) as im:
            im.verify()
        with Image.open(im_file) as im:
            w, h = exif_size(im)
        return (h, w) if min(h, w) > 9 else None
    except Exception:
        return None


def _unlabeled_dataset_class():
    from ultralytics.data.dataset import YOLODataset

    class UnlabeledDataset(YOLODataset):
        """Ultralytics' ``YOLODataset`` over images that have no labels (see module docstring)."""

        skipped: list[str]

        def get_img_files(self, img_path: list[str]) -> list[str]:
            return list(img_path)  # already resolved by resolve_unlabeled (Ultralytics would read files as lists)

        def get_labels(self) -> list[dict]:
            workers = max(1, min(8, os.cpu_count() or 1))
            with ThreadPoolExecutor(workers) as pool:
                shapes = list(pool.map(_image_shape, self.im_files))
            self.skipped = [f for f, s in zip(self.im_files, shapes) if s is None]
            kept = [(f, s) for f, s in zip(self.im_files, shapes) if s is not None]
            if not kept:
                raise ConfigError(f"none of the {len(self.im_files)} unlabelled images can be read (first: "
                                  f"{self.im_files[0]}). Check the files behind --unlabeled.")
            self.im_files = [f for f, _ in kept]
            self.unreadable = torch.zeros(len(kept), dtype=torch.uint8).share_memory_()  # seen by loader workers
            return [{"im_file": f, "shape": s, "cls": np.zeros((0, 1), np.float32),
                     "bboxes": np.zeros((0, 4), np.float32), "segments": [], "keypoints": None,
                     "normalized": True, "bbox_format": "xywh"} for f, s in kept]

        def load_image(self, i: int, rect_mode: bool = True, resize_short: bool = False):
            """Ultralytics' ``load_image``; an image OpenCV cannot decode (a truncated JPEG passes the start check) is
            flagged and the next readable one stands in (every unlabelled image has the same, empty, labels)."""
            for j in self._readable_from(i):
                try:
                    return super().load_image(j, rect_mode, resize_short)
                except FileNotFoundError:  # Ultralytics: imread gave nothing
                    self.unreadable[j] = 1
            raise ConfigError(f"none of the {len(self.im_files)} unlabelled images can be decoded (first: "
                              f"{self.im_files[0]}). Check the files behind --unlabeled.")

        def _readable_from(self, i: int):
            """Indices ``i, i+1, ...`` (wrapping) not yet flagged unreadable."""
            for j in (k % len(self.im_files) for k in range(i, i + len(self.im_files))):
                if not self.unreadable[j]:
                    yield j

        def unreadable_files(self) -> list[str]:
            """Images found undecodable while loading (in any loader worker), in pool order."""
            return [self.im_files[j] for j in torch.nonzero(self.unreadable).view(-1).tolist()]

    return UnlabeledDataset


def build_unlabeled_dataset(files: list[str], cfg, batch: int, data: dict, stride: int):
    """The unlabelled images as an Ultralytics training dataset (same augmentation as the labelled set).

    ``cache='disk'`` is not applied to them: Ultralytics writes its ``.npy`` beside each image, and nothing is written
    beside the user's unlabelled images (``ram`` is)."""
    from ultralytics.utils import LOGGER, colorstr

    cls = _unlabeled_dataset_class()
    cache = cfg.cache or None
    if str(cache).lower() == "disk":
        LOGGER.info("detkd: unlabeled images are not cached on disk (that writes beside them); cache=ram would be.")
        cache = None
    return cls(img_path=files, imgsz=cfg.imgsz, batch_size=batch, augment=True, hyp=cfg, rect=False,
               cache=cache, single_cls=cfg.single_cls or False, stride=stride, pad=0.0,
               prefix=colorstr("unlabeled: "), task=cfg.task, classes=None, data=data, fraction=1.0)


class MixedDataset(torch.utils.data.ConcatDataset):
    """Labelled dataset (indices ``0 .. n_labeled-1``) then the unlabelled pool; each sample has ``labeled``."""

    def __init__(self, labeled, unlabeled):
        super().__init__([labeled, unlabeled])
        self.n_labeled, self.n_unlabeled = len(labeled), len(unlabeled)

    def __getitem__(self, index: int) -> dict:
        sample = super().__getitem__(index)
        sample["labeled"] = index < self.n_labeled
        return sample

    @property
    def labels(self) -> list[dict]:
        """Both datasets' labels (Ultralytics plots and counts them; unlabelled ones are empty)."""
        return [*self.datasets[0].labels, *self.datasets[1].labels]

    def close_mosaic(self, hyp) -> None:
        for d in self.datasets:
            d.close_mosaic(hyp=hyp)

    @staticmethod
    def collate_fn(batch: list[dict]) -> dict:
        """Ultralytics' collate; ``labeled`` becomes a (B,) bool tensor."""
        from ultralytics.data.dataset import YOLODataset

        out = YOLODataset.collate_fn(batch)
        out["labeled"] = torch.tensor([bool(x) for x in out["labeled"]], dtype=torch.bool)
        return out


def unlabeled_per_epoch(n_labeled: int, ratio: float) -> int:
    """Unlabelled images per epoch so that they are ``ratio`` of it: round(r / (1 - r) · n_labeled)."""
    return int(round(ratio / (1.0 - ratio) * n_labeled))


class MixSampler(torch.utils.data.Sampler):
    """Indices of :class:`MixedDataset` for one epoch per ``iter()`` (see module docstring).

    Epoch ``e`` (``start_epoch``, then one more per ``iter()``; :class:`MixedLoader` re-bases it on the trainer's
    epoch whenever it starts its workers, see :meth:`restart_at`): every labelled index plus unlabelled pool
    positions ``e·k .. e·k + k - 1`` of the cycled pool (k per epoch; pass ``c`` of the pool is a permutation drawn
    from ``(seed, c)``), all shuffled together with ``(seed, e)``. DDP: padded to a multiple of ``world_size``,
    rank ``r`` takes every ``world_size``-th index from ``r``.
    """

    def __init__(self, n_labeled: int, n_unlabeled: int, per_epoch: int, seed: int = 0, start_epoch: int = 0,
                 rank: int = -1, world_size: int = 1):
        self.n_labeled, self.n_unlabeled, self.per_epoch = n_labeled, n_unlabeled, per_epoch
        self.seed, self.epoch = int(seed), int(start_epoch)
        self.rank, self.world_size = max(rank, 0), max(world_size, 1)

    @property
    def counts(self) -> tuple[int, int]:
        """(labelled, unlabelled) images per epoch, all ranks together."""
        return self.n_labeled, self.per_epoch

    def __len__(self) -> int:
        return math.ceil((self.n_labeled + self.per_epoch) / self.world_size)

    def set_epoch(self, epoch: int) -> None:
        """Ultralytics calls this under DDP; the sampler counts its own epochs (one per ``iter()``): the loader
        draws the next epoch's indices before the trainer announces it, so following this call would repeat one."""

    def restart_at(self, epoch: int) -> None:
        """The next ``iter()`` draws ``epoch`` (a loader starting afresh: first epoch, resume, after a reset)."""
        self.epoch = int(epoch)

    def pool_positions(self, epoch: int) -> np.ndarray:
        """Unlabelled pool indices (0-based in the pool) used in ``epoch``."""
        pos = np.arange(epoch * self.per_epoch, (epoch + 1) * self.per_epoch)
        out = np.empty(len(pos), dtype=np.int64)
        for c in np.unique(pos // self.n_unlabeled):
            perm = np.random.default_rng([self.seed, int(c)]).permutation(self.n_unlabeled)
            sel = pos // self.n_unlabeled == c
            out[sel] = perm[pos[sel] % self.n_unlabeled]
        return out

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """This rank's dataset indices for ``epoch``."""
        idx = np.concatenate([np.arange(self.n_labeled), self.n_labeled + self.pool_positions(epoch)])
        idx = idx[np.random.default_rng([self.seed, 1_000_003, epoch]).permutation(len(idx))]
        total = len(self) * self.world_size
        if total > len(idx):
            idx = np.concatenate([idx, idx[: total - len(idx)]])
        return idx[self.rank::self.world_size]

    def __iter__(self):
        epoch, self.epoch = self.epoch, self.epoch + 1
        return iter(self.epoch_indices(epoch).tolist())


def _mixed_loader_class():
    from ultralytics.data.build import InfiniteDataLoader

    class MixedLoader(InfiniteDataLoader):
        """Ultralytics' ``InfiniteDataLoader`` whose :class:`MixSampler` starts each new iterator at the trainer's
        epoch (``epoch_source()``).

        The persistent iterator draws epoch ``e + 1``'s indices while epoch ``e`` still runs, so the sampler counts
        its own epochs; a new iterator (first epoch, resume, ``reset()`` at close_mosaic or NaN recovery, an OOM
        rebuild) discards what was drawn ahead and is re-based here: epoch ``e`` always sees pool slice ``e``.
        """

        def __init__(self, *args, epoch_source=None, **kwargs):
            super().__init__(*args, **kwargs)
            self.epoch_source = epoch_source

        def _get_iterator(self):
            if self.epoch_source is not None:
                self.sampler.restart_at(self.epoch_source())
            return super()._get_iterator()

    return MixedLoader


def build_mixed_loader(labeled, unlabeled, ratio: float, batch: int, workers: int, seed: int, start_epoch: int,
                       rank: int = -1, world_size: int = 1, epoch_source=None):
    """Ultralytics' ``InfiniteDataLoader`` (persistent workers, its worker seeding and collate) over labelled +
    unlabelled images, with :class:`MixSampler` deciding each epoch's images. ``epoch_source``: a callable giving
    the trainer's current epoch, which each new iterator of the loader starts at (see ``MixedLoader``)."""
    from ultralytics.data.build import seed_worker

    dataset = MixedDataset(labeled, unlabeled)
    sampler = MixSampler(len(labeled), len(unlabeled), unlabeled_per_epoch(len(labeled), ratio), seed=seed,
                         start_epoch=start_epoch, rank=rank, world_size=world_size)
    batch = min(batch, len(sampler))
    batches = math.ceil(len(sampler) / batch)
    nw = min(os.cpu_count() or 1, workers, 0 if batches <= 1 else batches)
    generator = torch.Generator()
    generator.manual_seed((6148914691236517205 + max(rank, 0) + seed) % (1 << 64))
    return _mixed_loader_class()(dataset=dataset, batch_size=batch, sampler=sampler, num_workers=nw,
                                 prefetch_factor=4 if nw > 0 else None, pin_memory=torch.cuda.is_available(),
                                 collate_fn=MixedDataset.collate_fn, worker_init_fn=seed_worker, generator=generator,
                                 epoch_source=epoch_source)

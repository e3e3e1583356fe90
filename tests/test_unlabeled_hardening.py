"""Issue 24, unlabelled images: copies of val images leak into the pool (5), truncated JPEGs crash the loader (9),
the pool's epoch slice ignores the trainer's epoch (11), the YAML form suggested for a COCO JSON does not work and
an ``unlabeled:`` key in the data YAML is ignored (12), optimizer=auto is sized by the whole pool (20)."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import yaml

from conftest import TINY_TRAIN
from detkd.config import KDConfig
from detkd.errors import ConfigError, DetKDError


def _write_images(folder, n, size=(48, 40), seed=0):
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        cv2.imwrite(str(folder / f"f{i:03d}.jpg"), rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    return sorted(folder.glob("*.jpg"))


def _truncated_jpeg(path, like):
    """The first half of a valid JPEG's bytes: PIL's verify() passes it, OpenCV cannot decode it."""
    data = like.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


# ------------------------------------------------------------------------------------------- item 5
def test_byte_identical_copies_of_val_images_are_left_out(tmp_path):
    """Copies (not links) of val images under other names are the same images: they are left out and counted."""
    from detkd.data.unlabeled import drop_overlap

    val = [str(f) for f in _write_images(tmp_path / "val", 3, seed=1)]
    train = [str(f) for f in _write_images(tmp_path / "train", 2, seed=2)]
    pool = [str(f) for f in _write_images(tmp_path / "pool", 4, seed=3)]
    for i, src in enumerate(val[:2]):
        shutil.copyfile(src, tmp_path / "pool" / f"copy{i}.jpg")
    shutil.copyfile(train[0], tmp_path / "pool" / "train_copy.jpg")
    same_size = tmp_path / "pool" / "same_size.jpg"  # as large as a val image, other bytes: kept
    same_size.write_bytes(bytes(reversed((tmp_path / "val" / "f000.jpg").read_bytes())))
    files = sorted(str(f) for f in (tmp_path / "pool").glob("*.jpg"))
    kept, left_out = drop_overlap(files, train, val)
    assert left_out == 3
    assert sorted(kept) == sorted([*pool, str(same_size)])


# ------------------------------------------------------------------------------------------- item 9
def test_truncated_jpeg_in_the_pool_is_skipped_and_counted_as_it_is_read(tmp_path):
    from ultralytics.cfg import get_cfg

    from detkd.data.unlabeled import build_unlabeled_dataset, resolve_unlabeled

    good = _write_images(tmp_path / "u", 3)
    _truncated_jpeg(tmp_path / "u" / "half.jpg", good[0])
    cfg = get_cfg(overrides={"imgsz": 64, "mosaic": 1.0})
    ds = build_unlabeled_dataset(resolve_unlabeled(tmp_path / "u"), cfg, 2, {"nc": 2, "names": {0: "a", 1: "b"}}, 32)
    assert len(ds) == 4 and not ds.skipped  # the start check (PIL) lets it through: only decoding finds it
    for i in range(len(ds)):
        assert ds[i]["img"].shape[-2:] == (64, 64)  # no traceback: another image stands in
    assert ds.unreadable_files() == [str((tmp_path / "u" / "half.jpg").resolve())]


def test_truncated_jpeg_is_counted_across_loader_workers(tmp_path):
    """The loader's worker processes find the file; the count is seen by the trainer's process."""
    from ultralytics.cfg import get_cfg

    from detkd.data.unlabeled import build_mixed_loader, build_unlabeled_dataset, resolve_unlabeled

    good = _write_images(tmp_path / "u", 3)
    _truncated_jpeg(tmp_path / "u" / "half.jpg", good[0])
    _write_images(tmp_path / "l", 4, seed=5)
    cfg = get_cfg(overrides={"imgsz": 64, "mosaic": 0.0})
    data = {"nc": 2, "names": {0: "a", 1: "b"}}
    pool = build_unlabeled_dataset(resolve_unlabeled(tmp_path / "u"), cfg, 2, data, 32)
    labelled = build_unlabeled_dataset(resolve_unlabeled(tmp_path / "l"), cfg, 2, data, 32)
    loader = build_mixed_loader(labelled, pool, ratio=0.5, batch=4, workers=1, seed=0, start_epoch=0)
    assert loader.num_workers == 1
    for _ in range(2):
        assert sum(len(b["im_file"]) for b in loader) == 8
    assert pool.unreadable_files() == [str((tmp_path / "u" / "half.jpg").resolve())]
    loader.close()


# ------------------------------------------------------------------------------------------- item 11
def _pool_slice(loader, pool) -> list[str]:
    """The unlabelled files one pass over ``loader`` draws, sorted."""
    return sorted(f for b in loader for f, lab in zip(b["im_file"], b["labeled"].tolist()) if not lab)


def _expected_slice(loader, pool, epoch) -> list[str]:
    return sorted(pool.im_files[p] for p in loader.sampler.pool_positions(epoch))


def test_pool_slice_follows_the_trainers_epoch_after_a_reset_and_a_resume(tmp_path, shapes_yaml, teacher_pt):
    """close_mosaic's train_loader.reset() used to skip a slice (the persistent workers had drawn the next epoch's
    indices already); a fresh loader (resume, OOM rebuild) used to start at its own count."""
    from detkd.engine.trainer import DistillationTrainer

    _write_images(tmp_path / "frames", 30, size=(64, 64))
    kd = KDConfig(teacher=teacher_pt, validate_teacher=False, unlabeled=str(tmp_path / "frames"),
                  unlabeled_ratio=0.2)  # 6 of the 30 frames per epoch
    trainer = DistillationTrainer(overrides=dict(model="yolov8n.yaml", data=shapes_yaml, project=str(tmp_path),
                                                 name="slice", **TINY_TRAIN), kd=kd)
    trainer.args.workers = 1  # Ultralytics sets 0 on CPU; the draw-ahead needs a worker
    trainer.setup_model()
    loader = trainer.get_dataloader(trainer.data["train"], batch_size=8, rank=-1, mode="train")
    pool = loader.dataset.datasets[1]
    assert loader.num_workers == 1
    slices = [_expected_slice(loader, pool, e) for e in range(3)]  # the pool is cycled: each epoch another 6
    assert all(len(s) == 6 for s in slices) and len({f for s in slices for f in s}) == 18  # (a skipped or
    # repeated slice below is then told apart from the right one)
    trainer.epoch = 0
    assert _pool_slice(loader, pool) == _expected_slice(loader, pool, 0)
    trainer.epoch = 1
    loader.reset()  # what close_mosaic does at the start of an epoch
    assert _pool_slice(loader, pool) == _expected_slice(loader, pool, 1)
    trainer.epoch = 2
    assert _pool_slice(loader, pool) == _expected_slice(loader, pool, 2)
    loader.close()
    fresh = trainer.get_dataloader(trainer.data["train"], batch_size=8, rank=-1, mode="train")  # resume at epoch 2
    assert _pool_slice(fresh, pool) == _expected_slice(fresh, pool, 2)
    fresh.close()


# ------------------------------------------------------------------------------------------- item 12
def test_coco_json_whose_images_are_elsewhere_suggests_a_yaml_that_works(tmp_path):
    import json

    from detkd.data.unlabeled import resolve_unlabeled

    files = _write_images(tmp_path / "somewhere" / "frames", 3)
    (tmp_path / "ann").mkdir()
    coco = {"images": [{"id": i, "file_name": f.name} for i, f in enumerate(files)], "annotations": []}
    (tmp_path / "ann" / "unl.json").write_text(json.dumps(coco))
    with pytest.raises(DetKDError) as err:
        resolve_unlabeled(tmp_path / "ann" / "unl.json")
    message = str(err.value)
    assert "--unlabeled" in message and "unlabeled: {json:" in message  # the form to write, for --unlabeled
    spec = tmp_path / "unl.yaml"
    spec.write_text(yaml.safe_dump({"unlabeled": {"json": "ann/unl.json", "images": "somewhere/frames"}}))
    assert resolve_unlabeled(spec) == sorted(str(f.resolve()) for f in files)
    spec.write_text(yaml.safe_dump({"path": str(tmp_path / "somewhere"), "unlabeled": "frames"}))  # a folder entry
    assert resolve_unlabeled(spec) == sorted(str(f.resolve()) for f in files)
    spec.write_text(yaml.safe_dump({"train": "images/train"}))
    with pytest.raises(ConfigError, match="'unlabeled:'"):
        resolve_unlabeled(spec)


def test_an_unlabeled_key_in_the_data_yaml_is_used(tmp_path, shapes_yaml, teacher_pt, monkeypatch):
    """An 'unlabeled:' entry in the --data YAML is the pool when --unlabeled is not given (logged); --unlabeled wins
    over it, which is said too."""
    import detkd.api as api

    _write_images(tmp_path / "frames", 2)
    _write_images(tmp_path / "other", 2)
    data = {**yaml.safe_load(open(shapes_yaml)), "unlabeled": str(tmp_path / "frames")}
    data_yaml = tmp_path / "data.yaml"
    data_yaml.write_text(yaml.safe_dump(data))
    monkeypatch.setattr(api, "_train", lambda trainer: trainer)  # no training: the trainer as built
    trainer = api.distill(teacher=teacher_pt, data=str(data_yaml), kd={"validate_teacher": False},
                          project=str(tmp_path), name="a", **TINY_TRAIN)
    assert trainer.kd.unlabeled == str(data_yaml.resolve())
    from detkd.data.unlabeled import resolve_unlabeled

    assert len(resolve_unlabeled(trainer.kd.unlabeled)) == 2
    assert trainer.kd.pseudo_threshold is not None  # the default pseudo-labels, as with --unlabeled
    given = api.distill(teacher=teacher_pt, data=str(data_yaml), unlabeled=tmp_path / "other",
                        kd={"validate_teacher": False}, project=str(tmp_path), name="b", **TINY_TRAIN)
    assert given.kd.unlabeled == str((tmp_path / "other").resolve())


# ------------------------------------------------------------------------------------------- item 20
def test_optimizer_auto_is_sized_by_the_images_of_an_epoch_not_the_whole_pool(tmp_path, shapes_yaml, teacher_pt,
                                                                             monkeypatch):
    from ultralytics.engine.trainer import BaseTrainer

    from detkd.engine.trainer import DistillationTrainer

    _write_images(tmp_path / "frames", 300, size=(32, 32))  # the pool: 300 frames, 12x the 24 labelled images
    seen = []
    original = BaseTrainer.build_optimizer

    def capture(self, model, name="auto", lr=0.001, momentum=0.9, decay=1e-5, iterations=1e5):
        seen.append(iterations)
        return original(self, model, name, lr, momentum, decay, iterations)

    monkeypatch.setattr(BaseTrainer, "build_optimizer", capture)
    kd = KDConfig(teacher=teacher_pt, validate_teacher=False, unlabeled=str(tmp_path / "frames"), unlabeled_ratio=0.5)
    epochs, nbs = 3, 8
    trainer = DistillationTrainer(overrides=dict(model="yolov8n.yaml", data=shapes_yaml, project=str(tmp_path),
                                                 name="opt", optimizer="auto", nbs=nbs,
                                                 **{**TINY_TRAIN, "epochs": epochs}), kd=kd)
    trainer._setup_train()
    per_epoch = 24 + 24  # every labelled image + as many unlabelled (ratio 0.5), not 24 + 300
    assert seen == [math.ceil(per_epoch / max(TINY_TRAIN["batch"], nbs)) * epochs]


def test_compare_takes_the_unlabeled_key_of_the_data_yaml_too(tmp_path, shapes_yaml, teacher_pt):
    from detkd.compare.experiment import CompareSettings, plan

    _write_images(tmp_path / "frames", 2)
    data_yaml = tmp_path / "data.yaml"
    data_yaml.write_text(yaml.safe_dump({**yaml.safe_load(open(shapes_yaml)), "unlabeled": str(tmp_path / "frames")}))
    s = CompareSettings(teacher=teacher_pt, data=str(data_yaml), epochs=1).validate()
    assert s.unlabeled == str(data_yaml.resolve())
    assert "distilled-detkd-unlabeled" in [r.key for r in plan(s)]


# ------------------------------------------------------------------------------------------- item 18 (help)
def test_unlabeled_help_says_pseudo_labels_are_on_by_default(capsys):
    from detkd.cli import main

    with pytest.raises(SystemExit):
        main(["distill", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "no detection loss there" not in text
    assert "detection targets (--pseudo-conf, on by default" in text

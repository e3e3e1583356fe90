"""Dataset errors a user meets before any training: nowhere to write the conversion cache, no box to train on."""

from __future__ import annotations

import errno
import json
import os
import pathlib
from pathlib import Path

import pytest

from detkd.data.coco import prepare_dataset
from detkd.data.synthetic import SyntheticSpec, make_shapes_dataset
from detkd.errors import DatasetError


@pytest.fixture
def tiny(tmp_path) -> Path:
    return make_shapes_dataset(tmp_path / "ds", SyntheticSpec(n_train=2, n_val=2, imgsz=64))


def _deny_writes_under(monkeypatch, *dirs: Path) -> None:
    """Make the folders read-only: chmod, and (root ignores permission bits) refuse mkdir/open-for-write below them
    the way the kernel would."""
    for d in dirs:
        os.chmod(d, 0o555)
    if os.geteuid() != 0:
        return
    denied = [str(d.resolve()) for d in dirs]

    def below(p) -> bool:
        p = os.path.abspath(os.fspath(p))
        return any(p == d or p.startswith(d + os.sep) for d in denied)

    mkdir, os_open = pathlib.Path.mkdir, os.open

    def fake_mkdir(self, *a, **kw):
        if below(self) and not self.is_dir():
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return mkdir(self, *a, **kw)

    def fake_open(path, flags, *a, **kw):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and below(path):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return os_open(path, flags, *a, **kw)

    monkeypatch.setattr(pathlib.Path, "mkdir", fake_mkdir)
    monkeypatch.setattr(os, "open", fake_open)


@pytest.fixture
def restore_modes(tmp_path):
    yield
    for p in [tmp_path, *tmp_path.rglob("*")]:  # let pytest clean up
        if p.is_dir() and not p.is_symlink():
            os.chmod(p, 0o755)


# ------------------------------------------------------------------------------------------------ item 13
def test_readonly_dataset_and_unwritable_home(tiny, tmp_path, monkeypatch, restore_modes, capsys):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.delenv("DETKD_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(home))
    _deny_writes_under(monkeypatch, tiny, home)
    with pytest.raises(DatasetError) as e:
        prepare_dataset(tiny, verbose=False)
    msg = str(e.value)
    assert "DETKD_CACHE_DIR" in msg and str(home / ".cache" / "detkd") in msg and "read-only" in msg, msg
    assert not (tiny / ".detkd_cache").exists()
    # the CLI: one line, exit 2, no traceback
    from detkd.cli import main

    assert main(["eval", "--model", "yolov8n.yaml", "--data", str(tiny), "--imgsz", "64"]) == 2
    err = capsys.readouterr().err
    assert "DETKD_CACHE_DIR" in err and "Traceback" not in err


def test_unwritable_detkd_cache_dir(tiny, tmp_path, monkeypatch, restore_modes):
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("DETKD_CACHE_DIR", str(cache))
    _deny_writes_under(monkeypatch, tiny, cache)
    with pytest.raises(DatasetError, match=r"DETKD_CACHE_DIR=.*is not writable"):
        prepare_dataset(tiny, verbose=False)


def test_unwritable_cache_dir_argument(tiny, tmp_path, monkeypatch, restore_modes):
    out = tmp_path / "out"
    out.mkdir()
    _deny_writes_under(monkeypatch, out)
    with pytest.raises(DatasetError, match="not writable"):
        prepare_dataset(tiny, cache_dir=out, verbose=False)


# ------------------------------------------------------------------------------------------------ item 16b
def _set_train(root: Path, fn) -> None:
    js = root / "annotations" / "instances_train.json"
    coco = json.loads(js.read_text())
    fn(coco)
    js.write_text(json.dumps(coco))


@pytest.mark.parametrize("change, why", [
    (lambda c: [a.update(category_id=99) for a in c["annotations"]], "category_id 99"),
    (lambda c: c.update(annotations=[]), "has no annotations"),
    (lambda c: [a.update(iscrowd=1) for a in c["annotations"]], "iscrowd"),
])
def test_training_refused_without_boxes(tiny, change, why):
    _set_train(tiny, change)
    prepare_dataset(tiny, verbose=False)  # evaluation of val is still possible
    with pytest.raises(DatasetError) as e:
        prepare_dataset(tiny, verbose=False, for_training=True)
    msg = str(e.value)
    assert "train split" in msg and "no usable box" in msg and why in msg, msg


def test_train_baseline_refuses_boxless_dataset(tiny):
    from detkd.api import train_baseline

    _set_train(tiny, lambda c: c.update(annotations=[]))
    with pytest.raises(DatasetError, match="train split"):
        train_baseline("yolov8n.yaml", data=str(tiny), epochs=1, imgsz=64, batch=2, device="cpu", workers=0,
                       plots=False, val=False)


def test_boxless_val_refused_for_training(tiny):
    js = tiny / "annotations" / "instances_val.json"
    coco = json.loads(js.read_text())
    js.write_text(json.dumps({**coco, "annotations": []}))
    with pytest.raises(DatasetError, match="val split"):
        prepare_dataset(tiny, verbose=False, for_training=True)

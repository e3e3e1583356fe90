"""What a training run was made from, and what happens to a run whose settings changed.

Shared by ``detkd compare`` (every run of a comparison) and the teacher-assistant chain (each stage): a run is reused
(or resumed, when it was cut off) only when its *fingerprint* — the settings it depends on and the SHA-256 of the
model, teacher and data files — is the one it was started with. A run made with other settings is never overwritten:
:func:`set_aside` moves its folder to ``<folder>.old-<timestamp>`` and the new run starts in a fresh folder.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path

_HASHES: dict = {}


def file_sha256(path) -> str:
    """SHA-256 of a file (memoised on path, size and mtime)."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def model_id(model) -> dict | list:
    """What identifies a model argument: its file's hash — also for a name found where detkd looks for weights
    (``yolov8l.pt`` in ``./weights/``: :func:`~detkd.models.loading.resolve_model_path`) — or a bundled config's
    name; a list of them for a list."""
    from detkd.errors import DetKDError
    from detkd.models.loading import resolve_model_path

    if isinstance(model, (list, tuple)):
        return [model_id(m) for m in model]
    p = Path(str(model))
    if not p.is_file():
        try:
            p = Path(resolve_model_path(str(model)))
        except DetKDError:  # not found anywhere: its name (the run that needs it says so)
            pass
    return {"file": p.name, "sha256": file_sha256(p)} if p.is_file() else {"name": str(model)}


def with_unlabeled(fp: dict, kd: dict) -> dict:
    """``fp`` with the run's unlabelled images identified (:func:`unlabeled_id`) when it has any; a run without them
    keeps the fingerprint it had before they were recorded."""
    pool = unlabeled_id(kd)
    return fp if pool is None else {**fp, "unlabeled": pool}


def unlabeled_id(kd: dict) -> dict | None:
    """What identifies a run's unlabelled images (None without them): how many, and a hash of their paths, sizes
    and modification times — other images behind the same ``--unlabeled`` path are other training data. (Not their
    contents: a pool may hold many thousand frames.)"""
    from detkd.data.unlabeled import resolve_unlabeled

    if not kd.get("unlabeled"):
        return None
    h = hashlib.sha256()
    files = resolve_unlabeled(kd["unlabeled"])
    for f in files:
        st = Path(f).stat()
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return {"images": len(files), "sha256": h.hexdigest()}


def normal(obj):
    """``obj`` as plain, key-sorted JSON data (what a fingerprint is compared and stored as)."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


# KD settings that change where or whether the teacher runs, not what the student learns
RUNTIME_ONLY_KD = frozenset({"teacher", "validate_teacher", "min_teacher_map", "teacher_graphs", "teacher_overlap"})


def kd_signature(kd: dict) -> dict:
    """KD settings as a fingerprint holds them: those that change what is learnt and differ from detkd's defaults.

    A setting detkd adds later, at its default, therefore leaves the fingerprints of earlier runs unchanged (their
    records, written with every setting of their time, are compared through this too: :func:`same_settings`).
    """
    from detkd.config import KDConfig

    defaults = normal(KDConfig().to_dict())
    kd = normal(kd)
    return {k: v for k, v in kd.items() if k not in RUNTIME_ONLY_KD and (k not in defaults or v != defaults[k])}


def _comparable(fp: dict | None) -> dict | None:
    return {**fp, "kd": kd_signature(fp["kd"])} if isinstance(fp, dict) and isinstance(fp.get("kd"), dict) else fp


def same_settings(old: dict | None, new: dict) -> bool:
    """True when a run recorded with fingerprint ``old`` was made with the settings ``new`` (KD settings compared as
    :func:`kd_signature` gives them)."""
    return old is not None and _comparable(old) == _comparable(new)


def diff(old: dict, new: dict) -> str:
    """The settings that differ between two fingerprints, as ``key: old -> new`` (nested settings as
    ``train_args.epochs: 3 -> 4``; ``?`` when none is found)."""
    changes = _changes(_comparable(old), _comparable(new))
    return ", ".join(f"{k}: {_short(a)!r} -> {_short(b)!r}" for k, a, b in changes) or "?"


def _short(value):
    """A SHA-256 as its first 12 hex digits (enough to tell two files apart in a message); anything else as is."""
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12]
    return value


def _changes(old: dict, new: dict, prefix: str = "") -> list[tuple]:
    """(dotted key, old value, new value) of every leaf setting that differs."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _changes(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append((f"{prefix}{k}", a, b))
    return out


def read_json(path: Path) -> dict | None:
    """The JSON object in ``path``, or None when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def holds_a_run(run_dir: Path) -> bool:
    """True when ``run_dir`` holds anything worth keeping: a checkpoint (finished or not) of an earlier run."""
    weights = Path(run_dir) / "weights"
    return weights.is_dir() and any(weights.iterdir())


def set_aside(run_dir: Path) -> Path:
    """Move ``run_dir`` to ``<run_dir>.old-<YYYYmmdd-HHMMSS>`` (``-2``, ``-3``, ... when taken) and return it there.

    A run trained with other settings is kept, never overwritten: its folder name says when it was set aside."""
    run_dir = Path(run_dir)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    target = run_dir.with_name(f"{run_dir.name}.old-{stamp}")
    n = 2
    while target.exists():
        target = run_dir.with_name(f"{run_dir.name}.old-{stamp}-{n}")
        n += 1
    return run_dir.rename(target)

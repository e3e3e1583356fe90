"""Run :func:`detkd.bench.speed.benchmark_model` over models x backends x precisions x batch sizes, with progress.

Every setting is checked before the first measurement, so an impossible request (missing file, no CUDA, no
onnxruntime, FP16 torch on CPU) fails at once with one clear message — or, with ``skip_unavailable=True`` (the
``benchmarks/`` scripts), becomes a ``status: "skipped"`` row carrying the reason, so one table still comes out.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from pathlib import Path

import torch

from detkd.bench.speed import BACKENDS, model_profile, normalize_backend, plan_setting, resolve_device
from detkd.errors import DetKDError


# Precisions each backend can be asked for (whether this machine runs them is plan_setting's job). INT8 comes from a
# calibrated export passed as a model (bench never calibrates).
BACKEND_PRECISIONS = {"torch": ("fp32", "fp16"), "onnxruntime": ("fp32", "fp16"), "openvino": ("fp32", "bf16", "fp16")}


def normalize_precisions(precisions) -> list[str]:
    """Precision names (fp32, fp16, bf16, int8) from names such as 'fp16', 'half', '16', 'bfloat16', 'both'."""
    out = []
    for p in precisions:
        key = str(p).strip().lower()
        names = {"fp32": ["fp32"], "32": ["fp32"], "float": ["fp32"], "full": ["fp32"], "fp16": ["fp16"],
                 "16": ["fp16"], "half": ["fp16"], "both": ["fp32", "fp16"], "bf16": ["bf16"],
                 "bfloat16": ["bf16"], "int8": ["int8"], "8": ["int8"]}.get(key)
        if names is None:
            raise DetKDError(f"precision '{p}' not understood: use fp32, fp16, bf16, int8 or both.")
        out += [n for n in names if n not in out]
    return out or ["fp32"]


def _run_folders(path: str | Path) -> tuple[str, ...]:
    """The folders above a model file, innermost last, without Ultralytics' ``weights`` folder:
    ``runs/a/weights/best.pt`` -> (..., 'runs', 'a')."""
    parents = Path(os.path.abspath(str(path))).parent.parts
    return tuple(p for p in parents if p != "weights")


def _distinguishing_suffix(paths: list[str]) -> list[str]:
    """Labels for files of one name: the shortest run-folder suffix that tells them apart (``a`` for
    ``a/weights/best.pt``, ``x/a`` when ``y/a`` is there too); the same file again gets `` #2``, `` #3``."""
    folders = [_run_folders(p) for p in paths]
    distinct = set(folders)
    if len(distinct) == 1:
        labels = [Path(p).name for p in paths]
    else:
        depth = max(len(f) for f in distinct)
        k = next(k for k in range(1, depth + 1) if len({f[-k:] for f in distinct}) == len(distinct))
        labels = ["/".join(f[-k:]) for f in folders]
    seen: dict[tuple, int] = {}
    for i, folder in enumerate(folders):
        seen[folder] = seen.get(folder, 0) + 1
        if seen[folder] > 1:
            labels[i] += f" #{seen[folder]}"
    return labels


def model_labels(models) -> list[str]:
    """One unique, short row label per model, used by bench's table, JSON and Markdown.

    A file name that appears once stays as it is (``yolov8n.yaml``, ``best.pt``); files sharing a name are named by
    their run (the folder above ``weights/``: ``a`` for ``a/weights/best.pt``), or by the shortest folder suffix
    that distinguishes them (``x/a``, ``y/a``). A (label, module) pair keeps its label.
    """
    names = [m[0] if isinstance(m, tuple) else Path(str(m)).name for m in models]
    labels = list(names)
    for name in set(names):
        idx = [i for i, n in enumerate(names) if n == name and not isinstance(models[i], tuple)]
        if len(idx) > 1:
            for i, label in zip(idx, _distinguishing_suffix([str(models[i]) for i in idx])):
                labels[i] = label
    if len(set(labels)) < len(labels):  # a run named like another model's file: the paths as given
        labels = [m[0] if isinstance(m, tuple) else str(m) for m in models]
    return labels


def model_families(models, labels: list[str]) -> list[str]:
    """Per model, the label of the model it belongs to: a checkpoint and its exports in the same folder
    (``a/weights/best.pt``, ``a/weights/best_int8_openvino_model``: :func:`detkd.bench.report.model_family`) are one
    model, named by the first of them given; files of one name in other runs are other models."""
    from detkd.bench.report import model_family

    first: dict[tuple, str] = {}
    out = []
    for m, label in zip(models, labels):
        key = ("module", label) if isinstance(m, tuple) else \
            (os.path.dirname(os.path.abspath(str(m).rstrip("/\\"))), model_family(Path(str(m).rstrip("/\\")).name))
        out.append(first.setdefault(key, label))
    return out


def _skipped(label: str, backend: str, precision: str, batch: int, imgsz: int, reason: str, profile: dict | None = None) -> dict:
    return {"model": label, **(profile or {}), "backend": backend, "provider": None, "device": None,
            "precision": precision, "imgsz": imgsz, "batch": batch, "threads": None, "status": "skipped",
            "reason": reason, "notes": []}


def normalize_backends(backends) -> list[str]:
    """Backend names, deduplicated; 'all' = torch, onnxruntime and openvino."""
    out = []
    for b in backends:
        names = list(BACKENDS) if str(b).strip().lower() == "all" else [normalize_backend(b)]
        out += [n for n in names if n not in out]
    return out


def _model_source(m):
    """(source, artefact or None): a (label, module) pair's module, an exported .onnx/OpenVINO folder as an
    :class:`~detkd.deploy.backends.Artefact`, or the resolved .pt/YAML path."""
    from detkd.bench.speed import exported_artefact
    from detkd.models.loading import resolve_model_path

    if isinstance(m, tuple):
        return m[1], None
    art = exported_artefact(m)
    return (art.path, art) if art is not None else (resolve_model_path(m, "model"), None)


def _plan(backends, precisions, dev, ort_cpu_fallback: bool, strict: bool) -> dict:
    """(backend, precision) -> (run device, notes), or the reason it is not measured (a str).

    A precision a backend never runs (bf16 outside OpenVINO, int8 without an INT8 export) is a skipped row when another
    requested backend runs it, else an error. Missing OpenVINO skips its rows (one warning naming the deploy extra).
    Other impossible settings raise when ``strict``.
    """
    from ultralytics.utils import LOGGER

    from detkd.deploy.backends import openvino_available, openvino_missing_message

    plans = {}
    for backend, prec in itertools.product(backends, precisions):
        if prec not in BACKEND_PRECISIONS[backend]:
            runs_it = [b for b in backends if prec in BACKEND_PRECISIONS[b]]
            try:
                plan_setting(backend, dev, prec == "fp16", ort_cpu_fallback, precision=prec)
            except DetKDError as e:
                if strict and not runs_it:
                    raise
                plans[(backend, prec)] = str(e)
            continue
        if backend == "openvino" and not openvino_available():
            plans[(backend, prec)] = openvino_missing_message("the openvino backend")
            continue
        try:
            plans[(backend, prec)] = plan_setting(backend, dev, prec == "fp16", ort_cpu_fallback, precision=prec)
        except DetKDError as e:
            if strict:
                raise
            plans[(backend, prec)] = str(e)
            LOGGER.warning(f"detkd bench: skipping {backend} {prec}: {e}")
    if "openvino" in backends and not openvino_available():
        LOGGER.warning(f"detkd bench: OpenVINO rows skipped: {openvino_missing_message('the openvino backend')}")
    return plans


def _artefact_settings(art, precisions) -> list[str]:
    """Precisions an exported artefact is timed in: its stored one (ONNX, INT8 OpenVINO), else the requested
    OpenVINO inference precisions (fp32 when none was requested)."""
    if art.kind == "onnx" or art.weights == "int8":
        return [art.weights]
    return [p for p in precisions if p in BACKEND_PRECISIONS["openvino"]] or ["fp32"]


def run_benchmarks(models, imgsz: int = 640, batches=(1,), device: str = "cpu", precisions=("fp32",),
                   backends=("torch",), skip_unavailable: bool = False, fallback_max_batch: int | None = None,
                   progress: bool = True, **bench_kwargs) -> list[dict]:
    """Benchmark every (model, backend, precision, batch); return the rows in that order.

    Args:
        models: ``.pt`` / model YAML names (or (label, module) pairs), or exported ``.onnx`` / ``*_openvino_model/``
            artefacts (timed on their own backend, in their stored precision or the requested OpenVINO ones).
        batches, precisions ('fp32', 'fp16', 'bf16', 'int8', 'both'), backends ('torch', 'onnxruntime', 'openvino',
            'all'): the grid. OpenVINO without the deploy extra: its rows are skipped with the install line.
        skip_unavailable: record impossible or failing settings (and CUDA out-of-memory) as skipped rows instead of
            raising ('all' backends implies it for settings the machine cannot run).
        fallback_max_batch: with ``ort_cpu_fallback``, skip ORT-on-CPU rows of a GPU run above this batch (they
            would take minutes).
        bench_kwargs: passed to :func:`~detkd.bench.speed.benchmark_model` (warmup, iters, time_budget, ...).
    """
    from ultralytics.utils import LOGGER, TQDM

    from detkd.bench.speed import benchmark_model
    from detkd.deploy.backends import openvino_available, openvino_missing_message
    from detkd.export.student import load_student

    strict = not skip_unavailable and not any(str(b).strip().lower() == "all" for b in backends)
    backends = normalize_backends(backends)
    precisions = normalize_precisions(precisions)
    batches = [int(b) for b in batches]
    if any(b < 1 for b in batches):
        raise DetKDError(f"batch sizes must be >= 1, got {batches}.")
    if int(imgsz) <= 0 or int(imgsz) % 32:
        raise DetKDError(f"--imgsz {imgsz} must be a positive multiple of 32.")
    dev = resolve_device(device)
    named, unreadable = [], {}
    labels = model_labels(models)
    families = model_families(models, labels)
    for m, label in zip(models, labels):
        try:
            named.append((label, *_model_source(m)))
        except DetKDError as e:
            if openvino_available() or "openvino" not in str(e).lower():
                raise
            unreadable[len(named)] = str(e)  # an OpenVINO folder without the deploy extra: skipped, said once
            named.append((label, str(m), None))
    if unreadable:
        LOGGER.warning(f"detkd bench: OpenVINO rows skipped: {openvino_missing_message('the openvino backend')}")
    fallback = bench_kwargs.get("ort_cpu_fallback", False)
    plans = _plan(backends, precisions, dev, fallback, strict) if any(
        a is None and i not in unreadable for i, (_, _, a) in enumerate(named)) else {}

    grid = []
    for mi, (label, src, art) in enumerate(named):
        if mi in unreadable:
            grid += [(mi, "openvino", p, n) for p, n in itertools.product(precisions, batches)]
        elif art is None:
            grid += [(mi, b, p, n) for b, p, n in itertools.product(backends, precisions, batches)]
        else:
            grid += [(mi, art.label, p, n) for p, n in itertools.product(_artefact_settings(art, precisions), batches)]
    rows, loaded = [], {}
    exports = {"dir": tempfile.TemporaryDirectory(prefix="detkd-bench-ov-")}
    bar = TQDM(grid, desc="bench", disable=not progress)
    for mi, backend, prec, batch in bar:
        label, src, art = named[mi]
        bar.set_description(f"bench {label} {backend} {prec} b{batch}")
        if mi in unreadable:
            rows.append(_skipped(label, backend, prec, batch, imgsz, unreadable[mi]))
            continue
        if art is not None:
            profile, net = {"params_m": None, "gflops": None}, str(src)
        else:
            if mi not in loaded:
                loaded.clear()  # one model in memory at a time
                net = src if isinstance(src, torch.nn.Module) else load_student(src, role="model")[0]
                loaded[mi] = (net, model_profile(net, imgsz))
            net, profile = loaded[mi]
            plan = plans[(backend, prec)]
            if isinstance(plan, str):
                rows.append(_skipped(label, backend, prec, batch, imgsz, plan, profile))
                continue
            run_dev, _ = plan
            if fallback_max_batch is not None and backend == "onnxruntime" and run_dev.type == "cpu" \
                    and dev.type == "cuda" and batch > fallback_max_batch:
                rows.append(_skipped(label, backend, prec, batch, imgsz,
                                     f"ORT CPU fallback limited to batch <= {fallback_max_batch}", profile))
                continue
        try:
            if backend == "openvino" and art is None:  # one IR per model and batch, timed in each precision
                net = openvino_ir(net, exports, (mi, batch, prec == "fp16"), label, imgsz, batch)
            rows.append(benchmark_model(net, imgsz=imgsz, batch=batch, device=device, precision=prec,
                                        backend=backend, name=label, profile=profile, **bench_kwargs))
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            rows.append(_skipped(label, backend, prec, batch, imgsz, "CUDA out of memory", profile))
        except DetKDError as e:
            if strict and art is None:
                raise
            rows.append(_skipped(label, backend, prec, batch, imgsz, str(e), profile))
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the setting's AutoBackend copies are gone; keep the next setting's memory clean
        r = rows[-1]
        r["family"] = families[mi]  # which model the row belongs to (a checkpoint and its exports: one)
        if r["status"] == "ok":
            LOGGER.info(f"  {label:<16} {backend:<11} {prec} b{batch:<3} {r['latency_ms']['mean']:9.2f} ms "
                        f"{r['throughput_img_s']:9.1f} img/s  ({r['provider']}, ran {r['executed']})")
    exports["dir"].cleanup()
    return rows


def openvino_ir(net: torch.nn.Module, exports: dict, key: tuple, label: str, imgsz: int, batch: int) -> str:
    """The OpenVINO folder of ``net`` for ``key`` = (model index, batch, FP16-compressed), exported once per run into
    ``exports['dir']`` (the FP32 and BF16 rows time the same IR with different precision hints)."""
    from detkd.bench.speed import export_for_backend

    if key not in exports:
        exports[key] = export_for_backend(net, "openvino", exports["dir"].name, f"m{key[0]}_{Path(label).stem}",
                                          imgsz, batch, key[2], torch.device("cpu"))
    return exports[key]

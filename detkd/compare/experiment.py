"""Plan, run and reuse the runs of one comparison: teacher, baseline student, distilled student(s), Ultralytics KD.

Every student run gets identical settings (student, data, epochs, imgsz, batch, seed, extra Ultralytics arguments);
only the teacher signal differs. Layout under ``<project>/<name>/``::

    train/<key>/                 Ultralytics run folder (weights/best.pt, results.csv, args.yaml)
    train/<key>/compare_run.json finished marker: the settings fingerprint, weights, wall and epoch time
    eval/<key>/                  metrics.json (+ predictions.json) and compare_eval.json (fingerprint)
    bench/<key>.json             speed row and its fingerprint
    report.md, report.json, map_vs_fps.png, training_curves.png

A training run is reused when its marker holds the same fingerprint (settings, and the SHA-256 of the student,
teacher and data.yaml files); a run cut off before it finished (Ctrl+C, a lost machine) resumes from its
``weights/last.pt`` when it was started with the same fingerprint (``compare_started.json``), else it is retrained
in a fresh folder: the run made with other settings is kept, moved to ``train/<key>.old-<timestamp>``
(:mod:`detkd.engine.fingerprint`, shared with the teacher-assistant chain). Evaluations and benchmarks are reused the same way, keyed on the weights' hash.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

from detkd.engine.fingerprint import (diff, holds_a_run, kd_signature, model_id, normal, read_json, same_settings,
                                     set_aside, with_unlabeled)
from detkd.errors import ConfigError, DetKDError, IncompatibleModelsError
from detkd.eval.metrics import BACKEND_LABEL, resolve_backend
from detkd.ranges import check_ranges

MARKER = "compare_run.json"
EVAL_MARKER = "compare_eval.json"
STARTED = "compare_started.json"  # the fingerprint a run was started with (an interrupted run resumes if it matches)
# Ultralytics arguments compare sets itself (identical for every run) and a user may not override per run.
OWNED_TRAIN_ARGS = {"model", "data", "epochs", "imgsz", "batch", "seed", "device", "workers", "project", "name",
                    "exist_ok", "resume", "distill_model", "kd", "pretrained"}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
TEACHER_CLASS_FLAGS = {"class_map": "--class-map", "keep_teacher_classes": "--keep-teacher-classes"}


@dataclass
class CompareSettings:
    """Everything one comparison depends on. ``kd_configs`` maps a name to KDConfig fields (teacher excluded)."""

    teacher: str
    data: str
    student: str = "yolov8n.yaml"
    kd_configs: dict = field(default_factory=lambda: {"detkd": {}})
    with_ultralytics_kd: bool = False
    assistant: str | None = None  # teacher-assistant rows: this model distilled from the teacher, the student from it
    unlabeled: str | None = None  # unlabelled-image rows: each KD configuration + these images, and pseudo-labels
    # hard-label threshold of the unlabelled rows (pseudo-labels, detkd's): PSEUDO_CONF_DEFAULT, or None / 'off':
    # soft KD only (no pseudo-label row). Another value needs unlabelled images.
    pseudo_conf: float | str | None = 0.25
    epochs: int = 100
    imgsz: int = 640
    batch: int = 16
    seed: int | None = None  # the seed of every student run (None: 0)
    seeds: list | None = None  # several seeds: every student run repeated per seed (then ``seed`` stays None)
    device: str | None = None
    workers: int | None = None
    train_args: dict = field(default_factory=dict)
    project: str = "runs/compare"
    name: str | None = None
    eval_split: str = "val"
    eval_conf: float = 0.001
    eval_iou: float = 0.7
    eval_batch: int = 16
    eval_device: str | None = None
    bench_device: str = "cpu"
    bench_imgsz: int | None = None
    bench_warmup: int = 5
    bench_iters: int = 50
    bench_time_budget: float = 5.0
    bench_min_iters: int = 5
    deploy: list | None = None  # --deploy: 'backend:precision' variants of every student run (None: off; []: all)
    calib_images: int | None = None  # INT8 variants: calibration images from the training split (None: 300)
    # a teacher with other classes (KDConfig's settings, the same for every run distilled from --teacher; see
    # docs/classes.md and detkd.compare.classes for how each row is scored then)
    class_map: str | dict | None = None
    keep_teacher_classes: bool = False

    def validate(self) -> "CompareSettings":
        from detkd.config import KDConfig, check_train_args

        if not self.teacher:
            raise ConfigError("--teacher is required: the teacher checkpoint (.pt) to distil from.")
        if not self.data:
            raise ConfigError("--data is required: an Ultralytics data.yaml or a COCO dataset folder.")
        if self.seeds is not None and (not self.seeds or len(set(self.seeds)) != len(self.seeds)):
            raise ConfigError(f"--seeds {self.seeds}: give one or more different seeds, e.g. --seeds 0 1 2.")
        if self.seeds is not None and self.seed is not None:
            raise ConfigError(f"--seed {self.seed} and --seeds {list(self.seeds)} both given: --seeds sets every "
                              f"run's seed, give the seed(s) there only (e.g. --seeds {self.seed}).")
        for k in ("epochs", "imgsz", "batch"):
            if int(getattr(self, k)) < 1:
                raise ConfigError(f"{k}={getattr(self, k)} must be >= 1.")
        self._check_numbers()
        bench_imgsz = int(self.bench_imgsz or self.imgsz)
        if bench_imgsz % 32:
            raise ConfigError(f"benchmark imgsz {bench_imgsz} must be a multiple of 32 (set --imgsz or --bench-imgsz).")
        if not self.kd_configs and not self.with_ultralytics_kd:
            raise ConfigError("nothing to compare: give at least one KD configuration or --with-ultralytics-kd.")
        from detkd.data.unlabeled import unlabeled_source

        self.unlabeled = unlabeled_source(self.unlabeled, self.data)  # --unlabeled, or the data YAML's entry
        self._validate_teacher_classes()
        for name, cfg in self.kd_configs.items():
            if not _NAME_RE.match(str(name)):
                raise ConfigError(f"KD configuration name '{name}' must be letters, digits, '_', '.', '-'.")
            for key, flag in (("teacher", "--teacher"), *TEACHER_CLASS_FLAGS.items()):
                if key in cfg:
                    raise ConfigError(f"KD configuration '{name}' sets '{key}': that is {flag}, the same for "
                                      f"every run.")
            if "pseudo_conf" in cfg and not self.unlabeled:
                raise ConfigError(f"KD configuration '{name}' sets pseudo_conf: it is about unlabelled images, give "
                                  f"them with --unlabeled PATH.")
            extra = {"unlabeled": str(self.unlabeled)} if "pseudo_conf" in cfg else {}
            KDConfig.from_dict({**cfg, **extra, **self.teacher_classes})  # bad keys / values fail before any work
        if self.unlabeled:
            from detkd.data.unlabeled import resolve_unlabeled

            resolve_unlabeled(self.unlabeled)  # missing or empty: one clear error before any work
            self.unlabeled = str(Path(str(self.unlabeled)).resolve())
        self.pseudo_conf = self._pseudo_threshold()
        bad = OWNED_TRAIN_ARGS & set(self.train_args)
        if bad:
            raise ConfigError(f"{', '.join(sorted(bad))} cannot be set with --set: compare sets it itself "
                              f"(use the dedicated flag, e.g. --epochs, --imgsz, --project/--name).")
        check_train_args(self.train_args)
        if self.deploy is None and self.calib_images is not None:
            raise ConfigError("--calib-images calibrates the INT8 files of --deploy: add --deploy or drop it.")
        if self.deploy is not None:
            from detkd.compare.deploy import check_deploy_settings, parse_variants

            self.deploy = parse_variants(self.deploy)
            self.calib_images = 300 if self.calib_images is None else int(self.calib_images)
            check_deploy_settings(self)
        return self

    def _check_numbers(self) -> None:
        """Seeds, evaluation and speed settings in range (as their CLI flags), before the first training run: torch,
        Ultralytics or the timer would refuse them only when the report is built, after every run has trained."""
        seeds = list(self.seeds or []) + ([self.seed] if self.seed is not None else [])
        if any(int(s) < 0 for s in seeds):
            raise ConfigError(f"seed {min(int(s) for s in seeds)}: seeds must be >= 0 (Ultralytics' rule), "
                              f"e.g. --seeds 0 1.")
        check_ranges(self, positive=("eval_batch", "bench_iters", "bench_min_iters", "calib_images"),
                     unit=("eval_conf", "eval_iou"), non_negative=("bench_warmup",), above_zero=("bench_time_budget",),
                     flags={"eval_conf": "--conf", "eval_iou": "--iou", "bench_time_budget": "--bench-time",
                            "bench_min_iters": "bench_min_iters"})
        if self.bench_imgsz is not None and self.bench_imgsz < 32:
            raise ConfigError(f"--bench-imgsz {self.bench_imgsz} must be at least 32 (a multiple of 32).")

    @property
    def teacher_classes(self) -> dict:
        """The KDConfig fields of ``--class-map`` / ``--keep-teacher-classes`` that are set (each run distilled from
        --teacher gets them)."""
        return {k: v for k, v in (("class_map", self.class_map), ("keep_teacher_classes", self.keep_teacher_classes))
                if v}

    def _validate_teacher_classes(self) -> None:
        """``--class-map`` / ``--keep-teacher-classes``: distill's rules (KDConfig), and what compare cannot do
        with them; the map's names are checked against the teacher's and the data's classes by check_models."""
        from detkd.config import KDConfig

        kd = KDConfig(teacher=str(self.teacher), **self.teacher_classes)
        self.class_map, self.keep_teacher_classes = kd.class_map, bool(kd.keep_teacher_classes)
        if not self.keep_teacher_classes:
            return
        if self.assistant:
            raise ConfigError("--keep-teacher-classes with --assistant: the assistant would have to keep the "
                              "teacher's classes too, which compare does not do. Drop --assistant.")
        if self.deploy is not None:
            raise ConfigError("--keep-teacher-classes with --deploy: the exported students predict the teacher's "
                              "classes too, which the deployment rows do not score in the data's classes. Drop "
                              "--deploy and export the student with detkd export.")

    def _pseudo_threshold(self) -> float | None:
        """``pseudo_conf`` as it acts (KDConfig's rules: a confidence in (0, 1), 'auto', or 'off'/None: soft KD only);
        set without unlabelled images it would be ignored, so it is refused as ``distill`` refuses it."""
        from detkd.config import PSEUDO_CONF_DEFAULT, KDConfig

        if not self.unlabeled:
            if self.pseudo_conf not in ("auto", PSEUDO_CONF_DEFAULT):
                raise ConfigError("--pseudo-conf labels unlabelled images: give them with --unlabeled PATH (or an "
                                  "'unlabeled:' entry in the --data YAML).")
            return PSEUDO_CONF_DEFAULT
        return KDConfig(unlabeled=self.unlabeled, pseudo_conf=self.pseudo_conf).pseudo_threshold

    def pseudo_label_settings(self) -> dict | None:
        """``unlabeled_ratio`` and ``pseudo_conf`` (the threshold) of the pseudo-labels baseline: those of the
        distilled + unlabelled rows with hard pseudo-labels, so that the two differ only in detkd's soft KD; when
        those rows differ among themselves (a threshold sweep), ``--pseudo-conf`` at the default composition, and
        its label says so. None: no such row (no unlabelled images, or soft KD only)."""
        from detkd.config import KDConfig

        if not self.unlabeled:
            return None
        found = set()
        for cfg in self.kd_configs.values() or [{}]:
            kd = KDConfig(unlabeled=self.unlabeled, pseudo_conf=cfg.get("pseudo_conf", self.pseudo_conf),
                          **{k: cfg[k] for k in ("unlabeled_ratio",) if k in cfg})
            if kd.pseudo_threshold is not None:  # soft KD only: no hard labels to mirror
                found.add((float(kd.unlabeled_ratio), kd.pseudo_threshold))
        if len(found) > 1:
            found = {(float(KDConfig().unlabeled_ratio), self.pseudo_conf)} if self.pseudo_conf is not None else set()
        if not found:
            return None
        (ratio, threshold), = found
        return {"unlabeled_ratio": ratio, "pseudo_conf": threshold}

    @property
    def names_by_seed(self) -> bool:
        """``--seeds`` (even one) keys and labels every run by its seed, so seed lists run apart share one folder."""
        return self.seeds is not None

    @property
    def seed_list(self) -> list[int]:
        """The seeds every student run is trained with: ``seeds``, else ``[seed]``."""
        return [int(x) for x in self.seeds] if self.seeds else [int(self.seed or 0)]

    @property
    def out_dir(self) -> Path:
        return Path(self.project) / (self.name or default_name(self.data, self.student))


@dataclass
class RunSpec:
    """One row of the comparison."""

    key: str  # folder name: teacher, baseline, distilled-<name>, ultralytics-kd
    kind: str  # teacher | baseline | distilled | ultralytics_kd
    label: str  # row label in the report
    kd: dict | None = None  # distilled only: KDConfig fields (no teacher)
    seed: int = 0
    config: str = ""  # the configuration this run belongs to (its key without the seed suffix)
    teacher_from: str | None = None  # key of the run whose best.pt is this run's teacher (via the assistant)
    teacher: str | None = None  # this run's teacher when it is not --teacher (set once that run is trained)
    weights: str | None = None  # teacher path, or best.pt once trained
    results_csv: str | None = None
    train: dict = field(default_factory=dict)  # marker contents (wall_s, median_epoch_s, reused, ...)
    metrics: dict = field(default_factory=dict)
    speed: dict = field(default_factory=dict)
    variant: str | None = None  # deploy rows: 'onnx:int8', 'openvino:fp32' ... (detkd.compare.deploy)
    source: str | None = None  # deploy rows: key of the run the artefact was exported from

    @property
    def config_label(self) -> str:
        """The label without its seed: the configuration's name in tables and plots."""
        return self.label.split(" (seed ")[0]


@dataclass
class CompareResult:
    """Where the report went and what it says."""

    out_dir: Path
    report_md: Path
    report_json: Path
    map_vs_fps_png: Path
    training_curves_png: Path
    rows: list = field(default_factory=list)
    verdict: str = ""


def default_name(data, student) -> str:
    """``<dataset>_<student stem>``, e.g. ``raccoon_yolov8n``."""
    d = Path(str(data).rstrip("/"))
    stem = d.parent.name if d.name in {"data.yaml", "data.yml"} else d.stem
    return f"{stem}_{Path(str(student)).stem}"


def plan(s: CompareSettings) -> list[RunSpec]:
    """Teacher, then per seed: baseline, one distilled run per KD configuration, Ultralytics' built-in KD when asked.

    With one ``seed`` the keys are ``baseline``, ``distilled-<name>``, ``ultralytics-kd``; with ``seeds`` (even one)
    each gets ``-s<seed>`` (``baseline-s1``) and its label `` (seed 1)``, so that parts of a seed list trained apart
    (``--seeds 0`` and ``--seeds 1`` in two processes) are reused by one call with ``--seeds 0 1``. With
    ``unlabeled``: each KD configuration again with the unlabelled images (``distilled-<name>-unlabeled``: soft KD + hard pseudo-labels at ``pseudo_conf``, detkd's
    default there; a configuration that sets ``pseudo_conf`` itself — a threshold, or None for soft KD only — gets
    this row only), and ``pseudo-labels``: the student on the labelled images plus the teacher's detections
    (conf >= ``pseudo_conf``) on the unlabelled ones, no KD — the usual advice (left out when ``pseudo_conf`` is None:
    soft KD only, no labels for it to learn from).
    """
    configs = [("baseline", "baseline", "baseline", None)]
    configs += [(f"distilled-{n}", "distilled", f"distilled: {n}", dict(cfg)) for n, cfg in s.kd_configs.items()
                if "pseudo_conf" not in cfg]  # settings about the unlabelled images: those rows only
    if s.with_ultralytics_kd:
        configs.append(("ultralytics-kd", "ultralytics_kd", "ultralytics-kd", None))
    if s.unlabeled:
        configs += [(f"distilled-{n}-unlabeled", "distilled", f"distilled: {n} + unlabeled",
                     {"pseudo_conf": s.pseudo_conf, **cfg, "unlabeled": s.unlabeled}) for n, cfg in s.kd_configs.items()]
    pseudo = s.pseudo_label_settings()  # as the distilled + unlabelled rows mix them; None: pseudo_conf off
    if pseudo:
        mix = "" if pseudo["unlabeled_ratio"] == 0.5 else f", {pseudo['unlabeled_ratio']:g} unlabelled"
        configs.append(("pseudo-labels", "distilled", f"pseudo-labels (conf>={pseudo['pseudo_conf']:g}{mix}, no KD)",
                        {"cls_kd": 0, "box_kd": 0, "feat_kd": 0, "unlabeled": s.unlabeled, **pseudo}))
    if s.assistant:  # the assistant (distilled from the teacher), then the student distilled from it
        configs.append(("assistant", "assistant", f"assistant {Path(str(s.assistant)).stem} (from teacher)", {}))
        configs.append(("via-assistant", "distilled", "distilled: via assistant", {}))
    seeds = s.seed_list
    many = s.names_by_seed
    specs = [RunSpec("teacher", "teacher", "teacher", weights=str(s.teacher), seed=seeds[0], config="teacher")]
    for seed in seeds:
        suffix = f"-s{seed}" if many else ""
        specs += [RunSpec(key + suffix, kind, f"{label} (seed {seed})" if many else label, kd=kd, seed=seed,
                          config=key, teacher_from="assistant" + suffix if key == "via-assistant" else None)
                  for key, kind, label, kd in configs]
    return specs


# ------------------------------------------------------------------------------------------- fingerprints
def train_fingerprint(spec: RunSpec, s: CompareSettings, data_yaml: str) -> dict:
    fp = {"kind": spec.kind, "student": model_id(trained_model(spec, s)), "data": model_id(data_yaml),
          "epochs": int(s.epochs), "imgsz": int(s.imgsz), "batch": int(s.batch), "seed": int(spec.seed),
          "train_args": s.train_args}
    if spec.kind in {"distilled", "ultralytics_kd", "assistant"}:
        fp["teacher"] = model_id(spec.teacher or s.teacher)
    if spec.kind in {"distilled", "assistant"}:
        kd = kd_config(spec, s).to_dict()
        fp = with_unlabeled({**fp, "kd": kd_signature(kd)}, kd)  # other images behind the same path: other data
    return normal(fp)


def trained_model(spec: RunSpec, s: CompareSettings) -> str:
    """The model a run trains: the assistant for the assistant row, else the student."""
    return str(s.assistant) if spec.kind == "assistant" else str(s.student)


def kd_config(spec: RunSpec, s: CompareSettings):
    """The run's KDConfig: its fields over detkd's defaults; the teacher is not re-validated (evaluated already)."""
    from detkd.config import KDConfig

    cfg = dict(spec.kd or {})
    if not spec.teacher_from:  # distilled from --teacher (not from the assistant, which has the data's classes)
        cfg.update(s.teacher_classes)
    if "min_teacher_map" not in cfg:
        cfg.setdefault("validate_teacher", False)
    return KDConfig.from_dict({**cfg, "teacher": str(Path(str(spec.teacher or s.teacher)).resolve())})


def _rooted(record: dict, run_dir: Path) -> dict:
    """A finished-run marker with its paths (best.pt, results.csv, run folder) inside ``run_dir``, where it lies.

    Markers store absolute paths: in a copied or moved comparison they would name the original folder's files, and
    the copy would report (and evaluate) the weights of another comparison.
    """
    out, root = dict(record), run_dir.resolve()
    if out.get("best"):
        out["best"] = str(root / "weights" / Path(out["best"]).name)
    out["results_csv"], out["save_dir"] = str(root / "results.csv"), str(root)
    return out


def interrupted_checkpoint(run_dir: Path, fp: dict) -> Path | None:
    """``last.pt`` of a run cut off before it finished, when it was started with the same settings; else None."""
    from detkd.engine.checkpoints import run_state

    started = read_json(run_dir / STARTED)
    state, last = run_state(run_dir)
    return last if state == "interrupted" and started and same_settings(started.get("fingerprint"), fp) else None


def changed_settings(run_dir: Path, finished: dict | None, fp: dict) -> str:
    """What differs between ``fp`` and the settings the run in ``run_dir`` finished (or was started) with."""
    before = (finished or read_json(run_dir / STARTED) or {}).get("fingerprint")
    if before is None:
        return "no record of the settings it was started with"
    return "its weights are missing" if same_settings(before, fp) else diff(before, fp)


# ------------------------------------------------------------------------------------------- steps
def train_run(spec: RunSpec, s: CompareSettings, data_yaml: str, out: Path, log=print) -> RunSpec:
    """Train ``spec`` (or reuse a finished run with the same fingerprint); fill weights, results_csv, train."""
    run_dir = out / "train" / spec.key
    marker = run_dir / MARKER
    fp = train_fingerprint(spec, s, data_yaml)
    old = read_json(marker)
    if old:
        old = _rooted(old, run_dir)
    if old and same_settings(old.get("fingerprint"), fp) and Path(old.get("best", "")).is_file():
        spec.weights, spec.results_csv = old["best"], old.get("results_csv")
        spec.train = {**old, "reused": True}
        log(f"      reused {run_dir} (finished {old.get('finished', '?')}, same settings): no retraining")
        return spec
    resume = interrupted_checkpoint(run_dir, fp)
    if not resume and holds_a_run(run_dir):  # trained (or started) with other settings: kept, never overwritten
        why = changed_settings(run_dir, old, fp)
        log(f"      settings changed since the run in {run_dir} ({why}): retraining; the old run is kept in "
            f"{set_aside(run_dir)}")
    marker.unlink(missing_ok=True)  # not reused: a marker left beside no weights describes nothing

    from detkd.engine.baseline import StudentTrainer  # Ultralytics' DetectionTrainer + detkd's shared options
    from detkd.engine.callbacks import EpochTimer

    overrides = dict(model=trained_model(spec, s), data=data_yaml, epochs=int(s.epochs), imgsz=int(s.imgsz),
                     batch=int(s.batch), seed=int(spec.seed), project=str((out / "train").resolve()), name=spec.key,
                     exist_ok=True, **s.train_args)
    if s.device is not None:
        overrides["device"] = str(s.device)
    if s.workers is not None:
        overrides["workers"] = int(s.workers)
    if resume:
        log(f"      resuming the interrupted run from {resume} (same settings)")
        overrides["resume"] = str(resume)
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "results.csv").unlink(missing_ok=True)  # a fresh run never appends to an old one's rows
        (run_dir / STARTED).write_text(json.dumps({"fingerprint": fp}, indent=1))
    if spec.kind == "baseline":
        trainer = StudentTrainer(overrides=overrides)
    elif spec.kind == "ultralytics_kd":
        trainer = StudentTrainer(overrides={**overrides, "distill_model": str(Path(s.teacher).resolve())})
    else:
        from detkd.engine.trainer import DistillationTrainer

        trainer = DistillationTrainer(overrides=overrides, kd=kd_config(spec, s))
    timer = EpochTimer().attach(trainer)
    t0 = time.perf_counter()
    trainer.train()
    best = Path(trainer.best) if Path(trainer.best).is_file() else Path(trainer.last)
    m = trainer.metrics or {}
    record = {
        "fingerprint": fp, "finished": datetime.now().isoformat(timespec="seconds"), "best": str(best),
        "results_csv": str(trainer.csv), "save_dir": str(trainer.save_dir), "wall_s": time.perf_counter() - t0,
        "median_epoch_s": timer.median() if timer.times else None, "epochs_done": len(timer.times),
        "val": {"mAP50-95": float(m.get("metrics/mAP50-95(B)", 0.0)), "mAP50": float(m.get("metrics/mAP50(B)", 0.0))},
    }
    marker.write_text(json.dumps(record, indent=1))
    spec.weights, spec.results_csv, spec.train = str(best), str(trainer.csv), {**record, "reused": False}
    log(f"      trained in {record['wall_s']:.0f} s -> {best}")
    return spec


def check_models(s: CompareSettings, data_yaml: str):
    """Teacher, student and data agree (classes, head, reg_max, feature levels) — checked before any training.

    A teacher with other classes is checked through its class map (``--class-map`` names included); with
    ``--keep-teacher-classes`` the student is checked as the run builds it, with the teacher's and the data's classes.
    Returns the teacher's class map (None: the data's classes)."""
    from ultralytics.nn.tasks import DetectionModel

    from detkd.compare.classes import data_classes
    from detkd.models.compat import check_compatibility, teacher_class_map
    from detkd.models.loading import load_detection_model

    data = data_classes(data_yaml)
    if s.keep_teacher_classes:
        from detkd.engine.incremental import incremental_data

        union = incremental_data(dict(data), str(s.teacher))[0]
        data = {"nc": union["nc"], "names": union["names"]}
    nc = data["nc"]
    teacher = load_detection_model(str(s.teacher), role="teacher", nc=nc)
    student = load_detection_model(str(s.student), role="student", nc=nc)
    if int(getattr(student, "yaml", {}).get("nc", nc)) != nc:  # a .pt student for other classes: its new head
        student = DetectionModel(student.yaml, nc=nc, verbose=False)
    box_kd = any(kd_config(r, s).box_kd > 0 for r in plan(s) if r.kind == "distilled")
    from_yaml = str(s.teacher).lower().endswith((".yaml", ".yml"))
    class_map = teacher_class_map(teacher, data, s.class_map, from_yaml)
    check_compatibility(teacher, student, data, box_kd=box_kd, teacher_from_yaml=from_yaml, class_map=class_map)
    if s.assistant:  # teacher → assistant → student: both links must be distillable
        from detkd.engine.assistant import check_chain_links

        check_chain_links(teacher, s.assistant, student, data, box_kd=box_kd, teacher_from_yaml=from_yaml)
    return None if class_map.is_identity else class_map


def _first_device(device) -> str:
    """The device evaluation runs on: the first of a multi-GPU list; 'cpu' without CUDA; None: CUDA 0 if any."""
    import torch

    if device is None or str(device).strip() == "":
        return "0" if torch.cuda.is_available() else "cpu"
    return str(device).split(",")[0].strip()


def is_coco_data(data_yaml: str) -> bool:
    """True when ``data_yaml`` carries COCO ground truth (a COCO dataset converted by detkd)."""
    from detkd.data.coco import load_coco_meta
    from detkd.errors import DatasetError

    try:
        load_coco_meta(data_yaml)
        return True
    except DatasetError:
        return False


def evaluate_run(spec: RunSpec, s: CompareSettings, data_yaml: str, coco: bool, out: Path, log=print,
                 per_class: bool = False) -> RunSpec:
    """COCO metrics of ``spec.weights`` (COCOeval on the dataset's own JSON, or Ultralytics val for a plain
    data.yaml: AP, AP50, AP75 only), with per-class AP; reused when weights and settings are unchanged (and, with
    ``per_class``, the record has per-class AP: the report's class groups need it).

    A model with other classes than the data's (a teacher through its class map, a --keep-teacher-classes student)
    is scored in the data's classes, on those it predicts (:mod:`detkd.compare.classes`)."""
    from detkd.compare.classes import data_classes, model_class_map, restrict_to, scored_classes, scored_label
    from detkd.models.class_map import names_list

    data = data_classes(data_yaml)
    names = names_list(data["names"])
    try:
        cmap = model_class_map(spec.weights, data, s.class_map, role="teacher" if spec.kind == "teacher" else "model")
    except IncompatibleModelsError:  # no class shared: --keep-teacher-classes may teach only new ones
        if spec.kind != "teacher" or not s.keep_teacher_classes:
            raise
        spec.metrics = {k: None for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")} | {"scored_classes": []}
        spec.label = scored_label(spec.label, [], len(names))
        log(f"      {spec.label}: no AP on this data (data classes: {', '.join(names[:8])}); it teaches the "
            f"students its own classes")
        return spec
    eval_dir = out / "eval" / spec.key
    fp = normal({"weights": model_id(spec.weights), "data": model_id(data_yaml), "split": s.eval_split,
                  "imgsz": int(s.imgsz), "conf": s.eval_conf, "iou": s.eval_iou, "batch": int(s.eval_batch),
                  "method": f"coco:{resolve_backend()}" if coco else "ultralytics",
                  **({"class_map": [list(p) for p in cmap.pairs]} if cmap else {})})
    old = read_json(eval_dir / EVAL_MARKER)
    if old and same_settings(old.get("fingerprint"), fp) and (not per_class or "per_class" in old["metrics"]):
        spec.metrics = {**old["metrics"], "reused": True}
        spec.label = scored_label(spec.label, spec.metrics.get("scored_classes", names), len(names))
        log(f"      {spec.label}: AP {_ap(spec.metrics['AP'])} (evaluation reused)")
        return spec
    eval_dir.mkdir(parents=True, exist_ok=True)
    device = _first_device(s.eval_device or s.device)
    model = spec.weights
    if cmap is not None:
        from detkd.compare.classes import in_data_classes
        from detkd.models.loading import load_detection_model

        model = in_data_classes(load_detection_model(str(spec.weights), role=spec.kind), cmap)
    if coco:
        from detkd.eval.coco_eval import evaluate_coco

        m = evaluate_coco(model, data_yaml, split=s.eval_split, imgsz=int(s.imgsz), conf=s.eval_conf,
                          iou=s.eval_iou, batch=int(s.eval_batch), device=str(device), out_dir=eval_dir, verbose=False)
        keep = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100", "n_images", "n_detections", "per_class",
                "per_class_AP50", "per_class_instances")
        metrics = {k: m.get(k) for k in keep}
    else:
        metrics = _ultralytics_val(model, spec.key, s, data_yaml, names, str(device), out)
        (eval_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    scored = scored_classes(cmap, names)
    if len(scored) < len(names):  # a teacher without some data class: scored on its classes (detkd.compare.classes)
        metrics = {**restrict_to(metrics, scored), "scored_classes": scored}
        spec.label = scored_label(spec.label, scored, len(names))
    (eval_dir / EVAL_MARKER).write_text(json.dumps({"fingerprint": fp, "metrics": metrics}, indent=1))
    spec.metrics = {**metrics, "reused": False}
    log(f"      {spec.label}: AP {_ap(metrics['AP'])}  AP50 {_ap(metrics['AP50'])}"
        + (f" (on the classes it predicts: {', '.join(scored)})" if len(scored) < len(names) else ""))
    return spec


def _ap(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _ultralytics_val(model, key: str, s: CompareSettings, data_yaml: str, names: list[str], device: str,
                     out: Path) -> dict:
    """Ultralytics val of a checkpoint path (``YOLO().val``) or of a model in the data's classes (a module)."""
    from detkd.eval.class_groups import per_class_from_ultralytics

    args = dict(data=data_yaml, split=s.eval_split, imgsz=int(s.imgsz), conf=s.eval_conf, iou=s.eval_iou,
                batch=int(s.eval_batch), device=device, plots=False, verbose=False)
    if isinstance(model, (str, Path)):
        from ultralytics import YOLO

        v = YOLO(model).val(**args, project=str((out / "eval").resolve()), name=key, exist_ok=True)
    else:
        from ultralytics.models.yolo.detect import DetectionValidator

        validator = DetectionValidator(save_dir=out / "eval" / key, args={**args, "rect": True})
        validator(model=model)
        v = validator.metrics
    return {"AP": float(v.box.map), "AP50": float(v.box.map50), "AP75": float(v.box.map75),
            "APs": None, "APm": None, "APl": None, **per_class_from_ultralytics(v, names)}


def architecture_id(weights) -> str:
    """What a model's speed depends on: the type and shape of every module parameter and buffer, not their values.

    Trained copies of one architecture (baseline and distilled students) share it, so compare times them once — timed
    separately, the same network differed by up to 20% FPS on a busy CPU, and the Pareto front ranked the noise."""
    from detkd.models.loading import load_detection_model

    net = load_detection_model(weights, role="benchmarked model")
    layout = [(name, type(m).__name__, [(k, tuple(t.shape)) for k, t in
                                        [*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)]])
              for name, m in net.named_modules()]
    return hashlib.sha256(json.dumps(layout).encode()).hexdigest()[:16]


def share_speed(spec: RunSpec, timed: RunSpec, log=print) -> RunSpec:
    """Give ``spec`` the speed measured for ``timed`` (the same architecture, see :func:`architecture_id`)."""
    spec.speed = {**timed.speed, "timed_as": timed.key}
    log(f"      {spec.label}: same architecture as {timed.label}: its speed ({spec.speed['fps']:.1f} FPS)")
    return spec


def benchmark_run(spec: RunSpec, s: CompareSettings, out: Path, log=print) -> RunSpec:
    """Params, GFLOPs and model-only batch-1 speed of ``spec.weights`` (reused when weights and settings match)."""
    from detkd.bench.machine import machine_tag
    from detkd.bench.speed import benchmark_model

    imgsz = int(s.bench_imgsz or s.imgsz)
    path = out / "bench" / f"{spec.key}.json"
    fp = normal({"weights": model_id(spec.weights), "imgsz": imgsz, "device": str(s.bench_device),
                  "warmup": s.bench_warmup, "iters": s.bench_iters, "time_budget": s.bench_time_budget,
                  "min_iters": s.bench_min_iters, "machine": machine_tag(device=str(s.bench_device))})
    old = read_json(path)
    if old and same_settings(old.get("fingerprint"), fp):
        spec.speed = {**old["speed"], "reused": True}
        log(f"      {spec.label}: p50 {spec.speed['latency_p50_ms']:.2f} ms, {spec.speed['fps']:.1f} FPS (reused)")
        return spec
    row = benchmark_model(spec.weights, imgsz=imgsz, batch=1, device=str(s.bench_device), warmup=s.bench_warmup,
                          iters=s.bench_iters, time_budget=s.bench_time_budget,
                          min_iters=min(s.bench_min_iters, s.bench_iters),
                          e2e=False, name=spec.label)
    speed = {"params_m": row["params_m"], "gflops": row["gflops"], "imgsz": imgsz, "device": row["device"],
             "provider": row["provider"], "threads": row.get("threads"), "n": row["latency_ms"]["n"],
             "latency_p50_ms": row["latency_ms"]["p50"], "latency_mean_ms": row["latency_ms"]["mean"],
             "fps": row["throughput_img_s"]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"fingerprint": fp, "speed": speed, "row": row}, indent=1, default=str))
    spec.speed = {**speed, "reused": False}
    log(f"      {spec.label}: {speed['params_m']:.2f} M params, {speed['gflops']:.2f} GFLOPs, "
        f"p50 {speed['latency_p50_ms']:.2f} ms, {speed['fps']:.1f} FPS")
    return spec


# ------------------------------------------------------------------------------------------- the whole thing
def run_compare(s: CompareSettings, log=print) -> CompareResult:
    """Evaluate the teacher, train (or reuse) every student run, evaluate and benchmark all, write the report."""
    from detkd.api import resolve_data
    from detkd.compare.plots import plot_map_vs_fps, plot_training_curves
    from detkd.compare.report import write_report
    from detkd.models.loading import resolve_model_path

    s.validate()
    teacher = Path(str(s.teacher))
    if not teacher.is_file():
        raise DetKDError(f"teacher '{s.teacher}' not found: pass the teacher checkpoint (.pt) to distil from.")
    if s.with_ultralytics_kd and teacher.suffix.lower() != ".pt":
        raise ConfigError("--with-ultralytics-kd needs a teacher checkpoint (.pt): Ultralytics' distill_model= "
                          "loads weights, not a model YAML.")
    resolve_model_path(s.student, role="student")  # missing student: fail before any work
    out = s.out_dir
    specs = plan(s)
    trained = [r for r in specs if r.kind != "teacher"]
    total = 2 + len(trained) + 3 + bool(s.deploy)
    step = iter(range(1, total + 1))

    def say(msg):
        log(f"[{next(step)}/{total}] {msg}")

    say(f"data: {s.data}")
    data_yaml = resolve_data(s.data)
    coco = is_coco_data(data_yaml)
    log(f"      {'COCO dataset: official COCO AP with ' + BACKEND_LABEL[resolve_backend()] if coco else 'plain data.yaml: Ultralytics val AP (no APs/m/l)'}"
        f"; output {out}")

    say(f"checking teacher/student/data, evaluating teacher {s.teacher} ...")
    from detkd.compare.classes import class_groups, data_classes

    teacher_map = check_models(s, data_yaml)
    for line in teacher_map.describe() if teacher_map else []:
        log(f"      {line}")
    groups = class_groups(s.teacher, data_classes(data_yaml), s.class_map, s.keep_teacher_classes)
    out.mkdir(parents=True, exist_ok=True)
    evaluate_run(specs[0], s, data_yaml, coco, out, log, per_class=groups is not None)

    by_key = {r.key: r for r in specs}
    for r in trained:
        seed = "" if s.names_by_seed else f", seed {r.seed}"  # --seeds: the label names it
        say(f"training {r.label} ({s.epochs} epochs, {s.imgsz} px, batch {s.batch}{seed}) ...")
        if r.teacher_from:  # via the assistant: its best.pt, trained just before, is this run's teacher
            r.teacher = by_key[r.teacher_from].weights
        train_run(r, s, data_yaml, out, log)

    say(f"evaluating {len(trained)} student runs ({'COCO' if coco else 'Ultralytics'} AP, {s.eval_split} split) ...")
    for r in trained:
        evaluate_run(r, s, data_yaml, coco, out, log, per_class=groups is not None)

    say(f"benchmarking {len(specs)} models (batch 1, {s.bench_imgsz or s.imgsz} px, {s.bench_device}; "
        f"one timing per architecture) ...")
    timed: dict[str, RunSpec] = {}
    for r in specs:
        arch = architecture_id(r.weights)
        if arch in timed:
            share_speed(r, timed[arch], log)
        else:
            timed[arch] = benchmark_run(r, s, out, log)

    deployed = []
    if s.deploy:
        from detkd.compare.deploy import run_deploy

        say(f"deployment: {len(trained)} student runs x {', '.join(s.deploy)} (exported, {s.eval_split} AP, "
            f"batch 1 on the CPU) ...")
        deployed = run_deploy(trained, s, data_yaml, coco, out, log)

    say(f"writing report to {out} ...")
    plot_map_vs_fps(specs + deployed, out / "map_vs_fps.png",
                    subtitle=f"model-only, batch 1, {s.bench_imgsz or s.imgsz} px, {s.bench_device}"
                             + ("; torch and exported files" if deployed else ""),
                    ylabel="COCO AP@[.50:.95]" if coco else "mAP50-95 (Ultralytics val)")
    plot_training_curves([(r.label, r.kind, r.config, r.results_csv) for r in trained], out / "training_curves.png")
    result = write_report(specs, s, data_yaml, coco, out, deployed=deployed, groups=groups)
    log(f"\n{result.report_md.read_text()}")
    log(f"Report: {result.report_md}\nPlots: {result.map_vs_fps_png}, {result.training_curves_png}")
    return result


def compare(teacher, data, student="yolov8n.yaml", kd_configs: dict | None = None, with_ultralytics_kd=False,
            log=print, **settings) -> CompareResult:
    """Python entry point: ``compare("teacher.pt", "path/to/coco", epochs=100, kd_configs={"detkd": {}})``.

    ``settings``: any :class:`CompareSettings` field (epochs, imgsz, batch, seed, device, project, name, bench_*,
    eval_*); other keys are extra Ultralytics training arguments, identical for every run.
    """
    known = set(CompareSettings.__dataclass_fields__)
    extra = {k: v for k, v in settings.items() if k not in known}
    base = {k: v for k, v in settings.items() if k in known}
    base["train_args"] = {**base.get("train_args", {}), **extra}
    s = CompareSettings(teacher=str(teacher), data=str(data), student=str(student),
                        kd_configs={"detkd": {}} if kd_configs is None else dict(kd_configs),
                        with_ultralytics_kd=with_ultralytics_kd, **base)
    return run_compare(s, log=log)


def settings_dict(s: CompareSettings) -> dict:
    return normal(asdict(s))

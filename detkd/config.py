"""Distillation settings: one dataclass, validated, settable from Python, a YAML file and CLI flags.

Everything that is not distillation (epochs, imgsz, batch, lr, augmentation, device, project/name, ...) stays an
ordinary Ultralytics training argument. The KD settings travel inside the trainer's args as the single key ``kd``
(a plain dict), so they are saved in ``args.yaml`` and in ``last.pt`` (resume) and reach DDP workers.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

from detkd.engine.guard import GUARD_MODES
from detkd.errors import ConfigError
from detkd.losses.balance import BALANCE_MODES
from detkd.losses.feature import FEATURE_METHODS
from detkd.losses.schedule import SCHEDULES
from detkd.losses.weighting import ANCHOR_WEIGHTINGS
from detkd.models.class_map import format_class_map, parse_class_map
from detkd.models.ensemble import ENSEMBLE_RULES

CLS_MODES = ("bce", "kl")
# the KDConfig fields that hold one real number (teacher_weights: a list of them; pseudo_conf: a number or a word)
NUMBER_FIELDS = ("cls_kd", "cls_temperature", "box_kd", "box_temperature", "box_iou", "feat_kd", "one2one_kd",
                 "feat_temperature", "mgd_mask_ratio", "schedule_final", "min_teacher_map", "unlabeled_ratio")
PSEUDO_CONF_DEFAULT = 0.25  # hard pseudo-labels on unlabelled images: the teacher's detections at or above this


@dataclass
class KDConfig:
    """Knowledge-distillation settings (defaults = detkd's recipe; see README "Default recipe").

    Attributes:
        teacher: teacher checkpoint (.pt) or model YAML (random init: tests / from-scratch teachers), or a list of
            them: several teachers distilled as one weighted ensemble (see :mod:`detkd.models.ensemble`).
        teacher_weights: one weight per teacher (normalised to sum 1; None: equal weights).
        drop_weak_teachers: several teachers only — leave out, with a log line, each teacher whose val mAP50-95 is
            not above the student's starting point or below ``min_teacher_map`` (instead of refusing to start).
        ensemble_rule: several teachers only — ``targets`` (default: the teachers' outputs combined into one
            teacher) or ``losses`` (the weighted sum of per-teacher logit and box KD losses, each teacher with its
            own anchor weights); see :mod:`detkd.models.ensemble`.
        cls_kd: weight of classification-logit KD (0 disables).
        cls_mode: ``bce`` (sigmoid-aware binary KL, default) or ``kl`` (softmax over classes, Hinton).
        cls_temperature: temperature T of the logit KD.
        box_kd: weight of box KD (0 disables): localization distillation on the DFL bins when teacher and student
            share them, else L1 + 1-IoU on decoded distances (e.g. YOLO26's reg_max=1 heads).
        box_temperature: temperature of LD (the LD path only).
        box_iou: extra weight of the 1−IoU term on decoded student vs teacher boxes, added to LD (0 disables; the
            decoded-distance path always has 1−IoU at weight 1, and the run's start says so when this is set).
        feat_kd: weight of neck-feature imitation at P3/P4/P5 (0 disables).
        one2one_kd: end-to-end students (YOLO26): relative weight of the logit and box KD on the one-to-one branch,
            added to the one-to-many branch's (0: one-to-many only).
        e2e_schedule: end-to-end students: the KD of each branch follows Ultralytics' ``E2ELoss`` weights of the
            step (one-to-many × o2m, decaying 0.8 → 0.1; one-to-one × o2o), like the detection loss (default: measured
            YOLO26-s → YOLO26-n, 2 seeds, +0.027 mAP50-95 over False, beyond the seed spread). False: both branches
            keep their KD weight for the whole run.
        feat_method: ``cwd`` (channel-wise), ``mse`` or ``mgd``.
        feat_temperature: τ of CWD.
        feat_fg_mask: ``mse`` only — imitate inside ground-truth boxes only (on unlabelled images: inside the
            teacher's detections at the pseudo-label threshold).
        mgd_mask_ratio: ``mgd`` only — fraction of student feature cells masked.
        anchor_weighting: ``verified`` (default: the teacher's score for the labelled class x IoU of its box with the
            labelled box — imitate the teacher where it is right) / ``union`` / ``teacher`` / ``assigned`` (see
            :mod:`detkd.losses.weighting`).
        schedule: ``cosine`` (default: KD decays to ``schedule_final`` by the last epoch, so the student finishes on
            its own loss) / ``linear`` / ``constant`` multiplier on all KD weights over training.
        schedule_final: the multiplier reached at the end of training (linear/cosine; set per epoch at its start,
            as Ultralytics' ``lrf``: the last of E epochs trains at the value of progress (E - 1)/E).
        balance: ``none`` (weights multiply the raw terms) or ``detection`` (each term rescaled to its weight times
            the running detection loss, see :mod:`detkd.losses.balance`).
        guard: the KD guard (:mod:`detkd.engine.guard`): ``warn`` (default) logs when a term's gradient works
            against the labels' for 3 epochs; ``adapt`` also scales that term's weight down (halved each further such
            epoch, 0 after 4) and back up once it agrees again, logged per epoch (``train/kd_scale_*``). Off by
            default until measured on the tuning datasets.
        min_teacher_map: refuse to start when the teacher's val mAP50-95 is below this (None: never refuse).
        validate_teacher: validate the teacher on the val split at start (prints what you distil from).
        teacher_half: run the teacher in reduced precision where the hardware is fast at it: FP16 on CUDA, BF16 on
            CPUs with fast BF16 (Intel AMX, AVX-512 BF16); fused, channels_last. False keeps FP32.
        teacher_graphs: on CUDA, replay the teacher as CUDA graphs on a side stream overlapping the student.
        teacher_overlap: on CPU, run the teacher one batch ahead in a worker thread while the student steps (see
            :mod:`detkd.engine.teacher_overlap`). False runs it inline.
        unlabeled: unlabelled images added to training (a folder, a .txt list of images, a COCO JSON whose images
            have no annotations, or a YAML with an ``unlabeled:`` entry): KD weighted by the teacher's confidence
            there, plus hard pseudo-labels (``pseudo_conf``, on by default) as their detection targets (see
            :mod:`detkd.data.unlabeled` and :mod:`detkd.engine.unlabeled`). None: labelled images only.
        unlabeled_ratio: the unlabelled share of each epoch, in (0, 1): an epoch is every labelled image plus
            round(r / (1 - r) x n_labelled) unlabelled ones (0.5: as many unlabelled as labelled).
        pseudo_conf: with ``unlabeled``: the teacher's detections at or above this confidence become detection-loss
            targets on the unlabelled images (hard pseudo-labels, on top of the soft KD). ``"auto"`` (default):
            :data:`PSEUDO_CONF_DEFAULT` when there are unlabelled images (soft + hard beat soft KD alone, measured in
            ``benchmarks/unlabeled_gain.py``); None or ``"off"``: soft KD only. The threshold in use:
            :attr:`pseudo_threshold`.
        class_map: a teacher with other classes than the data's: which teacher class teaches which data class, on
            top of matching by name (case and spaces ignored): ``'car,truck,bus=vehicle;person=pedestrian'`` or a
            mapping ``{teacher: student}``; several teacher classes may merge into one (noisy-OR of their scores).
            Stored as the mapping. See :mod:`detkd.models.class_map` and docs/classes.md.
        keep_teacher_classes: learn the data's classes without forgetting the teacher's (one teacher: the old
            model). The student's classes are the teacher's, then the data's new ones; the teacher's classes the data
            does not label get no background loss from the labels and are taught by the teacher (soft KD + its
            detections as targets at ``pseudo_conf``). See :mod:`detkd.engine.incremental`.
    """

    teacher: str | list | None = None
    teacher_weights: list | None = None
    drop_weak_teachers: bool = False
    ensemble_rule: str = "targets"
    cls_kd: float = 1.0
    cls_mode: str = "bce"
    cls_temperature: float = 1.0
    box_kd: float = 1.0
    box_temperature: float = 2.0
    box_iou: float = 0.0
    feat_kd: float = 1.0
    one2one_kd: float = 1.0
    e2e_schedule: bool = True
    feat_method: str = "cwd"
    feat_temperature: float = 1.0
    feat_fg_mask: bool = False
    mgd_mask_ratio: float = 0.65
    anchor_weighting: str = "verified"
    schedule: str = "cosine"
    schedule_final: float = 0.0
    balance: str = "none"
    guard: str = "warn"
    min_teacher_map: float | None = None
    validate_teacher: bool = True
    teacher_half: bool = True
    teacher_graphs: bool = True
    teacher_overlap: bool = True
    unlabeled: str | None = None
    unlabeled_ratio: float = 0.5
    pseudo_conf: float | str | None = "auto"
    class_map: str | dict | None = None
    keep_teacher_classes: bool = False

    def __post_init__(self) -> None:
        self.validate()

    # ----------------------------------------------------------------------------------------------- checks
    def validate(self) -> "KDConfig":
        """Raise :class:`ConfigError` naming the bad setting and the allowed values."""
        self._check_bools()
        self._check_numbers()
        for name in ("cls_kd", "box_kd", "box_iou", "feat_kd", "one2one_kd"):
            if float(getattr(self, name)) < 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 0 (0 disables the term).")
        for name in ("cls_temperature", "box_temperature", "feat_temperature"):
            if float(getattr(self, name)) <= 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be > 0.")
        choices = {
            "cls_mode": CLS_MODES,
            "feat_method": FEATURE_METHODS,
            "anchor_weighting": ANCHOR_WEIGHTINGS,
            "schedule": SCHEDULES,
            "balance": BALANCE_MODES,
            "ensemble_rule": ENSEMBLE_RULES,
            "guard": GUARD_MODES,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name}='{getattr(self, name)}' is not one of {', '.join(allowed)}.")
        if not 0.0 <= float(self.mgd_mask_ratio) < 1.0:
            raise ConfigError(f"mgd_mask_ratio={self.mgd_mask_ratio} must be in [0, 1).")
        if float(self.schedule_final) < 0:
            raise ConfigError(f"schedule_final={self.schedule_final} must be >= 0.")
        if self.min_teacher_map is not None and not 0.0 <= float(self.min_teacher_map) <= 1.0:
            raise ConfigError(f"min_teacher_map={self.min_teacher_map} must be an mAP50-95 in [0, 1].")
        if self.min_teacher_map is not None and not self.validate_teacher:
            raise ConfigError("min_teacher_map needs the teacher validated at start: drop --teacher-val false "
                              "(Python: validate_teacher=False).")
        self._validate_teachers()
        self._validate_unlabeled()
        self.class_map = parse_class_map(self.class_map)  # syntax here; the names when the teacher is loaded
        self._validate_keep_teacher_classes()
        return self

    def _check_bools(self) -> None:
        """Every on/off setting is a bool: a YAML's quoted "false" or "no" is read as the word says (a non-empty
        string is truthy in Python — "false" kept the setting on), anything else is refused."""
        words = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(f.default, bool) or isinstance(value, bool):
                continue
            if isinstance(value, str) and value.strip().lower() in words:
                setattr(self, f.name, words[value.strip().lower()])
            elif isinstance(value, int) and value in (0, 1):
                setattr(self, f.name, bool(value))
            else:
                raise ConfigError(f"{f.name}={value!r} must be true or false (default {str(f.default).lower()}).")

    def _check_numbers(self) -> None:
        """Every numeric setting is a finite real number (NaN or inf would train on silently, logged as 0 or NaN):
        the one check the CLI, a YAML file and Python all pass through."""
        defaults = {f.name: f.default for f in fields(self) if f.default is not MISSING}
        for name in NUMBER_FIELDS:
            value = getattr(self, name)
            if value is not None:
                _check_finite(name, value, f"give a real number (default {defaults[name]})"
                              if defaults[name] is not None else "give a real number")
        for w in self.teacher_weights or []:
            _check_finite(f"teacher_weights {list(self.teacher_weights)}:", w,
                          "give one real weight >= 0 per teacher", show=False)

    def _validate_unlabeled(self) -> None:
        if not 0.0 < float(self.unlabeled_ratio) < 1.0:
            raise ConfigError(f"unlabeled_ratio={self.unlabeled_ratio} must be in (0, 1): the unlabelled share of "
                              f"each epoch (0.5: as many unlabelled images as labelled ones).")
        if isinstance(self.pseudo_conf, str) and self.pseudo_conf.lower() in {"off", "none"}:
            self.pseudo_conf = None
        if self.pseudo_conf not in (None, "auto"):
            try:
                ok = 0.0 < float(self.pseudo_conf) < 1.0
            except ValueError:
                ok = False
            if not ok:
                raise ConfigError(f"pseudo_conf={self.pseudo_conf} must be a confidence in (0, 1), 'auto' (default: "
                                  f"{PSEUDO_CONF_DEFAULT:g} with unlabelled images) or 'off' (soft KD only).")
            self.pseudo_conf = float(self.pseudo_conf)
            if not self.unlabeled and not self.keep_teacher_classes:
                raise ConfigError("pseudo_conf labels unlabelled images: give them with --unlabeled PATH.")
        if self.unlabeled:
            self.unlabeled = str(Path(str(self.unlabeled)).expanduser().resolve())  # resume/DDP from any folder

    def _validate_keep_teacher_classes(self) -> None:
        if not self.keep_teacher_classes:
            return
        if len(self.teachers) > 1:
            raise ConfigError("keep_teacher_classes learns new classes on top of one old model: give one --teacher "
                              "(the model whose classes are kept).")
        if self.class_map:
            raise ConfigError("keep_teacher_classes keeps the teacher's classes under their own names: drop "
                              "--class-map (a data class with a teacher class's name is that class).")

    def check_classes(self, nc: int) -> "KDConfig":
        """Refuse settings that cannot work with ``nc`` classes (known once the data is read)."""
        if self.cls_kd > 0 and self.cls_mode == "kl" and int(nc) == 1:
            raise ConfigError("--cls-mode kl with one class: a softmax over a single class is 1 for teacher and "
                              "student alike, so cls_kd would be 0 for the whole run. Use --cls-mode bce "
                              "(sigmoid-aware, works with one class) or --cls-kd 0.")
        return self

    def _validate_teachers(self) -> None:
        if isinstance(self.teacher, (list, tuple)):
            self.teacher = [str(t) for t in self.teacher]
            if len(self.teacher) == 1:
                self.teacher = self.teacher[0]
            elif len(set(self.teacher)) != len(self.teacher):
                raise ConfigError(f"the same teacher is given twice in {self.teacher}: give each --teacher once.")
        n = len(self.teachers)
        if self.teacher_weights is not None and n == 0:
            raise ConfigError(f"teacher_weights {list(self.teacher_weights)} are given but no teacher: give --teacher "
                              f"once per weight (Python: teacher=[...]).")
        if self.teacher_weights is not None:
            w = list(self.teacher_weights)
            if len(w) != n or any(float(x) < 0 for x in w) or sum(float(x) for x in w) <= 0:
                raise ConfigError(f"teacher_weights {w}: give one weight >= 0 per teacher ({n} teacher"
                                  f"{'s' if n != 1 else ''}), not all 0.")
            self.teacher_weights = [float(x) for x in w]
        if self.drop_weak_teachers and (n < 2 or not self.validate_teacher):
            raise ConfigError("drop_weak_teachers needs several teachers, validated at start (--teacher-val true).")

    @property
    def teachers(self) -> list[str]:
        """The teacher(s) as a list (empty when none is set)."""
        if not self.teacher:
            return []
        return list(self.teacher) if isinstance(self.teacher, list) else [str(self.teacher)]

    def notes(self) -> list[str]:
        """Settings given that have no effect with these teachers (logged as warnings at the start of a run)."""
        notes = []
        if len(self.teachers) == 1 and self.ensemble_rule != "targets":
            notes.append(f"ensemble_rule={self.ensemble_rule} has no effect with one teacher (it says how several "
                         f"teachers are combined).")
        if len(self.teachers) == 1 and self.teacher_weights is not None:
            notes.append("teacher_weights have no effect with one teacher.")
        return notes

    @property
    def any_term(self) -> bool:
        return self.cls_kd > 0 or self.box_kd > 0 or self.feat_kd > 0

    # ------------------------------------------------------------------------------------------ conversions
    @property
    def pseudo_threshold(self) -> float | None:
        """The confidence at which the teacher's detections become hard labels on the unlabelled images; None: no
        hard pseudo-labels (no unlabelled images, or soft KD only)."""
        if not (self.unlabeled or self.keep_teacher_classes) or self.pseudo_conf is None:
            return None
        return PSEUDO_CONF_DEFAULT if self.pseudo_conf == "auto" else float(self.pseudo_conf)

    def to_dict(self) -> dict:
        """The settings as they act: ``pseudo_conf`` is the threshold in use (None without unlabelled images or with
        soft KD only), so a saved run resumes with it and equal settings compare equal."""
        return {**asdict(self), "pseudo_conf": self.pseudo_threshold}

    @classmethod
    def keys(cls) -> set[str]:
        return {f.name for f in fields(cls)}

    @classmethod
    def from_dict(cls, d: dict) -> "KDConfig":
        unknown = set(d) - cls.keys()
        if unknown:
            raise ConfigError(f"unknown distillation setting(s): {', '.join(sorted(unknown))}. "
                              f"Known: {', '.join(sorted(cls.keys()))}.")
        return cls(**d)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides) -> "KDConfig":
        """Load a YAML with a ``kd:`` mapping (or a flat mapping of KD keys); ``overrides`` win."""
        import yaml

        p = Path(path)
        if p.is_dir():
            raise ConfigError(f"config file '{path}' is a folder: give the YAML file in it.")
        if not p.is_file():
            raise ConfigError(f"config file '{path}' not found.")
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file '{path}' is not valid YAML: {e}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"config file '{path}' is not UTF-8 text: save it as a UTF-8 YAML file.") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config file '{path}' must hold a mapping.")
        kd = raw.get("kd", {k: v for k, v in raw.items() if k in cls.keys()})
        if not isinstance(kd, dict):
            raise ConfigError(f"config file '{path}': 'kd:' must be a mapping of KD settings (e.g. 'cls_kd: 1.0'), "
                              f"not {type(kd).__name__}.")
        return cls.from_dict({**kd, **{k: v for k, v in overrides.items() if v is not None}})

    @classmethod
    def coerce(cls, value) -> "KDConfig":
        """Accept a KDConfig, a dict, or a YAML path."""
        if isinstance(value, KDConfig):
            return value.validate()
        if isinstance(value, dict):
            return cls.from_dict(value)
        if isinstance(value, (str, Path)):
            return cls.from_yaml(value)
        raise ConfigError(f"cannot read distillation settings from {type(value).__name__}")

    def summary(self) -> str:
        """One readable block, printed at the start of every run."""
        ts = self.teachers
        rows = [f"teacher            {ts[0] if len(ts) == 1 else ts}"]
        if len(ts) > 1:
            rows.append(f"teacher_weights    {self.teacher_weights or 'equal'} (one ensemble teacher: mean probabilities)")
        rows.append(f"cls_kd  {self.cls_kd:<10g} mode={self.cls_mode} T={self.cls_temperature:g}")
        rows.append(f"box_kd  {self.box_kd:<10g} T={self.box_temperature:g} iou={self.box_iou:g} (LD on shared DFL bins, "
                    f"else decoded distances: see 'KD paths' below)")  # the pair's heads decide (known once loaded)
        extra = f" fg_mask={self.feat_fg_mask}" if self.feat_method == "mse" else (
            f" mask_ratio={self.mgd_mask_ratio:g}" if self.feat_method == "mgd" else f" tau={self.feat_temperature:g}")
        rows.append(f"feat_kd {self.feat_kd:<10g} method={self.feat_method}{extra} (P3/P4/P5, 1x1 adapters)")
        rows.append(f"anchors {self.anchor_weighting:<10} schedule={self.schedule}"
                    + (f" -> x{self.schedule_final:g}" if self.schedule != "constant" else "")
                    + (" balance=detection (weights are shares of the detection loss)" if self.balance != "none" else ""))
        if self.guard == "adapt":
            rows.append("guard   adapt      (a KD term pulling against the labels for 3 epochs is scaled down, "
                        "back up when it agrees again)")
        if self.class_map:
            rows.append(f"class_map          {format_class_map(self.class_map)} (+ classes matched by name)")
        if self.keep_teacher_classes:
            rows.append("keep_teacher_classes: the student learns the teacher's classes + the data's; old classes "
                        "taught by the teacher" + (f" (soft KD + its detections at conf >= {self.pseudo_threshold:g})"
                                                   if self.pseudo_threshold is not None else " (soft KD only)"))
        if self.unlabeled:
            rows.append(f"unlabeled {self.unlabeled} (share of each epoch {self.unlabeled_ratio:g}; "
                        + (f"soft KD + pseudo-labels at conf >= {self.pseudo_threshold:g})"
                           if self.pseudo_threshold is not None else "soft KD only)"))
        return "\n".join(rows)


def _check_finite(name: str, value, fix: str, show: bool = True) -> None:
    """Raise :class:`ConfigError` unless ``value`` is a finite int or float; the message names ``name`` (with
    ``=value`` when ``show``) and the ``fix``."""
    where = f"{name}={value!r}" if show else f"{name} {value!r}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where} is not a number: {fix}.")
    if not math.isfinite(value):
        where = f"{name}={value}" if show else f"{name} {value}"
        raise ConfigError(f"{where} is not a finite number: {fix}.")


DETKD_TRAIN_ARGS = {"kd": None, "coco_eval": False}


def check_train_args(train_args: dict) -> None:
    """Check Ultralytics training arguments (names, types, ranges) with Ultralytics' own ``get_cfg``, before any work.

    Raises :class:`ConfigError` with Ultralytics' reason (e.g. ``'epochz' is not a valid YOLO argument``) instead of
    the SyntaxError/TypeError/ValueError it raises from inside the trainer, and keeps its CLI help page out of the log.
    """
    import logging

    from ultralytics.cfg import get_cfg
    from ultralytics.utils import LOGGER

    register_detkd_arguments()
    check_device(train_args.get("device"))
    level = LOGGER.level
    LOGGER.setLevel(logging.WARNING)  # get_cfg logs the whole `yolo` CLI help before raising on an unknown key
    try:
        get_cfg(overrides=dict(train_args))
    except (SyntaxError, TypeError, ValueError, KeyError) as e:
        reason = " ".join(str(e.args[0] if e.args else e).split()).rstrip(".")
        raise ConfigError(f"invalid training argument: {reason}. Fix the flag, the --set KEY=VALUE or the config's "
                          f"'train:' section (arguments: https://docs.ultralytics.com/usage/cfg).") from None
    finally:
        LOGGER.setLevel(level)
    _check_train_ranges(train_args)


def _check_train_ranges(train_args: dict) -> None:
    """What Ultralytics' ``get_cfg`` lets through and then trains on anyway: ``imgsz=0`` (trains at 32 px),
    ``batch=0`` (a batch of 16 with a warning), negative ``workers``, a ``cache`` word it reads as false."""
    imgsz, batch, workers = (train_args.get(k) for k in ("imgsz", "batch", "workers"))
    sizes = imgsz if isinstance(imgsz, (list, tuple)) else [imgsz]
    if imgsz is not None and any(not isinstance(v, (int, float)) or v < 32 for v in sizes):
        raise ConfigError(f"imgsz={imgsz}: the image size must be at least 32 pixels (a multiple of 32, e.g. 640).")
    if batch is not None and isinstance(batch, (int, float)) and not (batch >= 1 or batch == -1 or 0 < batch < 1):
        raise ConfigError(f"batch={batch}: give images per batch (>= 1), -1 (AutoBatch, CUDA) or a fraction of GPU "
                          f"memory in (0, 1).")
    if workers is not None and isinstance(workers, (int, float)) and workers < 0:
        raise ConfigError(f"workers={workers} must be >= 0 (0: load data in the main process).")
    cache = train_args.get("cache")
    if cache is not None and str(cache).strip().lower() not in {"true", "false", "ram", "disk", "none"}:
        raise ConfigError(f"cache={cache}: use ram, disk or false (Ultralytics reads any other word as false).")


def check_device(device, what: str = "device") -> None:
    """Refuse, as one :class:`ConfigError`, a CUDA device this machine does not have (``'0'``, ``'0,1'``,
    ``'cuda:1'``, ``[0, 1]``), before any work; ``what`` is how the user gave it (``device``, ``--eval-device``).

    ``None``/``''`` (Ultralytics' choice), ``cpu``, ``-1`` (Ultralytics picks idle GPUs) and other accelerators
    (``mps``, ``npu``, ``xpu``) are left to Ultralytics.
    """
    if device is None:
        return
    text = str(device).strip().lower()
    if text in {"", "cpu", "none"} or text.startswith(("mps", "npu", "xpu")):
        return
    spec = text.replace("cuda:", "").replace("[", "").replace("]", "").replace(" ", "")
    spec = "0" if spec == "cuda" else spec
    try:
        indices = [int(i) for i in spec.split(",")]
    except ValueError:
        raise ConfigError(f"{what}={device} not understood: use cpu, a CUDA index such as 0, or several: 0,1.") from None
    indices = [i for i in indices if i >= 0]  # -1: Ultralytics picks idle GPUs
    if not indices:
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(f"{what}={device}: CUDA is not available on this machine (torch sees no GPU): "
                          f"use {what}=cpu.")
    visible = torch.cuda.device_count()
    if max(indices) >= visible:
        raise ConfigError(f"{what}={device}: only {visible} CUDA device(s) visible here (0..{visible - 1}).")


def register_detkd_arguments() -> None:
    """Declare detkd's extra training arguments in Ultralytics' config schema (idempotent).

    ``kd`` (the KD settings as a dict) and ``coco_eval`` (select best.pt on pycocotools AP). Ultralytics validates
    every argument against its default config; declared there (with defaults that change nothing), they ride along
    in the trainer's args through validators, ``args.yaml``, checkpoints (resume) and the script Ultralytics
    generates for DDP workers — no side channel needed.
    """
    from ultralytics.utils import DEFAULT_CFG, DEFAULT_CFG_DICT

    for key, default in DETKD_TRAIN_ARGS.items():
        DEFAULT_CFG_DICT.setdefault(key, default)
        if not hasattr(DEFAULT_CFG, key):
            setattr(DEFAULT_CFG, key, default)

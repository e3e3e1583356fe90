"""``DistillationTrainer``: Ultralytics' ``DetectionTrainer`` (via :class:`StudentTrainer`) plus a frozen teacher.

What it changes, each at the narrowest point of the parent class:

* ``__init__``      — takes the KD settings (``kd=`` or the ``kd`` key of the args, which is how resume and DDP
                      workers get them back); refuses Ultralytics' own ``distill_model=``.
* ``check_resume``  — the KD settings are the checkpoint's; a teacher given with the resume re-points a moved
                      teacher, and a missing one is refused naming ``--teacher`` (the run folder: StudentTrainer).
* ``setup_model``   — after the student is built: loads the teacher (frozen), checks teacher/student/data
                      compatibility, builds the feature adapters (restored on resume).
* ``build_optimizer`` — adds the adapters as one more parameter group (same lr schedule/warmup, no decay).
* ``optimizer_step`` — clips the adapters' gradients jointly with the student's (Ultralytics clips the student's).
* ``_setup_train``  — afterwards: validates the teacher (and the student's starting point) on the val split,
                      optimises the teacher for inference, installs :class:`DistillationLoss` as the student's
                      criterion, wrapping the detection loss the student has (a resume's keeps its E2E schedule).
* ``save_model``    — ``last.pt``/``best.pt``/``epochN.pt`` are written by Ultralytics and hold the student only;
                      the adapters (and the ``--kd-balance`` running scale) are saved beside each
                      (``kd_adapters.pt``, ``best_kd_adapters.pt``, ...) with their epoch, and a resume loads those
                      of its checkpoint (see ``engine/checkpoints.py``).
* ``resume_training`` — adapters that restart fresh on resume lose the stale optimizer moments.
* ``_handle_nan_recovery`` — Ultralytics reloads student, EMA and optimizer from ``last.pt``; the adapters saved
                      with it are restored too.
* ``get_dataloader`` — with ``kd.unlabeled``: the training loader mixes unlabelled images in
                      (``data/unlabeled.py``); ``save_metrics`` adds each epoch's image counts to ``results.csv``.

Its training-loop callbacks are in ``engine/kd_callbacks.py``, the teacher's validation helpers in
``engine/teacher_validation.py``, the resumed run's teacher checks in ``engine/resume_teachers.py``.

Everything else — dataloaders, augmentation, assigner, EMA (student only), AMP, checkpoints, validation, DDP,
resume, plots, quantization-aware training of the student (``quantize=8``; detkd's checks: ``engine/qat.py``) — is
Ultralytics' own.
"""

from __future__ import annotations

import math
from copy import copy, deepcopy
from pathlib import Path

import torch

from detkd import offline
from detkd.config import KDConfig, register_detkd_arguments
from detkd.engine.baseline import StudentTrainer
from detkd.engine.checkpoints import (ADAPTERS_FILE, adapters_path, drop_optimizer_state, load_adapters,  # noqa: F401
                                      load_balancer, reset_adapters, save_kd_state, written_checkpoints)
from detkd.engine.criterion import KD_LOSS_NAMES, DistillationLoss
from detkd.engine.fingerprint import model_id
from detkd.engine.incremental import (OldClassTargets, describe_union, incremental_data, mask_background_loss,
                                      remap_labels, start_from_old_model)
from detkd.engine.guard import ALIGN_ITEMS, HEADER_NAMES, KDGuard
from detkd.engine.kd_callbacks import (average_label_items_over_labeled_batches, report_class_groups,
                                      report_teacher_targets, restore_balancer_on_resume, restore_guard_on_resume,
                                      update_kd_progress, watch_kd_alignment)
from detkd.engine.qat import check_qat_run, refuse_quantized_teacher
from detkd.engine.resume_teachers import check_resumed_teachers, check_same_teachers, repointed_teachers
from detkd.engine.teacher_overlap import AHEAD_KEY, TeacherLookahead, TeacherOverlap, teacher_input
from detkd.engine.teacher_validation import DetectionOutputValidator, rng_preserved, validated_in_data_classes
from detkd.errors import ConfigError, DetKDError
from detkd.models.adapters import FeatureAdapters
from detkd.models.class_map import ClassMappedTeacher
from detkd.models.compat import check_compatibility, teacher_class_map
from detkd.models.ensemble import TeacherEnsemble
from detkd.models.loading import YAML_SUFFIXES, load_detection_model
from detkd.models.teacher import FrozenTeacher, feature_channels, teacher_precision_line

offline.install()
register_detkd_arguments()

from ultralytics.utils import DEFAULT_CFG, LOGGER, RANK, colorstr  # noqa: E402
from ultralytics.utils.torch_utils import unwrap_model  # noqa: E402

TRAIN_ONLY_ITEMS = (*KD_LOSS_NAMES, *ALIGN_ITEMS)  # computed in training only: no (always 0) val/ columns
PREFIX = colorstr("detkd: ")
MAX_GRAD_NORM = 10.0  # Ultralytics' gradient clipping limit (BaseTrainer.optimizer_step)


class DistillationTrainer(StudentTrainer):
    """Train a YOLO student with knowledge distillation from a frozen teacher.

    Examples:
        >>> from detkd import DistillationTrainer, KDConfig
        >>> trainer = DistillationTrainer(
        ...     overrides=dict(model="yolov8n.yaml", data="data.yaml", epochs=100, imgsz=640),
        ...     kd=KDConfig(teacher="teacher.pt", feat_method="cwd"))
        >>> trainer.train()
    """

    def __init__(self, cfg=DEFAULT_CFG, overrides: dict | None = None, _callbacks=None, kd=None):
        overrides = dict(overrides or {})
        kd = kd if kd is not None else overrides.get("kd")
        if kd is not None:
            overrides["kd"] = KDConfig.coerce(kd).to_dict()
        if overrides.get("distill_model"):
            raise ConfigError(_BUILTIN_DISTILL_MSG)
        super().__init__(cfg, overrides, _callbacks)  # on resume, args (kd included) come from last.pt
        with self.discarding_run_dir_on_refusal():  # refused here: no run folder left behind
            self.kd = self._checked_kd()
            check_qat_run(self.args, self.resume)  # --qat: the student fake-quantized by Ultralytics (engine/qat.py)
        if RANK in {-1, 0}:
            for note in self.kd.notes():
                LOGGER.warning(f"{PREFIX}{note}")
        self.teacher: FrozenTeacher | None = None
        self.teacher_runner = None  # what the criterion calls (see _setup_train)
        self.adapters: FeatureAdapters | None = None
        self._adapters_in_loss = None  # adapters, or their DDP wrapper
        self.teacher_metrics: dict = {}
        self.student_start_metrics: dict = {}
        self.add_callback("on_train_epoch_start", update_kd_progress)
        self.guard = KDGuard(mode=self.kd.guard)
        self.add_callback("on_train_epoch_end", watch_kd_alignment)
        self.add_callback("on_train_epoch_end", report_teacher_targets)
        self.add_callback("on_train_start", restore_guard_on_resume)
        self.labeled_means = None  # with unlabelled images: the epoch means of the items that need labels
        self.add_callback("on_train_batch_end", average_label_items_over_labeled_batches)
        self.add_callback("on_train_start", restore_balancer_on_resume)
        self.class_group_metrics: dict = {}  # a teacher with other classes: final AP per class group
        self.add_callback("on_train_end", report_class_groups)

    def _checked_kd(self) -> KDConfig:
        """The run's KD settings (from the args: given, or the checkpoint's on resume), refused when unusable."""
        if getattr(self.args, "distill_model", None):  # e.g. from a cfg file or a resumed Ultralytics run
            raise ConfigError(_BUILTIN_DISTILL_MSG)
        if not self.args.kd:
            raise ConfigError("no distillation settings: pass kd=KDConfig(teacher=...) (CLI: --teacher PATH).")
        kd = KDConfig.coerce(dict(self.args.kd))
        if not kd.teacher:
            raise ConfigError("no teacher given: pass --teacher path/to/teacher.pt (or a model .yaml).")
        return kd.check_classes(self.data["nc"])

    # ---------------------------------------------------------------------------------------- resume
    def check_resume(self, overrides):
        """Ultralytics' resume, in the checkpoint's own run folder (:class:`StudentTrainer`), with the checkpoint's
        KD settings. Only their teacher may be given again (``kd['teacher']``): the run's teacher at a new path."""
        moved = (overrides.get("kd") or {}).get("teacher")
        super().check_resume({k: v for k, v in overrides.items() if k != "kd"})
        if self.resume and self.args.kd:
            if moved:
                self._repoint_teacher(moved)
            teachers = KDConfig.coerce(dict(self.args.kd)).teachers
            check_resumed_teachers(teachers)
            check_same_teachers(self.args.model, teachers)

    def _repoint_teacher(self, moved) -> None:
        """Resume with the run's teacher(s) re-pointed to ``moved`` (see :func:`detkd.engine.resume_teachers.repointed_teachers`); checked against the
        student like any teacher at setup, and against the saved adapters (same feature widths)."""
        saved = KDConfig.coerce(dict(self.args.kd))
        given = moved if isinstance(moved, (list, tuple)) else [moved]
        teachers = repointed_teachers(saved.teachers, [str(t) for t in given])
        if [Path(t).resolve() for t in teachers] == [Path(t).resolve() for t in saved.teachers]:
            return
        new = KDConfig.coerce({**saved.to_dict(), "teacher": _one_or_list(teachers)})  # weights stay per teacher
        self.args.kd = new.to_dict()  # saved in the next last.pt, and what DDP workers get
        if RANK in {-1, 0}:
            LOGGER.info(f"{PREFIX}resume: teacher re-pointed {_one_or_list(saved.teachers)} -> "
                        f"{_one_or_list(new.teachers)}")

    # --------------------------------------------------------------------------------- model & teacher
    def setup_model(self):
        """Build the student (Ultralytics), then the teacher, the compatibility checks and the adapters."""
        ckpt = super().setup_model()
        self._first_epoch = (ckpt or {}).get("epoch", -1) + 1 if self.resume else 0  # the unlabelled pool's cursor
        if self.kd.keep_teacher_classes and not self.resume:
            self._start_from_old_model()
        self._attach_teacher()
        self._adapters_restored = self.resume and self.adapters is not None and self._restore_adapters(ckpt)
        return ckpt

    # -------------------------------------------------------------- new classes on top of the teacher's
    def get_dataset(self):
        """Ultralytics' data description; with ``keep_teacher_classes`` the student's classes are the teacher's and
        then the data's new ones, the labels renumbered by :meth:`build_dataset` (:mod:`detkd.engine.incremental`)."""
        data = super().get_dataset()
        self._incremental = None
        kd = KDConfig.coerce(dict(self.args.kd)) if self.args.kd else None
        if kd is not None and kd.keep_teacher_classes and kd.teachers:
            if self.args.coco_eval:
                raise ConfigError("--coco-eval scores the categories of the data's COCO JSON, and with "
                                  "--keep-teacher-classes the student predicts the teacher's classes too: drop "
                                  "--coco-eval (Ultralytics' validation scores every class).")
            data, table, labelled, t_names = incremental_data(data, kd.teachers[0])
            self._incremental = {"table": table, "labelled": labelled, "teacher_names": t_names}
            if RANK in {-1, 0}:
                LOGGER.info(f"{PREFIX}{describe_union(t_names, list(data['names'].values()), labelled)}")
        return data

    def build_dataset(self, img_path: str, mode: str = "train", batch: int | None = None):
        dataset = super().build_dataset(img_path, mode, batch)
        if getattr(self, "_incremental", None):
            remap_labels(dataset, self._incremental["table"])
        return dataset

    def _start_from_old_model(self) -> None:
        """The student starts from the old model's weights, head widened (see :func:`start_from_old_model`)."""
        done = start_from_old_model(unwrap_model(self.model), self.args.model, self.kd.teachers[0],
                                    self._incremental["teacher_names"], list(self.data["names"].values()))
        if RANK in {-1, 0}:
            LOGGER.info(f"{PREFIX}{done}")

    def _teach_old_classes(self, criterion: DistillationLoss) -> None:
        """The labels' loss gives the teacher's unlabelled classes no background term; the teacher's detections of
        them become targets."""
        unlabelled = ~torch.tensor(self._incremental["labelled"])
        mask_background_loss(criterion.det, unlabelled.to(self.device))
        criterion.old_class_targets = OldClassTargets(unlabelled.to(self.device), self.kd.pseudo_threshold,
                                                      self.teacher.reg_max)

    def _attach_teacher(self) -> None:
        kd = self.kd
        if RANK in {-1, 0}:
            LOGGER.info(f"{PREFIX}distillation settings\n{kd.summary()}")
        student = unwrap_model(self.model)
        members = [self._load_one_teacher(path, student, i) for i, path in enumerate(kd.teachers, 1)]
        if kd.class_map and RANK in {-1, 0} and not any(isinstance(m, ClassMappedTeacher) for m in members):
            LOGGER.warning(f"{PREFIX}--class-map is not used: the teacher's classes are the data's.")
        self.teacher = members[0] if len(members) == 1 else TeacherEnsemble(members, kd.teacher_weights, kd.cls_mode)
        self.adapters = None
        if kd.feat_kd > 0:
            self.adapters = self._build_adapters(student)

    def _build_adapters(self, student) -> FeatureAdapters:
        """Student → teacher feature adapters (with MGD generators when that method is on)."""
        return FeatureAdapters(feature_channels(student), self.teacher.channels,
                               with_generators=self.kd.feat_method == "mgd").to(self.device)

    def _load_one_teacher(self, path: str, student, number: int = 1) -> FrozenTeacher:
        """Load one teacher, check it against the student and the data (with the reason when refused; among several
        teachers the reason names which one), freeze it."""
        teacher_from_yaml = str(path).lower().endswith(YAML_SUFFIXES)
        try:
            net = load_detection_model(path, role="teacher", nc=self.data["nc"] if teacher_from_yaml else None)
            refuse_quantized_teacher(net, path)
            if teacher_from_yaml:
                net.names = self.data["names"]
            class_map = teacher_class_map(net, self.data, self.kd.class_map, teacher_from_yaml)
            notes = check_compatibility(net, student, self.data, box_kd=self.kd.box_kd > 0,
                                        teacher_from_yaml=teacher_from_yaml, class_map=class_map)
        except DetKDError as e:
            if len(self.kd.teachers) == 1:
                raise
            raise type(e)(f"teacher {number} ({path}): {e}") from None
        if RANK in {-1, 0}:
            for n in notes:
                LOGGER.info(f"{PREFIX}{n}" if len(self.kd.teachers) == 1 else f"{PREFIX}{Path(path).name}: {n}")
        teacher = FrozenTeacher(net, self.device)
        return teacher if class_map.is_identity else ClassMappedTeacher(teacher, class_map, self.kd.cls_mode)

    def _restore_adapters(self, ckpt: dict | None) -> bool:
        """Resume: load the adapters saved with the checkpoint resumed from (same epoch); False when they stay fresh."""
        why_not = load_adapters(self.adapters, self.args.model, self.device, epoch=(ckpt or {}).get("epoch"))
        if why_not:
            LOGGER.warning(f"{PREFIX}{why_not}: feature adapters restart from a fresh initialisation.")
            return False
        LOGGER.info(f"{PREFIX}resumed feature adapters from {adapters_path(self.args.model)}")
        return True

    def resume_training(self, ckpt):
        """Ultralytics' resume (epoch, optimizer, EMA, ...); adapters that restart fresh lose the optimizer moments
        the checkpoint holds for them (those belonged to other adapter weights)."""
        super().resume_training(ckpt)
        if self.resume and self.adapters is not None and not self._adapters_restored:
            drop_optimizer_state(self.adapters, self.optimizer)

    def _handle_nan_recovery(self, epoch):
        """Ultralytics' NaN recovery reloads student, EMA and optimizer from ``last.pt``; the adapters saved with it
        (``kd_adapters.pt``, written in the same ``save_model``) come back too, matching their optimizer state (the
        ``kd_adapters`` group is part of the optimizer Ultralytics reloads). Without that file they are reset."""
        recovered = super()._handle_nan_recovery(epoch)
        if recovered and self.kd.unlabeled:
            self.train_loader.reset()  # the redone epoch draws its own pool slice, not the one drawn ahead
        if recovered and self.adapters is not None:
            why_not = load_adapters(self.adapters, self.last, self.device)
            if why_not:
                reset_adapters(self.adapters, self.optimizer)
                LOGGER.warning(f"{PREFIX}{why_not}: feature adapters reset to a fresh initialisation.")
            else:
                LOGGER.info(f"{PREFIX}feature adapters restored from {adapters_path(self.last)}")
        balancer = self._balancer()
        if recovered and balancer is not None and load_balancer(balancer, self.last):
            balancer.load_state_dict({**balancer.state_dict(), "running": {}})  # NaN in it: re-learn the scale
        return recovered

    # ------------------------------------------------------------------------------------- optimizer
    def build_optimizer(self, model, name="auto", lr=0.001, momentum=0.9, decay=1e-5, iterations=1e5):
        """Ultralytics' optimizer for the student, plus one parameter group for the adapters (no weight decay)."""
        optimizer = super().build_optimizer(model, name, lr, momentum, decay, self._epoch_sized(iterations))
        if self.adapters is not None:
            base = min((g for g in optimizer.param_groups if g.get("param_group") == "bn"), key=lambda g: g["lr"])
            group = {k: v for k, v in base.items() if k != "params"}
            group.update(params=list(self.adapters.parameters()), weight_decay=0.0, param_group="kd_adapters")
            group.pop("use_muon", None)
            optimizer.add_param_group(group)
        return optimizer

    def _epoch_sized(self, iterations):
        """The optimizer's iteration count (``optimizer=auto`` picks optimizer and lr by it) from the images of an
        epoch: Ultralytics counts ``len(train_loader.dataset)``, which with unlabelled images is the whole pool,
        though an epoch draws only its share. Same formula: ceil(images / max(batch, nbs)) x epochs."""
        counts = getattr(getattr(self.train_loader, "sampler", None), "counts", None)
        if counts is None:
            return iterations
        return math.ceil(sum(counts) / max(self.batch_size, self.args.nbs)) * self.epochs

    def optimizer_step(self):
        """Ultralytics' step (unscale, clip the student, step, EMA), the adapters' gradients clipped with the student's.

        Student and adapter gradients are clipped jointly to Ultralytics' limit first, on the still-scaled gradients
        (AMP) with the limit scaled alike (norms are linear in the scale), so Ultralytics' student-only clip that
        follows finds nothing left to clip.
        """
        if self.adapters is not None:
            params = [*self.model.parameters(), *self.adapters.parameters()]
            torch.nn.utils.clip_grad_norm_(params, max_norm=MAX_GRAD_NORM * self.scaler.get_scale(),
                                           foreach=False if self.device.type == "npu" else None)
        super().optimizer_step()

    # ----------------------------------------------------------------------------------------- setup
    def _setup_train(self):
        super()._setup_train()
        if self.kd.validate_teacher:
            # under DDP validation is collective (each rank scores its shard, Ultralytics gathers them on rank 0), so
            # every rank validates; rank 0's decision is then broadcast
            refusal, weak = self._know_your_teacher(judge=not self.resume)
            if RANK != -1 and self.world_size > 1:  # DDP: every rank stops (or drops) together, none waits
                from torch import distributed as dist

                decision = [(refusal, weak)]
                dist.broadcast_object_list(decision, src=0)
                refusal, weak = decision[0]
            if refusal:
                raise ConfigError(refusal)
            if weak:
                self._drop_teachers(weak)
        self._adapters_in_loss = self.adapters
        if self.adapters is not None and self.world_size > 1:
            # every adapter parameter (alignment, MGD generators) runs in its forward: no unused-parameter search
            self._adapters_in_loss = torch.nn.parallel.DistributedDataParallel(
                self.adapters, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=False)
        self.teacher.optimize(half=self.kd.teacher_half, cuda_graphs=self.kd.teacher_graphs)
        if RANK in {-1, 0}:
            LOGGER.info(f"{PREFIX}{teacher_precision_line(self.teacher.precision, self.device.type, self.kd.teacher_half)}")
        # what the criterion calls: the teacher, or on CPU the teacher started one batch ahead by the training loader
        self.teacher_runner = TeacherOverlap(self.teacher) if self._overlaps_teacher() else self.teacher
        student = unwrap_model(self.model)
        student.criterion = DistillationLoss(_detection_criterion(student), self.teacher_runner,
                                             self._adapters_in_loss, self.kd)
        if self.kd.keep_teacher_classes:
            self._teach_old_classes(student.criterion)
        if RANK in {-1, 0}:
            LOGGER.info(f"{PREFIX}KD paths for this pair:\n  " + "\n  ".join(student.criterion.describe()))
        student.criterion.progress = self.start_epoch / max(self.epochs, 1)

    def _know_your_teacher(self, judge: bool = True) -> tuple[str | None, list[int]]:
        """Validate each teacher and the student's starting point once, print them side by side.

        A resumed run (``judge`` False) validates its teachers for the report only: they were judged against the
        untrained student when the run began (the kept ones are in the checkpoint's settings), and the resumed
        student is trained, so comparing them now could drop or refuse a teacher mid-run.

        Returns (the refusal message, or None; the indices of weak teachers to leave out). A teacher is weak when it
        is not above the student's starting point or below ``min_teacher_map``: with one teacher that is a warning
        (or the refusal under ``min_teacher_map``); with several, ``drop_weak_teachers`` leaves them out instead.
        The random number generators are left as they were, so training sees the augmentation stream of a
        baseline with the same seed.
        """
        members = getattr(self.teacher, "members", [self.teacher])
        labels = ["teacher"] if len(members) == 1 else [f"teacher {i + 1}" for i in range(len(members))]
        with rng_preserved():
            per_teacher = [self._quick_val(m.model, label, getattr(m, "class_map", None))
                           for m, label in zip(members, labels)]
            if judge:
                self.student_start_metrics = self._quick_val(deepcopy(self.ema.ema), "student (start)")
        self.teacher_metrics = dict(per_teacher[0]) if len(members) == 1 else {
            **max(per_teacher, key=lambda m: m["mAP50-95"]),
            "members": [{"teacher": t, **m} for t, m in zip(self.kd.teachers, per_teacher)]}
        s50_95 = self.student_start_metrics.get("mAP50-95", 0.0)
        table = [f"  {'model':<18}{'mAP50-95':>10}{'mAP50':>10}"]
        table += [f"  {label:<18}{m['mAP50-95']:>10.4f}{m['mAP50']:>10.4f}" + (f"  {t}" if len(members) > 1 else "")
                  for label, m, t in zip(labels, per_teacher, self.kd.teachers)]
        if not judge:
            LOGGER.info(f"{PREFIX}what you distil from (val split, imgsz={self.args.imgsz}; resumed: judged against the "
                        f"student's start when the run began):\n" + "\n".join(table))
            return None, []
        table.append(f"  {'student (start)':<18}{s50_95:>10.4f}{self.student_start_metrics.get('mAP50', 0.0):>10.4f}")
        LOGGER.info(f"{PREFIX}what you distil from (val split, imgsz={self.args.imgsz}):\n" + "\n".join(table))
        floor = self.kd.min_teacher_map
        weak, refusals = [], []
        for i, (label, m, t) in enumerate(zip(labels, per_teacher, self.kd.teachers)):
            who = "the teacher" if len(members) == 1 else f"{label} ({t})"
            below_floor = floor is not None and m["mAP50-95"] < floor
            if m["mAP50-95"] <= s50_95 or below_floor:
                weak.append(i)
            if m["mAP50-95"] <= s50_95:
                LOGGER.warning(f"{PREFIX}{who} (mAP50-95 {m['mAP50-95']:.4f}) is not better than the student's "
                               f"starting point ({s50_95:.4f}) on val: distilling from it is unlikely to help.")
            if below_floor:
                refusals.append(f"{who} scores mAP50-95 {m['mAP50-95']:.4f} on the val split, below "
                                f"--min-teacher-map {floor:g}")
        if len(members) > 1 and self.kd.drop_weak_teachers:
            if len(weak) == len(members):
                return (f"every teacher is weak ({'; '.join(refusals) or 'none is above the student start'}): "
                        f"nothing left to distil from. Train the teachers longer or pick stronger ones."), []
            return None, weak
        if refusals:
            hint = " (or --drop-weak-teachers to leave it out)" if len(members) > 1 else ""
            return (f"{'; '.join(refusals)}: distilling from it is unlikely to help. Train the teacher longer or "
                    f"pick a stronger one (or lower --min-teacher-map){hint}."), []
        return None, []

    def _drop_teachers(self, weak: list[int]) -> None:
        """Leave the weak teachers out (``drop_weak_teachers``) before training starts: rebuild the ensemble (or
        single teacher), its adapters and their optimizer group, and record the kept teachers for resume."""
        members = self.teacher.members
        keep = [i for i in range(len(members)) if i not in weak]
        teachers, weights = self.kd.teachers, self.kd.teacher_weights
        if RANK in {-1, 0}:
            LOGGER.warning(f"{PREFIX}leaving out weak teacher(s): {', '.join(teachers[i] for i in weak)} "
                           f"(--drop-weak-teachers)")
        self.kd.teacher = [teachers[i] for i in keep] if len(keep) > 1 else teachers[keep[0]]
        self.kd.teacher_weights = [weights[i] for i in keep] if weights and len(keep) > 1 else None
        self.kd.drop_weak_teachers = len(keep) > 1  # decided: one teacher left has nothing to drop on resume
        self.args.kd = self.kd.to_dict()  # saved in last.pt: a resume re-attaches the kept teachers only
        kept = [members[i] for i in keep]
        self.teacher = kept[0] if len(kept) == 1 else TeacherEnsemble(kept, self.kd.teacher_weights, self.kd.cls_mode)
        if self.adapters is not None:
            self.adapters = self._build_adapters(unwrap_model(self.model))
            group = next(g for g in self.optimizer.param_groups if g.get("param_group") == "kd_adapters")
            group["params"] = list(self.adapters.parameters())

    def _quick_val(self, model, what: str, class_map=None) -> dict:
        """mAP50-95 / mAP50 of ``model`` on the val loader (Ultralytics' DetectionValidator, detections only); a
        teacher with other classes is scored through its ``class_map``, in the data's classes."""
        args = copy(self.args)
        args.plots, args.save_json, args.verbose = False, False, False
        validator = DetectionOutputValidator(self.test_loader, save_dir=self.save_dir / f"val_{what.split()[0]}",
                                             args=args)
        LOGGER.info(f"{PREFIX}validating the {what} ...")
        with validated_in_data_classes(validator, model, class_map):
            metrics = validator(model=model)
        model.float().eval()
        return {"mAP50-95": float(metrics.get("metrics/mAP50-95(B)", 0.0)),
                "mAP50": float(metrics.get("metrics/mAP50(B)", 0.0))}

    def progress_string(self):
        """Ultralytics' progress-bar header (11 characters a column), the guard's longer item names shortened to fit
        (results.csv keeps the full names)."""
        header = super().progress_string()
        for name, short in HEADER_NAMES.items():
            header = header.replace(name, f"{short:>11}")  # a 12- or 13-character name overflowed its column
        return header

    def label_loss_items(self, loss_items=None, prefix="train"):
        """Ultralytics' labelled loss items, without the KD terms and diagnostics under ``val/`` (never computed
        there: they would be columns of zeros in results.csv and the plots)."""
        items = super().label_loss_items(loss_items, prefix)
        if prefix != "val":
            return items
        dropped = {f"val/{k}" for k in TRAIN_ONLY_ITEMS}
        return [k for k in items if k not in dropped] if loss_items is None else \
            {k: v for k, v in items.items() if k not in dropped}

    def preprocess_batch(self, batch: dict) -> dict:
        """Ultralytics' preprocessing, then the teacher on the batch: on CPU its outputs started one batch ahead are
        handed to the criterion (:mod:`detkd.engine.teacher_overlap`); on CUDA it starts on a side stream, overlapping
        the student."""
        ahead = batch.pop(AHEAD_KEY, None)
        batch = super().preprocess_batch(batch)
        if ahead is not None:
            self.teacher_runner.expect(batch["img"], *ahead)
        elif self._teacher_runs_on_this_step():
            self.teacher.prefetch(batch["img"])
        return batch

    def _teacher_runs_on_this_step(self) -> bool:
        criterion = getattr(unwrap_model(self.model), "criterion", None)
        return isinstance(criterion, DistillationLoss) and criterion.needs_teacher() and self.model.training

    def _overlaps_teacher(self) -> bool:
        """The teacher runs one batch ahead in a worker thread: CPU training, ``teacher_overlap`` on, and no
        multi-scale (its random resize happens in ``preprocess_batch``, after the lookahead)."""
        return self.device.type == "cpu" and self.kd.teacher_overlap and not self.args.multi_scale

    def _start_teacher_ahead(self, batch: dict) -> None:
        """Training loader hook: start the teacher on a batch drawn one step early (see ``preprocess_batch``)."""
        if isinstance(self.teacher_runner, TeacherOverlap) and self._teacher_runs_on_this_step():
            img = teacher_input(batch["img"]).to(self.device)
            batch[AHEAD_KEY] = (img, self.teacher_runner.start(img))

    # ------------------------------------------------------------------------------------------- data
    def get_dataloader(self, dataset_path: str, batch_size: int = 16, rank: int = 0, mode: str = "train"):
        """Ultralytics' loaders; with ``kd.unlabeled`` the training one mixes the unlabelled images in; on CPU the
        training one draws one batch ahead for the teacher (:mod:`detkd.engine.teacher_overlap`)."""
        if mode != "train":
            return super().get_dataloader(dataset_path, batch_size, rank, mode)
        loader = (self._mixed_loader(dataset_path, batch_size, rank) if self.kd.unlabeled else
                  super().get_dataloader(dataset_path, batch_size, rank, mode))
        return TeacherLookahead(loader, self._start_teacher_ahead) if self._overlaps_teacher() else loader

    def _mixed_loader(self, dataset_path: str, batch_size: int, rank: int):
        """Labelled training set + the unlabelled pool (minus images of the train or val split), one loader."""
        from ultralytics.utils.torch_utils import torch_distributed_zero_first

        from detkd.data.unlabeled import (build_mixed_loader, build_unlabeled_dataset, drop_overlap, image_files,
                                          resolve_unlabeled, unlabeled_per_epoch)

        if self.args.rect:
            raise ConfigError("--unlabeled with rect=True: rectangular batches need one fixed image order, the "
                              "labelled/unlabelled mix is shuffled every epoch. Drop rect=True (--set rect=False).")
        with torch_distributed_zero_first(rank):
            labeled = self.build_dataset(dataset_path, "train", batch_size)
        files = resolve_unlabeled(self.kd.unlabeled)
        files, overlap = drop_overlap(files, labeled.im_files, image_files(self.data.get("val")))
        if not files:
            raise ConfigError(f"every --unlabeled image is also in the train or val split ({self.kd.unlabeled}): "
                              f"nothing unlabelled is left. Point --unlabeled at frames outside the dataset.")
        gs = max(int(unwrap_model(self.model).stride.max()), 32)
        pool = build_unlabeled_dataset(files, self.args, batch_size, self.data, stride=gs)
        per_epoch = unlabeled_per_epoch(len(labeled), self.kd.unlabeled_ratio)
        if RANK in {-1, 0}:
            notes = [f"{len(pool)} unlabelled images in the pool"]
            if pool.skipped:
                notes.append(f"{len(pool.skipped)} unreadable skipped (first: {pool.skipped[0]})")
            if overlap:
                notes.append(f"{overlap} left out (same file content as a train or val image)")
            LOGGER.info(f"{PREFIX}{'; '.join(notes)}. Each epoch: {len(labeled)} labelled + {per_epoch} unlabelled "
                        f"images (unlabelled share {self.kd.unlabeled_ratio:g}; the pool is cycled); mosaics stay "
                        f"within one kind.")
        return build_mixed_loader(labeled, pool, self.kd.unlabeled_ratio, batch_size, self.args.workers,
                                  seed=int(self.args.seed or 0), start_epoch=getattr(self, "_first_epoch", 0),
                                  rank=RANK, world_size=self.world_size, epoch_source=self._loader_epoch)

    def _loader_epoch(self) -> int:
        """The epoch a fresh training-loader iterator serves: the trainer's (set before each epoch iterates), or the
        first epoch of this run before the loop starts."""
        return getattr(self, "epoch", getattr(self, "_first_epoch", 0))

    def save_metrics(self, metrics):
        """Ultralytics' results.csv row plus the KD guard's scale of each term this epoch (``train/kd_scale_*``, 1
        unless ``--kd-guard adapt`` scaled it); with unlabelled images, the epoch's labelled/unlabelled image counts and
        how many pool images could not be decoded so far (skipped as they were read; a warning when that grows)."""
        counts = getattr(getattr(self.train_loader, "sampler", None), "counts", None)
        if counts is not None:
            unreadable = self._unreadable_pool_images()
            metrics = {**metrics, "train/labeled_imgs": counts[0], "train/unlabeled_imgs": counts[1],
                       "train/unlabeled_unreadable": len(unreadable)}
        super().save_metrics({**metrics, **self.guard.scale_columns()})  # the scale of each KD term this epoch

    def _unreadable_pool_images(self) -> list[str]:
        """Unlabelled images found undecodable while loading (this rank's workers); warns about new ones."""
        pool = self.train_loader.dataset.datasets[1]
        unreadable = pool.unreadable_files()
        reported = getattr(self, "_unreadable_reported", 0)
        if len(unreadable) > reported:
            LOGGER.warning(f"{PREFIX}{len(unreadable)} unlabelled image(s) could not be decoded and were skipped "
                           f"(first: {unreadable[0]}); counted in results.csv (train/unlabeled_unreadable).")
            self._unreadable_reported = len(unreadable)
        return unreadable

    # ------------------------------------------------------------------------------------ checkpoints
    def save_model(self):
        """Student checkpoints by Ultralytics (teacher-free); the adapters beside each checkpoint just written, with
        their epoch (see :mod:`detkd.engine.checkpoints`)."""
        saved = super().save_model()
        save_kd_state(written_checkpoints(self), self.epoch, self.kd.to_dict(), self.adapters, self._balancer(),
                      self.guard.state_dict(), teachers=[model_id(t) for t in self.kd.teachers])
        return saved

    def _balancer(self):
        """The criterion's loss balancer (``--kd-balance detection``), or None."""
        return getattr(getattr(unwrap_model(self.model), "criterion", None), "balancer", None)


def _detection_criterion(student):
    """The student's detection loss to wrap: the one Ultralytics already built when it has (a resumed end-to-end
    student's ``E2ELoss`` is positioned on its one-to-many/one-to-one schedule by ``resume_training``), else a new one
    from ``init_criterion``, Ultralytics' extension point."""
    existing = getattr(student, "criterion", None)
    if isinstance(existing, DistillationLoss):
        return existing.det
    return existing if existing is not None else student.init_criterion()


def _one_or_list(paths: list[str]):
    return paths[0] if len(paths) == 1 else paths


_BUILTIN_DISTILL_MSG = (
    "Ultralytics' built-in 'distill_model=' is set, but detkd's DistillationTrainer does its own distillation: "
    "combining both would silently add a second, feature-only KD loss and a second teacher. Remove "
    "'distill_model' (detkd's --feat-kd/--feat-method cover feature imitation), or train with plain Ultralytics."
)

"""The callbacks :class:`detkd.engine.trainer.DistillationTrainer` adds to Ultralytics' training loop: the KD schedule's
progress, the KD guard (watch, adapt, resume), the loss balancer's resume, the label-only loss items with unlabelled
images, and the final AP per class group. Each takes the trainer, as Ultralytics calls them."""

from __future__ import annotations

import torch

from detkd import offline
from detkd.engine.checkpoints import adapters_path, load_balancer, load_guard
from detkd.engine.criterion import DistillationLoss
from detkd.engine.guard import KD_TERM_OF, shared_across_ranks
from detkd.models.class_map import ClassMappedTeacher

offline.install()

from ultralytics.utils import LOGGER, RANK, colorstr  # noqa: E402
from ultralytics.utils.torch_utils import unwrap_model  # noqa: E402

PREFIX = colorstr("detkd: ")


def _distillation_loss(trainer) -> DistillationLoss | None:
    """The student's criterion when it is detkd's (None before ``_setup_train`` installs it)."""
    criterion = getattr(unwrap_model(trainer.model), "criterion", None)
    return criterion if isinstance(criterion, DistillationLoss) else None


def watch_kd_alignment(trainer) -> None:
    """on_train_epoch_end: does KD pull with the labels or against them? Warn once per term; with ``--kd-guard
    adapt`` the next epoch's scale of each term (rank 0's guard decides, every DDP rank applies: engine/guard.py)."""
    criterion = _distillation_loss(trainer)
    if criterion is None:
        return
    if RANK in {-1, 0}:
        w = criterion.term_weights()
        active = {t: w[k] > 0 for t, k in KD_TERM_OF.items()}
        for msg in trainer.guard.update(trainer.epoch + 1, trainer.tloss, active):
            LOGGER.warning(f"{PREFIX}{msg}")
        trainer.guard.save(trainer.save_dir)
    scales = trainer.guard.loss_scales()  # all 1 in warn mode
    criterion.term_scales = shared_across_ranks(scales) if trainer.kd.guard == "adapt" else scales


def update_kd_progress(trainer) -> None:
    """on_train_epoch_start: let the KD weight schedule know where training is; the guard's scales for this epoch
    (an epoch redone after NaN recovery trains with the scales it had: :meth:`KDGuard.start_epoch`)."""
    criterion = _distillation_loss(trainer)
    if criterion is not None:
        criterion.progress = trainer.epoch / max(trainer.epochs, 1)
        criterion.alignment.start_epoch()  # the KD guard's feature cosine: measured on the epoch's first batch
        if RANK in {-1, 0}:
            trainer.guard.start_epoch(trainer.epoch + 1)
        scales = trainer.guard.loss_scales()  # all 1 in warn mode
        criterion.term_scales = shared_across_ranks(scales) if trainer.kd.guard == "adapt" else scales
    if trainer.labeled_means is not None:
        trainer.labeled_means.reset()  # Ultralytics starts a new tloss each epoch


def report_teacher_targets(trainer) -> None:
    """on_train_epoch_end, ``--keep-teacher-classes`` with pseudo-labels: how many targets the teacher added per old
    class this epoch (summed over DDP ranks), and a warning, once per class, for an old class it gave none."""
    targets = getattr(_distillation_loss(trainer), "old_class_targets", None)
    if targets is None or targets.conf is None:
        return
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(targets.added)
    info, warning = targets.epoch_report(list(trainer.data["names"].values()))
    if RANK in {-1, 0}:
        LOGGER.info(f"{PREFIX}{info}")
        if warning:
            LOGGER.warning(f"{PREFIX}{warning}")


def report_class_groups(trainer) -> None:
    """on_train_end (after the final validation): with a teacher that has other classes (a class map,
    ``--keep-teacher-classes``), the final AP per class group: the classes the teacher teaches, the others, all."""
    from detkd.eval.class_groups import format_group_table, group_ap, groups_from_mask, per_class_from_ultralytics

    members = getattr(trainer.teacher, "members", None) or [trainer.teacher]
    masks = [m.class_mask for m in members if isinstance(m, ClassMappedTeacher)]
    metrics = getattr(getattr(trainer, "validator", None), "metrics", None)
    if not masks or RANK not in {-1, 0} or getattr(metrics, "box", None) is None:
        return
    names = list(trainer.data["names"].values())
    taught = torch.stack(masks).any(0).tolist()
    trainer.class_group_metrics = group_ap(per_class_from_ultralytics(metrics, names), groups_from_mask(names, taught))
    LOGGER.info(f"{PREFIX}final AP per class group (val split):\n" + format_group_table(trainer.class_group_metrics))


def restore_guard_on_resume(trainer) -> None:
    """on_train_start (the criterion is installed): a resume continues the KD guard saved with its checkpoint — its
    history and, with ``--kd-guard adapt``, the scales of the terms; without it (older runs) the guard restarts."""
    criterion = _distillation_loss(trainer)
    if not trainer.resume or criterion is None:
        return
    why_not = load_guard(trainer.guard, trainer.args.model, epoch=trainer.start_epoch - 1)
    if why_not:
        (LOGGER.warning if trainer.kd.guard == "adapt" else LOGGER.info)(
            f"{PREFIX}{why_not}: the KD guard restarts" + (" (every term at x1)." if trainer.kd.guard == "adapt"
                                                           else "."))
    criterion.term_scales = trainer.guard.loss_scales()


def restore_balancer_on_resume(trainer) -> None:
    """on_train_start (the criterion is installed): a resume continues the loss balancer's running scale saved with
    its checkpoint; without it (older runs) the scale restarts, with a warning."""
    balancer = trainer._balancer()
    if not trainer.resume or balancer is None:
        return
    why_not = load_balancer(balancer, trainer.args.model, epoch=trainer.start_epoch - 1)
    if why_not:
        LOGGER.warning(f"{PREFIX}{why_not}: the --kd-balance running scale restarts.")
    else:
        LOGGER.info(f"{PREFIX}resumed the --kd-balance running scale from {adapters_path(trainer.args.model)}")


def average_label_items_over_labeled_batches(trainer) -> None:
    """on_train_batch_end, with unlabelled images: the detection items of ``tloss`` (results.csv's train/box_loss
    ...) become their mean over the batches with labelled images (:class:`detkd.engine.unlabeled.LabeledBatchMean`)."""
    criterion = _distillation_loss(trainer)
    if criterion is None or not trainer.kd.unlabeled or trainer.tloss is None:
        return
    if trainer.labeled_means is None:
        from detkd.engine.unlabeled import LabeledBatchMean

        trainer.labeled_means = LabeledBatchMean(criterion.label_items())
    trainer.tloss = trainer.labeled_means.update(trainer.loss_items, criterion.last_batch_labeled, trainer.tloss)

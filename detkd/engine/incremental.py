"""Learning new classes without forgetting the old ones (``keep_teacher_classes``, CLI ``--keep-teacher-classes``).

The teacher is the old model: it knows classes A. The data labels classes B only (new classes, maybe some of A
too), and the A objects in its images are not labelled. Fine-tuning on it would forget A and, worse, train every
unlabelled A object as background. Here:

* **classes**: the student's classes are the teacher's, in the teacher's order, then the data's classes the teacher
  does not have, in the data's order (:func:`union_classes`); a class in both (partial overlap, matched by name like
  the class map) is one class, labelled by the data. The data's labels are renumbered into that list
  (:func:`remap_labels`); the run's ``best.pt`` names all of them.
* **start**: from the old model when the architectures match — every weight copied, the class rows of the head
  widened: the old classes' rows kept exactly, the new rows as the student's own initialisation (:func:`widen_from`).
  A student checkpoint with the teacher's classes is widened from its own weights; one with the union already is
  loaded as it is; otherwise the student starts from its own config.
* **labels' loss**: the classes of the teacher that the data does not label get no background loss from the labels
  on the anchors no object is assigned to (:class:`BackgroundMaskedBCE` replaces the BCE of Ultralytics' detection
  loss): an unlabelled old object is not pushed to background. An anchor assigned to a labelled object is that
  object, background for every other class. Their positives still count: the teacher's
  confident detections of those classes are added to each image's targets (:func:`add_teacher_pseudo_labels`, the
  pseudo-label machinery of ``--unlabeled``, at ``pseudo_conf``, default 0.25), except on objects the image labels
  (the label wins: the old model calls a new class by an old name, a bus a 'car'), and the soft KD (logit KD on the
  teacher's classes through the class map, box and feature KD) teaches them everywhere.
* **new classes** are taught by the labels (the teacher has no score for them: no logit KD there).
* **report**: each epoch, the teacher's targets per old class; an old class it gave none is named once
  (:meth:`OldClassTargets.epoch_report`): only the soft KD keeps it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from detkd.errors import IncompatibleModelsError
from detkd.models.class_map import ABSENT_LOGIT, name_index, names_list, normalise_name


def union_classes(teacher_names, data_names) -> tuple[list[str], list[int], list[bool]]:
    """(the student's classes: the teacher's, then the data's new ones; each data class's index among them; per
    student class, whether the data labels it). Names are matched case/space-insensitively; names colliding on one
    side are refused (:class:`IncompatibleModelsError`)."""
    t_names, d_names = names_list(teacher_names), names_list(data_names)
    t_keys = name_index(t_names, "the teacher's")
    name_index(d_names, "the data's")
    union = list(t_names)
    data_to_union = []
    for name in d_names:
        index = t_keys.get(normalise_name(name))
        if index is None:
            index = len(union)
            union.append(name)
        data_to_union.append(index)
    labelled = [i in set(data_to_union) for i in range(len(union))]
    return union, data_to_union, labelled


def remap_labels(dataset, data_to_union: list[int]) -> None:
    """Renumber the class ids of an Ultralytics ``YOLODataset``'s labels (in place) from the data's to the union's."""
    import numpy as np

    table = np.asarray(data_to_union)
    for label in dataset.labels:
        cls = label["cls"]
        if len(cls):
            label["cls"] = table[cls.astype(int)].astype(cls.dtype).reshape(cls.shape)


def widen_from(student, source, n_old: int) -> bool:
    """Copy ``source``'s weights into ``student`` when they are the same architecture but for the number of classes
    (``n_old`` in ``source``, more in ``student``); returns False (and changes nothing) when the architectures differ.

    Every tensor of equal shape is copied. Only the head's class branches (``cv3``, ``one2one_cv3``) may differ:
    their last conv has one row per class, and Ultralytics sizes their hidden convs by the class count too
    (c3 = max(ch[0], min(nc, 100)): 80 → 82 classes widens them from 80 to 82 channels). A tensor there that grew is
    copied into its leading slice (the old rows, channels and statistics exactly) and its new rows keep the student's
    initialisation; a conv weight whose inputs grew gets 0 from its new inputs into its old outputs. So the widened
    model computes exactly the old model's scores for the old classes (function-preserving widening, as in Net2Net),
    and the new channels and classes learn from there."""
    target, weights = student.state_dict(), source.float().state_dict()
    if set(target) != set(weights):
        return False
    head = f"model.{len(student.model) - 1}."
    for key, value in weights.items():
        have = target[key]
        if have.shape == value.shape:
            continue
        in_class_branch = key.startswith(head) and key[len(head):].startswith(("cv3.", "one2one_cv3."))
        if not in_class_branch or have.dim() != value.dim() or any(h < v for h, v in zip(have.shape, value.shape)):
            return False
    with torch.no_grad():
        for key, value in weights.items():
            have = target[key]
            have[tuple(slice(0, n) for n in value.shape)].copy_(value)
            if have.dim() > 1 and have.shape[1] > value.shape[1]:  # new inputs: nothing into the old outputs
                have[:value.shape[0], value.shape[1]:].zero_()
    return True


class BackgroundMaskedBCE(torch.nn.Module):
    """Ultralytics' element-wise BCE (``BCEWithLogitsLoss(reduction='none')``) with no background term for the
    classes the labels do not cover on the anchors no object is assigned to:
    loss[b, a, c] = 0 where ``unlabelled[c]`` and target[b, a, :] = 0.

    Such an anchor may sit on an unlabelled old object, so the old classes get no background loss there. An anchor
    assigned to an object (a label, or the teacher's detection added as a target) is that object: every other class,
    the old ones included, is background there as in Ultralytics' loss — else nothing stops the old model's guess on
    a new class's object (a rook called a 'pawn') from growing.

    Shapes: pred, target (B, A, C); unlabelled (C,) bool."""

    def __init__(self, unlabelled: torch.Tensor):
        super().__init__()
        self.register_buffer("unlabelled", unlabelled.bool(), persistent=False)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = F.binary_cross_entropy_with_logits(pred, target, reduction="none")
        unassigned = (target <= 0).all(-1, keepdim=True)  # (B, A, 1)
        return loss.masked_fill(unassigned & self.unlabelled.to(target.device), 0.0)


def mask_background_loss(detection_loss, unlabelled: torch.Tensor) -> None:
    """Install :class:`BackgroundMaskedBCE` in Ultralytics' detection loss (``v8DetectionLoss.bce``; both branches of
    an end-to-end ``E2ELoss``)."""
    for loss in (getattr(detection_loss, "one2many", None), getattr(detection_loss, "one2one", None)) \
            if hasattr(detection_loss, "one2many") else (detection_loss,):
        if not hasattr(loss, "bce"):
            raise IncompatibleModelsError(f"--keep-teacher-classes: the student's detection loss "
                                          f"{type(loss).__name__} has no class BCE to mask.")
        loss.bce = BackgroundMaskedBCE(unlabelled)


REPORT_CLASSES = 20  # old classes named in the epoch's count of the teacher's targets (a COCO-80 teacher: the first)
LABEL_WINS_IOU = 0.5  # a teacher detection overlapping a label this much is the labelled object (COCO's match IoU)


def add_teacher_pseudo_labels(batch: dict, rows: torch.Tensor, teacher_boxes_px: torch.Tensor,
                              teacher_logits: torch.Tensor, unlabelled: torch.Tensor, conf: float) -> dict:
    """``batch`` with the teacher's detections (≥ ``conf``, after NMS) of the ``unlabelled`` classes added to the
    targets of the images ``rows`` (B,) bool (see :func:`detkd.engine.unlabeled.pseudo_label_targets`), except on
    the objects the image labels (IoU ≥ ``LABEL_WINS_IOU`` with a label): the old model calls a new class by an old
    name (a bus a 'car'), and two targets on one object would split its anchors and train the label's class as
    background on half of them.

    Shapes: teacher_boxes_px (B, A, 4) xyxy px, teacher_logits (B, A, C) in the student's classes, unlabelled (C,)."""
    from detkd.engine.unlabeled import pseudo_label_targets

    only_unlabelled = teacher_logits.masked_fill(~unlabelled.to(teacher_logits.device), ABSENT_LOGIT)
    return pseudo_label_targets(batch, ~rows, teacher_boxes_px, only_unlabelled, conf, label_iou=LABEL_WINS_IOU)


class OldClassTargets:
    """The criterion's hook: the teacher's detections of the classes the data does not label become targets on the
    labelled images (on the unlabelled ones ``--unlabeled`` pseudo-labels every class already)."""

    def __init__(self, unlabelled: torch.Tensor, conf: float | None, teacher_reg_max: int):
        self.unlabelled = unlabelled.bool()
        self.conf = conf
        self.teacher_reg_max = teacher_reg_max
        self.added = torch.zeros(len(self.unlabelled), dtype=torch.long, device=self.unlabelled.device)  # this epoch
        self.warned: set[int] = set()  # classes already named for getting no targets

    def __call__(self, batch: dict, labeled, teacher_out, anchor_points, stride_tensor) -> dict:
        """``batch`` with the teacher's old-class targets added (unchanged with ``pseudo_conf`` off)."""
        from detkd.losses.localization import decode_boxes
        from detkd.losses.weighting import confidence_logits

        if self.conf is None:
            return batch
        t_boxes = decode_boxes(teacher_out.boxes, anchor_points, self.teacher_reg_max) * stride_tensor
        rows = labeled if labeled is not None else torch.ones(t_boxes.shape[0], dtype=torch.bool,
                                                              device=t_boxes.device)
        out = add_teacher_pseudo_labels(batch, rows, t_boxes, confidence_logits(teacher_out), self.unlabelled,
                                        self.conf)
        n = len(self.added)
        self.added += (_class_counts(out["cls"], n) - _class_counts(batch["cls"], n)).to(self.added.device)
        return out

    def epoch_report(self, names: list[str]) -> tuple[str, str | None]:
        """(the teacher's targets per old class since the last report; a warning naming the old classes it gave
        none for the first time, or None). Counting starts again. An old class the teacher is never confident about
        gets no pseudo-labels: only the soft KD keeps it, and it may be lost (on aquarium, penguins and puffins the
        old model scored 0.015 and 0.002 AP on)."""
        counts, self.added = self.added.tolist(), torch.zeros_like(self.added)
        old = [i for i, u in enumerate(self.unlabelled.tolist()) if u]
        shown = ", ".join(f"{names[i]} {counts[i]}" for i in old[:REPORT_CLASSES])
        more = f", ... ({len(old) - REPORT_CLASSES} more)" if len(old) > REPORT_CLASSES else ""
        info = f"the teacher's targets this epoch (its classes the data does not label, conf >= {self.conf:g}): " \
               f"{shown}{more}"
        silent = [i for i in old if counts[i] == 0 and i not in self.warned]
        self.warned.update(silent)
        warning = None if not silent else (
            f"{', '.join(names[i] for i in silent)}: the teacher detected none at conf >= {self.conf:g} in this "
            f"epoch's images: only its soft KD keeps {'it' if len(silent) == 1 else 'them'}, and the student may "
            f"forget {'it' if len(silent) == 1 else 'them'} (a lower --pseudo-conf pseudo-labels less confident "
            f"detections too).")
        return info, warning

    def anchor_weights(self, weights: torch.Tensor, teacher_out) -> torch.Tensor:
        """The logit and box KD's anchor weights (B, A). With pseudo-labels the teacher's detections are labels, and
        the weights (``verified`` included) already cover them: unchanged. Without (``pseudo_conf`` off: soft KD
        only) no label marks an old-class object, so the teacher's confidence in the unlabelled classes joins in:
        w_a = max(w_a, max_{c unlabelled} σ(t_ac)) — as on an unlabelled image, for the classes nobody labels."""
        from detkd.losses.weighting import confidence_logits

        if self.conf is not None:
            return weights
        conf = confidence_logits(teacher_out).detach().float().sigmoid()
        old = conf.masked_fill(~self.unlabelled.to(conf.device), 0.0).amax(-1)
        return torch.maximum(weights, old.to(weights.dtype))


def _class_counts(cls: torch.Tensor, n: int) -> torch.Tensor:
    """Targets per class (n,) of a batch's ``cls`` (N, 1)."""
    return torch.bincount(cls.view(-1).long(), minlength=n)[:n]


# ------------------------------------------------------------------------------------------ trainer side
def incremental_data(data: dict, teacher_path: str) -> tuple[dict, list[int], list[bool], list[str]]:
    """The run's data description with the student's classes (teacher's ∪ data's), the data → union class table,
    per union class whether the data labels it, and the teacher's class names."""
    from detkd.models.compat import _is_placeholder
    from detkd.models.loading import YAML_SUFFIXES, load_detection_model

    if str(teacher_path).lower().endswith(YAML_SUFFIXES):
        raise IncompatibleModelsError("--keep-teacher-classes needs the old model's checkpoint (.pt) as --teacher: a "
                                      "model YAML has no classes to keep.")
    t_names = names_list(load_detection_model(teacher_path, role="teacher").names)
    if not t_names or _is_placeholder(t_names):
        raise IncompatibleModelsError(f"--keep-teacher-classes: the teacher's classes have no names "
                                      f"({', '.join(t_names[:4])}...): nothing tells them from the data's.")
    union, table, labelled = union_classes(t_names, data["names"])
    return {**data, "names": dict(enumerate(union)), "nc": len(union)}, table, labelled, t_names


def describe_union(t_names: list[str], union: list[str], labelled: list[bool]) -> str:
    old_only = [n for n, lab in zip(union, labelled) if not lab and n in t_names]
    both = [n for n, lab in zip(union, labelled) if lab and n in t_names]
    new = union[len(t_names):]
    return (f"--keep-teacher-classes: the student's {len(union)} classes = the teacher's {len(t_names)} + "
            f"{len(new)} new ({', '.join(new) or 'none'}). Taught by the teacher only (no background loss from the "
            f"labels): {', '.join(old_only) or 'none'}; labelled by the data and known to the teacher: "
            f"{', '.join(both) or 'none'}.")


def start_from_old_model(student, student_path: str, teacher_path: str, t_names: list[str], union: list[str]) -> str:
    """Start the student from the old model's weights where possible (see the module doc); returns what was done.
    Raises :class:`IncompatibleModelsError` for a student checkpoint with other classes."""
    from detkd.models.loading import load_detection_model

    n_old = len(t_names)
    if str(student_path).lower().endswith(".pt"):
        net = load_detection_model(student_path, role="student")
        names = names_list(net.names)
        if names == union:
            return "the student checkpoint has the classes already: loaded as it is"
        if names == t_names and widen_from(student, net, n_old):
            return (f"the student checkpoint's head widened from {n_old} to {len(union)} classes (the old classes' "
                    f"rows kept)")
        raise IncompatibleModelsError(
            f"--keep-teacher-classes: the student checkpoint '{student_path}' predicts {', '.join(names[:8])}"
            f"{' ...' if len(names) > 8 else ''}: neither the teacher's classes ({', '.join(t_names[:8])}) nor the "
            f"teacher's + the data's, so its head does not match. Pass the old model itself, a checkpoint of this "
            f"run, or a model YAML.")
    if widen_from(student, load_detection_model(teacher_path, role="teacher"), n_old):
        return (f"the student starts from the teacher's weights (same architecture), head widened from {n_old} to "
                f"{len(union)} classes (the old classes' rows kept)")
    return "the student starts from its own config (its architecture is not the teacher's)"

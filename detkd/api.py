"""Python entry points: ``distill`` (teacher → student) and ``train_baseline`` (the same student, no teacher).

    from detkd import distill
    run = distill(teacher="teacher.pt", student="yolov8n.yaml", data="path/to/coco_dataset", epochs=100, imgsz=640)
    print(run.best, run.metrics["mAP50-95"])

``data`` may be an Ultralytics data.yaml or a COCO-format dataset (converted once, cached).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from detkd.config import KDConfig
from detkd.errors import DatasetError

DEFAULT_PROJECT = "runs/detect"


@dataclass
class RunResult:
    """Where a training run wrote its outputs, and its final validation metrics."""

    save_dir: Path
    best: Path
    last: Path
    results_csv: Path
    metrics: dict = field(default_factory=dict)
    teacher_metrics: dict = field(default_factory=dict)
    class_groups: dict = field(default_factory=dict)  # a teacher with other classes: AP per class group

    def describe(self) -> str:
        m = self.metrics
        lines = [f"best.pt      {self.best}", f"results.csv  {self.results_csv}"]
        if m:
            lines.append(f"val mAP50-95 {m.get('mAP50-95', float('nan')):.4f}   mAP50 {m.get('mAP50', float('nan')):.4f}"
                         f"   ({m.get('source', 'ultralytics')})")
        if self.class_groups:
            from detkd.eval.class_groups import format_group_table

            lines.append(format_group_table(self.class_groups))
        return "\n".join(lines)


def resolve_data(data: str | Path) -> str:
    """An Ultralytics data.yaml path for ``data`` (COCO datasets are converted once into a cache, and refused when
    the train or val split has no usable box)."""
    try:
        from detkd.data.coco import prepare_dataset
    except ImportError:  # pragma: no cover - converter not installed
        prepare_dataset = None
    if prepare_dataset is not None:
        return str(prepare_dataset(data, for_training=True))
    p = Path(str(data))
    if not p.is_file():
        raise DatasetError(f"data '{data}' not found: pass an Ultralytics data.yaml or a COCO dataset folder.")
    return str(p)


def _train_overrides(student, data, train_args: dict) -> dict:
    from detkd.config import check_train_args
    from detkd.models.loading import resolve_model_path

    check_train_args(train_args)  # Ultralytics' name/type/range checks, as one ConfigError before any work
    resume = train_args.get("resume")
    # a resume keeps its run's project: a default given here would only be reported as "Resume ignores ['project']"
    overrides = dict(train_args) if resume else {"project": DEFAULT_PROJECT, **train_args}
    if not resume:
        overrides["model"] = resolve_model_path(student, role="student")
        overrides["data"] = resolve_data(data)
    else:
        overrides["model"] = overrides["resume"] = str(overrides["resume"])
        if data:
            overrides["data"] = resolve_data(data)
    return overrides


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl+C during training, carrying the run's ``last.pt`` (what ``--resume`` takes; absent before epoch 1 ends)."""

    def __init__(self, last: Path):
        super().__init__(str(last))
        self.last = Path(last)


def _train(trainer) -> RunResult:
    """Run ``trainer``; an interrupt names the interrupted run's own ``last.pt``."""
    try:
        trainer.train()
    except KeyboardInterrupt as e:
        raise TrainingInterrupted(Path(trainer.last).resolve()) from e
    return _result(trainer)


def _result(trainer) -> RunResult:
    metrics, m = {}, trainer.metrics or {}
    if "metrics/AP(COCO)" in m:  # --coco-eval: official COCO AP on the dataset's own JSON
        from detkd.eval.metrics import BACKEND_LABEL, resolve_backend

        backend = getattr(trainer.validator, "coco_backend", None) or resolve_backend()
        metrics = {"mAP50-95": float(m["metrics/AP(COCO)"]), "mAP50": float(m["metrics/AP50(COCO)"]),
                   "source": BACKEND_LABEL[backend]}
    elif m:
        metrics = {"mAP50-95": float(m.get("metrics/mAP50-95(B)", 0.0)), "mAP50": float(m.get("metrics/mAP50(B)", 0.0)),
                   "source": "ultralytics"}
    return RunResult(
        save_dir=Path(trainer.save_dir), best=Path(trainer.best), last=Path(trainer.last),
        results_csv=Path(trainer.csv), metrics=metrics, teacher_metrics=getattr(trainer, "teacher_metrics", {}),
        class_groups=getattr(trainer, "class_group_metrics", {}),
    )


def check_resumable(path) -> None:
    """Refuse, with the reason, a resume path that is missing, not a detkd run, or already finished."""
    import torch

    from detkd.errors import ConfigError

    from detkd.models.loading import refuse_exported

    refuse_exported(path, "--resume", "a run resumes from its own PyTorch checkpoint, weights/last.pt")
    p = Path(str(path))
    if not p.is_file():
        raise ConfigError(f"cannot resume: '{path}' not found (pass the run's weights/last.pt).")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as e:
        raise ConfigError(f"cannot resume: '{path}' is not a readable checkpoint ({type(e).__name__}).") from None
    args = ckpt.get("train_args") or {}
    if not args.get("kd"):
        raise ConfigError(f"cannot resume: '{path}' was not written by detkd distill (no kd settings in it).")
    epoch, epochs = ckpt.get("epoch", -1), int(args.get("epochs", 0))
    if epoch < 0 or epoch + 1 >= epochs:
        raise ConfigError(f"cannot resume: the run in '{p.parent.parent}' already finished ({epochs} epochs). "
                          f"Start a new run, e.g. with --student {p.parent / 'best.pt'} to fine-tune further.")


def distill(teacher=None, student="yolov8n.yaml", data=None, kd: KDConfig | dict | str | None = None,
            unlabeled=None, **train_args) -> RunResult:
    """Train ``student`` on ``data`` with distillation from ``teacher``.

    Args:
        teacher: teacher .pt (or model .yaml), or a list of them (one weighted ensemble teacher, weights in
            ``kd.teacher_weights``). Overrides ``kd.teacher``.
        student: student .pt or model .yaml (``yolov8n.yaml`` trains from scratch).
        data: Ultralytics data.yaml or a COCO dataset (folder or detkd COCO YAML).
        kd: :class:`KDConfig`, a dict of its fields, or a YAML path. Defaults: detkd's recipe.
        unlabeled: unlabelled images to distil on as well (folder, .txt list, COCO JSON, or a YAML with an
            ``unlabeled:`` entry); overrides ``kd.unlabeled``, which overrides an ``unlabeled:`` entry of the ``data``
            YAML (share of each epoch: ``kd.unlabeled_ratio``; hard pseudo-labels: ``kd.pseudo_conf``).
        **train_args: any Ultralytics training argument (epochs, imgsz, batch, device, project, name, seed, ...),
            or ``resume="path/to/last.pt"`` to continue an interrupted run (teacher and adapters re-attached, KD
            settings from the checkpoint; ``teacher`` given with it re-points a moved teacher).
    """
    from detkd.engine.trainer import DistillationTrainer

    overrides = _train_overrides(student, data, train_args)
    if overrides.get("resume"):
        check_resumable(overrides["resume"])
        moved = None if teacher is None else _checked_teachers(KDConfig(teacher=_teacher_value(teacher)))
        trainer = DistillationTrainer(overrides=overrides, kd=moved)  # kd settings come from the checkpoint
    else:
        cfg = KDConfig.coerce(kd) if kd is not None else KDConfig()
        if teacher is not None:  # one teacher, or a list: several distilled as one ensemble
            cfg.teacher = _teacher_value(teacher)
            cfg.validate()
        from detkd.data.unlabeled import resolve_unlabeled, unlabeled_source

        pool = unlabeled_source(unlabeled if unlabeled is not None else cfg.unlabeled, data)  # or the data YAML's
        if pool and pool != cfg.unlabeled:
            cfg.unlabeled = pool
            cfg.validate()
        if cfg.unlabeled:  # a missing or empty source fails before any work

            resolve_unlabeled(cfg.unlabeled)
        if not cfg.teacher:
            from detkd.errors import ConfigError

            raise ConfigError("no teacher given: pass teacher='teacher.pt' (or a model .yaml).")
        trainer = DistillationTrainer(overrides=overrides, kd=_checked_teachers(cfg))
    return _train(trainer)


def _teacher_value(teacher) -> str | list[str]:
    """One teacher path, or a list of them (several distilled as one ensemble)."""
    return [str(t) for t in teacher] if isinstance(teacher, (list, tuple)) else str(teacher)


def _checked_teachers(cfg: KDConfig) -> KDConfig:
    """``cfg``, once each of its teachers is found (fail before any work if one is missing)."""
    from detkd.models.loading import resolve_model_path

    for t in cfg.teachers:
        resolve_model_path(t, role="teacher")
    return cfg


def train_baseline(student="yolov8n.yaml", data=None, **train_args) -> RunResult:
    """Train ``student`` without a teacher (Ultralytics' DetectionTrainer; ``coco_eval=True`` supported)."""
    from detkd.engine.baseline import StudentTrainer

    trainer = StudentTrainer(overrides=_train_overrides(student, data, train_args))
    return _train(trainer)

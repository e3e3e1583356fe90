"""A resumed run's teachers: each must still be where the run recorded it, or be re-pointed with ``--teacher``
(used by :meth:`detkd.engine.trainer.DistillationTrainer.check_resume`)."""

from __future__ import annotations

from detkd.errors import ConfigError


def teacher_found(path: str) -> bool:
    """The teacher file is where the run recorded it (a model YAML always is)."""
    from detkd.errors import WeightsNotFoundError
    from detkd.models.loading import resolve_model_path

    try:
        resolve_model_path(path, role="teacher")
    except WeightsNotFoundError:
        return False
    return True


def repointed_teachers(saved: list[str], given: list[str]) -> list[str]:
    """The run's teachers ``saved`` with the paths ``given`` on resume put in: one path per teacher (in the run's
    order), or one per teacher no longer found (in the run's order, the others kept). Anything else is refused."""
    if len(given) == len(saved):
        return list(given)
    missing = [i for i, t in enumerate(saved) if not teacher_found(t)]
    if missing and len(given) == len(missing):
        teachers = list(saved)
        for i, path in zip(missing, given):
            teachers[i] = path
        return teachers
    lost = f"{len(missing)} not found ({', '.join(saved[i] for i in missing)})" if missing else "all found"
    raise ConfigError(f"cannot re-point the teachers on resume: the run distils from {len(saved)} teacher"
                      f"{'s' if len(saved) != 1 else ''} {saved}, {lost}; {len(given)} given. Give --teacher once "
                      f"per teacher not found, or once per teacher in the run's order.")


def check_resumed_teachers(teachers: list[str]) -> None:
    """A resume re-attaches the run's teacher(s): refuse, naming --teacher, when one is no longer where it was."""
    for t in teachers:
        if not teacher_found(t):
            raise ConfigError(f"cannot resume: the run's teacher '{t}' is not found (moved or deleted). Give its new "
                              f"path with --teacher PATH (several teachers: once per teacher not found, or once per "
                              f"teacher in the run's order; Python: distill(resume=..., teacher=PATH)); it is "
                              f"checked against the student like any teacher.")


def check_same_teachers(checkpoint, teachers: list[str]) -> None:
    """Refuse a resume whose teacher files are not the ones the run was trained with (same SHA-256, wherever they
    are now): a retrained or replaced teacher, or another model given with ``--teacher``, is a new run. Runs saved
    before the identities were recorded are not checked."""
    import torch

    from detkd.engine.checkpoints import adapters_path
    from detkd.engine.fingerprint import model_id

    path = adapters_path(checkpoint)
    saved = torch.load(path, map_location="cpu", weights_only=True).get("teachers") if path.is_file() else None
    if not saved or len(saved) != len(teachers):
        return
    for t, was in zip(teachers, saved):
        now = model_id(t)
        if was.get("sha256") and now.get("sha256") != was["sha256"]:
            raise ConfigError(f"cannot resume: teacher '{t}' is not the file the run was trained with (SHA-256 "
                              f"{str(now.get('sha256'))[:12]}..., the run's {was['sha256'][:12]}... '{was['file']}'). "
                              f"Distilling from another teacher is a new run: start one (without --resume), or give "
                              f"the run's own teacher file with --teacher PATH.")

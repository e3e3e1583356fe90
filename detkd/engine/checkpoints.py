"""Where a checkpoint's run lives and where its KD training state (feature adapters, loss balancer, KD guard) is
saved.

Ultralytics writes ``weights/last.pt`` (every epoch), ``weights/best.pt`` (best fitness) and, with ``save_period``,
``weights/epochN.pt``. They hold the student only; detkd saves the feature adapters trained with it (and MGD
generators), with ``--kd-balance detection`` the loss balancer's running scale, and the KD guard's state (its
per-term scales with ``--kd-guard adapt``, its history) beside each of them, in a file named after the checkpoint:

    weights/last.pt     -> weights/kd_adapters.pt          (the name older runs used, so they still resume)
    weights/best.pt     -> weights/best_kd_adapters.pt
    weights/epoch3.pt   -> weights/epoch3_kd_adapters.pt

Each adapter file stores the epoch it was saved at. A resume (or NaN recovery) loads the adapters of the very
checkpoint it continues from, and only when their epochs agree; otherwise the adapters restart from a fresh
initialisation, with a warning saying why (training stays correct: adapters are re-learnt in a few hundred steps,
whereas adapters from another epoch would silently mismatch the student). The balancer's scale follows the same
rule (a fresh one re-learns its running averages within a few dozen batches), and so does the guard's state.
"""

from __future__ import annotations

from pathlib import Path

ADAPTERS_FILE = "kd_adapters.pt"  # the adapters saved with last.pt
ADAPTERS_SUFFIX = "_kd_adapters.pt"  # the adapters saved with any other checkpoint: <stem>_kd_adapters.pt


def run_dir_of(checkpoint: str | Path) -> Path:
    """The run folder a checkpoint belongs to: ``<run>/weights/last.pt`` → ``<run>``.

    A checkpoint outside a ``weights/`` folder is its own run folder's file (``<run>/last.pt`` → ``<run>``), so a
    resume never writes anywhere but beside the checkpoint it was given.
    """
    parent = Path(checkpoint).resolve().parent
    return parent.parent if parent.name == "weights" else parent


def run_state(run_dir: str | Path) -> tuple[str, Path | None]:
    """Where a run folder stands: ('finished', best.pt), ('interrupted', last.pt) or ('new', None).

    Ultralytics marks the checkpoints of a finished run with ``epoch = -1`` (its final strip); any other epoch in
    ``weights/last.pt`` means the run was cut off and can resume from it.
    """
    import torch

    weights = Path(run_dir) / "weights"
    last, best = weights / "last.pt", weights / "best.pt"
    if not last.is_file():
        return "new", None
    if torch.load(last, map_location="cpu", weights_only=False).get("epoch", -1) == -1:
        return "finished", best if best.is_file() else last
    return "interrupted", last


def adapters_path(checkpoint: str | Path) -> Path:
    """The adapter file saved with ``checkpoint`` (see the module doc for the names)."""
    p = Path(checkpoint)
    return p.with_name(ADAPTERS_FILE if p.stem == "last" else f"{p.stem}{ADAPTERS_SUFFIX}")


def written_checkpoints(trainer) -> list[Path]:
    """The checkpoints ``BaseTrainer.save_model`` has just written: ``last.pt`` always, ``best.pt`` when this epoch's
    fitness is the best, ``epochN.pt`` every ``save_period`` epochs (Ultralytics' own conditions)."""
    paths = [Path(trainer.last)]
    if trainer.best_fitness == trainer.fitness:
        paths.append(Path(trainer.best))
    if trainer.save_period > 0 and trainer.epoch % trainer.save_period == 0:
        paths.append(Path(trainer.wdir) / f"epoch{trainer.epoch}.pt")
    return paths


def save_kd_state(checkpoints: list[Path], epoch: int, kd: dict, adapters=None, balancer=None,
                  guard: dict | None = None, teachers: list | None = None) -> None:
    """Save the KD training state beside each checkpoint in ``checkpoints``, with the epoch it was trained to: the
    ``adapters`` (feature KD), the ``balancer``'s running scale (``--kd-balance detection``), the KD ``guard``'s
    state (``KDGuard.state_dict()``) and the ``teachers``' identities (file hashes,
    :func:`~detkd.engine.fingerprint.model_id`: a resume checks it distils from the same files), those given."""
    import io

    import torch

    state = {"epoch": epoch, "kd": kd}
    if teachers is not None:
        state["teachers"] = teachers
    if adapters is not None:
        state["adapters"] = adapters.state_dict()
    if balancer is not None:
        state["balancer"] = balancer.state_dict()
    if guard is not None:
        state["guard"] = guard
    buffer = io.BytesIO()
    torch.save(state, buffer)
    for ckpt in checkpoints:
        adapters_path(ckpt).write_bytes(buffer.getvalue())


def _saved_state(checkpoint: str | Path, device, epoch: int | None, part: str) -> tuple[dict | None, str | None]:
    """(the KD state saved with ``checkpoint``, None) when it holds ``part`` saved at ``epoch`` (any when None), else
    (None, why not)."""
    import torch

    path = adapters_path(checkpoint)
    if not path.is_file():
        return None, f"{path} not found"
    state = torch.load(path, map_location=device, weights_only=True)
    if epoch is not None and state.get("epoch") != epoch:
        return None, (f"{path} holds the {part} of epoch {state.get('epoch')}, but {Path(checkpoint).name} is a "
                      f"checkpoint of epoch {epoch} ({part} of another checkpoint)")
    if part not in state:
        return None, f"{path} holds no {part}"
    return state, None


def load_adapters(adapters, checkpoint: str | Path, device, epoch: int | None = None) -> str | None:
    """Load the adapters saved with ``checkpoint`` into ``adapters``, in place (optimizer references stay valid).

    ``epoch``: the checkpoint's epoch; adapters saved at another epoch are not loaded. Returns None when loaded,
    else why they were not (the caller warns, and keeps fresh adapters or resets them).
    """
    state, why_not = _saved_state(checkpoint, device, epoch, "adapters")
    if why_not:
        return why_not
    _check_widths(adapters.state_dict(), state["adapters"], adapters_path(checkpoint))
    adapters.load_state_dict(state["adapters"])
    return None


def load_balancer(balancer, checkpoint: str | Path, epoch: int | None = None) -> str | None:
    """Load the loss balancer's running scale saved with ``checkpoint`` into ``balancer`` (same rules as
    :func:`load_adapters`). Returns None when loaded, else why not."""
    state, why_not = _saved_state(checkpoint, "cpu", epoch, "balancer")
    if why_not:
        return why_not
    balancer.load_state_dict(state["balancer"])
    return None


def load_guard(guard, checkpoint: str | Path, epoch: int | None = None) -> str | None:
    """Load the KD guard's state saved with ``checkpoint`` into ``guard`` (same rules as :func:`load_adapters`).
    Returns None when loaded, else why not."""
    state, why_not = _saved_state(checkpoint, "cpu", epoch, "guard")
    if why_not:
        return why_not
    guard.load_state_dict(state["guard"])
    return None


def _check_widths(own: dict, saved: dict, path: Path) -> None:
    """Refuse adapters saved for other feature widths (another teacher or student than the run's)."""
    from detkd.errors import IncompatibleModelsError

    for k, v in own.items():
        if k not in saved or tuple(saved[k].shape) != tuple(v.shape):
            found = tuple(saved[k].shape) if k in saved else "missing"
            raise IncompatibleModelsError(
                f"{path} holds adapters for other feature widths ({k}: saved {found}, now {tuple(v.shape)}): a run "
                f"resumes with its own teacher. A moved teacher is re-pointed with --teacher PATH; distilling from "
                f"another teacher is a new run.")


def drop_optimizer_state(adapters, optimizer) -> None:
    """Forget the optimizer's moments of the adapters' parameters (they belonged to other adapter weights)."""
    for p in adapters.parameters():
        optimizer.state.pop(p, None)


def reset_adapters(adapters, optimizer=None) -> None:
    """Re-initialise ``adapters`` in place and drop their optimizer state."""
    for m in adapters.modules():
        if m is not adapters and hasattr(m, "reset_parameters"):
            m.reset_parameters()
    if optimizer is not None:
        drop_optimizer_state(adapters, optimizer)

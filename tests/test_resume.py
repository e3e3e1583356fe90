"""Resume and checkpoints: a resume writes only into its own run folder, adapters travel with each checkpoint,
NaN recovery restores them, gradient clipping covers them, a moved teacher can be re-pointed, and an interrupted
CLI run names its real last.pt. Tiny generated data (64 px), CPU."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import torch

from conftest import TINY_TRAIN
from detkd.config import KDConfig
from detkd.engine.baseline import StudentTrainer
from detkd.engine.trainer import DistillationTrainer


class Interrupt(Exception):
    """Raised by a callback to cut a run off after its first checkpoint."""


def _stop(trainer):
    raise Interrupt


def _epochs(results_csv) -> list[int]:
    with open(results_csv) as f:
        return [int(float({k.strip(): v for k, v in row.items()}["epoch"])) for row in csv.DictReader(f)]


def _snapshot(folder: Path) -> dict:
    """Every file under ``folder`` (relative path → bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _changed(folder: Path, before: dict) -> list[str]:
    """Files under ``folder`` added, removed or rewritten since ``before`` was taken."""
    after = _snapshot(folder)
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


def _kd(teacher_pt, **kw) -> KDConfig:
    return KDConfig(teacher=teacher_pt, validate_teacher=False, **kw)


def _cut_off_run(trainer) -> Path:
    """Train ``trainer`` (2 epochs) until its first checkpoint is written, then stop it; its run folder."""
    trainer.add_callback("on_model_save", _stop)
    with pytest.raises(Interrupt):
        trainer.train()
    assert trainer.last.is_file() and _epochs(trainer.csv) == [1]
    return Path(trainer.save_dir)


# ------------------------------------------------------------------------------- item 1: resume writes in its folder
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["distill", "baseline"])
def test_resume_of_a_copied_run_writes_only_into_the_copy(tmp_path, shapes_yaml, teacher_pt, kind):
    from detkd.api import distill, train_baseline

    overrides = dict(model="yolov8n.yaml", data=shapes_yaml, project=str(tmp_path), name="a", val=False, **TINY_TRAIN)
    trainer = (DistillationTrainer(overrides=overrides, kd=_kd(teacher_pt)) if kind == "distill"
               else StudentTrainer(overrides=overrides))
    original = _cut_off_run(trainer)
    copy = tmp_path / "a_copy"
    shutil.copytree(original, copy)
    before = _snapshot(original)

    resume = distill if kind == "distill" else train_baseline
    run = resume(resume=str(copy / "weights" / "last.pt"))

    assert _changed(original, before) == []  # the original run is untouched, byte for byte
    assert run.save_dir.resolve() == copy.resolve() and run.last.resolve() == (copy / "weights" / "last.pt").resolve()
    assert _epochs(copy / "results.csv") == [1, 2]  # the copy holds the completed epochs
    assert torch.load(copy / "weights" / "last.pt", map_location="cpu", weights_only=False)["epoch"] == -1  # finished


def test_compare_reuse_of_a_copied_folder_uses_the_copy(tmp_path, shapes_yaml, teacher_pt):
    """A finished run in a copied compare folder is reused from the copy, not from the folder it was copied from."""
    import json

    from detkd.compare.experiment import MARKER, CompareSettings, plan, train_fingerprint, train_run

    s = CompareSettings(teacher=teacher_pt, data=shapes_yaml, epochs=1, project=str(tmp_path), name="c").validate()
    spec = plan(s)[1]  # baseline
    run = tmp_path / "c" / "train" / spec.key
    (run / "weights").mkdir(parents=True)
    (run / "weights" / "best.pt").write_bytes(b"weights")
    (run / "results.csv").write_text("epoch\n1\n")
    (run / MARKER).write_text(json.dumps({
        "fingerprint": train_fingerprint(spec, s, shapes_yaml), "best": str(run / "weights" / "best.pt"),
        "results_csv": str(run / "results.csv"), "save_dir": str(run)}))
    shutil.copytree(tmp_path / "c", tmp_path / "c_copy")

    s.name = "c_copy"
    reused = train_run(plan(s)[1], s, shapes_yaml, s.out_dir, log=lambda *_: None)
    copy = (tmp_path / "c_copy" / "train" / spec.key).resolve()
    assert reused.train["reused"]
    assert Path(reused.weights).resolve() == copy / "weights" / "best.pt"
    assert Path(reused.results_csv).resolve() == copy / "results.csv"
    assert Path(reused.train["save_dir"]).resolve() == copy


# ------------------------------------------------------------------------------- item 3: NaN recovery and adapters
@pytest.mark.slow
def test_nan_recovery_restores_the_adapters_saved_with_last_pt(tmp_path, shapes_yaml, teacher_pt):
    """A NaN in an adapter weight makes the loss NaN; Ultralytics' recovery reloads last.pt, and the adapters saved
    with it must come back too (before: the NaN adapter stayed, 'NaN persisted for 4 epochs')."""
    from detkd.engine.checkpoints import adapters_path

    trainer = DistillationTrainer(overrides=dict(model="yolov8n.yaml", data=shapes_yaml, project=str(tmp_path),
                                                 name="nan", val=False, **{**TINY_TRAIN, "epochs": 3}),
                                  kd=_kd(teacher_pt))
    seen: dict = {}

    def poison_then_watch(t):
        if t.epoch != 1:
            return
        if "saved" not in seen:  # epoch 1, first attempt: a NaN in one adapter weight
            seen["saved"] = torch.load(adapters_path(t.last), weights_only=True)["adapters"]
            with torch.no_grad():
                t.adapters.align[0].weight[0, 0, 0, 0] = float("nan")
        elif "restored" not in seen:  # epoch 1 again, after the recovery from last.pt
            seen["restored"] = {k: v.detach().clone() for k, v in t.adapters.state_dict().items()}
            group = next(g for g in t.optimizer.param_groups if g.get("param_group") == "kd_adapters")
            seen["opt_state"] = [v for p in group["params"] for v in t.optimizer.state.get(p, {}).values()
                                 if isinstance(v, torch.Tensor)]

    trainer.add_callback("on_train_epoch_start", poison_then_watch)
    trainer.train()

    assert "restored" in seen, "the NaN epoch was not recovered"
    assert seen["restored"].keys() == seen["saved"].keys()
    assert all(torch.equal(seen["restored"][k], seen["saved"][k]) for k in seen["saved"])  # the saved adapters
    assert all(torch.isfinite(v).all() for v in seen["opt_state"])  # adapter optimizer state from last.pt, finite
    assert all(torch.isfinite(p).all() for p in trainer.adapters.parameters())
    assert _epochs(trainer.csv) == [1, 2, 3]


# ------------------------------------------------------------------------------- item 9: clipping covers the adapters
def _step_with_grads(student_grad: list[float], adapter_grad: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """One ``DistillationTrainer.optimizer_step`` (SGD, lr 1, weights 0) with the given gradients: the new weights
    are minus the clipped gradients."""
    trainer = object.__new__(DistillationTrainer)  # only what optimizer_step touches
    student, adapters = torch.nn.Linear(len(student_grad), 1, bias=False), torch.nn.Linear(len(adapter_grad), 1,
                                                                                           bias=False)
    for module, grad in ((student, student_grad), (adapters, adapter_grad)):
        torch.nn.init.zeros_(module.weight)
        module.weight.grad = torch.tensor([grad])
    trainer.model, trainer.adapters, trainer.ema, trainer.device = student, adapters, None, torch.device("cpu")
    trainer.optimizer = torch.optim.SGD([{"params": student.parameters()}, {"params": adapters.parameters()}], lr=1.0)
    trainer.scaler = torch.amp.GradScaler("cuda", enabled=False)
    trainer.optimizer_step()
    return -student.weight.detach()[0], -adapters.weight.detach()[0]


def test_gradient_clipping_covers_student_and_adapters_jointly():
    # huge adapter gradients (norm 5000): clipped to Ultralytics' max_norm 10 -> (6, 8)
    s, a = _step_with_grads([0.0, 0.0], [3000.0, 4000.0])
    assert torch.allclose(s, torch.zeros(2)) and torch.allclose(a, torch.tensor([6.0, 8.0]), atol=1e-4)
    # joint norm: student 30 and adapter 40 make 50 -> both scaled by 10/50 (not the student alone to 10)
    s, a = _step_with_grads([30.0, 0.0], [0.0, 40.0])
    assert torch.allclose(s, torch.tensor([6.0, 0.0]), atol=1e-4) and torch.allclose(a, torch.tensor([0.0, 8.0]), atol=1e-4)
    # below the limit nothing changes
    s, a = _step_with_grads([3.0, 0.0], [0.0, 4.0])
    assert torch.allclose(s, torch.tensor([3.0, 0.0])) and torch.allclose(a, torch.tensor([0.0, 4.0]))


# ------------------------------------------------------------------------------- item 10: adapters per checkpoint
def _adapter_moments(trainer) -> list[torch.Tensor]:
    group = next(g for g in trainer.optimizer.param_groups if g.get("param_group") == "kd_adapters")
    return [v for p in group["params"] for v in trainer.optimizer.state.get(p, {}).values() if isinstance(v, torch.Tensor)]


def _resumed_state(checkpoint: Path) -> tuple[dict, list]:
    """Adapters and their optimizer moments as a resume from ``checkpoint`` starts training (then stopped)."""
    resumed = DistillationTrainer(overrides={"resume": str(checkpoint), "model": str(checkpoint)})
    seen = {}
    resumed.add_callback("on_train_start", lambda t: seen.update(
        adapters={k: v.detach().clone() for k, v in t.adapters.state_dict().items()}, moments=_adapter_moments(t)))
    resumed.add_callback("on_train_start", _stop)
    with pytest.raises(Interrupt):
        resumed.train()
    return seen["adapters"], seen["moments"]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_adapters_are_saved_with_each_checkpoint_and_resumed_from_the_right_one(tmp_path, shapes_yaml, teacher_pt):
    from detkd.engine.checkpoints import adapters_path

    trainer = DistillationTrainer(overrides=dict(model="yolov8n.yaml", data=shapes_yaml, project=str(tmp_path),
                                                 name="period", save_period=1, nbs=8, **{**TINY_TRAIN, "epochs": 3}),
                                  kd=_kd(teacher_pt, feat_method="mgd"))
    saved = {}  # epoch -> adapters as they were when that epoch's checkpoints were written

    def record_then_stop(t):
        saved[t.epoch] = {k: v.detach().clone() for k, v in t.adapters.state_dict().items()}
        if t.epoch == 1:
            raise Interrupt

    trainer.add_callback("on_model_save", record_then_stop)
    with pytest.raises(Interrupt):
        trainer.train()
    w = trainer.wdir
    assert not _same(saved[0], saved[1])
    for ckpt, epoch in (("epoch0.pt", 0), ("epoch1.pt", 1), ("last.pt", 1)):
        state = torch.load(adapters_path(w / ckpt), weights_only=True)
        assert state["epoch"] == epoch and _same(state["adapters"], saved[epoch]), ckpt
    assert (w / "best.pt").is_file() and adapters_path(w / "best.pt").is_file()

    # resuming from the older epoch0.pt loads the adapters of epoch 0, not the later ones beside last.pt
    adapters, moments = _resumed_state(w / "epoch0.pt")
    assert _same(adapters, saved[0]) and moments

    # adapters saved at another epoch than their checkpoint: refused with a warning, fresh adapters, no stale moments
    shutil.copy(adapters_path(w / "last.pt"), adapters_path(w / "epoch0.pt"))
    adapters, moments = _resumed_state(w / "epoch0.pt")
    assert not _same(adapters, saved[0]) and not _same(adapters, saved[1]) and moments == []


# ------------------------------------------------------------------------------- item 16: interrupt message, teacher
def _cli_argv(teacher, data, project) -> list[str]:
    return ["distill", "--teacher", str(teacher), "--student", "yolov8n.yaml", "--data", data, "--epochs", "2",
            "--imgsz", "64", "--batch", "8", "--device", "cpu", "--workers", "0", "--seed", "0", "--plots", "false",
            "--val", "false", "--exist-ok", "true", "--teacher-val", "false", "--project", str(project),
            "--name", "cli", "--set", "warmup_epochs=0"]


@pytest.mark.slow
def test_interrupt_names_the_real_last_pt_and_resume_repoints_a_moved_teacher(tmp_path, shapes_yaml, teacher_pt,
                                                                              monkeypatch, capsys, ultralytics_log):
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils.callbacks.base import default_callbacks

    from detkd.cli import main

    def ctrl_c(trainer):
        raise KeyboardInterrupt

    teacher = tmp_path / "teachers" / "t.pt"
    teacher.parent.mkdir()
    shutil.copy(teacher_pt, teacher)
    with monkeypatch.context() as m:  # Ctrl+C once epoch 1's checkpoint is written
        m.setitem(default_callbacks, "on_model_save", [ctrl_c])
        assert main(_cli_argv(teacher, shapes_yaml, tmp_path)) == 130
    last = (tmp_path / "cli" / "weights" / "last.pt").resolve()
    err = capsys.readouterr().err
    assert f"detkd distill --resume {last}" in err and "path/to/last.pt" not in err

    # the teacher moved: resuming without --teacher names the flag that fixes it
    moved = tmp_path / "moved" / "t.pt"
    moved.parent.mkdir()
    teacher.rename(moved)
    assert main(["distill", "--resume", str(last)]) == 2
    err = capsys.readouterr().err
    assert str(teacher) in err and "--teacher" in err and "Traceback" not in err

    # re-pointed to another model: refused, with the reason (before the teachers' hashes were recorded: only
    # because its feature widths differ from the run's adapters)
    other = tmp_path / "other.pt"
    net = DetectionModel("yolov8n.yaml", nc=4, verbose=False)
    net.names = torch.load(moved, weights_only=False)["model"].names
    torch.save({"model": net, "train_args": {}, "epoch": -1}, other)
    assert main(["distill", "--resume", str(last), "--teacher", str(other)]) == 2
    assert "is not the file the run was trained with" in capsys.readouterr().err

    # re-pointed to the moved teacher: resumes with it, says so, and records it for a later resume
    assert main(["distill", "--resume", str(last), "--teacher", str(moved)]) == 0
    assert any("re-pointed" in msg and str(moved) in msg for msg in ultralytics_log)
    assert _epochs(last.parents[1] / "results.csv") == [1, 2]
    assert torch.load(last, map_location="cpu", weights_only=False)["train_args"]["kd"]["teacher"] == str(moved)


def test_interrupt_hint_before_the_first_checkpoint_and_for_a_chain(tmp_path):
    from types import SimpleNamespace

    from detkd.cli import _resume_hint

    last = tmp_path / "run" / "weights" / "last.pt"
    plain, chain = SimpleNamespace(assistant=None), SimpleNamespace(assistant="yolov8s.yaml")
    assert _resume_hint(None, plain) == ""  # not a training interrupt
    assert "No checkpoint was written yet" in _resume_hint(last, plain) and "--resume" not in _resume_hint(last, plain)
    last.parent.mkdir(parents=True)
    last.write_bytes(b"")
    assert _resume_hint(last, plain) == f" Resume with: detkd distill --resume {last}"
    assert "Run the same command again" in _resume_hint(last, chain)  # --assistant refuses --resume

"""The KD guard's feature term and its adaptive mode (issue 27, recipe 2, item 3).

* ``align_feat`` = cos(∂D/∂F, ∂L_feat/∂F) over the student's neck features F (all levels, flattened, concatenated),
  hand-computed on linear losses;
* ``--kd-guard adapt``: a term below the threshold for ``patience`` epochs is halved each further such epoch (0 after
  4 cuts) and restored one step per epoch once it agrees again — fed by hand, no training;
* the criterion multiplies each term by its scale, ``warn`` leaves the loss bit-identical;
* end to end on generated data: the new results.csv columns, kd_guard.json, resume keeps the scales.
"""

from __future__ import annotations

import csv
import json
from copy import deepcopy
from pathlib import Path

import pytest
import torch

from detkd.config import KDConfig
from detkd.engine.guard import ALIGN_ITEMS, SCALE_ITEMS, AlignmentProbe, KDGuard, gradient_alignment
from detkd.errors import ConfigError


# --------------------------------------------------------------------------------------- align_feat by hand
def _linear_graph():
    """Two feature levels F0 (2,4,3,3), F1 (2,4,2,2) and a linear 'head' on them: scores and boxes are fixed linear maps
    of F, so every gradient below is a known coefficient tensor."""
    torch.manual_seed(0)
    feats = [torch.randn(2, 4, 3, 3, requires_grad=True), torch.randn(2, 4, 2, 2, requires_grad=True)]
    flat = torch.cat([f.flatten(1) for f in feats], 1)  # (2, 52)
    scores = flat @ torch.randn(52, 3 * 5)  # (2, 15): the class logits
    boxes = flat @ torch.randn(52, 8 * 5)
    return feats, scores.view(2, 3, 5), boxes.view(2, 8, 5)


def _det(scores, boxes):
    a, c = torch.ones_like(scores), torch.full_like(boxes, 0.5)
    return torch.stack([(boxes * c).sum(), (scores * a).sum(), (boxes * c).sum() * 0.5])  # box, cls, dfl


def test_feature_alignment_is_plus_one_minus_one_and_zero_where_known():
    feats, scores, boxes = _linear_graph()
    det = _det(scores, boxes)
    kd = {"cls_kd": torch.zeros(()), "box_kd": torch.zeros(())}
    same = gradient_alignment(det, {**kd, "feat_kd": 0.3 * det.sum()}, scores, boxes, feats)
    against = gradient_alignment(det, {**kd, "feat_kd": -2.0 * det.sum()}, scores, boxes, feats)
    assert same["kd_align_feat"].item() == pytest.approx(1.0, abs=1e-5)  # pulls exactly where the labels do
    assert against["kd_align_feat"].item() == pytest.approx(-1.0, abs=1e-5)  # exactly against them
    # D reads F only through the head; a feature term on a direction orthogonal to ∂D/∂F: cosine 0
    g = torch.autograd.grad(det.sum(), feats, retain_graph=True)
    g_flat = torch.cat([x.flatten() for x in g])
    u = torch.randn_like(g_flat)
    u = u - (u @ g_flat) / (g_flat @ g_flat) * g_flat  # orthogonal to the detection gradient
    parts = u.split([f.numel() for f in feats])
    orth = sum((f * p.view_as(f)).sum() for f, p in zip(feats, parts))
    out = gradient_alignment(det, {**kd, "feat_kd": orth}, scores, boxes, feats)
    assert out["kd_align_feat"].item() == pytest.approx(0.0, abs=1e-5)
    assert all(f.grad is None for f in feats)  # a probe: nothing accumulates into .grad
    assert out["kd_align_cls"].item() == 0.0 and out["kd_align_box"].item() == 0.0  # those terms are off


def test_feature_alignment_is_one_cosine_over_all_levels_concatenated():
    """Level 0 agrees (cosine +1 there), level 1 disagrees (-1 there): the result is the cosine of the concatenated
    gradients, (|u0|² - |u1|²) / (|u0|² + |u1|²), not a mean of per-level cosines (0)."""
    f0 = torch.randn(1, 2, 2, 2, requires_grad=True)
    f1 = torch.randn(1, 2, 1, 1, requires_grad=True)
    u0, u1 = torch.full((1, 2, 2, 2), 2.0), torch.full((1, 2, 1, 1), 1.0)  # |u0|² = 32, |u1|² = 2
    scores = (f0 * u0).sum().view(1, 1, 1) + (f1 * u1).sum().view(1, 1, 1)  # D_cls = ⟨u0, F0⟩ + ⟨u1, F1⟩
    boxes = torch.zeros(1, 4, 1, requires_grad=True)
    det = torch.stack([boxes.sum() * 0, scores.sum(), boxes.sum() * 0])
    feat_kd = (f0 * u0).sum() - (f1 * u1).sum()
    out = gradient_alignment(det, {"cls_kd": torch.zeros(()), "box_kd": torch.zeros(()), "feat_kd": feat_kd},
                             scores, boxes, [f0, f1])
    assert out["kd_align_feat"].item() == pytest.approx((32 - 2) / (32 + 2), abs=1e-6)


def test_feature_alignment_is_zero_when_the_term_is_off_or_no_features_are_given():
    feats, scores, boxes = _linear_graph()
    det = _det(scores, boxes)
    off = {"cls_kd": torch.zeros(()), "box_kd": torch.zeros(()), "feat_kd": torch.zeros(())}
    assert gradient_alignment(det, off, scores, boxes, feats)["kd_align_feat"].item() == 0.0
    on = {**off, "feat_kd": det.sum()}
    assert gradient_alignment(det, on, scores, boxes)["kd_align_feat"].item() == 0.0  # no features: not measured
    assert list(gradient_alignment(det, on, scores, boxes, feats)) == list(ALIGN_ITEMS)  # results.csv order


def test_the_probe_measures_the_feature_term_every_nth_batch_and_holds_it_in_between():
    """align_feat costs a backward through the head: measured on batches 0, n, 2n, ... of each epoch, the last value
    held in between (the epoch mean is then a sample-and-hold mean); align_cls/box every batch."""
    feats, scores, boxes = _linear_graph()
    det = _det(scores, boxes)
    probe = AlignmentProbe(feat_every=3)
    signs = [1, -1, -1, -1, 1, 1, -1]  # the feature term's direction at each batch: +1 with the labels, -1 against
    seen = []
    for sign in signs:
        kd = {"cls_kd": sign * det[1], "box_kd": torch.zeros(()), "feat_kd": sign * det.sum()}
        out = probe(det, kd, scores, boxes, feats)
        seen.append((round(out["kd_align_cls"].item()), round(out["kd_align_feat"].item())))
    assert [c for c, _ in seen] == signs  # every batch
    assert [f for _, f in seen] == [1, 1, 1, -1, -1, -1, -1]  # batches 0, 3, 6: +1, -1, -1; held in between
    probe.start_epoch()  # a new epoch starts with a measured batch
    assert probe(det, {**kd, "feat_kd": det.sum()}, scores, boxes, feats)["kd_align_feat"].item() == \
        pytest.approx(1.0, abs=1e-5)
    with torch.no_grad():  # not a training batch: zeros, and it does not count
        assert all(v.item() == 0 for v in probe(det, kd, scores, boxes, feats).values())
    assert probe.batches == 1


# ------------------------------------------------------------------------------------------- the guard
def _feed(guard, seq, active=("cls", "box", "feat"), start=1):
    """Feed one alignment per epoch to every term; return (scales in effect after each epoch, messages)."""
    scales, messages = [], []
    for epoch, v in enumerate(seq, start):
        messages += guard.update(epoch, {k: torch.tensor(v) for k in ALIGN_ITEMS}, {t: t in active for t in
                                                                                   ("cls", "box", "feat")})
        scales.append(guard.scales()["feat"])
    return scales, messages


def test_the_feature_term_is_watched_and_its_warning_suggests_feat_kd_0():
    guard = KDGuard(threshold=0.0, patience=3)
    _, messages = _feed(guard, [0.2, -0.1, -0.2, -0.3], active=("feat",))
    assert len(messages) == 1 and "feature KD term" in messages[0] and "--feat-kd 0" in messages[0]
    assert "-0.10, -0.20, -0.30" in messages[0] and guard.warned == {"kd_align_feat": 4}


def test_adapt_halves_a_term_after_patience_down_to_zero_and_restores_it_step_by_step():
    guard = KDGuard(threshold=0.0, patience=2, mode="adapt")
    seq = [0.1, -0.1, -0.1, -0.2, -0.3, -0.1, -0.4, -0.2, 0.05, 0.2, -0.1, 0.3, 0.3, 0.3]
    scales, _ = _feed(guard, seq)
    #    0.1  -.1  -.1  -.2    -.3    -.1  -.4 -.2 .05    .2    -.1   .3    .3   .3
    assert scales == [1.0, 1.0, 0.5, 0.25, 0.125, 0.0, 0.0, 0.0, 0.125, 0.25, 0.25, 0.5, 1.0, 1.0]
    # one negative epoch after a restore does not cut again: it takes `patience` epochs in a row
    assert guard.summary()["scale_history"]["kd_scale_feat"] == [1.0, 1.0, 1.0, 0.5, 0.25, 0.125, 0.0, 0.0, 0.0,
                                                                 0.125, 0.25, 0.25, 0.5, 1.0]  # what each epoch used
    assert guard.scales() == {"cls": 1.0, "box": 1.0, "feat": 1.0}
    assert guard.loss_scales() == {"cls_kd": 1.0, "box_kd": 1.0, "feat_kd": 1.0}


def test_adapt_prints_each_change_once():
    guard = KDGuard(threshold=0.0, patience=1, mode="adapt")
    _, messages = _feed(guard, [-0.2, -0.2, 0.3, 0.3], active=("feat",))
    changes = [m for m in messages if "scaled" in m]
    assert len(changes) == 4  # x1 -> x0.5, x0.5 -> x0.25, back to x0.5, back to x1
    assert "feature KD" in changes[0] and "x1 -> x0.5" in changes[0] and "from epoch 2" in changes[0]
    assert "x0.25 -> x0.5" in changes[2] and "--kd-guard warn" in changes[0]
    _, quiet = _feed(guard, [0.3, 0.3], active=("feat",), start=5)
    assert quiet == []  # at x1 and agreeing: nothing to say


def test_warn_mode_never_scales():
    guard = KDGuard(threshold=0.0, patience=1)
    scales, messages = _feed(guard, [-0.5] * 8)
    assert scales == [1.0] * 8 and guard.loss_scales() == {"cls_kd": 1.0, "box_kd": 1.0, "feat_kd": 1.0}
    assert len(messages) == 3  # one warning per term, as before
    assert all(v == [1.0] * 8 for v in guard.summary()["scale_history"].values())


def test_adapt_leaves_inactive_terms_and_non_finite_epochs_alone():
    guard = KDGuard(threshold=0.0, patience=1, mode="adapt")
    _feed(guard, [-0.5, -0.5], active=("cls",))  # box and feat off (weight 0): watched, never scaled
    assert guard.scales() == {"cls": 0.25, "box": 1.0, "feat": 1.0}
    guard.update(3, {k: torch.tensor(float("nan")) for k in ALIGN_ITEMS}, {"cls": True, "box": True, "feat": True})
    assert guard.scales()["cls"] == 0.25  # a NaN epoch is no evidence either way


def test_a_redone_epoch_replaces_its_first_record():
    """Ultralytics' NaN recovery redoes an epoch, and the guard sees its end twice: the second record replaces the
    first (one cut, one history entry), as if the epoch had run once."""
    guard = KDGuard(threshold=0.0, patience=1, mode="adapt")
    active = {"cls": True, "box": True, "feat": True}
    guard.update(1, {k: torch.tensor(-0.5) for k in ALIGN_ITEMS}, active)
    guard.update(1, {k: torch.tensor(-0.4) for k in ALIGN_ITEMS}, active)
    assert guard.scales()["feat"] == 0.5 and guard.history["kd_align_feat"] == [pytest.approx(-0.4)]


def test_guard_state_round_trips_and_continues_where_it_stopped(tmp_path):
    guard = KDGuard(threshold=0.1, patience=2, mode="adapt")
    _feed(guard, [0.0, 0.0])  # below 0.1 for 2 epochs: cut once (x0.5)
    resumed = KDGuard(mode="adapt")
    resumed.load_state_dict(json.loads(json.dumps(guard.state_dict())))  # what a checkpoint holds: plain data
    assert resumed.scales() == guard.scales() == {"cls": 0.5, "box": 0.5, "feat": 0.5}
    assert (resumed.threshold, resumed.patience) == (0.1, 2)
    a, _ = _feed(guard, [0.0, 0.5], start=3)
    b, _ = _feed(resumed, [0.0, 0.5], start=3)
    assert a == b == [0.25, 0.5]
    saved = json.loads(resumed.save(tmp_path).read_text())
    assert saved["mode"] == "adapt" and saved["scales"] == {"cls": 0.5, "box": 0.5, "feat": 0.5}
    assert len(saved["history"]["kd_align_feat"]) == 4 and saved["warned"]


def test_the_guard_mode_is_a_kd_setting_with_a_flag():
    from detkd.cli import distill as cli
    from detkd.engine.fingerprint import kd_signature

    assert KDConfig().guard == "warn" and KDConfig(guard="adapt").guard == "adapt"
    with pytest.raises(ConfigError, match="guard='nope' is not one of warn, adapt"):
        KDConfig(guard="nope")
    parser = __import__("argparse").ArgumentParser()
    cli.add_arguments(parser)
    assert "--kd-guard" in parser.format_help()
    kd, _ = cli.build_settings(parser.parse_args(["--teacher", "t.pt", "--data", "d.yaml", "--kd-guard", "adapt"]))
    assert kd.guard == "adapt"
    assert "guard" not in kd_signature(KDConfig().to_dict())  # the default: earlier runs' fingerprints unchanged
    assert kd_signature(KDConfig(guard="adapt").to_dict())["guard"] == "adapt"  # adapt changes what is learnt


# ------------------------------------------------------------------------------------ in the criterion
def _criterion(**kd):
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils import DEFAULT_CFG

    from detkd.engine.criterion import DistillationLoss
    from detkd.models.adapters import FeatureAdapters
    from detkd.models.teacher import FrozenTeacher, feature_channels

    torch.manual_seed(0)
    student = DetectionModel("yolov8n.yaml", nc=2, verbose=False)
    student.args = DEFAULT_CFG
    teacher = FrozenTeacher(DetectionModel("yolov8s.yaml", nc=2, verbose=False), torch.device("cpu"))
    adapters = FeatureAdapters(feature_channels(student), teacher.channels)
    crit = DistillationLoss(student.init_criterion(), teacher, adapters, KDConfig(teacher="t.yaml", **kd))
    return student.train(), crit


def _batch():
    torch.manual_seed(1)
    return {"img": torch.rand(2, 3, 64, 64), "cls": torch.tensor([[0.0], [1.0], [0.0]]),
            "bboxes": torch.tensor([[0.5, 0.5, 0.4, 0.4], [0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.5]]),
            "batch_idx": torch.tensor([0.0, 1.0, 1.0])}


def _step(student, crit, batch):
    student.zero_grad(set_to_none=True)
    loss, items = crit(student(batch["img"]), batch)
    loss.sum().backward()
    return loss.detach(), items, [p.grad.clone() for p in student.parameters() if p.grad is not None]


def test_an_epoch_redone_after_nan_recovery_trains_with_the_scales_it_had(tmp_path):
    # Ultralytics' NaN recovery redoes an epoch after on_train_epoch_end has run for it: the guard's update for the
    # discarded run must not set the scales the redone epoch trains with.
    from types import SimpleNamespace

    from detkd.engine.kd_callbacks import update_kd_progress, watch_kd_alignment

    student, crit = _criterion(guard="adapt")
    student.criterion = crit
    trainer = SimpleNamespace(model=student, guard=KDGuard(threshold=0.0, patience=1, mode="adapt"),
                              kd=crit.kd, epochs=10, labeled_means=None, save_dir=tmp_path,
                              tloss={k: torch.tensor(-0.5) for k in ALIGN_ITEMS})
    for epoch in (0, 1):  # two epochs against the labels: x0.5 from the second epoch, x0.25 planned for the third
        trainer.epoch = epoch
        update_kd_progress(trainer)
        watch_kd_alignment(trainer)
    assert crit.term_scales["cls_kd"] == 0.25
    update_kd_progress(trainer)  # NaN recovery: the second epoch (index 1) again
    assert crit.term_scales["cls_kd"] == 0.5  # what it trained with the first time
    watch_kd_alignment(trainer)
    assert trainer.guard.scale_history["kd_scale_cls"] == [1.0, 0.5]  # one record per epoch, the scale it used


def test_warn_mode_leaves_the_loss_bit_identical(tmp_path):
    """The loss vector is detection + the weighted KD terms as logged (× batch size), and a warn guard that has seen
    every term against the labels for many epochs, through the trainer's own callbacks, changes nothing: loss and
    gradients bit-identical to the same epoch's step before the guard saw anything."""
    from types import SimpleNamespace

    from detkd.engine.kd_callbacks import update_kd_progress, watch_kd_alignment

    student, crit = _criterion()
    student.criterion = crit
    trainer = SimpleNamespace(model=student, guard=KDGuard(threshold=0.0, patience=1), kd=crit.kd, epochs=10,
                              labeled_means=None, save_dir=tmp_path,
                              tloss={k: torch.tensor(-0.9) for k in ALIGN_ITEMS})
    batch = _batch()
    trainer.epoch = 5
    update_kd_progress(trainer)  # the schedule's weights at epoch 5, a guard that has seen nothing
    loss, items, grads = _step(student, crit, batch)
    assert torch.equal(loss[3:], torch.stack([items[k] for k in ("cls_kd", "box_kd", "feat_kd")]) * 2)
    assert items["kd_align_feat"] != 0 and -1 <= items["kd_align_feat"] <= 1
    for epoch in range(6):  # every term against the labels (alignment -0.9) for six epochs
        trainer.epoch = epoch
        update_kd_progress(trainer)
        watch_kd_alignment(trainer)
    assert set(trainer.guard.warned) == set(ALIGN_ITEMS)  # it said so for every term ...
    update_kd_progress(trainer)  # epoch 5 again
    assert set(crit.term_scales.values()) == {1.0}  # ... and changed nothing
    again, items2, grads2 = _step(student, crit, batch)
    assert torch.equal(loss, again) and all(torch.equal(a, b) for a, b in zip(grads, grads2))
    assert all(torch.equal(items[k], items2[k]) for k in items)


def test_the_criterion_multiplies_each_term_by_its_scale_and_measures_the_unscaled_term():
    student, crit = _criterion()
    batch = _batch()
    loss, items, _ = _step(student, crit, batch)
    crit.term_scales = {"cls_kd": 0.5, "box_kd": 0.0, "feat_kd": 0.25}
    crit.alignment.start_epoch()  # align_feat measured again on the next batch (not held)
    scaled, scaled_items, _ = _step(student, crit, batch)
    assert torch.equal(scaled[:3], loss[:3])  # the detection loss is untouched
    for k, s in crit.term_scales.items():
        assert scaled_items[k].item() == pytest.approx(s * items[k].item(), rel=1e-6), k  # logged as in the loss
    assert torch.allclose(scaled[3:], torch.stack([scaled_items[k] for k in ("cls_kd", "box_kd", "feat_kd")]) * 2)
    for k in ALIGN_ITEMS:  # measured on the terms before their scale: a term at x0 is still watched
        assert scaled_items[k].item() == pytest.approx(items[k].item(), abs=1e-6), k
    assert scaled_items["kd_align_box"] != 0


# ----------------------------------------------------------------------------------------- end to end
def _rows(path):
    with open(path) as f:
        return [{k.strip(): float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _forced_guard(trainer, mode):
    """Every alignment is below 1.01: the guard reacts after each epoch (patience 1)."""
    trainer.guard = KDGuard(threshold=1.01, patience=1, mode=mode)


@pytest.mark.slow
def test_warn_run_logs_the_feature_alignment_and_unit_scales(tmp_path, shapes_yaml, teacher_pt, ultralytics_log):
    from conftest import TINY_TRAIN
    from detkd.engine.trainer import DistillationTrainer

    trainer = DistillationTrainer(overrides=dict(model="yolov8n.yaml", data=shapes_yaml, project=str(tmp_path),
                                                 name="warn", **{**TINY_TRAIN, "epochs": 1}),
                                  kd=KDConfig(teacher=teacher_pt, validate_teacher=False))
    _forced_guard(trainer, "warn")
    trainer.train()
    (row,) = _rows(trainer.csv)
    assert -1 <= row["train/kd_align_feat"] <= 1 and row["train/kd_align_feat"] != 0
    assert "val/kd_align_feat" not in row
    assert all(row[f"train/{k}"] == 1.0 for k in SCALE_ITEMS)
    assert any("feature KD term" in m and "--feat-kd 0" in m for m in ultralytics_log)
    saved = json.loads((trainer.save_dir / "kd_guard.json").read_text())
    assert saved["mode"] == "warn" and saved["scales"] == {"cls": 1.0, "box": 1.0, "feat": 1.0}


@pytest.mark.slow
def test_adapt_run_scales_terms_logs_them_and_resume_keeps_them(tmp_path, shapes_yaml, teacher_pt, ultralytics_log):
    from ultralytics.utils.torch_utils import unwrap_model

    from conftest import TINY_TRAIN
    from detkd.engine.trainer import DistillationTrainer

    class Interrupt(Exception):
        pass

    def interrupt(trainer):
        raise Interrupt

    overrides = dict(model="yolov8n.yaml", data=shapes_yaml, project=str(tmp_path), name="adapt", **TINY_TRAIN)
    trainer = DistillationTrainer(overrides=overrides, kd=KDConfig(teacher=teacher_pt, guard="adapt",
                                                                   validate_teacher=False))
    _forced_guard(trainer, "adapt")
    trainer.add_callback("on_model_save", interrupt)  # stop after epoch 1 is saved
    with pytest.raises(Interrupt):
        trainer.train()
    assert trainer.guard.scales() == {"cls": 0.5, "box": 0.5, "feat": 0.5}  # every term cut once after epoch 1
    assert any("feature KD weight scaled x1 -> x0.5" in m for m in ultralytics_log)

    resumed = DistillationTrainer(overrides={"resume": str(trainer.last), "model": str(trainer.last)})
    assert resumed.kd.guard == "adapt"
    seen = {}
    resumed.add_callback("on_train_start", lambda t: seen.update(deepcopy(unwrap_model(t.model).criterion.term_scales)))
    resumed.train()
    assert seen == {"cls_kd": 0.5, "box_kd": 0.5, "feat_kd": 0.5}  # epoch 2 continues with the saved scales
    rows = _rows(resumed.csv)
    assert [r["epoch"] for r in rows] == [1, 2]
    for k in SCALE_ITEMS:  # each row: the scale its epoch trained with
        assert [r[f"train/{k}"] for r in rows] == [1.0, 0.5], k
    saved = json.loads((resumed.save_dir / "kd_guard.json").read_text())
    assert saved["mode"] == "adapt" and saved["threshold"] == 1.01  # the resumed guard kept its settings
    assert len(saved["history"]["kd_align_feat"]) == 2 and saved["scales"]["feat"] == 0.25  # cut again after 2


def test_progress_header_keeps_the_feature_alignment_in_its_column():
    """'kd_align_feat' has 13 characters: shortened to 'align_feat', every header column stays 11 wide."""
    from detkd.engine.trainer import DistillationTrainer

    names = ("box_loss", "cls_loss", "dfl_loss", "cls_kd", "box_kd", "feat_kd", *ALIGN_ITEMS)
    trainer = DistillationTrainer.__new__(DistillationTrainer)  # the header needs only the loss names
    trainer.loss_names = names
    header = trainer.progress_string()
    assert header.split()[-4:-2] == ["align_box", "align_feat"]
    assert len(header.strip("\n")) == 11 * (4 + len(names))  # Epoch, GPU_mem, the items, Instances, Size


def _scales_on_rank(rank: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    from detkd.engine.guard import shared_across_ranks

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        own = {"cls_kd": 0.5, "box_kd": 1.0, "feat_kd": 0.0} if rank == 0 else dict.fromkeys(("cls_kd", "box_kd",
                                                                                               "feat_kd"), 1.0)
        (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(shared_across_ranks(own)))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                    reason="needs torch.distributed with gloo")
def test_under_ddp_every_rank_applies_rank_0s_scales(tmp_path):
    """Only rank 0's guard judges (it alone logs and saves); the scales it decides reach every rank."""
    import torch.multiprocessing as mp

    mp.spawn(_scales_on_rank, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1] == {"cls_kd": 0.5, "box_kd": 1.0, "feat_kd": 0.0}
    from detkd.engine.guard import shared_across_ranks

    own = {"cls_kd": 0.25, "box_kd": 1.0, "feat_kd": 1.0}
    assert shared_across_ranks(own) is own  # one process (no process group): nothing to share


def test_the_guard_state_is_loaded_only_from_its_own_checkpoint_epoch(tmp_path):
    """Saved beside the checkpoint with its epoch, like the adapters: another epoch's state, or an older run's file
    without one, is not loaded (the caller says why and the guard restarts)."""
    from detkd.engine.checkpoints import load_guard, save_kd_state

    guard = KDGuard(patience=1, mode="adapt")
    _feed(guard, [-0.5])
    last = tmp_path / "last.pt"
    save_kd_state([last], 0, {}, guard=guard.state_dict())
    fresh = KDGuard(mode="adapt")
    assert "epoch 0" in load_guard(fresh, last, epoch=3) and fresh.scales()["feat"] == 1.0
    assert load_guard(fresh, last, epoch=0) is None and fresh.scales()["feat"] == 0.5
    save_kd_state([last], 0, {})  # an older run: adapters/balancer only
    assert "holds no guard" in load_guard(KDGuard(), last, epoch=0)

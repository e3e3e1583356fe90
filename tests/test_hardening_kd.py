"""Issue 24 hardening of the KD machinery: the ensemble's confidence under ``kl`` (4), the logged detection loss with
unlabelled-only batches (8), the loss balancer under DDP and resume (21), the verified weights' memory (19)."""

from __future__ import annotations

import pytest
import torch

from detkd.config import KDConfig
from detkd.engine.criterion import DistillationLoss
from detkd.models.ensemble import TeacherEnsemble
from detkd.models.teacher import FrozenTeacher
from test_criterion import _batch, _student

BACKGROUND_LOGIT = -8.5  # σ(-8.5) ≈ 0.0002: a teacher that sees nothing anywhere


# --------------------------------------------------------------------- 4: the ensemble's confidence under kl
def _background_teacher(seed: int) -> FrozenTeacher:
    """A YOLOv8-n teacher whose class logits are BACKGROUND_LOGIT at every anchor (zero last class conv + bias)."""
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(seed)
    net = DetectionModel("yolov8n.yaml", nc=2, verbose=False)
    with torch.no_grad():
        for branch in net.model[-1].cv3:
            branch[-1].weight.zero_()
            branch[-1].bias.fill_(BACKGROUND_LOGIT)
    return FrozenTeacher(net, torch.device("cpu"))


def _background_criterion(tmp_path, cls_mode: str, **kd) -> DistillationLoss:
    ensemble = TeacherEnsemble([_background_teacher(0), _background_teacher(1)], cls_mode=cls_mode)
    config = KDConfig(teacher=["a.yaml", "b.yaml"], cls_mode=cls_mode, feat_kd=0.0, unlabeled=str(tmp_path), **kd)
    return DistillationLoss(_student().init_criterion(), ensemble, None, config)


@pytest.mark.parametrize("cls_mode", ["bce", "kl"])
def test_background_teachers_give_no_confidence_in_either_cls_mode(tmp_path, cls_mode):
    """Two teachers that see nothing: every anchor weight that reads the teacher's confidence stays ≈ σ(-8.5), under
    kl as under bce (kl's log of the mean softmax is ≥ log(1/C) and gave σ(log p̄) ≥ 1/(C+1) = 0.33)."""
    from ultralytics.utils.tal import make_anchors

    img = torch.rand(2, 3, 64, 64)
    batch = _batch(img)
    crit = _background_criterion(tmp_path, cls_mode)
    out = crit.teacher(img)
    a = out.scores.shape[1]
    points, strides = make_anchors([f for f in out.feats], crit.dense.stride, 0.5)
    for weighting in ("teacher", "union", "verified"):
        crit.kd.anchor_weighting = weighting
        w = crit.anchor_weights(out, batch, torch.zeros(2, a, dtype=torch.bool), points, strides)
        assert w.mean().item() < 1e-3, (weighting, w.mean().item())
    from detkd.engine.unlabeled import teacher_confidence_weights
    from detkd.losses.weighting import confidence_logits

    unl = teacher_confidence_weights(torch.ones(2, a), confidence_logits(out), torch.tensor([True, False]))
    assert unl[1].mean().item() == pytest.approx(torch.sigmoid(torch.tensor(BACKGROUND_LOGIT)).item(), rel=1e-3)


@pytest.mark.parametrize("cls_mode", ["bce", "kl"])
def test_background_teachers_pseudo_label_nothing(tmp_path, cls_mode):
    """A background image with the default pseudo-label threshold: no pseudo-label, so no box loss (kl gave 300)."""
    crit = _background_criterion(tmp_path, cls_mode, cls_kd=0.0, box_kd=0.0)
    student = _student()
    student.eval()
    img = torch.rand(1, 3, 64, 64)
    empty = {"img": img, "cls": torch.zeros(0, 1), "bboxes": torch.zeros(0, 4), "batch_idx": torch.zeros(0),
             "labeled": torch.tensor([False])}
    with torch.no_grad():
        loss, _ = crit(student(img), empty)
    assert loss[0].item() == 0.0 and loss[2].item() == 0.0  # box and DFL: no target was made


def test_kl_ensemble_keeps_log_mean_softmax_for_the_kl_target():
    """The softmax KL target is unchanged (log p̄); the confidence is the members' mean sigmoid, weighted. The two
    members differ (a background teacher and one whose class 1 is confident everywhere), so the weights show."""
    torch.manual_seed(0)
    confident = _background_teacher(1)
    with torch.no_grad():
        for branch in confident.model.model[-1].cv3:
            branch[-1].bias.copy_(torch.tensor([BACKGROUND_LOGIT, 1.0]))  # class 0 background, class 1 at σ(1)
    ensemble = TeacherEnsemble([_background_teacher(0), confident], cls_mode="kl", weights=[1, 3])
    img = torch.rand(1, 3, 64, 64)
    out = ensemble(img)
    a, b = (m(img).scores for m in ensemble.members)
    assert torch.allclose(out.scores.exp().sum(-1), torch.ones(1, out.scores.shape[1]), atol=1e-5)
    assert torch.allclose(out.scores.exp(), 0.25 * a.softmax(-1) + 0.75 * b.softmax(-1), atol=1e-6)  # log p̄
    back, one = torch.sigmoid(torch.tensor(BACKGROUND_LOGIT)), torch.sigmoid(torch.tensor(1.0))
    conf = out.conf_logits.sigmoid()  # by hand: class 0 background in both, class 1 0.25 σ(-8.5) + 0.75 σ(1)
    assert torch.allclose(conf[..., 0], back.expand_as(conf[..., 0]), atol=1e-6)
    assert torch.allclose(conf[..., 1], (0.25 * back + 0.75 * one).expand_as(conf[..., 1]), atol=1e-6)


# ---------------------------------------------------------- 8: the logged detection loss, unlabelled-only batches
def test_labeled_batch_mean_skips_unlabelled_only_batches():
    """The detection items' epoch mean counts the batches that had labelled images only; other items keep
    Ultralytics' mean over every batch."""
    from detkd.engine.unlabeled import LabeledBatchMean

    mean = LabeledBatchMean(("box_loss",))
    tloss = None
    for i, (box, kd, labeled) in enumerate([(6.0, 1.0, True), (0.0, 3.0, False), (4.0, 2.0, True)]):
        items = {"box_loss": torch.tensor(box), "cls_kd": torch.tensor(kd)}
        tloss = items if tloss is None else {k: (tloss[k] * i + v) / (i + 1) for k, v in items.items()}  # Ultralytics
        tloss = mean.update(items, labeled, tloss)
    assert float(tloss["box_loss"]) == pytest.approx(5.0) and float(tloss["cls_kd"]) == pytest.approx(2.0)
    mean.reset()
    assert float(mean.update({"box_loss": torch.tensor(0.0)}, False, {"box_loss": torch.tensor(0.0)})["box_loss"]) == 0


@pytest.mark.slow
def test_logged_detection_loss_is_not_diluted_by_unlabelled_only_batches(tmp_path, shapes_yaml, teacher_pt):
    """--unlabeled-ratio 0.75, --pseudo-conf off, batch 4: some batches hold unlabelled images only (detection loss 0).
    results.csv's train/box_loss etc. are the mean over the batches with labelled images, not over every batch."""
    import csv

    from conftest import TINY_TRAIN
    from detkd.engine.trainer import DistillationTrainer
    from test_unlabeled import _write_images

    _write_images(tmp_path / "frames", 6, size=(96, 96))
    kd = KDConfig(teacher=teacher_pt, validate_teacher=False, unlabeled=str(tmp_path / "frames"), unlabeled_ratio=0.75,
                  pseudo_conf="off", feat_kd=0.0)
    trainer = DistillationTrainer(overrides=dict(model="yolov8n.yaml", data=shapes_yaml, project=str(tmp_path),
                                                 name="dil", **{**TINY_TRAIN, "epochs": 1, "batch": 4}), kd=kd)
    seen = []  # (this batch's loss items, whether it had labelled images: its detection cls loss is then > 0)
    trainer.add_callback("on_train_batch_end", lambda t: seen.append(
        ({k: float(v) for k, v in t.loss_items.items()}, float(t.loss_items["cls_loss"]) > 0)))
    trainer.train()
    labeled = [items for items, flag in seen if flag]
    assert 0 < len(labeled) < len(seen), "the run must mix labelled and unlabelled-only batches"
    with open(trainer.csv) as f:
        row = {k.strip(): float(v) for k, v in next(csv.DictReader(f)).items()}
    for name in ("box_loss", "cls_loss", "dfl_loss"):
        expect = sum(items[name] for items in labeled) / len(labeled)
        assert row[f"train/{name}"] == pytest.approx(expect, abs=2e-5), name
    expect_kd = sum(items["cls_kd"] for items, _ in seen) / len(seen)  # KD covers every batch: mean over all
    assert row["train/cls_kd"] == pytest.approx(expect_kd, abs=2e-5)


# ----------------------------------------------------------------- 21: the loss balancer under DDP and on resume
def _feed(bal, steps):
    """Balanced values of (detection, raw cls_kd) steps through ``bal``."""
    out = []
    for det, kd in steps:
        bal.observe_detection(torch.tensor(det))
        out.append(bal("cls_kd", torch.tensor(kd)).item())
    return out


def test_balancer_state_round_trip_continues_the_running_scale():
    from detkd.losses.balance import LossBalancer

    steps = [(4.0, 1.0), (2.0, 3.0), (5.0, 2.0), (3.0, 4.0)]
    straight = _feed(LossBalancer(momentum=0.5), steps)
    first = LossBalancer(momentum=0.5)
    _feed(first, steps[:2])
    resumed = LossBalancer(momentum=0.5)
    resumed.load_state_dict(first.state_dict())
    assert _feed(resumed, steps[2:]) == pytest.approx(straight[2:])


def test_unlabelled_only_batches_leave_the_detection_scale_alone():
    """A batch with no labelled image has no detection loss (0): it must not pull D̄ toward 0."""
    from detkd.losses.balance import LossBalancer

    bal = LossBalancer(momentum=0.5)
    bal.observe_detection(torch.tensor(4.0))
    bal.observe_detection(torch.tensor(0.0), labeled=False)
    assert bal("cls_kd", torch.tensor(2.0)).item() == pytest.approx(4.0)
    early = LossBalancer()  # no labelled batch yet: KD waits (0), in the graph
    early.observe_detection(torch.tensor(0.0), labeled=False)
    theta = torch.tensor(1.0, requires_grad=True)
    assert early("cls_kd", 3.0 * theta).item() == 0.0


def test_a_kd_term_with_nothing_to_distil_leaves_its_scale_alone():
    """A raw KD term of exactly 0 (every anchor weight 0: a batch without a box of a class the teacher knows) is not
    a magnitude: it must not pull K̄ toward 0, which would blow up the next batches' KD weight."""
    from detkd.losses.balance import LossBalancer

    bal = LossBalancer(momentum=0.9)
    bal.observe_detection(torch.tensor(1.0))
    assert bal("cls_kd", torch.tensor(0.0)).item() == 0.0
    assert bal("cls_kd", torch.tensor(0.5)).item() == pytest.approx(1.0)  # was 10: K̄ = 0.1 x 0.5
    bal.observe_detection(torch.tensor(1.0))
    bal("cls_kd", torch.tensor(0.0))
    assert bal("cls_kd", torch.tensor(0.5)).item() == pytest.approx(1.0)  # was 1.11


def _two_rank_balancer(rank: int, init: str, queue) -> None:
    import torch.distributed as dist

    from detkd.losses.balance import LossBalancer

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        bal = LossBalancer(momentum=0.5)
        bal.observe_detection(torch.tensor(4.0 + 4.0 * rank))  # ranks see 4 and 8
        first = bal("cls_kd", torch.tensor(1.0 + 2.0 * rank)).item()  # raw 1 and 3
        bal.observe_detection(torch.tensor(0.0 if rank else 10.0), labeled=rank == 0)  # rank 1: unlabelled only
        bal("cls_kd", torch.tensor(2.0))
        queue.put((rank, first, {k: float(v) for k, v in bal.running.items()}))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                    reason="torch.distributed with the gloo backend is not available")
def test_balancer_statistics_are_reduced_across_ranks(tmp_path):
    """Two gloo ranks: D̄ and K̄ are the ranks' means (6 and 2 after step 1) and the same on both; a rank with no
    labelled image does not count in D̄ (step 2: D = 10 from rank 0 alone)."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.start_processes(_two_rank_balancer, args=(f"file://{tmp_path / 'pg'}", queue), nprocs=2, start_method="spawn")
    results = sorted(queue.get() for _ in range(2))
    (_, first0, run0), (_, first1, run1) = results
    assert first0 == pytest.approx(1.0 * 6.0 / 2.0) and first1 == pytest.approx(3.0 * 6.0 / 2.0)
    assert run0 == pytest.approx(run1)
    assert run0["detection"] == pytest.approx(0.5 * 6.0 + 0.5 * 10.0) and run0["cls_kd"] == pytest.approx(2.0)


@pytest.mark.slow
def test_resume_continues_the_balancer_scale(tmp_path, shapes_yaml, teacher_pt):
    """--kd-balance detection: the running scale is saved with each checkpoint and a resume starts from it."""
    from ultralytics.utils.torch_utils import unwrap_model

    from conftest import TINY_TRAIN
    from detkd.engine.trainer import DistillationTrainer
    from test_resume import _cut_off_run

    kd = KDConfig(teacher=teacher_pt, validate_teacher=False, balance="detection", feat_kd=0.0)
    first = DistillationTrainer(overrides=dict(model="yolov8n.yaml", data=shapes_yaml, project=str(tmp_path),
                                               name="bal", val=False, **TINY_TRAIN), kd=kd)
    saved = {}
    first.add_callback("on_train_epoch_end", lambda t: saved.update(
        {k: float(v) for k, v in unwrap_model(t.model).criterion.balancer.running.items()}))
    run_dir = _cut_off_run(first)
    resumed = DistillationTrainer(overrides=dict(resume=str(run_dir / "weights" / "last.pt")))
    started = {}
    resumed.add_callback("on_train_batch_start", lambda t: started or started.update(
        {k: float(v) for k, v in unwrap_model(t.model).criterion.balancer.running.items()}))
    resumed.train()
    assert set(saved) == {"detection", "cls_kd", "box_kd"}
    assert started == pytest.approx(saved)


# ------------------------------------------------------------------ 19: verified weights' (B, A, N) temporaries
def _verified_reference(teacher_logits, teacher_boxes, gt_labels, gt_boxes, gt_mask):
    """The implementation before chunking (every ground-truth box at once), kept here as the reference."""
    from ultralytics.utils.metrics import bbox_iou

    b, a, _ = teacher_logits.shape
    n = gt_boxes.shape[1]
    probs = teacher_logits.float().sigmoid()
    cls_prob = probs.gather(2, gt_labels.long().view(b, 1, n).expand(b, a, n))
    iou = bbox_iou(teacher_boxes.float().unsqueeze(2), gt_boxes.float().unsqueeze(1), xywh=False)
    return (cls_prob * iou.squeeze(-1).clamp(min=0.0) * gt_mask.view(b, 1, n).float()).amax(-1)


def _random_verified_case(b=3, a=50, n=37, nc=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(b, a, 2, generator=g) * 60
    t_boxes = torch.cat([xy, xy + torch.rand(b, a, 2, generator=g) * 30], -1)
    gxy = torch.rand(b, n, 2, generator=g) * 60
    gt_boxes = torch.cat([gxy, gxy + torch.rand(b, n, 2, generator=g) * 30], -1)
    gt_mask = torch.rand(b, n, 1, generator=g) > 0.3  # padding slots
    gt_boxes = gt_boxes * gt_mask
    labels = torch.randint(0, nc, (b, n, 1), generator=g).float()
    return torch.randn(b, a, nc, generator=g) * 3, t_boxes, labels, gt_boxes, gt_mask


@pytest.mark.parametrize("chunk", [1, 8, 16, 100])
def test_chunked_verified_weights_equal_the_all_at_once_ones(chunk):
    from detkd.losses.weighting import verified_weights

    case = _random_verified_case()
    expect = _verified_reference(*case)
    assert torch.allclose(verified_weights(*case, gt_chunk=chunk), expect, atol=1e-6, rtol=0)
    assert torch.allclose(verified_weights(*case), expect, atol=1e-6, rtol=0)


def test_verified_weights_never_build_all_boxes_at_once(monkeypatch):
    """The IoU temporaries cover at most one chunk of ground-truth boxes: (B, A, chunk), not (B, A, N)."""
    import ultralytics.utils.metrics as metrics

    from detkd.losses.weighting import verified_weights

    widths, iou = [], metrics.bbox_iou

    def spy(box1, box2, **kw):
        widths.append(max(box1.shape[2], box2.shape[2]))
        return iou(box1, box2, **kw)

    monkeypatch.setattr(metrics, "bbox_iou", spy)
    verified_weights(*_random_verified_case(n=100))
    assert widths and max(widths) < 100

"""Unlabelled images (--unlabeled): sources, bad files counted, the epoch mix, the masked detection loss, pseudo-labels,
and a tiny end-to-end run from the CLI and Python."""

from __future__ import annotations

import csv
import json
import numpy as np
import pytest
import torch

from conftest import TINY_TRAIN
from detkd.config import PSEUDO_CONF_DEFAULT, KDConfig
from detkd.data.unlabeled import MixSampler, drop_overlap, resolve_unlabeled, unlabeled_per_epoch
from detkd.engine.unlabeled import pseudo_label_targets, select_targets
from detkd.errors import ConfigError
from test_criterion import _batch, _criterion, _student


def _write_images(folder, n, size=(48, 40)):
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        cv2.imwrite(str(folder / f"f{i:03d}.jpg"), rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    return sorted(folder.glob("*.jpg"))


# ------------------------------------------------------------------------------------------------ sources
def test_sources_folder_list_and_coco_json(tmp_path):
    files = _write_images(tmp_path / "frames" / "cam1", 3) + _write_images(tmp_path / "frames" / "cam2", 2)
    (tmp_path / "frames" / "notes.txt").write_text("not an image")
    assert resolve_unlabeled(tmp_path / "frames") == sorted(str(f.resolve()) for f in files)

    listing = tmp_path / "list.txt"
    listing.write_text("# frames\nframes/cam1/f000.jpg\n\n" + str(files[-1]) + "\n")
    assert resolve_unlabeled(listing) == sorted([str(files[0].resolve()), str(files[-1].resolve())])

    coco = {"images": [{"id": 1, "file_name": "f000.jpg"}, {"id": 2, "file_name": "f001.jpg"},
                       {"id": 3, "file_name": "f002.jpg"}],
            "annotations": [{"id": 1, "image_id": 2, "bbox": [1, 1, 5, 5], "category_id": 1}], "categories": []}
    (tmp_path / "frames" / "cam1" / "unl.json").write_text(json.dumps(coco))
    got = resolve_unlabeled(tmp_path / "frames" / "cam1" / "unl.json")
    assert [p.rsplit("/", 1)[-1] for p in got] == ["f000.jpg", "f002.jpg"]  # the annotated image is not unlabelled


def test_bad_sources_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        resolve_unlabeled(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no image"):
        resolve_unlabeled(tmp_path / "empty")
    labelled = {"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"id": 1, "image_id": 1}]}
    (tmp_path / "all.json").write_text(json.dumps(labelled))
    with pytest.raises(ConfigError, match="every image in it has annotations"):
        resolve_unlabeled(tmp_path / "all.json")
    with pytest.raises(ConfigError, match="unlabeled_ratio"):
        KDConfig(teacher="t.pt", unlabeled=str(tmp_path), unlabeled_ratio=1.0)
    with pytest.raises(ConfigError, match="--unlabeled"):
        KDConfig(teacher="t.pt", pseudo_conf=0.5)
    with pytest.raises(ConfigError, match="pseudo_conf"):
        KDConfig(teacher="t.pt", unlabeled=str(tmp_path), pseudo_conf="high")


def test_hard_pseudo_labels_are_on_by_default_with_unlabeled_images(tmp_path):
    """Measured (benchmarks/results/unlabeled_gain_shapes_*): soft KD + hard pseudo-labels is the default on
    unlabelled images; 'off' keeps soft KD only; without unlabelled images there is nothing to label."""
    _write_images(tmp_path, 1)
    assert KDConfig(teacher="t.pt").pseudo_threshold is None
    assert KDConfig(teacher="t.pt", unlabeled=str(tmp_path)).pseudo_threshold == PSEUDO_CONF_DEFAULT == 0.25
    cfg = KDConfig(teacher="t.pt")
    cfg.unlabeled = str(tmp_path)  # set after construction (distill(unlabeled=...), CLI merging): still the default
    assert cfg.validate().pseudo_threshold == 0.25
    assert KDConfig(teacher="t.pt", unlabeled=str(tmp_path), pseudo_conf=0.4).pseudo_threshold == 0.4
    assert KDConfig(teacher="t.pt").to_dict()["pseudo_conf"] is None  # saved and compared as it acts
    saved = KDConfig(teacher="t.pt", unlabeled=str(tmp_path)).to_dict()
    assert saved["pseudo_conf"] == 0.25 and KDConfig.from_dict(saved).pseudo_threshold == 0.25  # resume: the same
    for off in ("off", "none", None):
        assert KDConfig(teacher="t.pt", unlabeled=str(tmp_path), pseudo_conf=off).pseudo_threshold is None
    from detkd.compare.experiment import CompareSettings

    assert CompareSettings(teacher="t.pt", data="d").pseudo_conf == PSEUDO_CONF_DEFAULT  # compare's rows: the same
    assert "pseudo-labels at conf >= 0.25" in KDConfig(teacher="t.pt", unlabeled=str(tmp_path)).summary()
    assert "soft KD only" in KDConfig(teacher="t.pt", unlabeled=str(tmp_path), pseudo_conf="off").summary()


def test_overlap_with_the_dataset_is_dropped(tmp_path):
    files = [str(f) for f in _write_images(tmp_path / "x", 4)]
    link = tmp_path / "val_link.jpg"
    link.symlink_to(files[1])
    kept, n = drop_overlap(files, [files[0]], [str(link)])
    assert kept == files[2:] and n == 2


def test_unreadable_images_are_counted_and_skipped(tmp_path):
    from ultralytics.cfg import get_cfg

    from detkd.data.unlabeled import build_unlabeled_dataset

    good = _write_images(tmp_path / "u", 3)
    (tmp_path / "u" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (tmp_path / "u" / "empty.png").write_bytes(b"")
    cfg = get_cfg(overrides={"imgsz": 64})
    ds = build_unlabeled_dataset(resolve_unlabeled(tmp_path / "u"), cfg, 2, {"nc": 2, "names": {0: "a", 1: "b"}}, 32)
    assert len(ds) == 3 and sorted(ds.im_files) == sorted(str(f.resolve()) for f in good)
    assert len(ds.skipped) == 2
    assert all(len(lb["cls"]) == 0 and lb["shape"] == (40, 48) for lb in ds.labels)
    sample = ds[0]
    assert sample["img"].shape[-2:] == (64, 64) and len(sample["cls"]) == 0  # Ultralytics' pipeline, no labels
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.jpg").write_bytes(b"junk")
    with pytest.raises(ConfigError, match="none of the 1 unlabelled images can be read"):
        build_unlabeled_dataset(resolve_unlabeled(tmp_path / "bad"), cfg, 2, {"nc": 2, "names": {0: "a"}}, 32)


# ---------------------------------------------------------------------------------------------- epoch mix
@pytest.mark.parametrize("ratio, expected", [(0.5, 10), (0.25, 3), (0.8, 40)])
def test_ratio_gives_the_expected_counts(ratio, expected):
    assert unlabeled_per_epoch(10, ratio) == expected
    s = MixSampler(10, 7, expected, seed=3)
    idx = list(iter(s))
    assert len(idx) == len(s) == 10 + expected
    assert sorted(i for i in idx if i < 10) == list(range(10))  # every labelled image once
    assert sum(i >= 10 for i in idx) == expected and all(i < 17 for i in idx)


def test_pool_is_cycled_deterministically_and_resumes():
    s = MixSampler(4, 10, 5, seed=0)
    e0, e1 = [i - 4 for i in iter(s) if i >= 4], [i - 4 for i in iter(s) if i >= 4]
    assert sorted(e0 + e1) == list(range(10))  # two epochs of 5 cover the pool of 10 once
    resumed = MixSampler(4, 10, 5, seed=0, start_epoch=1)
    assert list(iter(resumed)) == MixSampler(4, 10, 5, seed=0).epoch_indices(1).tolist()
    assert MixSampler(4, 10, 5, seed=1).epoch_indices(0).tolist() != MixSampler(4, 10, 5, seed=0).epoch_indices(0).tolist()


def test_ddp_shards_split_one_epoch_order():
    full = MixSampler(9, 6, 6, seed=2).epoch_indices(0)
    shards = [MixSampler(9, 6, 6, seed=2, rank=r, world_size=2).epoch_indices(0) for r in range(2)]
    assert len(full) == 15 and len(shards[0]) == len(shards[1]) == 8  # 15 padded to 16 (the first index again)
    padded = np.concatenate([full, full[:1]])
    assert shards[0].tolist() == padded[0::2].tolist() and shards[1].tolist() == padded[1::2].tolist()


# --------------------------------------------------------------------------------------------- criterion
def _teacher_model():
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(1)
    return DetectionModel("yolov8s.yaml", nc=2, verbose=False)


def test_all_unlabelled_batch_zero_detection_loss_nonzero_kd_with_gradients(tmp_path):
    student = _student()
    crit, adapters = _criterion(student, _teacher_model(), unlabeled=str(tmp_path), pseudo_conf=None)  # soft KD only
    student.train()
    img = torch.rand(2, 3, 64, 64)
    batch = {**_batch(img), "cls": torch.zeros(0, 1), "bboxes": torch.zeros(0, 4), "batch_idx": torch.zeros(0),
             "labeled": torch.tensor([False, False])}
    loss, items = crit(student(img), batch)
    assert torch.equal(loss[:3], torch.zeros(3))
    assert all(items[k] > 0 for k in ("cls_kd", "box_kd", "feat_kd"))
    loss.sum().backward()
    head = student.model[-1]
    assert head.cv3[0][-1].weight.grad.abs().sum() > 0 and head.cv2[0][-1].weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in adapters.parameters())


def test_detection_loss_counts_labelled_images_only(tmp_path):
    """Mixed batch: the detection loss is Ultralytics' loss of the labelled images alone, whatever the unlabelled
    image shows; without the flags that image would be trained as background."""
    student = _student()
    crit, _ = _criterion(student, _teacher_model(), unlabeled=str(tmp_path), cls_kd=0, box_kd=0, feat_kd=0,
                         pseudo_conf=None)
    student.eval()
    img = torch.rand(3, 3, 64, 64)
    batch = _batch(img)  # targets on images 0 and 1; image 2 is unlabelled
    with torch.no_grad():
        preds = student(img)
        loss, _ = crit(preds, {**batch, "labeled": torch.tensor([True, True, False])})
        alone, _ = student.init_criterion()(student(img[:2]), batch)
        as_background, _ = student.init_criterion()(preds, batch)
    assert torch.allclose(loss[:3] / 3, alone / 2, rtol=1e-4, atol=1e-6)  # per-batch scaling by each batch size
    assert not torch.allclose(loss[:3] / 3, as_background / 3, rtol=1e-3)


def test_unlabelled_anchor_weights_are_teacher_confidence(tmp_path):
    from detkd.engine.unlabeled import teacher_confidence_weights

    w = torch.tensor([[0.2, 1.0], [0.5, 0.0]])
    logits = torch.tensor([[[0.0, 1.0], [2.0, -1.0]], [[-3.0, 0.0], [0.0, 4.0]]])
    out = teacher_confidence_weights(w, logits, torch.tensor([True, False]))
    assert torch.allclose(out[0], w[0])
    assert torch.allclose(out[1], torch.sigmoid(torch.tensor([0.0, 4.0])))


def test_pseudo_labels_hand_checked():
    img = torch.zeros(2, 3, 64, 128)  # h=64, w=128
    batch = {"img": img, "cls": torch.tensor([[1.0]]), "bboxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]]),
             "batch_idx": torch.tensor([0.0])}
    boxes = torch.zeros(2, 3, 4)
    boxes[1] = torch.tensor([[0, 0, 64, 32], [1, 1, 64, 32], [64, 32, 128, 64]], dtype=torch.float)
    logit = lambda p: float(np.log(p / (1 - p)))  # noqa: E731
    scores = torch.full((2, 3, 2), -9.0)
    scores[1, 0, 0], scores[1, 1, 0], scores[1, 2, 1] = logit(0.9), logit(0.8), logit(0.3)
    out = pseudo_label_targets(batch, torch.tensor([True, False]), boxes, scores, conf=0.5)
    # image 1: the 0.8 box overlaps the 0.9 one (NMS drops it); the 0.3 box is below conf
    assert out["batch_idx"].tolist() == [0.0, 1.0] and out["cls"].view(-1).tolist() == [1.0, 0.0]
    assert torch.allclose(out["bboxes"][1], torch.tensor([0.25, 0.25, 0.5, 0.5]))
    sub = select_targets(out, torch.tensor([False, True]))
    assert sub["batch_idx"].tolist() == [0.0] and sub["cls"].view(-1).tolist() == [0.0]


def test_pseudo_labels_reach_the_detection_loss(tmp_path):
    student, teacher = _student(), _teacher_model()
    with torch.no_grad():
        for conv in teacher.model[-1].cv3:
            conv[-1].bias.fill_(3.0)  # a confident teacher: its boxes pass the threshold
    crit, _ = _criterion(student, teacher, unlabeled=str(tmp_path), cls_kd=0, box_kd=0, feat_kd=0, pseudo_conf=0.5)
    soft_only, _ = _criterion(student, teacher, unlabeled=str(tmp_path), cls_kd=0, box_kd=0, feat_kd=0,
                              pseudo_conf="off")
    default, _ = _criterion(student, teacher, unlabeled=str(tmp_path), cls_kd=0, box_kd=0, feat_kd=0)  # 0.25
    student.eval()
    img = torch.rand(1, 3, 64, 64)
    empty = {"img": img, "cls": torch.zeros(0, 1), "bboxes": torch.zeros(0, 4), "batch_idx": torch.zeros(0),
             "labeled": torch.tensor([False])}
    with torch.no_grad():
        preds = student(img)
        loss, _ = crit(preds, empty)
        no_pseudo, _ = soft_only(preds, empty)
        by_default, _ = default(preds, empty)
    assert loss[0] > 0 and loss[2] > 0  # box and DFL losses: the teacher's boxes are targets
    assert by_default[0] > 0 and by_default[2] > 0  # hard pseudo-labels are on by default with unlabelled images
    assert torch.equal(no_pseudo[:3], torch.zeros(3))  # soft KD only: no detection loss on unlabelled images


# ------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_distill_with_unlabeled_images_end_to_end(tmp_path, shapes_yaml, shapes_coco, teacher_pt):
    from detkd.api import distill

    frames = _write_images(tmp_path / "frames", 5, size=(96, 96))
    (tmp_path / "frames" / "corrupt.jpg").write_bytes(b"junk")  # refused by the start check
    data = frames[0].read_bytes()
    (tmp_path / "frames" / "truncated.jpg").write_bytes(data[: len(data) // 2])  # passes it; OpenCV cannot decode it
    listed = sorted(p.name for p in (tmp_path / "frames").iterdir())
    run = distill(teacher=teacher_pt, student="yolov8n.yaml", data=shapes_yaml, unlabeled=tmp_path / "frames",
                  kd={"unlabeled_ratio": 0.2, "validate_teacher": False}, project=str(tmp_path), name="unl",
                  **{**TINY_TRAIN, "epochs": 1})
    with open(run.results_csv) as f:
        row = {k.strip(): v for k, v in next(csv.DictReader(f)).items()}
    assert float(row["train/labeled_imgs"]) == 24 and float(row["train/unlabeled_imgs"]) == 6  # 0.2/0.8 x 24
    assert float(row["train/cls_kd"]) > 0
    assert float(row["train/unlabeled_unreadable"]) == 1  # the pool of 6 is drawn whole: the truncated file too
    assert sorted(p.name for p in (tmp_path / "frames").iterdir()) == listed  # nothing written beside the images


def test_cli_unlabeled_empty_folder_exit_2(tmp_path, shapes_yaml, teacher_pt, capsys):
    from detkd.cli import main

    (tmp_path / "empty").mkdir()
    rc = main(["distill", "--teacher", teacher_pt, "--data", shapes_yaml, "--unlabeled", str(tmp_path / "empty"),
               "--epochs", "1", "--imgsz", "64", "--device", "cpu"])
    assert rc == 2
    _write_images(tmp_path / "frames", 1)
    rc = main(["distill", "--teacher", teacher_pt, "--data", shapes_yaml, "--unlabeled", str(tmp_path / "frames"),
               "--pseudo-conf", "high", "--epochs", "1", "--imgsz", "64", "--device", "cpu"])
    assert rc == 2 and "pseudo_conf=high must be a confidence in (0, 1), 'auto'" in capsys.readouterr().err


def test_compare_adds_unlabeled_and_pseudo_label_rows(tmp_path, teacher_pt, shapes_yaml):
    from detkd.cli import main
    from detkd.compare.experiment import CompareSettings, plan

    _write_images(tmp_path / "frames", 2)
    s = CompareSettings(teacher=teacher_pt, data=shapes_yaml, epochs=1, unlabeled=str(tmp_path / "frames"),
                        pseudo_conf=0.4).validate()
    specs = {r.key: r for r in plan(s)}
    assert list(specs) == ["teacher", "baseline", "distilled-detkd", "distilled-detkd-unlabeled", "pseudo-labels"]
    assert specs["distilled-detkd"].kd == {}  # labelled only
    assert specs["distilled-detkd-unlabeled"].kd == {"pseudo_conf": 0.4,  # soft + hard, at the pseudo-label row's
                                                     "unlabeled": str((tmp_path / "frames").resolve())}  # threshold
    pseudo = specs["pseudo-labels"].kd
    assert pseudo["pseudo_conf"] == 0.4 and pseudo["cls_kd"] == pseudo["box_kd"] == pseudo["feat_kd"] == 0
    both = CompareSettings(teacher=teacher_pt, data=shapes_yaml, epochs=1, unlabeled=str(tmp_path / "frames"),
                           kd_configs={"detkd": {}, "soft": {"pseudo_conf": None}, "hard": {"pseudo_conf": 0.3}}).validate()
    assert [r.key for r in plan(both)][2:] == ["distilled-detkd", "distilled-detkd-unlabeled", "distilled-soft-unlabeled",
                                              "distilled-hard-unlabeled", "pseudo-labels"]
    # a configuration that sets pseudo_conf (a threshold, or None: soft KD only) is about the unlabelled images: it
    # gets that row only, not a second labelled-only run equal to detkd's
    with pytest.raises(ConfigError, match="pseudo_conf"):
        CompareSettings(teacher=teacher_pt, data=shapes_yaml, kd_configs={"hard": {"pseudo_conf": 0.3}}).validate()
    (tmp_path / "none").mkdir()
    assert main(["compare", "--teacher", teacher_pt, "--data", shapes_yaml, "--unlabeled", str(tmp_path / "none"),
                 "--epochs", "1", "--project", str(tmp_path / "cmp")]) == 2


@pytest.mark.slow
def test_resume_keeps_the_unlabeled_images_and_continues_their_sequence(tmp_path, shapes_yaml, teacher_pt):
    from detkd.engine.trainer import DistillationTrainer
    from test_resume import _cut_off_run

    _write_images(tmp_path / "frames", 10, size=(96, 96))
    kd = KDConfig(teacher=teacher_pt, validate_teacher=False, unlabeled=str(tmp_path / "frames"))
    first = DistillationTrainer(overrides=dict(model="yolov8n.yaml", data=shapes_yaml, project=str(tmp_path),
                                               name="r", **TINY_TRAIN), kd=kd)
    run_dir = _cut_off_run(first)
    resumed = DistillationTrainer(overrides=dict(resume=str(run_dir / "weights" / "last.pt")))
    seen = []
    resumed.add_callback("on_train_epoch_start", lambda t: seen.append(t.train_loader.sampler.epoch))
    resumed.train()
    assert resumed.kd.unlabeled == str((tmp_path / "frames").resolve())
    assert resumed.start_epoch == 1 and seen and seen[0] >= 1  # the pool cursor continues at epoch 1, not 0
    with open(resumed.csv) as f:
        rows = [{k.strip(): v for k, v in r.items()} for r in csv.DictReader(f)]
    assert [float(r["train/unlabeled_imgs"]) for r in rows] == [24.0, 24.0]


def test_end_to_end_student_masks_both_branches_on_unlabelled_images(tmp_path):
    """YOLO26 student: the detection loss (one-to-many and one-to-one) is E2ELoss of the labelled image alone."""
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel

    from test_yolo26 import _batch as e2e_batch
    from test_yolo26 import _criterion as e2e_criterion

    torch.manual_seed(0)
    student = DetectionModel("yolo26n.yaml", nc=2, verbose=False)
    student.args = get_cfg()
    crit = e2e_criterion(student, _teacher_model(), unlabeled=str(tmp_path), pseudo_conf=None)
    batch = e2e_batch(2)  # one box on each image; image 1 is declared unlabelled
    student.eval()
    student.model[-1].training = True  # the training dict (one2many + one2one) on eval BatchNorm
    with torch.no_grad():
        loss, items = crit(student(batch["img"]), {**batch, "labeled": torch.tensor([True, False])})
        first = {**batch, "batch_idx": batch["batch_idx"][:1], "cls": batch["cls"][:1], "bboxes": batch["bboxes"][:1]}
        alone, _ = student.init_criterion()(student(batch["img"][:1]), first)
    assert torch.allclose(loss[:3] / 2, alone, rtol=1e-4, atol=1e-6)
    assert items["box_kd"] > 0  # KD still covers both images (class scores of two fresh heads barely differ)


def test_rect_training_with_unlabeled_images_is_refused(tmp_path, shapes_yaml, teacher_pt):
    from detkd.engine.trainer import DistillationTrainer

    _write_images(tmp_path / "frames", 2)
    trainer = DistillationTrainer(overrides=dict(model="yolov8n.yaml", data=shapes_yaml, project=str(tmp_path),
                                                 name="rect", rect=True, **TINY_TRAIN),
                                  kd=KDConfig(teacher=teacher_pt, validate_teacher=False,
                                              unlabeled=str(tmp_path / "frames")))
    with pytest.raises(ConfigError, match="rect=True"):
        trainer.train()


def test_pseudo_labels_keep_targets_grouped_by_image():
    """Ultralytics' loss expects the targets of each image contiguous and in image order: pseudo-labels of an
    unlabelled image that comes before a labelled one must be placed before its targets."""
    img = torch.zeros(3, 3, 64, 64)
    batch = {"img": img, "cls": torch.tensor([[1.0], [0.0]]), "bboxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]] * 2),
             "batch_idx": torch.tensor([1.0, 1.0])}
    boxes = torch.tensor([[[0.0, 0.0, 32.0, 32.0]], [[0.0, 0.0, 8.0, 8.0]], [[10.0, 10.0, 40.0, 40.0]]])
    scores = torch.full((3, 1, 2), 5.0)
    out = pseudo_label_targets(batch, torch.tensor([False, True, False]), boxes, scores, conf=0.5)
    assert out["batch_idx"].tolist() == [0.0, 1.0, 1.0, 2.0]
    assert out["cls"].view(-1).tolist() == [0.0, 1.0, 0.0, 0.0]  # image 1's own labels kept, in their order
    assert torch.allclose(out["bboxes"][0], torch.tensor([0.25, 0.25, 0.5, 0.5]))
    assert torch.allclose(out["bboxes"][3], torch.tensor([25 / 64, 25 / 64, 30 / 64, 30 / 64]))


def test_unlabeled_gain_verdicts_on_hand_made_rows():
    """benchmarks/unlabeled_gain.py: 'yes' only when every seed of a row is above every seed of the other."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import unlabeled_gain

    aps = {"baseline": (0.26, 0.36), "distilled-detkd": (0.34, 0.46), "distilled-detkd-same-iterations": (0.35, 0.45),
           "distilled-detkd-unlabeled": (0.61, 0.65), "distilled-detkd-soft-unlabeled": (0.58, 0.58),
           "pseudo-labels": (0.59, 0.62)}
    rows = [{"config": c, "kind": "baseline" if c == "baseline" else "distilled", "label": c, "seed": s, "AP": ap}
            for c, pair in aps.items() for s, ap in enumerate(pair)]
    out = unlabeled_gain.summarise(rows + [{"config": "teacher", "kind": "teacher", "seed": 0, "AP": 0.7}])
    assert out["teacher_AP"] == 0.7
    assert out["unlabeled_beats_labeled_only"] == out["unlabeled_beats_labeled_only_same_iterations"] == "yes"
    assert out["unlabeled_beats_pseudo_labels"] == "within spread"  # 0.61 < 0.62: the seeds overlap
    assert out["unlabeled_beats_soft_only"] == "yes" and out["soft_only_beats_pseudo_labels"] == "no (below)"
    assert unlabeled_gain.spread({0: 0.61, 1: 0.65}) == pytest.approx(0.02)


def test_unlabeled_gain_gives_the_labelled_part_teacher_as_many_steps():
    import argparse
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import unlabeled_gain

    args = argparse.Namespace(teacher_epochs=12)
    assert unlabeled_gain.teacher_epochs(args, "teacher-all", 600, 100) == 12
    assert unlabeled_gain.teacher_epochs(args, "teacher-labeled", 600, 100) == 72  # 12 x 600 / 100


def test_unlabeled_gain_teacher_cut_off_resumes_from_its_last_checkpoint(tmp_path, monkeypatch):
    """A teacher training stopped mid-way (a stopped session) continues from weights/last.pt the next time the
    protocol runs, instead of starting over; a finished one is reused through its marker, a new one starts fresh."""
    import argparse
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import unlabeled_gain
    import detkd.api

    calls = []

    class Run:
        best, metrics = "best.pt", {"mAP50-95": 0.5}

    def train(cfg, **kw):  # what Ultralytics leaves: the run folder
        (Path(kw["project"]) / kw["name"]).mkdir(parents=True, exist_ok=True)
        calls.append(kw)
        return Run()

    monkeypatch.setattr(detkd.api, "train_baseline", train)
    args = argparse.Namespace(runs=tmp_path, teacher_cfg="yolov8s.yaml", imgsz=64, batch=4, workers=0, device="cpu")
    unlabeled_gain.train_teacher(args, tmp_path / "data", "teacher-labeled", 12)
    assert "resume" not in calls[-1]
    (tmp_path / "teachers" / "teacher-labeled" / "teacher.json").unlink()
    weights = tmp_path / "teachers" / "teacher-labeled" / "weights"
    weights.mkdir()
    torch.save({"epoch": 5}, weights / "last.pt")  # cut off after epoch 6
    unlabeled_gain.train_teacher(args, tmp_path / "data", "teacher-labeled", 12)
    assert calls[-1]["resume"] == str(weights / "last.pt")
    assert unlabeled_gain.train_teacher(args, tmp_path / "data", "teacher-labeled", 12) == ("best.pt", 0.5)
    assert len(calls) == 2  # the finished teacher's marker: reused, not retrained


def test_unlabeled_gain_keeps_the_scenarios_of_an_earlier_report_of_the_same_protocol():
    """A scenario measured by an earlier call (its runs since gone) stays in the report when a later call measures
    only the other one with the same protocol; a report of another protocol (here: other epochs) is not mixed in."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import unlabeled_gain

    settings = {"dataset": "raccoon", "epochs": 60, "imgsz": 160, "seeds": [0, 1], "scenarios": ["teacher-all"],
                "runs": "runs/a", "out_dir": "x"}
    earlier = {"settings": settings, "split": {"labeled": 80}, "scenarios": {"teacher-all": {"teacher_AP": 0.42}}}
    now = {"settings": {**settings, "scenarios": ["teacher-labeled"], "runs": "runs/b"}, "split": {"labeled": 80},
           "scenarios": {"teacher-labeled": {"teacher_AP": 0.39}}}
    merged = unlabeled_gain.merge_earlier(now, earlier)
    assert list(merged["scenarios"]) == ["teacher-all", "teacher-labeled"]
    assert merged["settings"]["scenarios"] == ["teacher-all", "teacher-labeled"]
    rerun = {**now, "scenarios": {"teacher-all": {"teacher_AP": 0.5}}}
    assert unlabeled_gain.merge_earlier(rerun, earlier)["scenarios"]["teacher-all"]["teacher_AP"] == 0.5  # new wins
    other = {**earlier, "settings": {**settings, "epochs": 30}}
    assert list(unlabeled_gain.merge_earlier(now, other)["scenarios"]) == ["teacher-labeled"]
    assert unlabeled_gain.merge_earlier(now, None) == now


def test_feature_kd_with_a_foreground_mask_reaches_unlabelled_images(tmp_path):
    """``feat_method='mse'`` + ``feat_fg_mask``: on unlabelled images the mask is the teacher's detections at the
    pseudo-label threshold (before: built from the labels only, all zero there — no feature KD on them at all, and a
    batch of unlabelled images had feat_kd == 0, against "feature KD needs no label")."""
    student = _student()
    teacher = _teacher_model()
    for conv in teacher.model[-1].cv3:  # a confident teacher: every class scores sigmoid(3) = 0.95 at every anchor
        torch.nn.init.constant_(conv[-1].bias, 3.0)
    img = torch.rand(2, 3, 64, 64)
    student.train()
    for pseudo in (None, 0.5):  # soft KD only: the default threshold; with pseudo-labels: theirs
        crit, _ = _criterion(student, teacher, unlabeled=str(tmp_path), feat_method="mse", feat_fg_mask=True,
                             pseudo_conf=pseudo, cls_kd=0, box_kd=0)
        batch = {"img": img, "cls": torch.zeros(0, 1), "bboxes": torch.zeros(0, 4), "batch_idx": torch.zeros(0),
                 "labeled": torch.tensor([False, False])}
        _, items = crit(student(img), batch)
        assert items["feat_kd"] > 0, pseudo


def test_unlabelled_images_get_nothing_written_beside_them_with_cache_disk(tmp_path):
    """docs/unlabeled.md: nothing is written beside the unlabelled images. Before: cache='disk' was passed on, and
    Ultralytics saved a .npy next to every frame."""
    import cv2
    from ultralytics.cfg import get_cfg

    from detkd.data.unlabeled import build_unlabeled_dataset

    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(3):
        cv2.imwrite(str(frames / f"f{i}.png"), np.full((40, 48, 3), 40 * i, dtype=np.uint8))
    build_unlabeled_dataset(resolve_unlabeled(frames), get_cfg(overrides=dict(imgsz=64, cache="disk")), 2,
                            {"nc": 2, "names": {0: "a", 1: "b"}}, 32)
    assert sorted(p.name for p in frames.iterdir()) == ["f0.png", "f1.png", "f2.png"]

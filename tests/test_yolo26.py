"""YOLO26 (end-to-end, reg_max=1) and YOLO11 students and teachers, cross-family pairs, on tiny CPU runs."""

from __future__ import annotations

import csv
import copy

import pytest
import torch

from conftest import TINY_TRAIN, assert_predicts
from detkd.config import KDConfig
from detkd.engine.trainer import DistillationTrainer


def _teacher(tmp_path, cfg: str, names) -> str:
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    net = DetectionModel(cfg, nc=len(names), verbose=False)
    net.names = dict(names) if isinstance(names, dict) else dict(enumerate(names))
    path = tmp_path / f"teacher_{cfg.replace('.yaml', '')}.pt"
    torch.save({"model": net, "train_args": {}, "epoch": -1}, path)
    return str(path)


def _names(shapes_yaml):
    from ultralytics.utils import YAML

    return YAML.load(shapes_yaml)["names"]


@pytest.mark.slow
@pytest.mark.parametrize("teacher_cfg,student_cfg", [("yolov8n.yaml", "yolo26n.yaml"), ("yolo11n.yaml", "yolo26n.yaml"),
                                                     ("yolo26n.yaml", "yolo26n.yaml"), ("yolo26n.yaml", "yolov8n.yaml")])
def test_family_pairs_train_and_the_student_predicts(tmp_path, shapes_yaml, teacher_cfg, student_cfg):
    from ultralytics import YOLO

    teacher = _teacher(tmp_path, teacher_cfg, _names(shapes_yaml))
    trainer = DistillationTrainer(
        overrides=dict(model=student_cfg, data=shapes_yaml, project=str(tmp_path), name="kd",
                       **{**TINY_TRAIN, "epochs": 1}),
        kd=KDConfig(teacher=teacher, validate_teacher=False))
    trainer.train()
    with open(trainer.csv) as f:
        row = {k.strip(): float(v) for k, v in next(csv.DictReader(f)).items()}
    for col in ("train/cls_kd", "train/box_kd", "train/feat_kd"):
        assert row[col] > 0, col
    model = YOLO(str(trainer.best))
    assert_predicts(model)
    assert ("26" in student_cfg) == (getattr(model.model.model[-1], "one2one_cv2", None) is not None)


def _criterion(student, teacher_net, **kd):
    from detkd.engine.criterion import DistillationLoss
    from detkd.models.teacher import FrozenTeacher

    return DistillationLoss(student.init_criterion(), FrozenTeacher(teacher_net, torch.device("cpu")), None,
                            KDConfig(teacher="x", feat_kd=0.0, **kd))


def _batch(nc: int):
    torch.manual_seed(3)
    return {"img": torch.rand(2, 3, 64, 64), "batch_idx": torch.tensor([0.0, 1.0]), "cls": torch.tensor([[0.0], [1.0]]),
            "bboxes": torch.tensor([[0.5, 0.5, 0.4, 0.4], [0.3, 0.3, 0.2, 0.3]])}


def test_yolo26_student_equal_to_its_teacher_gives_zero_kd_and_uses_the_distance_path():
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    student = DetectionModel("yolo26n.yaml", nc=2, verbose=False)
    student.args = __import__("ultralytics.cfg", fromlist=["get_cfg"]).get_cfg()
    teacher = copy.deepcopy(student).eval()
    student.eval()  # BatchNorm in eval: both produce identical outputs
    crit = _criterion(student, teacher, one2one_kd=0.0)
    assert crit.end2end and crit.box_path == "distance"
    assert any("decoded distances" in line for line in crit.describe())
    batch = _batch(2)
    student.model[-1].training = True  # the training branch dict (one2many + one2one) on eval BatchNorm
    out = student(batch["img"])
    loss, items = crit(out, batch)
    assert items["cls_kd"].item() == pytest.approx(0.0, abs=1e-6)
    assert items["box_kd"].item() == pytest.approx(0.0, abs=1e-5)
    with torch.no_grad():  # a fresh one-to-one head is a copy of the one-to-many head: make it differ
        for p in student.model[-1].one2one_cv3.parameters():
            p.add_(0.5 * torch.randn_like(p))
    crit_o2o = _criterion(student, teacher, one2one_kd=1.0)
    _, items_o2o = crit_o2o(student(batch["img"]), batch)
    assert items_o2o["cls_kd"].item() > 0  # the one-to-one branch is pulled toward the teacher's dense targets
    _, items_o2m = crit(student(batch["img"]), batch)
    assert items_o2m["cls_kd"].item() == pytest.approx(0.0, abs=1e-6)  # the one-to-many branch still equals it


def test_one2one_kd_reaches_only_the_one2one_head():
    """KD on the one-to-one branch never reaches the backbone (that branch sees detached features)."""
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    student = DetectionModel("yolo26n.yaml", nc=2, verbose=False)
    student.args = __import__("ultralytics.cfg", fromlist=["get_cfg"]).get_cfg()
    teacher = DetectionModel("yolov8n.yaml", nc=2, verbose=False).eval()
    crit = _criterion(student, teacher, one2one_kd=1.0, cls_kd=1.0, box_kd=1.0)
    batch = _batch(2)
    raw = student(batch["img"])
    dense = crit.dense.parse_output(raw)["one2many"]
    o2o = crit.dense.parse_output(raw)["one2one"]
    from detkd.models.teacher import split_head_outputs

    t = crit.teacher(batch["img"])
    fg = torch.zeros(2, t.scores.shape[1], dtype=torch.bool)
    fg[:, :5] = True
    terms = crit.head_terms(split_head_outputs(o2o), t, fg.float(), torch.zeros(t.scores.shape[1], 2),
                            {"cls_kd": 1.0, "box_kd": 1.0, "feat_kd": 0.0})
    (terms["cls_kd"] + terms["box_kd"]).backward()
    head = student.model[-1]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in head.one2one_cv3.parameters())
    assert all(p.grad is None for p in student.model[0].parameters())  # backbone untouched
    assert all(p.grad is None for p in head.cv3.parameters())  # and the one-to-many head too
    assert dense["scores"].requires_grad


def test_end_to_end_onnx_export_parity(tmp_path):
    """A YOLO26 student exports to ONNX with its NMS-free output (N, 300, 6); parity compares those rows and fails
    loudly when the file does not represent the model."""
    from ultralytics.nn.tasks import DetectionModel

    from detkd.errors import DetKDError
    from detkd.export import export_model
    from detkd.export.parity import check_onnx_parity, is_end_to_end

    torch.manual_seed(0)
    net = DetectionModel("yolo26n.yaml", nc=3, verbose=False).eval()
    net.names = {0: "a", 1: "b", 2: "c"}
    with torch.no_grad():  # a random head scores ~0 everywhere (all ties): spread the scores like a trained one
        for seq in net.model[-1].one2one_cv3:
            seq[-1].bias.copy_(3 * torch.randn_like(seq[-1].bias))
    assert is_end_to_end(net)
    result = export_model(net, format="onnx", imgsz=64, output=tmp_path / "s.onnx", parity=False, verbose=False)
    report = check_onnx_parity(net, result.path, imgsz=64, conf=0.05, verbose=False)
    assert report.passed and report.n_det_torch == report.n_det_onnx > 0 and report.n_matched > 0
    other = copy.deepcopy(net)
    with torch.no_grad():
        for seq in other.model[-1].one2one_cv3:
            seq[-1].bias.add_(1.0)  # the deployed (one-to-one) scores shift
    with pytest.raises(DetKDError, match="does not match the torch model"):
        check_onnx_parity(other, result.path, imgsz=64, conf=0.05, verbose=False)


def test_bench_times_the_nms_free_path_of_end_to_end_models():
    from ultralytics.nn.tasks import DetectionModel

    from detkd.bench.speed import benchmark_model, make_predictor

    net = DetectionModel("yolo26n.yaml", nc=2, verbose=False).eval()
    net.names = {0: "a", 1: "b"}
    predictor = make_predictor(net, torch.device("cpu"), False, 64, 1, nms_free=True)
    assert predictor.model.end2end and predictor.args.nms is False  # the one-to-one head, no NMS
    row = benchmark_model(net, imgsz=64, batch=1, device="cpu", warmup=1, iters=2, time_budget=5, min_iters=1,
                          source_shape=(64, 64))
    assert any("NMS-free" in n for n in row["notes"])
    v8 = DetectionModel("yolov8n.yaml", nc=2, verbose=False).eval()
    v8.names = {0: "a", 1: "b"}
    assert not make_predictor(v8, torch.device("cpu"), False, 64, 1).model.end2end


def test_eval_scores_the_nms_free_output_and_says_so(tmp_path, shapes_coco):
    from ultralytics.nn.tasks import DetectionModel

    from detkd.eval.coco_eval import evaluate_coco

    for cfg, expected in (("yolo26n.yaml", "NMS-free (one-to-one head)"), ("yolov8n.yaml", "NMS (iou 0.7)")):
        net = DetectionModel(cfg, nc=4, verbose=False).eval()
        if "26" in cfg:  # silence the one-to-one head: only the NMS-free path then finds nothing
            with torch.no_grad():
                for seq in net.model[-1].one2one_cv3:
                    seq[-1].bias.fill_(-30.0)
        m = evaluate_coco(net, shapes_coco, imgsz=64, out_dir=tmp_path / cfg, verbose=False)
        assert m["postprocess"] == expected and 0.0 <= m["AP"] <= 1.0
        assert (m["n_detections"] == 0) == ("26" in cfg), m["n_detections"]  # the deployed head was scored


@pytest.mark.slow
def test_compare_accepts_a_yolo26_student_with_ultralytics_builtin_beside(tmp_path, shapes_coco, teacher_pt, capsys):
    """YOLO26-n student from a YOLOv8 teacher in `detkd compare`: trained, scored NMS-free, timed, reported."""
    import json

    from detkd.cli import main

    argv = ["compare", "--teacher", teacher_pt, "--student", "yolo26n.yaml", "--data", str(shapes_coco),
            "--epochs", "1", "--imgsz", "64", "--batch", "8", "--device", "cpu", "--workers", "0",
            "--set", "plots=False", "--set", "warmup_epochs=0", "--with-ultralytics-kd", "--project", str(tmp_path),
            "--name", "e2e", "--eval-batch", "8", "--bench-warmup", "1", "--bench-iters", "2", "--bench-time", "0.2"]
    assert main(argv) == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "e2e" / "report.json").read_text())
    rows = {r["key"]: r for r in report["rows"]}
    assert set(rows) == {"teacher", "baseline", "distilled-detkd", "ultralytics-kd"}
    for key in ("baseline", "distilled-detkd", "ultralytics-kd"):
        assert rows[key]["AP"] is not None and rows[key]["fps"] > 0, key
        metrics = json.loads((tmp_path / "e2e" / "eval" / key / "metrics.json").read_text())
        assert "NMS-free" in metrics["postprocess"], key  # scored on the deployed one-to-one head


def test_e2e_schedule_weights_each_branch_kd_like_the_detection_loss():
    """kd_e2e_schedule: KD = o2m·KD(one-to-many) + o2o·one2one_kd·KD(one-to-one), with Ultralytics' E2ELoss o2m/o2o
    of this step; off (default): KD(one-to-many) + one2one_kd·KD(one-to-one)."""
    from ultralytics.nn.tasks import DetectionModel

    from detkd.models.teacher import split_head_outputs

    torch.manual_seed(0)
    student = DetectionModel("yolo26n.yaml", nc=2, verbose=False)
    student.args = __import__("ultralytics.cfg", fromlist=["get_cfg"]).get_cfg()
    teacher = DetectionModel("yolov8n.yaml", nc=2, verbose=False).eval()
    batch = _batch(2)
    raw = student(batch["img"])
    per_branch = {}
    for follows in (False, True):
        crit = _criterion(student, teacher, one2one_kd=0.5, e2e_schedule=follows)
        crit.det.o2m, crit.det.o2o = 0.3, 0.7  # a point of the E2E decay
        parsed = crit.dense.parse_output(raw)
        a = parsed["one2many"]["scores"].shape[-1]
        fg = torch.zeros(2, a, dtype=torch.bool)
        fg[:, :7] = True
        student_o2m = split_head_outputs(parsed["one2many"])
        terms = crit.distillation_terms(student_o2m, batch, fg, torch.zeros(a, 2), torch.ones(a, 1),
                                        one2one=(split_head_outputs(parsed["one2one"]), fg))
        if not per_branch:  # each branch's unweighted terms, from the same teacher and anchor weights
            t = crit.teacher(batch["img"])
            w = crit.anchor_weights(t, batch, fg, torch.zeros(a, 2), torch.ones(a, 1))
            weights = {"cls_kd": 1.0, "box_kd": 1.0, "feat_kd": 0.0}
            per_branch = {"o2m": crit.head_terms(student_o2m, t, w, torch.zeros(a, 2), weights),
                          "o2o": crit.head_terms(split_head_outputs(parsed["one2one"]), t, fg.float(),
                                                 torch.zeros(a, 2), weights)}
        m, o = (0.3, 0.7) if follows else (1.0, 1.0)
        for k in ("cls_kd", "box_kd"):
            expect = m * per_branch["o2m"][k] + o * 0.5 * per_branch["o2o"][k]
            assert terms[k].item() == pytest.approx(expect.item(), rel=1e-5), (follows, k)


def test_describe_names_end_to_end_teachers_after_fusion_alone_and_as_an_ensemble():
    """The fused teachers keep their one-to-many branch, so the describe() line is true, and an ensemble of
    end-to-end teachers can be described (it crashed reading the fused heads' channels)."""
    from ultralytics.nn.tasks import DetectionModel

    from detkd.engine.criterion import DistillationLoss
    from detkd.models.ensemble import TeacherEnsemble
    from detkd.models.teacher import FrozenTeacher

    torch.manual_seed(0)
    student = DetectionModel("yolov8n.yaml", nc=2, verbose=False)
    student.args = __import__("ultralytics.cfg", fromlist=["get_cfg"]).get_cfg()
    members = []
    for _ in range(2):
        net = DetectionModel("yolo26n.yaml", nc=2, verbose=False)
        net.model[-1].end2end = True
        members.append(FrozenTeacher(net, torch.device("cpu")).optimize())
    for teacher in (members[0], TeacherEnsemble(members)):
        lines = DistillationLoss(student.init_criterion(), teacher, None,
                                 KDConfig(teacher="x", feat_kd=0.0)).describe()
        assert any("end-to-end teacher" in line and "one-to-many" in line for line in lines), lines


class _Interrupt(Exception):
    pass


@pytest.mark.slow
def test_a_resumed_yolo26_student_continues_the_one2many_one2one_schedule(tmp_path, shapes_yaml, teacher_pt):
    """E2ELoss moves its weight from the one-to-many to the one-to-one loss each epoch (0.8 → 0.1); a resume must
    continue that schedule, not restart it (detkd's criterion wraps the one Ultralytics' resume positioned)."""
    from detkd.engine.criterion import DistillationLoss
    from ultralytics.utils.torch_utils import unwrap_model

    run = dict(model="yolo26n.yaml", data=shapes_yaml, project=str(tmp_path), name="e2e", val=False,
               **{**TINY_TRAIN, "epochs": 3})
    seen = {}

    def record(trainer):
        crit = unwrap_model(trainer.model).criterion
        assert isinstance(crit, DistillationLoss)
        seen[trainer.epoch] = crit.det.o2m

    def stop(trainer):
        raise _Interrupt

    first = DistillationTrainer(overrides=run, kd=KDConfig(teacher=teacher_pt, validate_teacher=False))
    first.add_callback("on_train_epoch_start", record)
    first.add_callback("on_model_save", stop)
    with pytest.raises(_Interrupt):
        first.train()
    resumed = DistillationTrainer(overrides=dict(model=str(first.last), resume=str(first.last)),
                                  kd=KDConfig(teacher=teacher_pt, validate_teacher=False))
    resumed.add_callback("on_train_epoch_start", record)
    resumed.train()
    assert seen == pytest.approx({0: 0.8, 1: 0.45, 2: 0.1})


def test_box_iou_and_box_temp_set_on_the_distance_path_are_said_to_do_nothing_there():
    """The decoded-distance path always adds 1-IoU at weight 1 and has no temperature: a --box-iou 0 or --box-temp given
    for a YOLO26 student changed nothing, without a word (review of the YOLO26 paths)."""
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    student = DetectionModel("yolo26n.yaml", nc=2, verbose=False)
    student.args = __import__("ultralytics.cfg", fromlist=["get_cfg"]).get_cfg()
    teacher = DetectionModel("yolov8n.yaml", nc=2, verbose=False).eval()
    lines = _criterion(student, teacher, box_iou=0.5, box_temperature=4.0).describe()
    box = next(line for line in lines if line.startswith("box_kd:"))
    assert "box_iou 0.5, box_temp 4 apply to LD on shared bins only: not used here" in box
    assert "the teacher's distances stop at 15 grid cells" in box  # a DFL teacher's expected distance is capped
    plain = next(line for line in _criterion(student, teacher).describe() if line.startswith("box_kd:"))
    assert "not used here" not in plain

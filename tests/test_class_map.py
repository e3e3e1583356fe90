"""Teachers with other classes (issue 28): the class map between teacher and student, by name and by --class-map,
many-to-one combination, logit KD restricted to the mapped classes, a superset teacher trained end to end, resume
keeping the map, and every bad input as one clear line. Values are computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import TINY_TRAIN
from detkd.config import KDConfig
from detkd.errors import ConfigError, IncompatibleModelsError
from detkd.losses.logit import classification_kd_loss
from detkd.models.class_map import (ABSENT_LOGIT, ClassMappedTeacher, build_class_map, class_mask_of,
                                    format_class_map, map_head_outputs, map_inference_output, parse_class_map)
from detkd.models.teacher import HeadOutputs

TEACHER = ["Person", "car", "Truck ", "bus", "dog"]
STUDENT = ["person", "vehicle", "cat"]


def logit(p: float) -> float:
    return math.log(p / (1 - p))


# ------------------------------------------------------------------------------------------ the map
def test_names_match_after_case_and_space_normalisation_and_the_map_is_printed():
    cmap = build_class_map({0: "Traffic  Light", 1: "CAR", 2: "dog"}, [" car", "traffic light", "bird"])
    assert cmap.pairs == ((0, 1), (1, 0))
    assert cmap.unmatched_teacher == ["dog"] and cmap.unmatched_student == ["bird"]
    assert cmap.describe() == [
        "class map (teacher -> student, 2 of the teacher's 3 classes used):",
        "  CAR ->  car  [same name]",
        "  Traffic  Light -> traffic light  [same name]",
        "  student classes with no teacher class (taught by the labels only, no logit KD): bird",
        "  teacher classes not used (background for the student): dog",
    ]


def test_explicit_map_merges_teacher_classes_on_top_of_the_names():
    cmap = build_class_map(TEACHER, STUDENT, "car,truck,bus=vehicle")
    assert cmap.pairs == ((0, 0), (1, 1), (2, 1), (3, 1))
    assert cmap.teachers_of(1) == [1, 2, 3] and cmap.student_mask.tolist() == [True, True, False]
    assert "  car + Truck  + bus -> vehicle  [class map] (noisy-OR of their scores)" in cmap.describe()
    assert not cmap.is_identity and build_class_map(STUDENT, STUDENT).is_identity


def test_the_string_and_mapping_forms_read_alike():
    both = {"car": "vehicle", "truck": "vehicle", "person": "pedestrian"}
    assert parse_class_map("car,truck=vehicle;person=pedestrian") == both
    assert parse_class_map("car=vehicle, truck=vehicle, person=pedestrian") == both  # a=x,b=y: one entry each
    assert parse_class_map(both) == both and parse_class_map(format_class_map(both)) == both
    assert format_class_map(both) == "car,truck=vehicle;person=pedestrian"
    assert parse_class_map(None) is None and parse_class_map("") is None
    assert KDConfig(teacher="t.pt", class_map="car,truck=vehicle").class_map == {"car": "vehicle",
                                                                                 "truck": "vehicle"}


# ---------------------------------------------------------------------------------- combination rules
def test_many_to_one_is_the_noisy_or_of_sigmoids_and_the_softmax_sum_for_kl():
    cmap = build_class_map(["a", "b", "c", "d"], ["x", "y"], "b,c=y;a=x")  # d dropped
    t = torch.tensor([[[logit(0.9), logit(0.5), logit(0.4), logit(0.8)]]])  # (B=1, A=1, C_t=4)
    p = cmap.map_logits(t, "bce").sigmoid()
    assert p[0, 0, 0].item() == pytest.approx(0.9, abs=1e-6)  # one-to-one: copied
    assert p[0, 0, 1].item() == pytest.approx(1 - 0.5 * 0.6, abs=1e-6)  # noisy-OR: 1 - (1-0.5)(1-0.4) = 0.7
    assert cmap.map_logits(t, "bce")[0, 0, 0].item() == t[0, 0, 0].item()  # exactly, not through the formula
    # softmax teacher 0.4, 0.3, 0.2, 0.1: y = 0.3 + 0.2, d dropped -> student softmax over x, y = 0.4/0.9, 0.5/0.9
    t_kl = torch.tensor([0.4, 0.3, 0.2, 0.1]).log().view(1, 1, 4)
    q = cmap.map_logits(t_kl, "kl").softmax(-1)
    assert q.view(-1).tolist() == pytest.approx([0.4 / 0.9, 0.5 / 0.9], abs=1e-6)
    probs = torch.tensor([[0.9, 0.5, 0.4, 0.8]])
    assert cmap.map_probabilities(probs).view(-1).tolist() == pytest.approx([0.9, 0.7], abs=1e-6)


def test_head_outputs_map_scores_and_conf_logits_and_unmapped_student_classes_are_absent():
    cmap = build_class_map(TEACHER, STUDENT, "car,truck,bus=vehicle")
    scores = torch.tensor([[[logit(0.8), logit(0.5), logit(0.5), logit(0.5), logit(0.99)]]])
    out = map_head_outputs(HeadOutputs(torch.zeros(1, 1, 64), scores, [], conf_logits=scores.clone()), cmap, "bce")
    assert out.scores.shape == (1, 1, 3) and out.conf_logits.shape == (1, 1, 3)
    assert out.scores.sigmoid().view(-1).tolist() == pytest.approx([0.8, 1 - 0.5 ** 3, torch.sigmoid(
        torch.tensor(ABSENT_LOGIT)).item()], abs=1e-6)  # the dog (0.99) is background for the student
    kl = map_head_outputs(HeadOutputs(torch.zeros(1, 1, 64), scores, []), cmap, "kl")
    assert kl.conf_logits.sigmoid()[0, 0, 1].item() == pytest.approx(0.875, abs=1e-6)  # confidence stays noisy-OR


def test_logit_kd_covers_the_mapped_classes_only():
    cmap = build_class_map(TEACHER, STUDENT)  # person only; vehicle and cat get no teacher class
    teacher = cmap.map_logits(torch.tensor([[[0.0, 3.0, 3.0, 3.0, 3.0]]]))  # person p = 0.5
    student = torch.tensor([[[math.log(3.0), 5.0, -5.0]]], requires_grad=True)  # person q = 0.75
    loss = classification_kd_loss(student, teacher, torch.ones(1, 1), "bce", 1.0, cmap.student_mask)
    hand = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)  # KL(Bern(0.5) || Bern(0.75)), person only
    assert loss.item() == pytest.approx(hand, abs=1e-6)
    loss.backward()
    assert student.grad[0, 0, 1:].tolist() == [0.0, 0.0]  # classes the teacher does not know: no KD gradient


def test_mapped_teacher_forwards_facts_and_its_mask_reaches_the_criterion():
    class Fake:
        reg_max, strides, model = 16, [8.0, 16.0, 32.0], "net"

        def __call__(self, img):
            return HeadOutputs(torch.zeros(1, 2, 64), torch.zeros(1, 2, 5), [])

    cmap = build_class_map(TEACHER, STUDENT, "truck=vehicle")
    mapped = ClassMappedTeacher(Fake(), cmap)
    assert (mapped.reg_max, mapped.model, mapped.nc, mapped.names) == (16, "net", 3, dict(enumerate(STUDENT)))
    assert mapped(torch.zeros(1)).scores.shape == (1, 2, 3)
    assert class_mask_of(mapped).tolist() == [True, True, False] and class_mask_of(Fake()) is None


def test_teacher_validation_outputs_are_mapped_to_the_data_classes():
    cmap = build_class_map(["a", "b", "c"], ["y", "b "], "c=y")  # a dropped
    dense = torch.tensor([[[1.0], [2.0], [3.0], [4.0], [0.9], [0.2], [0.5]]])  # (B=1, 4+3, A=1): boxes, probs
    assert map_inference_output(dense, cmap).view(-1).tolist() == pytest.approx([1, 2, 3, 4, 0.5, 0.2])
    e2e = torch.tensor([[[0, 0, 1, 1, 0.9, 0.0], [0, 0, 1, 1, 0.8, 2.0]]])  # class a (unmapped), class c
    out = map_inference_output(e2e, cmap, end2end=True)
    assert out[0, :, 4].tolist() == pytest.approx([0.0, 0.8]) and out[0, 1, 5].item() == 0.0


# --------------------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("spec, error, message", [
    ("car=vehicle;car=auto", ConfigError, "maps teacher class 'car' twice"),
    ("car,truck", ConfigError, "'car,truck' maps to no student class"),
    ("car=a=b", ConfigError, "more than one '='"),
    ({"car": ["vehicle"]}, ConfigError, "is not a class name"),
])
def test_bad_class_map_syntax_is_one_config_error(spec, error, message):
    with pytest.raises(error, match=message):
        KDConfig(teacher="t.pt", class_map=spec)


def test_bad_class_map_names_are_refused_naming_both_lists():
    with pytest.raises(IncompatibleModelsError, match="share no class: teacher classes Person, car, Truck , bus, "
                                                      "dog, data classes horse, cow. Map them with --class-map"):
        build_class_map(TEACHER, ["horse", "cow"])
    with pytest.raises(IncompatibleModelsError, match="--class-map lorry=vehicle: 'lorry' is not a teacher class. "
                                                      "Teacher classes: Person, car"):
        build_class_map(TEACHER, STUDENT, "lorry=vehicle")
    with pytest.raises(IncompatibleModelsError, match="'car' is not a data class"):
        build_class_map(TEACHER, STUDENT, "truck=car")
    with pytest.raises(IncompatibleModelsError, match=r"sides are swapped: write car=vehicle"):
        build_class_map(TEACHER, STUDENT, "vehicle=car")
    with pytest.raises(IncompatibleModelsError, match="data's class names 'Cat' \\(0\\) and 'cat ' \\(1\\) are the "
                                                      "same name up to case and spaces"):
        build_class_map(TEACHER, ["Cat", "cat "])
    with pytest.raises(IncompatibleModelsError, match="teacher's class names 'car' \\(0\\) and 'CAR' \\(1\\)"):
        build_class_map(["car", "CAR"], ["car"])


def test_cli_bad_class_map_is_exit_2_one_line(capsys, shapes_yaml, teacher_pt):
    from detkd.cli import main

    assert main(["distill", "--teacher", teacher_pt, "--data", shapes_yaml, "--class-map", "a=x;a=y"]) == 2
    err = capsys.readouterr().err
    assert "maps teacher class 'a' twice" in err and "Traceback" not in err


# ------------------------------------------------------------------------------------ models, end to end
def _net(nc, names, cfg="yolov8n.yaml"):
    from ultralytics.nn.tasks import DetectionModel

    net = DetectionModel(cfg, nc=nc, verbose=False)
    net.names = dict(enumerate(names))
    return net


def test_superset_teacher_passes_the_compatibility_check_with_its_map():
    from detkd.models.compat import check_compatibility, teacher_class_map

    data = {"nc": 2, "names": {0: "cat", 1: "dog"}}
    teacher = _net(4, ["Dog", "bus", "CAT", "car"])
    notes = check_compatibility(teacher, _net(2, ["cat", "dog"]), data)
    assert "  CAT -> cat  [same name]" in notes and any("not used (background for the student): bus, car" in n
                                                         for n in notes)
    assert teacher_class_map(_net(2, ["cat", "dog"]), data).is_identity  # same names: no map, no wrapper
    # a --class-map is for the teachers with other classes: one with the data's (an assistant, an ensemble member,
    # a YAML teacher) stays the identity instead of being refused for the map's names
    assert teacher_class_map(_net(2, ["cat", "dog"]), data, "car,bus=cat").is_identity
    assert teacher_class_map(_net(2, ["0", "1"]), data, "car,bus=cat", teacher_from_yaml=True).is_identity


@pytest.fixture(scope="module")
def superset_teacher_pt(tmp_path_factory, shapes_yaml) -> str:
    """A teacher with the shapes classes in another order and case, one under another name, plus two more."""
    torch.manual_seed(0)
    net = _net(6, ["Cross", "car", "disc", "square", " Triangle", "bus"], "yolov8s.yaml")
    path = tmp_path_factory.mktemp("superset") / "superset.pt"
    torch.save({"model": net, "train_args": {}, "epoch": -1}, path)
    return str(path)


class Interrupt(Exception):
    pass


def _stop(trainer):
    raise Interrupt


@pytest.mark.slow
def test_superset_teacher_trains_the_student_and_resume_keeps_the_map(tmp_path, shapes_yaml, superset_teacher_pt):
    from detkd.engine.trainer import DistillationTrainer

    kd = KDConfig(teacher=superset_teacher_pt, class_map="disc,car=circle")
    trainer = DistillationTrainer(overrides=dict(model="yolov8n.yaml", data=shapes_yaml, project=str(tmp_path),
                                                 name="sup", val=False, **TINY_TRAIN), kd=kd)
    trainer.add_callback("on_model_save", _stop)
    with pytest.raises(Interrupt):
        trainer.train()
    teacher = trainer.teacher.teacher if hasattr(trainer.teacher, "hits") else trainer.teacher  # CPU lookahead
    assert isinstance(teacher, ClassMappedTeacher)
    assert teacher.class_map.pairs == ((0, 3), (1, 0), (2, 0), (3, 1), (4, 2))  # teacher idx -> circle..cross
    assert 0.0 <= trainer.teacher_metrics["mAP50-95"] <= 1.0  # validated in the data's classes, no error
    losses = {k.split("/")[-1]: float(v) for k, v in trainer.tloss.items()}
    assert all(math.isfinite(v) for v in losses.values()) and losses["cls_kd"] > 0, losses
    saved = torch.load(trainer.last, map_location="cpu", weights_only=False)["train_args"]["kd"]
    assert saved["class_map"] == {"disc": "circle", "car": "circle"}

    resumed = DistillationTrainer(overrides=dict(resume=str(trainer.last)))
    assert resumed.kd.class_map == {"disc": "circle", "car": "circle"}
    resumed.train()
    teacher = resumed.teacher.teacher if hasattr(resumed.teacher, "hits") else resumed.teacher
    assert teacher.class_map.pairs == ((0, 3), (1, 0), (2, 0), (3, 1), (4, 2))


def test_each_teacher_of_an_ensemble_is_mapped_from_its_own_class_list_before_they_combine():
    from detkd.models.ensemble import TeacherEnsemble

    class Fake:
        reg_max, device = 1, torch.device("cpu")

        def __init__(self, probs):
            self.probs = torch.tensor(probs).view(1, 1, -1)

        def __call__(self, img):
            return HeadOutputs(torch.ones(1, 1, 4), torch.logit(self.probs), [])

    student = ["cat", "dog", "bird"]
    first = ClassMappedTeacher(Fake([0.8, 0.1, 0.9]), build_class_map(["cat", "dog", "car"], student))
    second = ClassMappedTeacher(Fake([0.3, 0.5, 0.4]), build_class_map(["dog", "bird", "CAT"], student))
    ensemble = TeacherEnsemble([first, second])
    p = ensemble(torch.zeros(1)).scores.sigmoid().view(-1)
    assert p[:2].tolist() == pytest.approx([(0.8 + 0.4) / 2, (0.1 + 0.3) / 2], abs=1e-5)  # cat, dog: both teachers
    assert class_mask_of(ensemble).tolist() == [True, True, False]  # bird: only one teacher knows it, no logit KD
    # its confidence (anchor weights, pseudo-labels) is the teacher's that knows it: "has no bird class" is not "no bird"
    assert p[2].item() == pytest.approx(0.5, abs=1e-5)  # the second teacher's bird (was 0.25: halved)


# ---------------------------------------------------------------------------------------- AP per class group
def test_group_ap_is_the_mean_class_ap_of_the_group_and_all_is_cocos_ap():
    from detkd.eval.class_groups import format_group_table, group_ap, groups_from_teacher, parse_class_groups

    metrics = {"per_class": {"cat": 0.2, "dog": 0.4, "bird": None, "fish": 0.9},
               "per_class_AP50": {"cat": 0.5, "dog": 0.7, "bird": None, "fish": 1.0},
               "per_class_instances": {"cat": 3, "dog": 2, "bird": 0, "fish": 1}, "AP": 0.5}
    groups = parse_class_groups(["old=Cat,dog", "new=bird, fish"], list(metrics["per_class"]))
    assert groups == {"old": ["cat", "dog"], "new": ["bird", "fish"], "all": ["cat", "dog", "bird", "fish"]}
    per_group = group_ap(metrics, groups)
    assert per_group["old"]["AP"] == pytest.approx(0.3) and per_group["old"]["AP50"] == pytest.approx(0.6)
    assert per_group["new"]["AP"] == pytest.approx(0.9) and per_group["new"]["classes_with_gt"] == 1  # bird: no GT
    assert per_group["all"]["AP"] == pytest.approx(metrics["AP"])  # (0.2 + 0.4 + 0.9) / 3
    assert format_group_table(per_group).splitlines()[1:] == [
        "old                   2          5   0.300   0.600",
        "new                 1/2          1   0.900   1.000",
        "all                 3/4          6   0.500   0.733"]  # AP50 (0.5 + 0.7 + 1.0) / 3
    assert groups_from_teacher({0: "DOG", 1: "cat", 2: "car"}, ["cat", "dog", "bird"]) == {
        "teacher's classes": ["cat", "dog"], "new classes": ["bird"], "all": ["cat", "dog", "bird"]}


@pytest.mark.parametrize("spec, message", [
    (["old=cat,cow"], "'cow' is not a class of the data"),
    (["old=cat", "old=dog"], "group 'old' is given twice"),
    (["cat,dog"], "expected NAME=class,class"),
])
def test_bad_class_groups_are_one_config_error(spec, message):
    from detkd.eval.class_groups import parse_class_groups

    with pytest.raises(ConfigError, match=message):
        parse_class_groups(spec, ["cat", "dog"])


def test_eval_prints_and_saves_ap_per_class_group(capsys, tmp_path, shapes_coco, teacher_pt, superset_teacher_pt):
    import json

    from detkd.cli import main

    out = tmp_path / "eval"
    assert main(["eval", "--model", teacher_pt, "--data", str(shapes_coco), "--imgsz", "64",
                 "--out", str(out), "--groups-from-teacher", superset_teacher_pt]) == 0
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["class_group_members"] == {"teacher's classes": ["square", "triangle", "cross"],
                                            "new classes": ["circle"], "all": ["circle", "square", "triangle",
                                                                               "cross"]}
    assert saved["class_groups"]["all"]["AP"] == pytest.approx(saved["AP"], abs=1e-9)
    assert "class group" in capsys.readouterr().out
    assert main(["eval", "--model", teacher_pt, "--data", str(shapes_coco), "--imgsz", "64",
                 "--out", str(out), "--class-groups", "old=circle,disc"]) == 2
    assert "'disc' is not a class of the data" in capsys.readouterr().err


# --------------------------------------------------------------------- item 3: new classes, old ones kept
def test_incremental_classes_are_the_teachers_then_the_new_ones():
    from detkd.engine.incremental import union_classes

    union, table, labelled = union_classes({0: "cat", 1: "dog", 2: "car"}, ["Dog ", "bird"])
    assert union == ["cat", "dog", "car", "bird"] and table == [1, 3]
    assert labelled == [False, True, False, True]  # cat, car: the teacher's only; dog: partial overlap, labelled


def test_an_unlabelled_old_class_object_gives_no_background_loss():
    import torch.nn.functional as F

    from detkd.engine.incremental import BackgroundMaskedBCE

    pred = torch.tensor([[[2.0, -1.0], [0.5, 3.0]]])  # (B=1, A=2, C=2): anchor 0 is an unlabelled 'old' object
    target = torch.tensor([[[0.0, 0.0], [0.8, 0.0]]])  # anchor 1 holds a (teacher-given) target of the old class 0
    loss = BackgroundMaskedBCE(torch.tensor([True, False]))(pred, target)
    full = F.binary_cross_entropy_with_logits(pred, target, reduction="none")
    assert loss[0, 0, 0].item() == 0.0  # old class, target 0: no background loss (plain BCE: softplus(2) = 2.127)
    assert full[0, 0, 0].item() == pytest.approx(math.log1p(math.exp(2.0)))
    assert loss[0, 1, 0].item() == pytest.approx(full[0, 1, 0].item())  # its positives still count
    assert torch.equal(loss[..., 1], full[..., 1])  # a labelled class: unchanged


def test_an_anchor_on_a_labelled_object_is_background_for_the_old_classes():
    """The mask is for anchors nobody labelled (maybe an unlabelled old object); an anchor assigned to a labelled
    object (a new class, or the teacher's detection added as a target) is that object: every other class, the old
    ones included, is background there. Else nothing stops the old model's guess (a rook called a 'pawn') from
    growing on the new classes' objects."""
    import torch.nn.functional as F

    from detkd.engine.incremental import BackgroundMaskedBCE

    pred = torch.tensor([[[1.5, -2.0, 0.3], [1.0, 2.0, -1.0], [0.7, -0.4, 2.5]]])  # (B=1, A=3, C=3); old: 0, 2
    target = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 0.9, 0.0], [0.0, 0.0, 0.6]]])  # anchor 1: labelled new class 1
    loss = BackgroundMaskedBCE(torch.tensor([True, False, True]))(pred, target)    # anchor 2: an old-class target
    full = F.binary_cross_entropy_with_logits(pred, target, reduction="none")
    assert torch.equal(loss[0, 0], torch.tensor([0.0, full[0, 0, 1].item(), 0.0]))  # unassigned: old classes masked
    assert torch.equal(loss[0, 1], full[0, 1])  # on the labelled object: softplus(1.0) for old class 0, not 0
    assert loss[0, 1, 0].item() == pytest.approx(math.log1p(math.exp(1.0)))
    assert torch.equal(loss[0, 2], full[0, 2])  # on the old-class target: the other old class is background too


def test_the_widened_head_keeps_the_old_rows_exactly():
    from detkd.engine.incremental import widen_from

    torch.manual_seed(0)
    old, student = _net(2, ["a", "b"]), _net(3, ["a", "b", "c"])
    fresh = {k: v.clone() for k, v in student.state_dict().items()}
    assert widen_from(student, old, n_old=2)
    head, old_head = student.model[-1], old.model[-1]
    for level in range(len(head.cv3)):
        new_conv, old_conv = head.cv3[level][-1], old_head.cv3[level][-1]
        assert torch.equal(new_conv.weight[:2], old_conv.weight) and torch.equal(new_conv.bias[:2], old_conv.bias)
        key = f"model.{len(student.model) - 1}.cv3.{level}.2"
        assert torch.equal(new_conv.weight[2:], fresh[f"{key}.weight"][2:])  # the new class: its own init
        assert torch.equal(new_conv.bias[2:], fresh[f"{key}.bias"][2:])
    assert torch.equal(student.model[0].conv.weight, old.model[0].conv.weight)  # the rest copied
    other = _net(3, ["a", "b", "c"], "yolov8s.yaml")
    before = {k: v.clone() for k, v in other.state_dict().items()}
    assert not widen_from(other, old, n_old=2)  # another architecture: nothing changed
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())


@pytest.mark.parametrize("cfg", ["yolov8n.yaml", "yolo11n.yaml"])
def test_a_coco_sized_old_model_is_widened_and_predicts_its_classes_exactly_as_before(cfg):
    # Ultralytics sizes the class branch's hidden convs by the class count (c3 = max(ch[0], min(nc, 100))): from 80 to
    # 82 classes they widen from 80 to 82 channels too. The widened model must still be the old model on its classes.
    from detkd.engine.incremental import widen_from

    torch.manual_seed(0)
    old = _net(80, [f"c{i}" for i in range(80)], cfg)
    student = _net(82, [f"c{i}" for i in range(82)], cfg)
    for m in old.modules():  # trained-looking BN statistics, so a copy that ignores them would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
    assert widen_from(student, old, n_old=80)
    old.eval(), student.eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        y_old, y_new = old(x)[0], student(x)[0]  # (B, 4 + C, A) boxes and class probabilities
    assert torch.allclose(y_new[:, :4 + 80], y_old, atol=1e-5)


def _mapped_criterion(teacher_names, student_names, **kd):
    from ultralytics.cfg import DEFAULT_CFG

    from detkd.engine.criterion import DistillationLoss
    from detkd.models.teacher import FrozenTeacher

    torch.manual_seed(0)
    student = _net(len(student_names), student_names)
    student.args = DEFAULT_CFG
    teacher = ClassMappedTeacher(FrozenTeacher(_net(len(teacher_names), teacher_names), torch.device("cpu")),
                                 build_class_map(teacher_names, student_names))
    return DistillationLoss(student.init_criterion(), teacher, None, KDConfig(teacher="t.pt", feat_kd=0.0, **kd))


def _anchors(teacher_out, strides):
    from ultralytics.utils.tal import make_anchors

    return make_anchors(teacher_out.feats, torch.tensor(strides), 0.5)


def test_verified_weights_come_only_from_labels_of_classes_the_teacher_knows():
    # Teacher [car, person], data [car, bus]: the teacher has no score for 'bus' (sigma(ABSENT) ~ 2e-9). Weights
    # normalised by their sum must not put all the KD on the bus anchors because they are the only ones left.
    crit = _mapped_criterion(["car", "person"], ["car", "bus"])
    img = torch.rand(1, 3, 64, 64)
    t_out = crit.teacher(img)
    anchor_points, stride_tensor = _anchors(t_out, crit.teacher.strides)
    bus = {"img": img, "cls": torch.tensor([[1.0]]), "bboxes": torch.tensor([[0.5, 0.5, 0.5, 0.5]]),
           "batch_idx": torch.zeros(1)}
    w = crit.anchor_weights(t_out, bus, None, anchor_points, stride_tensor)
    assert w.abs().sum().item() == 0.0  # a bus label verifies nothing the teacher says
    car = dict(bus, cls=torch.tensor([[0.0]]))
    assert crit.anchor_weights(t_out, car, None, anchor_points, stride_tensor).sum() > 0  # a car label does


def test_incremental_without_pseudo_labels_weights_old_classes_by_the_teachers_confidence():
    from detkd.engine.incremental import OldClassTargets

    conf = torch.logit(torch.tensor([[[0.9, 0.2], [0.1, 0.3], [0.05, 0.6]]]))  # (B=1, A=3, C=2): class 0 is old
    out = HeadOutputs(torch.zeros(1, 3, 64), conf, [])
    unlabelled = torch.tensor([True, False])
    weights = torch.tensor([[0.0, 0.5, 0.0]])  # e.g. verified, from the labels of the new class
    soft = OldClassTargets(unlabelled, None, 16).anchor_weights(weights, out)
    assert soft.tolist()[0] == pytest.approx([0.9, 0.5, 0.05], abs=1e-6)  # max(weights, old-class confidence)
    hard = OldClassTargets(unlabelled, 0.25, 16).anchor_weights(weights, out)
    assert torch.equal(hard, weights)  # with pseudo-labels they are labels: verified weights cover them


def test_teacher_targets_are_added_for_the_unlabelled_classes_only():
    from detkd.engine.incremental import add_teacher_pseudo_labels

    batch = {"img": torch.zeros(1, 3, 64, 64), "batch_idx": torch.zeros(1), "cls": torch.tensor([[1.0]]),
             "bboxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}
    boxes = torch.tensor([[[0.0, 0.0, 32.0, 32.0], [32.0, 32.0, 64.0, 64.0]]])  # (B, A=2, 4) px
    logits = torch.tensor([[[3.0, -9.0], [-9.0, 3.0]]])  # anchor 0: old class 0, anchor 1: the labelled class 1
    out = add_teacher_pseudo_labels(batch, torch.tensor([True]), boxes, logits, torch.tensor([True, False]), 0.25)
    assert out["cls"].view(-1).tolist() == [1.0, 0.0] and out["batch_idx"].tolist() == [0.0, 0.0]
    assert out["bboxes"][1].tolist() == pytest.approx([0.25, 0.25, 0.5, 0.5])  # normalised xywh of the old object


def test_the_teachers_targets_are_counted_per_old_class_and_a_class_it_never_detects_is_named():
    """An old class the teacher is never confident about gets no pseudo-labels: only the soft KD keeps it (aquarium's
    penguins, lost that way). The epoch's report counts the teacher's targets per old class and names such a class
    once, with the fix."""
    from detkd.engine.incremental import OldClassTargets

    targets = OldClassTargets(torch.tensor([True, True, False]), 0.25, 1)  # classes 0, 1 old; 2 labelled
    anchor_points = torch.tensor([[0.5, 0.5], [6.5, 6.5]])  # (A=2, 2) grid units, stride 8
    stride = torch.full((2, 1), 8.0)
    out = HeadOutputs(torch.ones(1, 2, 4), torch.tensor([[[3.0, -2.0, -9.0], [3.0, -2.0, 4.0]]]), [])  # class 1: 0.12
    batch = {"img": torch.zeros(1, 3, 64, 64), "batch_idx": torch.zeros(1), "cls": torch.tensor([[2.0]]),
             "bboxes": torch.tensor([[0.1, 0.9, 0.1, 0.1]])}
    for _ in range(2):
        assert targets(batch, None, out, anchor_points, stride)["cls"].numel() == 3  # the label + 2 teacher targets
    info, warning = targets.epoch_report(["fish", "penguin", "shark"])
    assert info.endswith("fish 4, penguin 0") and "0.25" in info
    assert warning.startswith("penguin:") and "--pseudo-conf" in warning
    targets(batch, None, out, anchor_points, stride)
    info, warning = targets.epoch_report(["fish", "penguin", "shark"])
    assert info.endswith("fish 2, penguin 0") and warning is None  # counted afresh each epoch, warned once


def test_a_teacher_detection_on_a_labelled_object_is_not_added_the_label_wins():
    """The old model calls a bus (a new, labelled class) 'car': that object is labelled already, so no 'car' target is
    added on it (two targets on one object split its anchors and train 'bus' as background on half of them)."""
    from detkd.engine.incremental import add_teacher_pseudo_labels

    batch = {"img": torch.zeros(1, 3, 64, 64), "batch_idx": torch.zeros(1), "cls": torch.tensor([[1.0]]),
             "bboxes": torch.tensor([[0.25, 0.25, 0.5, 0.5]])}  # a labelled 'bus' (class 1) at px (0, 0, 32, 32)
    boxes = torch.tensor([[[1.0, 1.0, 31.0, 33.0], [34.0, 34.0, 62.0, 62.0]]])  # (B, A=2, 4) px
    logits = torch.tensor([[[3.0, -9.0], [3.0, -9.0]]])  # both: old class 0 ('car'); anchor 0 lies on the bus
    out = add_teacher_pseudo_labels(batch, torch.tensor([True]), boxes, logits, torch.tensor([True, False]), 0.25)
    assert out["cls"].view(-1).tolist() == [1.0, 0.0]  # the bus label + the car elsewhere, not the car on the bus
    assert out["bboxes"][1].tolist() == pytest.approx([48 / 64, 48 / 64, 28 / 64, 28 / 64])


def test_keep_teacher_classes_bad_inputs_are_one_line(tmp_path):
    from detkd.engine.incremental import start_from_old_model

    with pytest.raises(ConfigError, match="give one --teacher"):
        KDConfig(teacher=["a.pt", "b.pt"], keep_teacher_classes=True)
    with pytest.raises(ConfigError, match="drop --class-map"):
        KDConfig(teacher="a.pt", keep_teacher_classes=True, class_map="a=b")
    assert KDConfig(teacher="a.pt", keep_teacher_classes=True).pseudo_threshold == 0.25
    other = tmp_path / "other.pt"
    torch.save({"model": _net(2, ["x", "y"]), "train_args": {}}, other)
    with pytest.raises(IncompatibleModelsError, match="student checkpoint .* predicts x, y: neither the teacher's "
                                                      "classes \\(a, b\\) nor the teacher's \\+ the data's"):
        start_from_old_model(_net(3, ["a", "b", "c"]), str(other), "unused.pt", ["a", "b"], ["a", "b", "c"])


@pytest.mark.slow
def test_incremental_run_widens_the_old_model_and_teaches_its_classes(tmp_path, shapes_yaml, ultralytics_log):
    from detkd.engine.incremental import BackgroundMaskedBCE
    from detkd.engine.trainer import DistillationTrainer

    torch.manual_seed(0)
    old = tmp_path / "old.pt"  # knows circle and square, and 'car', which the shapes data never labels
    torch.save({"model": _net(3, ["circle", "Square", "car"]), "train_args": {}, "epoch": -1}, old)
    old_rows = torch.load(old, weights_only=False)["model"].model[-1].cv3[0][-1].weight.clone()
    seen = {}

    def at_start(trainer):
        seen["rows"] = trainer.model.model[-1].cv3[0][-1].weight.detach().clone()

    trainer = DistillationTrainer(overrides=dict(model="yolov8n.yaml", data=shapes_yaml, project=str(tmp_path),
                                                 name="inc", val=False, **{**TINY_TRAIN, "epochs": 1}),
                                  kd=KDConfig(teacher=str(old), keep_teacher_classes=True))
    trainer.add_callback("on_pretrain_routine_end", at_start)
    trainer.train()
    assert list(trainer.data["names"].values()) == ["circle", "Square", "car", "triangle", "cross"]
    assert torch.equal(seen["rows"][:3], old_rows)  # started from the old model, its class rows kept
    labels = {int(c) for lb in trainer.train_loader.dataset.labels for c in lb["cls"].ravel()}
    assert labels <= {0, 1, 3, 4} and {3, 4} & labels  # the data's labels renumbered into the student's classes
    criterion = trainer.model.criterion
    assert isinstance(criterion.det.bce, BackgroundMaskedBCE)
    assert criterion.det.bce.unlabelled.tolist() == [False, False, True, False, False]  # car: the teacher's only
    best = torch.load(trainer.best, map_location="cpu", weights_only=False)["model"]
    assert list(best.names.values()) == ["circle", "Square", "car", "triangle", "cross"]
    groups = trainer.class_group_metrics  # item 4: the run's final report per class group
    assert [(g, m["classes"]) for g, m in groups.items()] == [("teacher's classes", 3), ("new classes", 2),
                                                               ("all", 5)]
    assert groups["all"]["AP"] == pytest.approx(trainer.metrics["metrics/mAP50-95(B)"], abs=1e-6)
    assert criterion.old_class_targets.warned == {2}  # an untrained 'car' head: no teacher target, named
    assert any(m.endswith("(its classes the data does not label, conf >= 0.25): car 0") for m in ultralytics_log)
    assert any("car: the teacher detected none at conf >= 0.25" in m and "--pseudo-conf" in m for m in ultralytics_log)


def test_ultralytics_validation_metrics_give_the_group_table():
    from types import SimpleNamespace

    import numpy as np

    from detkd.eval.class_groups import group_ap, groups_from_mask, per_class_from_ultralytics

    box = SimpleNamespace(ap_class_index=np.array([0, 2]), ap=np.array([0.3, 0.5]), ap50=np.array([0.6, 0.9]))
    per_class = per_class_from_ultralytics(SimpleNamespace(box=box, nt_per_class=np.array([2, 0, 1])),
                                           {0: "cat", 1: "dog", 2: "bird"})
    assert per_class["per_class"] == {"cat": 0.3, "dog": None, "bird": 0.5}
    groups = group_ap(per_class, groups_from_mask(["cat", "dog", "bird"], [True, True, False]))
    assert groups["teacher's classes"]["AP"] == pytest.approx(0.3) and groups["new classes"]["AP"] == 0.5
    assert groups["all"]["AP"] == pytest.approx(0.4) and groups["all"]["instances"] == 3


def test_an_ensemble_reads_its_mapped_members_confidence_by_noisy_or_in_kl_mode():
    from detkd.models.ensemble import TeacherEnsemble

    class Fake:
        reg_max, device = 1, torch.device("cpu")

        def __call__(self, img):
            return HeadOutputs(torch.ones(1, 1, 4), torch.logit(torch.tensor([[[0.5, 0.4]]])), [])

    cmap = build_class_map(["car", "truck"], ["vehicle"], "car,truck=vehicle")
    ensemble = TeacherEnsemble([ClassMappedTeacher(Fake(), cmap, "kl"), ClassMappedTeacher(Fake(), cmap, "kl")],
                               cls_mode="kl")
    # 1 - 0.5 x 0.6 = 0.7 (sigma of the kl scores' logsumexp would read 0.625)
    assert ensemble(torch.zeros(1)).conf_logits.sigmoid().item() == pytest.approx(0.7, abs=1e-6)


def test_keep_teacher_classes_with_coco_eval_is_refused(tmp_path, shapes_yaml, superset_teacher_pt):
    from detkd.engine.trainer import DistillationTrainer

    with pytest.raises(ConfigError, match="drop --coco-eval"):
        DistillationTrainer(overrides=dict(model="yolov8n.yaml", data=shapes_yaml, project=str(tmp_path),
                                           coco_eval=True, **TINY_TRAIN),
                            kd=KDConfig(teacher=superset_teacher_pt, keep_teacher_classes=True))


@pytest.mark.slow
def test_a_yolo26_superset_teacher_with_unlabelled_images(tmp_path, shapes_yaml):
    import csv

    from detkd.api import distill
    from test_unlabeled import _write_images

    torch.manual_seed(0)
    teacher = tmp_path / "t26.pt"
    torch.save({"model": _net(5, ["bus", "circle", "SQUARE", "triangle", "cross"], "yolo26n.yaml"), "train_args": {},
                "epoch": -1}, teacher)
    _write_images(tmp_path / "frames", 4, size=(96, 96))
    run = distill(teacher=str(teacher), student="yolo26n.yaml", data=shapes_yaml, unlabeled=tmp_path / "frames",
                  kd={"unlabeled_ratio": 0.2}, project=str(tmp_path), name="u26",
                  **{**TINY_TRAIN, "epochs": 1})
    with open(run.results_csv) as f:
        row = {k.strip(): v for k, v in next(csv.DictReader(f)).items()}
    assert float(row["train/cls_kd"]) > 0 and float(row["train/unlabeled_imgs"]) > 0
    assert list(run.class_groups) == ["teacher's classes", "all"]  # every data class is the teacher's


def test_cli_class_map_name_on_neither_side_is_exit_2_one_line(capsys, tmp_path, shapes_yaml, superset_teacher_pt):
    from detkd.cli import main

    assert main(["distill", "--teacher", superset_teacher_pt, "--data", shapes_yaml, "--class-map", "lorry=circle",
                 "--epochs", "1", "--imgsz", "64", "--device", "cpu", "--workers", "0", "--project",
                 str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--class-map lorry=circle: 'lorry' is not a teacher class. Teacher classes: Cross, car, disc" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_an_incremental_run_resumes_with_its_classes(tmp_path, shapes_yaml):
    from detkd.engine.trainer import DistillationTrainer

    torch.manual_seed(0)
    old = tmp_path / "old.pt"
    torch.save({"model": _net(2, ["circle", "car"]), "train_args": {}, "epoch": -1}, old)
    trainer = DistillationTrainer(overrides=dict(model="yolov8n.yaml", data=shapes_yaml, project=str(tmp_path),
                                                 name="inc", val=False, **TINY_TRAIN),
                                  kd=KDConfig(teacher=str(old), keep_teacher_classes=True, validate_teacher=False))
    trainer.add_callback("on_model_save", _stop)
    with pytest.raises(Interrupt):
        trainer.train()
    union = ["circle", "car", "square", "triangle", "cross"]
    resumed = DistillationTrainer(overrides=dict(resume=str(trainer.last)))
    assert list(resumed.data["names"].values()) == union and resumed.kd.keep_teacher_classes
    resumed.train()
    assert resumed.model.criterion.det.bce.unlabelled.tolist() == [False, True, False, False, False]
    assert list(torch.load(resumed.last, weights_only=False)["model"].names.values()) == union

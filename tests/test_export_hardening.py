"""Issue 24 items 16-17: ONNX parity of end-to-end (YOLO26) students says what it compared and never passes on nothing;
bench rows of several ``best.pt`` are named by their run."""

from __future__ import annotations

import json

import pytest
import torch

IMGSZ = 64


def _yolo26(spread: bool = True, tie_all: bool = False):
    """A random-init yolo26n (nc=3). ``spread``: one-to-one class biases spread like a trained head's (scores differ);
    ``tie_all``: every one-to-one score identical (weights 0, one bias) so the top-k list is all ties."""
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    net = DetectionModel("yolo26n.yaml", nc=3, verbose=False).eval()
    net.names = {0: "a", 1: "b", 2: "c"}
    with torch.no_grad():
        for seq in net.model[-1].one2one_cv3:
            if tie_all:
                seq[-1].weight.zero_()
                seq[-1].bias.fill_(0.0)  # sigmoid 0.5 everywhere: above any default conf, yet nothing is decidable
            elif spread:
                seq[-1].bias.copy_(3 * torch.randn_like(seq[-1].bias))
    return net


def _export(net, path):
    from detkd.export import export_model

    return export_model(net, format="onnx", imgsz=IMGSZ, output=path, parity=False, verbose=False).path


@pytest.fixture(scope="module")
def plain_yolo26(tmp_path_factory):
    """The untouched random-init yolo26n and its ONNX file: its scores tie in tiers (one per stride)."""
    net = _yolo26(spread=False)
    return net, _export(net, tmp_path_factory.mktemp("e2e") / "plain.onnx")


def test_untrained_end_to_end_parity_compares_rows_not_tie_order(plain_yolo26):
    """Before: 'PASS ... raw max|diff| 56' with 0 detections — the (N, 84, 6) top-k lists were compared element-wise
    although tied scores leave their order (and the rows at the top-k cut) to each runtime; nothing else compared."""
    from detkd.export.parity import check_onnx_parity

    net, path = plain_yolo26
    report = check_onnx_parity(net, path, imgsz=IMGSZ, verbose=False)  # conf 0.25: no detection reaches it
    assert report.max_abs_diff < 1e-3  # the same rows, order-free
    assert report.n_compared > 0 and "order-free" in report.compared
    assert report.det_conf < 0.25 and report.n_det_torch == report.n_det_onnx > 0  # detections at a lower threshold
    assert report.passed and report.n_mismatched == 0
    text = report.summary()
    assert "none reached conf 0.25" in text and "raw max|diff| 56" not in text


def test_end_to_end_parity_that_compares_nothing_never_passes(tmp_path, caplog):
    """Every score tied: no row is decidable, no detection can be matched — the check says so instead of PASS."""
    from detkd.export.parity import check_onnx_parity

    net = _yolo26(tie_all=True)
    path = _export(net, tmp_path / "tied.onnx")
    report = check_onnx_parity(net, path, imgsz=IMGSZ, verbose=False)  # no raise: nothing disagrees either
    assert not report.passed and report.n_compared == 0 and report.n_det_torch == 0
    assert report.summary().startswith("parity NOTHING COMPARED") and "PASS" not in report.summary()


def test_end_to_end_parity_lowers_conf_when_no_detection_reaches_it(tmp_path):
    from detkd.errors import DetKDError
    from detkd.export.parity import check_onnx_parity

    net = _yolo26(spread=True)
    path = _export(net, tmp_path / "spread.onnx")
    report = check_onnx_parity(net, path, imgsz=IMGSZ, conf=0.9999, verbose=False)
    assert report.passed and report.det_conf < 0.9999 and report.n_matched > 0
    other = _yolo26(spread=True)
    with torch.no_grad():
        for seq in other.model[-1].one2one_cv3:
            seq[-1].bias.add_(1.0)  # the deployed scores shift: a real disagreement still fails
    with pytest.raises(DetKDError, match="does not match the torch model"):
        check_onnx_parity(other, path, imgsz=IMGSZ, conf=0.9999, verbose=False)


def test_one_to_many_parity_names_the_raw_comparison(tmp_path):
    from ultralytics.nn.tasks import DetectionModel

    from detkd.export.parity import check_onnx_parity

    torch.manual_seed(0)
    net = DetectionModel("yolov8n.yaml", nc=2, verbose=False).eval()
    net.names = {0: "a", 1: "b"}
    report = check_onnx_parity(net, _export(net, tmp_path / "v8.onnx"), imgsz=IMGSZ, verbose=False)
    assert report.passed and "element-wise" in report.compared and report.n_compared > 0
    assert report.det_conf < 0.25 and report.n_matched > 0  # random init scores ~0.004: compared lower


# ---------------------------------------------------------------- item 17: bench row names


@pytest.mark.parametrize("paths, labels", [
    (["a/best.pt", "b/best.pt"], ["a", "b"]),
    (["runs/a/weights/best.pt", "runs/b/weights/best.pt"], ["a", "b"]),
    (["x/a/weights/best.pt", "y/a/weights/best.pt"], ["x/a", "y/a"]),
    (["runs/a/weights/best.pt", "runs/b/weights/best.pt", "runs/a/weights/last.pt"], ["a", "b", "last.pt"]),
    (["yolov8n.yaml", "runs/a/weights/best.pt"], ["yolov8n.yaml", "best.pt"]),  # unique names stay as they were
    (["a/best.pt", "a/best.pt"], ["best.pt", "best.pt #2"]),  # the same file twice
])
def test_model_labels_are_unique_and_short(paths, labels):
    from detkd.bench.runner import model_labels

    assert model_labels(paths) == labels


def test_cli_bench_names_rows_by_run(tmp_path, capsys):
    """Before: both rows were labelled 'best.pt' in the table and the JSON."""
    from ultralytics.nn.tasks import DetectionModel

    from detkd.cli import main
    from detkd.export.student import save_student_checkpoint

    net = DetectionModel("yolov8n.yaml", nc=2, verbose=False)
    paths = [save_student_checkpoint(net, tmp_path / run / "weights" / "best.pt") for run in ("a", "b")]
    out = tmp_path / "bench.json"
    rc = main(["bench", "--models", *map(str, paths), "--imgsz", str(IMGSZ), "--no-e2e", "--warmup", "1",
               "--iters", "2", "--min-iters", "1", "--json", str(out)])
    assert rc == 0
    assert [r["model"] for r in json.loads(out.read_text())["results"]] == ["a", "b"]
    table = capsys.readouterr().out
    assert "| a " in table and "| b " in table and "| best.pt" not in table

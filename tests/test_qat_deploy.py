"""A quantization-aware trained (QAT) student through export and ``detkd compare --deploy``: every file is what its
label says (an FP32 row is an FP32 graph), the export arguments reach the file or are refused, and the INT8 parity
images are the evaluation split's own files."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch


def _qat_student(nc: int = 4):
    """A tiny untrained yolov8n with Ultralytics' fake-quantizers (``prepare_qat``), ranges from two random batches."""
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils.torch_utils import prepare_qat

    torch.manual_seed(0)
    net = DetectionModel("yolov8n.yaml", nc=nc, verbose=False)
    net.names = {i: f"c{i}" for i in range(nc)}
    net.train()
    with torch.no_grad():
        for _ in range(3):  # BatchNorm statistics: an untrained head is all-zero otherwise
            net(torch.rand(4, 3, 64, 64))
    net.eval()
    batches = [{"img": torch.rand(2, 3, 64, 64)} for _ in range(2)]
    net = prepare_qat(net, batches, lambda b: b["img"], batches=2)
    net.args, net.task = {}, "detect"
    return net.eval()


@pytest.fixture(scope="module")
def qat_pt(tmp_path_factory) -> Path:
    """The QAT student saved as detkd's student-only checkpoint (ranges in ``ckpt['modelopt']``, as a ``--qat``
    best.pt carries them)."""
    pytest.importorskip("modelopt")
    from detkd.export.student import save_student_checkpoint

    return save_student_checkpoint(_qat_student(), tmp_path_factory.mktemp("qat") / "best.pt")


@pytest.mark.parametrize("variant", ["onnx:fp32", "openvino:fp32"])
def test_compare_deploy_fp32_row_of_a_qat_run_is_an_fp32_file(variant, qat_pt, tmp_path):
    """Before: the fake-quantized student went to the exporter as it was, so Ultralytics wrote its INT8 graph (ONNX
    Q/DQ; an ``_int8_openvino_model``), scored and timed as the "FP32" row."""
    if variant.startswith("openvino"):
        pytest.importorskip("openvino")
    from detkd.compare.deploy import export_variant
    from detkd.deploy.backends import inspect_artefact

    spec = SimpleNamespace(variant=variant, key=f"run.{variant.replace(':', '-')}", label=variant)
    source = SimpleNamespace(key="run", weights=str(qat_pt))
    s = SimpleNamespace(imgsz=64, calib_images=4, seed_list=[0])
    export_variant(spec, source, s, data_yaml="unused.yaml", out=tmp_path, log=lambda *a: None)
    assert inspect_artefact(spec.weights).weights == "fp32", spec.weights


def test_qat_openvino_export_keeps_dynamic_and_batch_and_refuses_half(qat_pt, tmp_path):
    """Before: ``--format openvino`` of a QAT student dropped ``--dynamic`` / ``--batch`` (a static batch-1 model)
    and ignored ``--half`` without a word."""
    ov = pytest.importorskip("openvino")
    from detkd.errors import DetKDError
    from detkd.export.exporter import export_model

    res = export_model(str(qat_pt), format="openvino", imgsz=64, dynamic=True, batch=4, output=tmp_path / "dyn",
                       parity=False, verbose=False)
    shape = ov.Core().read_model(str(next(Path(res.path).glob("*.xml")))).input().get_partial_shape()
    assert shape.is_dynamic, shape
    with pytest.raises(DetKDError, match="--half does not apply"):
        export_model(str(qat_pt), format="openvino", imgsz=64, half=True, output=tmp_path / "half", parity=False,
                     verbose=False)


def test_int8_parity_images_are_the_val_split_files_not_their_folder(tmp_path, monkeypatch):
    """docs/export.md: INT8 detections are compared on 32 val images. Before: the folder of the first val file was
    globbed, so splits given as .txt lists over one images/ folder compared on training (calibration) images."""
    import cv2
    import numpy as np
    from ultralytics.utils import YAML

    from detkd.export.int8 import int8_parity_images, split_images

    images = tmp_path / "images"
    images.mkdir()
    names = [f"{i:03d}.jpg" for i in range(40)]
    for n in names:
        cv2.imwrite(str(images / n), np.full((32, 32, 3), 128, np.uint8))
    (tmp_path / "train.txt").write_text("".join(f"./images/{n}\n" for n in names[:30]))
    (tmp_path / "val.txt").write_text("".join(f"./images/{n}\n" for n in names[30:]))
    YAML.save(tmp_path / "data.yaml", {"path": str(tmp_path), "train": "train.txt", "val": "val.txt", "nc": 1,
                                       "names": {0: "a"}})
    data = str(tmp_path / "data.yaml")
    read = []
    real = cv2.imread
    monkeypatch.setattr(cv2, "imread", lambda p, *a: (read.append(Path(p).resolve()), real(p, *a))[1])
    images = int8_parity_images(data, "val")
    val = {p.resolve() for p in split_images(data, "val")}
    assert len(images) == 10 and set(read) == val, [p.name for p in read if p not in val]

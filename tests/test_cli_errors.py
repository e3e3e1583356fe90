"""User errors at the edges: public API names, Ultralytics argument errors and KD settings as one clear message."""

from __future__ import annotations


def test_public_api_exports_train_baseline():
    import detkd
    from detkd import train_baseline
    from detkd.api import train_baseline as original

    assert train_baseline is original
    assert "train_baseline" in detkd.__all__


def test_export_pt_without_output_goes_beside_the_source(tmp_path, capsys):
    import torch
    from ultralytics.nn.tasks import DetectionModel

    from detkd.cli import main

    net = DetectionModel("yolov8n.yaml", nc=2, verbose=False)
    net.names = {0: "a", 1: "b"}
    src = tmp_path / "best.pt"
    torch.save({"model": net, "train_args": {}, "epoch": 1}, src)
    before = src.read_bytes()

    assert main(["export", "--model", str(src), "--format", "pt"]) == 0
    out = tmp_path / "best_student.pt"
    assert out.is_file() and src.read_bytes() == before  # the source is untouched
    assert str(out) in capsys.readouterr().out

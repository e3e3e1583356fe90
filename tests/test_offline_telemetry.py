"""Exports never reach the network: OpenVINO's converter and NNCF are told not to send usage telemetry."""

from __future__ import annotations

import os

import pytest
import torch

from detkd.offline import NO_TELEMETRY_ENV, no_telemetry


def test_every_export_runs_with_telemetry_declined_and_the_environment_is_restored(tmp_path, monkeypatch):
    from ultralytics.nn.tasks import DetectionModel

    import detkd.export.exporter as exporter

    for k in NO_TELEMETRY_ENV:
        monkeypatch.delenv(k, raising=False)
    seen = {}

    class RecordingExporter:
        def __init__(self, overrides):
            pass

        def __call__(self, model):
            seen.update({k: os.environ.get(k) for k in NO_TELEMETRY_ENV})
            out = tmp_path / "m.onnx"
            out.write_bytes(b"")
            return str(out)

    monkeypatch.setattr("ultralytics.engine.exporter.Exporter", RecordingExporter)
    torch.manual_seed(0)
    exporter.export_loaded(DetectionModel("yolov8n.yaml", nc=2, verbose=False), "openvino", tmp_path, "m", imgsz=64)
    assert seen == NO_TELEMETRY_ENV
    assert all(k not in os.environ for k in NO_TELEMETRY_ENV)


def test_openvino_telemetry_declines_inside_the_context(monkeypatch):
    checker = pytest.importorskip("openvino_telemetry.utils.opt_in_checker")
    for k in NO_TELEMETRY_ENV:
        monkeypatch.delenv(k, raising=False)
    with no_telemetry():
        assert checker.OptInChecker._run_in_ci()
    assert not checker.OptInChecker._run_in_ci()
    monkeypatch.setenv("CI", "false")  # a value the user set is kept
    with no_telemetry():
        assert os.environ["CI"] == "false"
    assert os.environ["CI"] == "false"

"""Deployment helpers shared by bench, eval, export and compare: exported artefacts (.pt, .onnx, OpenVINO folders),
the backend that runs them and the precision that really ran (:mod:`detkd.deploy.backends`)."""

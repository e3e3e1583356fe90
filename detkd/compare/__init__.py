"""``detkd compare``: teacher vs baseline student vs distilled student(s) on identical settings, in one report.

    from detkd.compare import compare
    result = compare("teacher.pt", "path/to/coco_dataset", student="yolov8n.yaml", epochs=100, imgsz=640,
                     kd_configs={"detkd": {}, "feat-mgd": {"feat_method": "mgd"}}, with_ultralytics_kd=True)
    print(result.report_md, result.verdict)

:mod:`~detkd.compare.experiment` plans, runs and reuses the runs; :mod:`~detkd.compare.report` writes report.md /
report.json (table, ΔAP, teacher verdict); :mod:`~detkd.compare.plots` draws map_vs_fps.png and training_curves.png.
"""

from __future__ import annotations

from detkd.compare.experiment import CompareResult, CompareSettings, RunSpec, compare, plan, run_compare

__all__ = ["CompareResult", "CompareSettings", "RunSpec", "compare", "plan", "run_compare"]

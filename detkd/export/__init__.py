"""Export the student (never the teacher or adapters) with Ultralytics' exporter, and check ONNX parity.

    from detkd.export import export_model
    result = export_model("runs/distill/best.pt", format="onnx", imgsz=640)   # raises DetKDError if parity breaks
    print(result.path, result.parity.summary())
"""

from detkd.export.exporter import ExportResult, check_onnx_graph, export_loaded, export_model, normalize_format
from detkd.export.parity import ParityReport, check_onnx_parity
from detkd.export.student import assert_student_only, load_student, save_student_checkpoint

__all__ = ["ExportResult", "ParityReport", "assert_student_only", "check_onnx_graph", "check_onnx_parity",
           "export_loaded", "export_model", "load_student", "normalize_format", "save_student_checkpoint"]

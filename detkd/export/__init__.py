"""Export the student (never the teacher or adapters) with Ultralytics' exporter, and check ONNX parity.

    from detkd.export import export_model
    result = export_model("runs/distill/best.pt", format="onnx", imgsz=640)   # raises DetKDError if parity breaks
    print(result.path, result.parity.summary())

    # INT8 calibrated on the training images, scored and timed next to its FP32 twin (result.int8.passed: AP gate)
    result = export_model("best.pt", format="openvino", imgsz=640, int8=True, data="path/to/coco_dataset")
    print(result.int8.summary())
"""

from detkd.export.exporter import ExportResult, check_onnx_graph, export_loaded, export_model, normalize_format
from detkd.export.int8 import Int8Result, export_calibrated, export_int8
from detkd.export.parity import Int8ParityReport, ParityReport, check_int8_parity, check_onnx_parity
from detkd.export.student import assert_student_only, load_student, save_student_checkpoint

__all__ = ["ExportResult", "Int8ParityReport", "Int8Result", "ParityReport", "assert_student_only", "check_int8_parity",
           "check_onnx_graph", "check_onnx_parity", "export_calibrated", "export_int8", "export_loaded", "export_model",
           "load_student", "normalize_format", "save_student_checkpoint"]

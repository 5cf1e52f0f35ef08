"""Export: Keras run folders -> TFLite and ONNX files, each checked against its source model.

    from edgepack.export import export, FORMATS
    summary = export("runs/baseline", ["tflite-int8", "onnx-int8"], "runs/export/baseline")

FORMATS (edgepack.export.formats) is the one table of formats; export.json describes the result.
"""

from edgepack.export.core import SUMMARY, export
from edgepack.export.formats import ALL, FORMATS, Check, Format, Option

__all__ = ["export", "FORMATS", "Format", "Option", "Check", "ALL", "SUMMARY"]

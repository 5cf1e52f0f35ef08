"""Explain an int8 file: per-layer quantization error against its float source, and on-device memory.

Prints one row per quantized activation, worst first (layer, op, scale, zero point, RMSE over the
float range, SNR, cosine, and layer_snr_db: the SNR of the noise that layer adds on its own), then
weight bytes, the peak activation bytes from the execution order and tensor lifetimes, and the
measured peak resident memory of a fresh runtime process, and last the kernels the file runs, read
from the file (Q/DQ pairs ONNX Runtime fuses or not, TFLite's full-integer or dynamic-range path, ops
outside XNNPACK: the same on every CPU). Images: validation images (training images that
calibration did not use), never the test set.

The float source: --source FILE (tflite-fp32 / onnx-fp32), --source RUN_DIR, else the fp32 file of
the same source next to FILE or in the sibling format folder (the pipeline's exports/<variant>/
tflite-fp32/), else the run folder named by the folder's export.json.

--auto keeps the worst layers in float, one more at a time, until the file is within --max-drop
accuracy points of its float source on the validation images; --out DIR gets the chosen file,
steps.json and steps.md (accuracy, size and latency of every step).

example:
  edgepack explain runs/export/tflite-int8.tflite
  edgepack explain runs/export/onnx-int8.onnx --source runs/baseline --json
  edgepack explain runs/export/onnx-int8.onnx --auto --max-drop 0.5 --out runs/selective
"""

import json

from edgepack.cli import add_command, add_data_options, finite_float, positive_int
from edgepack.errors import EdgepackError
from edgepack.explain import core, selective


def register(sub) -> None:
    p = add_command(sub, "explain", __doc__, run)
    p.add_argument("file", metavar="FILE", help="an int8 export: tflite-int8.tflite or onnx-int8.onnx")
    p.add_argument("--source", metavar="RUN_OR_MODEL", help="the float file or run folder FILE came from")
    add_data_options(p, limits=False)
    p.add_argument("--images", type=positive_int, default=300, metavar="N",
                   help="validation images to compare on (default 300)")
    p.add_argument("--top", type=positive_int, default=10, metavar="N", help="rows to print (default 10)")
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    p.add_argument("--auto", action="store_true", help="keep the worst layers in float to meet --max-drop")
    p.add_argument("--max-drop", type=finite_float, metavar="POINTS", help="--auto's goal, accuracy points")
    p.add_argument("--out", metavar="DIR", help="--auto's output folder")
    p.add_argument("--force", action="store_true", help="replace --out if it exists (only once complete)")


def run(args) -> int:
    if args.auto:
        if args.max_drop is None or args.out is None or args.max_drop < 0:
            raise EdgepackError("--auto needs --max-drop POINTS (>= 0) and --out DIR")
        summary = selective.auto(args.file, args.out, args.max_drop, args.source, args.data, args.images,
                                 args.force)
        print(json.dumps(summary, indent=2) if args.json else selective.render_steps(summary))
        return 0 if summary["met"] else 1
    if args.out or args.max_drop is not None:
        raise EdgepackError("--max-drop and --out apply to --auto only: add --auto or drop them")
    result = core.explain_file(args.file, args.source, args.data, args.images)
    print(json.dumps(result, indent=2) if args.json else core.render(result, args.top))
    return 0

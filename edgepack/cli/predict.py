"""Classify PNG/JPEG images or .npy arrays with an exported model (.onnx or .tflite).

Images (up to 50 megapixels) are converted to 8-bit RGB, centre-cropped to a square and resized to
32x32 with Pillow's BILINEAR filter (antialiased; a 32x32 image is used as is). A .npy file holds uint8 pixels
(32, 32, 3) or (N, 32, 32, 3), or floats scaled to [0, 1]. Needs Pillow for images:
pip install 'edgepack[images]'. Runs on the runtime alone (no TensorFlow).

example:
  edgepack predict runs/export/baseline/onnx-int8.onnx cat.png ship.jpg --top-k 3
  edgepack predict runs/export/baseline/tflite-int8.tflite batch.npy --json
"""

import json

from edgepack.cli import add_command, positive_int
from edgepack.runtime.images import predict_files


def register(sub) -> None:
    p = add_command(sub, "predict", __doc__, run)
    p.add_argument("model", metavar="MODEL", help="exported .onnx or .tflite file (with its metadata)")
    p.add_argument("inputs", nargs="+", metavar="IMAGE", help="PNG, JPEG or .npy files")
    p.add_argument("--top-k", type=positive_int, default=1, metavar="K",
                   help="show the K most probable classes (default 1)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--threads", type=positive_int, metavar="N",
                   help="inference threads (default: the runtime's own default)")


def run(args) -> int:
    result = predict_files(args.model, args.inputs, top_k=args.top_k, threads=args.threads)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for p in result["predictions"]:
        print(f"{p['input']}: " + ", ".join(f"{t['label']} {t['score']:.4f}" for t in p["top"]))
    return 0

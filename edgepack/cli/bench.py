"""Time exported files at batch 1: edgepack.runtime vs the raw engine, side by side.

For each MODEL (.onnx or .tflite) prints the median and p90 latency of `edgepack.runtime`'s
predict (uint8 image in, probabilities out, scaling and int8 (de)quantization included) next to a
raw ONNX Runtime `session.run` / LiteRT `invoke` on prepared input, and their ratio; then the
import time of edgepack.runtime in a fresh process, checking that TensorFlow is not imported.
Several files in one table compare formats (fp32 vs int8 per runtime). A file that fails is a row
with its error (exit code 1). Needs no TensorFlow.

--target browser: each MODEL is a folder from `edgepack export --target browser`, served on
127.0.0.1 and run in headless Chromium (onnxruntime-web, WASM): accuracy on --images test images
of --data and top-1 agreement with native ONNX Runtime for the same file, and batch-1 latency in the
page, one row per thread count (default 1 and every core). Needs Chromium and the browser extra.

example:
  edgepack bench runs/export/baseline/*.onnx runs/export/baseline/*.tflite
  edgepack bench model.tflite --runs 2000 --threads 1 2 --kernels default no-xnnpack --json
  edgepack bench --target browser runs/web --data cifar-10-python.tar.gz --images 1000
"""

import json
import sys

from edgepack.bench import bench, render
from edgepack.cli import add_command, add_data_options, positive_int
from edgepack.data import load_data
from edgepack.runtime.backends import KERNELS
from edgepack.target import browser


def register(sub) -> None:
    p = add_command(sub, "bench", __doc__, run)
    p.add_argument("models", nargs="+", metavar="MODEL", help="exported .onnx or .tflite files")
    p.add_argument("--runs", type=positive_int, default=500, metavar="N",
                   help="timed calls per file and per side (default 500)")
    p.add_argument("--warmup", type=positive_int, default=50, metavar="N",
                   help="untimed calls before timing (default 50)")
    p.add_argument("--threads", type=positive_int, nargs="+", metavar="N",
                   help="intra-op threads for both sides; several give a row each (default 1; "
                        "--target browser: 1 and every core)")
    p.add_argument("--kernels", nargs="+", default=["default"], choices=KERNELS, metavar="K",
                   help="kernel choices, a row each: default (XNNPACK on for .tflite), no-xnnpack "
                        "(.tflite only), reference (exact, slow) (default: default)")
    p.add_argument("--import-repeats", type=positive_int, default=5, metavar="N",
                   help="fresh processes for the import time (default 5)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--target", choices=("browser",),
                   help="browser: MODEL arguments are browser folders, measured in headless Chromium")
    add_data_options(p, limits=False)
    p.add_argument("--images", type=positive_int, default=1000, metavar="N",
                   help="--target browser: class-balanced test images classified in the page (default 1000)")
    p.add_argument("--chromium", metavar="PATH",
                   help="--target browser: the Chromium executable (default: $EDGEPACK_CHROMIUM, then PATH)")


def run(args) -> int:
    if args.target == "browser":
        return run_browser(args)
    result = bench(args.models, runs=args.runs, warmup=args.warmup, threads=args.threads or [1],
                   import_repeats=args.import_repeats, kernels=tuple(args.kernels))
    print(json.dumps(result, indent=2) if args.json else render(result))
    failed = [r for r in result["files"] if r["status"] != "ok"]
    return 1 if failed or result["import"]["status"] != "ok" or result["import"]["tensorflow_imported"] else 0


def run_browser(args) -> int:
    for folder in args.models:  # every folder checked before the data is loaded
        browser.read_folder(folder)
    ds = load_data(args.data, limit_test=args.images)
    rows = browser.measure(args.models, ds.x_test, ds.y_test, threads=args.threads or [1, browser.ALL_CORES],
                           runs=args.runs, warmup=args.warmup, executable=args.chromium,
                           progress=lambda line: print(line, file=sys.stderr))  # stdout: the table or JSON
    print(json.dumps([r.as_dict() for r in rows], indent=2) if args.json else browser.render(rows))
    return 0

"""Compare models on the same test images: accuracy, agreement, size, latency; write a report.

Every input is a run folder (Keras model made by `edgepack train` / `edgepack compress`), an
exported .tflite/.onnx file, or an export folder (all its files). The baseline is the run whose
technique is "baseline" (or --baseline). Controls are runs fine-tuned but not compressed (technique
"finetune"): each compressed variant is compared with the control of its fine-tuning recipe (same
epochs and learning rate), or with --control if given. DIR gets report.md, report.html,
results.json, results.csv and two PNG plots. A model that fails to load or evaluate is a row with
its error.

--max-drop X marks the recommended variant (smallest and fastest within X accuracy points of the
baseline); --fail-over X exits with status 1 when a variant drops more than X points (or fails),
after writing the report.

--target tflm checks every file on TensorFlow Lite Micro (pip install 'edgepack[tflm]'): which files
it runs (fully integer int8 .tflite), tensor arena and flash bytes, accuracy on TFLM's kernels for
every test image; --ram/--flash are the part's budgets: the recommendation considers only files that
fit, and when none does the command says so, names the closest and exits with status 3
(docs/targets.md).

example:
  edgepack compare runs/baseline runs/prune-0.8 runs/exports/baseline --out runs/report
  edgepack compare runs/baseline runs/exports/qat/tflite-int8.tflite --limit-test 1000 --runs 50 \
      --fail-over 2 --out /tmp/r
  edgepack compare runs/baseline runs/exports/baseline --target tflm --ram 64KiB --flash 256KiB \
      --max-drop 1 --out runs/report-mcu
  edgepack compare runs/exports/baseline --device-results pi5.json --out runs/report-pi5
"""

import sys

from edgepack.cli import (
    add_command,
    add_data_options,
    add_source_options,
    add_target_options,
    finite_float,
    positive_int,
    source_options,
)
from edgepack.errors import require_toolchain
from edgepack.report.options import EXACT_REFERENCE, CompareOptions
from edgepack.report.pick import OBJECTIVES
from edgepack.report.targets import EXIT_NONE_FITS, none_fit_line


def register(sub) -> None:
    p = add_command(sub, "compare", __doc__, run)
    p.add_argument("inputs", nargs="+", metavar="RUN_OR_FILE",
                   help="run folders, exported files, export folders")
    p.add_argument("--out", required=True, metavar="DIR", help="report folder to write")
    add_data_options(p, limits=False)
    add_source_options(p)
    p.add_argument("--limit-test", type=positive_int, metavar="N",
                   help="evaluate on a seeded, class-balanced subset of N test images (default: all 10,000)")
    p.add_argument("--baseline", metavar="RUN", help="the original model (default: technique 'baseline')")
    p.add_argument("--control", metavar="RUN",
                   help="compare every compressed variant with this fine-tuned, uncompressed model "
                        "(default: the 'finetune' run with the variant's recipe)")
    p.add_argument("--runs", type=positive_int, default=200,
                   help="timed batch-1 calls per figure (default 200)")
    p.add_argument("--warmup", type=int, default=20, help="untimed calls before timing (default 20)")
    p.add_argument("--max-drop", type=finite_float, metavar="X",
                   help="recommend the best variant within X points")
    p.add_argument("--objective", choices=OBJECTIVES, default="latency",
                   help="what decides among the rows within --max-drop: latency (the fastest; rows as "
                        "fast as it: the smallest file) or size (the smallest file) (default latency)")
    p.add_argument("--fail-over", type=finite_float, metavar="X",
                   help="exit 1 if a variant drops more than X points")
    p.add_argument("--no-latency", action="store_true", help="skip latency and throughput (accuracy only)")
    p.add_argument("--exact-reference", choices=EXACT_REFERENCE, default="front",
                   help="int8 files also run on the engines' reference kernels (their accuracy on any CPU; "
                        "~25 s a TFLite file for 10,000 images): those on the Pareto front and the "
                        "recommended one (front, the default) or every one (all)")
    add_target_options(p)
    p.add_argument("--device-results", action="append", default=[], metavar="JSON",
                   help="latencies measured on a device with `edgepack bench MODEL... --json > JSON`, shown "
                        "per device and never ranked against this machine's (repeat for more devices)")
    p.add_argument("--force", action="store_true", help="replace DIR if it exists (only once complete)")


def run(args) -> int:
    require_toolchain("edgepack compare")  # before importing the comparison (pydantic, ...)
    from edgepack.report.compare import compare  # noqa: PLC0415  its rows need pydantic (toolchain extra)

    options = CompareOptions(limit_test=args.limit_test, runs=args.runs, warmup=args.warmup,
                             max_drop=args.max_drop, objective=args.objective, fail_over=args.fail_over,
                             latency=not args.no_latency, exact_reference=args.exact_reference,
                             target=args.target, ram_bytes=args.ram, flash_bytes=args.flash,
                             device_results=tuple(args.device_results))
    results = compare(args.inputs, args.out, data_path=args.data, baseline=args.baseline,
                      control=args.control, options=options, force=args.force,
                      source_options=source_options(args))
    line = none_fit_line(results)
    if line:
        print(f"edgepack: error: {line} (report in {args.out})", file=sys.stderr)
        return EXIT_NONE_FITS
    return 0

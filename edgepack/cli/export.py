"""Export a run folder's model to TFLite and ONNX files, each checked against the source model.

Formats (--format NAME ..., or all):
{formats}

Every file carries its metadata (class names, input shape, dtype, layout NHWC, channel order RGB,
resize rule, pixel scaling, int8 scale and zero point, source sha256, technique, format, edgepack
version): ONNX in metadata_props "edgepack", TFLite in a sidecar <file>.json plus the standard TFLite
metadata (labels, normalization) inside the .tflite for the TFLite Task Library. Each file must load
in its runtime and match the source on 1,000 class-balanced test images (fp32: max abs diff <= 1e-4,
fp16: <= 1e-2, quantised: accuracy drop and top-1 agreement, see the options). onnx-int8 tries its
portable schemes in order and keeps the first file that passes. Of several formats, one that fails is
listed as failed in DIR/export.json (with what each try measured), the others are written, and the
command exits 1 when the failed format was named, 0 with --format all (every format that can be
made; each failure is printed on one line); if all fail, nothing is written and it exits 1.
DIR/export.json summarises the checks, sizes (raw and gzip'ed) and times.

--target tflm writes a TensorFlow Lite Micro project folder instead: the tflite-int8 file (fully
integer; with TFLM look-up-table weights when the model is clustered and that saves flash), golden
vectors checked on TFLM, model_data.cc/.h (16-byte aligned array, arena size, input scale and zero
point, class names) and a main.cc registering exactly the file's operators; see docs/export.md.

--target browser writes a self-contained web page folder that classifies images with onnxruntime-web
(WASM) instead: of an exported .onnx file (--model FILE.onnx, no --format), or of a run folder's ONNX
formats (--format onnx-fp32 onnx-int8; default onnx-fp32), one sub-folder each. onnxruntime-web is
copied from `make browser-deps` (or --ort-web DIR). Measure it with `edgepack bench --target browser`.

example:
  edgepack export --model runs/baseline --format tflite-int8 onnx-int8 --out runs/export/baseline
  edgepack export --model runs/baseline --format all --option calibration_images=200 --out runs/exp --force
  edgepack export --model runs/pc --target tflm --out runs/tflm/pc
  edgepack export --model runs/export/baseline/model.onnx-int8.onnx --target browser --out runs/web
"""

from edgepack.cli import add_command, add_data_options, add_source_options, positive_int, source_options
from edgepack.errors import EdgepackError
from edgepack.export import export
from edgepack.export.formats import ALL, FORMATS
from edgepack.export.tflm import FORMAT as TFLM_FORMAT
from edgepack.export.tflm import export_tflm
from edgepack.target import DEFAULT
from edgepack.target.browser import export_folders
from edgepack.target.tflm import NAME as TFLM  # the --target that writes a TFLM project folder

BROWSER = "browser"
EXPORT_TARGETS = (DEFAULT, TFLM, BROWSER)  # --target: what an export can be packed as


def _help() -> str:
    lines = []
    for f in FORMATS.values():
        lines.append(f"  {f.name:<15} {f.summary}")
        lines.extend(f"  {'':<15}   option {k}={o.default} ({o.help}"
                     f"{': ' + ', '.join(map(str, o.choices)) if o.choices else ''})"
                     for k, o in f.options.items())
    return "\n".join(lines)


def register(sub) -> None:
    p = add_command(sub, "export", __doc__.replace("{formats}", _help()), run)
    p.add_argument("--model", required=True, metavar="RUN_OR_FILE",
                   help="run folder (train/compress) or a Keras model file / SavedModel folder to export")
    p.add_argument("--format", nargs="+", metavar="NAME", dest="formats",
                   help=f"one or more of: {', '.join(FORMATS)}, or {ALL} (required unless --target tflm or "
                        "browser)")
    p.add_argument("--target", choices=EXPORT_TARGETS, default=DEFAULT,
                   help=f"what to write (default {DEFAULT}: the formats asked; {TFLM}: a TFLM project "
                        f"folder; {BROWSER}: a page folder running the ONNX file(s) in onnxruntime-web; "
                        "see above)")
    p.add_argument("--no-lut", action="store_true",
                   help="--target tflm: keep plain int8 weights even for a clustered model")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", dest="options",
                   help="a format option, for every chosen format that accepts it (repeatable)")
    p.add_argument("--keep-float", nargs="+", default=[], metavar="LAYER",
                   help="int8 formats: layers kept in float (as `edgepack explain` lists them); "
                        "same as --option keep_float=A,B")
    add_data_options(p, limits=False)
    add_source_options(p)
    p.add_argument("--out", required=True, metavar="DIR", help="output folder to write")
    p.add_argument("--check-images", type=positive_int, default=1000, metavar="N",
                   help="training images (none of them calibration images) each file is checked on "
                        "(default 1000); test images only report")
    p.add_argument("--force", action="store_true", help="replace DIR if it exists (only once complete)")
    p.add_argument("--ort-web", metavar="DIR",
                   help="--target browser: where `npm ci` installed onnxruntime-web (default: "
                        "$EDGEPACK_ORT_WEB, then the folder `make browser-deps` fills)")


def parse_options(pairs: list[str]) -> dict:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise EdgepackError(f"--option {pair!r} must look like KEY=VALUE (e.g. calibration_images=200)")
        options[key.strip()] = value.strip()
    return options


def run(args) -> int:
    if args.target == BROWSER:
        return run_browser(args)
    options = parse_options(args.options)
    if args.keep_float:
        options["keep_float"] = ",".join(args.keep_float)
    if check_target(args) == TFLM:
        return run_tflm(args, options)
    summary = export(args.model, args.formats, args.out, options=options,
                     data_path=args.data, force=args.force, check_images=args.check_images,
                     source_options=source_options(args))
    for name, r in summary["formats"].items():
        if r["status"] != "ok":
            print(f"{name:<15} FAILED: {r['error']}")
            continue
        for t in (r.get("trials") or [])[:-1]:  # the candidates refused before the kept one
            print(f"{name:<15} tried {', '.join(f'{k}={v}' for k, v in t['options'].items())}: "
                  f"{t['refused_by'] or t['error']}")
        print(f"{name:<15} {r['bytes']:>9,} bytes  {r['gzip_bytes']:>9,} gzip'ed  {check_line(r['checks'])}  "
              f"{r['seconds']:.1f} s")
        if r["checks"].get("kernel_note"):
            print(f"{'':<15} note: {r['checks']['kernel_note']}")
    print(f"wrote {args.out}")
    if summary["failed"]:
        print(f"failed: {', '.join(summary['failed'])} (not written; the others are; see export.json)")
        return 0 if summary.get("all") else 1  # `all`: every format that can be made (docs/export.md)
    return 0


def check_target(args) -> str:
    """The --target (argparse checked the name), with --format and --no-lut, before any work."""
    if args.target == TFLM:
        if args.formats and args.formats != [TFLM_FORMAT]:
            raise EdgepackError(f"--target tflm builds on {TFLM_FORMAT}: drop --format "
                                f"{' '.join(args.formats)}")
        return TFLM
    if not args.formats:
        raise EdgepackError(f"--format is required: give --format NAME ... ({', '.join(FORMATS)} or {ALL}), "
                            f"or --target {TFLM} or {BROWSER}")
    if args.no_lut:
        raise EdgepackError("--no-lut applies to --target tflm only")
    return args.target


def run_tflm(args, options: dict) -> int:
    r = export_tflm(args.model, args.out, options=options, data_path=args.data, force=args.force,
                    check_images=args.check_images, source_options=source_options(args), lut=not args.no_lut)
    checks = r["int8_export"]["checks"]
    print(f"{TFLM_FORMAT:<15} {r['bytes']['int8']:>9,} bytes  {check_line(checks)}")
    lut = r["lut"]
    if lut["applied"]:
        bits = ", ".join(f"{t['name']} {t['bits']} bits" for t in lut["tensors"])
        print(f"{'TFLM LUT':<15} {r['bytes']['deployed']:>9,} bytes  ({bits}); outputs identical to int8 on "
              f"{r['tflm_check']['images']} images on TFLM")
    else:
        print(f"{'TFLM LUT':<15} not applied: {lut['reason']}")
    a = r["arena"]
    decoded = f"; {a['int8_measured_bytes']:,} without LUT" if lut["applied"] else ""
    print(f"{'arena':<15} {a['kTensorArenaSize']:>9,} bytes  (TFLM measured {a['measured_bytes']:,}"
          f"{decoded}, +{a['margin']:.0%}); TFLM accuracy {r['tflm_check']['accuracy']:.2%} on "
          f"{r['tflm_check']['images']} held-out images")
    print(f"operators: {', '.join(r['ops'])}")
    print(f"wrote {args.out} (model.tflite, model_data.cc/.h, main.cc, golden vectors, tflm.json)")
    return 0


def run_browser(args) -> int:
    options = parse_options(args.options)
    folders, failed = export_folders(
        args.model, args.formats, args.out, force=args.force, ort_web=args.ort_web, options=options,
        data_path=args.data, check_images=args.check_images, source_options=source_options(args))
    for folder in folders:
        print(f"wrote {folder} (serve it, e.g. python -m http.server -d {folder}, and open index.html)")
    if failed:
        print(f"failed: {', '.join(failed)} (not written; the others are)")
        return 1
    return 0


def check_line(c: dict) -> str:
    """One export check in words: float files by max_abs_diff, quantized ones by accuracy on both kernels."""
    if "local" not in c:
        return f"max_abs_diff {c['max_abs_diff']:.2g} ({c['rule']})"
    return (f"accuracy {c['accuracy']:.2%} exact reference / {c['local']['accuracy']:.2%} this CPU "
            f"(source {c['source_accuracy']:.2%}), agreement {c['top1_agreement']:.3f} ({c['rule']})")

"""Run the whole job: train, compress, export and compare, resumably, into one report.

Trains the tutorial CNN baseline (or reuses --baseline: a run folder, or your own Keras model file),
makes the default compressed variants (the best chain edgepack's search found, prune 0.65 -> cluster 8
-> PCQAT, each step a row, and one of each other technique: prune-2of4, qat, pqat) and the
uncompressed fine-tuning controls they are measured against, exports every model to every format
(tflite-fp32/fp16/dynamic/int8, onnx-fp32/int8; fine-tunings and exports run side by side on --workers
processes, each as soon as its source model is made), and
compares them all on the test set (report.md, report.html, results.json, results.csv, plots).
examples/full-study.toml is the full study (more variants, about three times as long).
Settings: defaults < --config FILE (TOML; sections data, train, finetune, variants, export, compare)
< options given here (all listed in docs/pipeline.md). A re-run skips the stages that are already
complete; a run that was killed resumes where it stopped. --quick is a few-minute smoke run on a
subset, labelled as such.
A model that cannot be made or fails its checks is a row with its error; the run ends with a list of
them and exits 1 (use --allow-failed to exit 0 anyway). --target tflm --ram 64KiB --flash 256KiB
checks every file on TensorFlow Lite Micro and recommends only files that fit; when none fits the
run exits 3 (docs/targets.md). A stage that fails for the machine's reason
(disk full, permissions, memory) stops the run at once with exit 1.

example:
  edgepack pipeline --data ../shared/data/cifar-10-python.tar.gz --out runs/pipeline
  edgepack pipeline --quick --out runs/quick --baseline runs/baseline --max-drop 1.0
  edgepack pipeline --data my_images/ --baseline my_model.keras --preprocess unit --out runs/mine
  edgepack pipeline --ray HEAD:6379 --data /shared/cifar-10-python.tar.gz --out /shared/runs/pipeline
"""

import argparse
import sys

from edgepack.cli import add_command, add_data_options, add_source_options, positive_int, source_options
from edgepack.errors import require_toolchain
from edgepack.fitting import AUGMENTATIONS
from edgepack.report.targets import EXIT_NONE_FITS, none_fit_line
from edgepack.target import TARGETS

try:
    from edgepack import settings  # pydantic comes with the toolchain extra
except ModuleNotFoundError as e:  # base install: the command only says what to install
    if e.name != "pydantic":
        raise
    settings = None

# Options that set a pipeline setting: flag -> (section, key); help, type and default come from the model.
SETTING_OPTIONS = {
    "--limit-train": ("data", "limit_train"),
    "--limit-test": ("data", "limit_test"),
    "--epochs": ("train", "epochs"),
    "--finetune-epochs": ("finetune", "epochs"),
    "--augment": ("finetune", "augment"),
    "--runs": ("compare", "runs"),
    "--max-drop": ("compare", "max_drop"),
    "--fail-over": ("compare", "fail_over"),
    "--target": ("compare", "target"),
    "--ram": ("compare", "ram"),
    "--flash": ("compare", "flash"),
}


def register(sub) -> None:
    p = add_command(sub, "pipeline", __doc__, run)
    add_data_options(p, limits=False)
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (re-use it to resume)")
    p.add_argument("--config", metavar="FILE", help="TOML settings file (see docs/pipeline.md)")
    p.add_argument("--quick", action="store_true", help="few-minute smoke run on a subset")
    p.add_argument("--baseline", metavar="RUN_OR_FILE",
                   help="reuse this baseline: a run folder, or a Keras model file / SavedModel folder")
    add_source_options(p)
    p.add_argument("--ray", metavar="ADDRESS",
                   help="run training, fine-tunings, exports and the comparison as tasks on a Ray cluster: "
                        "auto (the running cluster, else a local one) or HOST:PORT; --out must be on a "
                        "filesystem every node sees (default: $EDGEPACK_RAY_ADDRESS, else in-process; "
                        "needs pip install 'edgepack[cluster]'; see docs/cluster.md)")
    p.add_argument("--workers", type=positive_int, metavar="N",
                   help="processes the fine-tunings and exports run on side by side when not on Ray, "
                        "the cores shared out among them (default: the cores here, at most 4; 1: every "
                        "stage in this process on every core). A fit's float rounding depends on its "
                        "thread count, so the weights and figures differ slightly with N")
    p.add_argument("--allow-failed", action="store_true",
                   help="exit 0 even when some rows failed (they stay rows in the report)")
    for flag, (section, key) in SETTING_OPTIONS.items():
        metavar = {"max_drop": "X", "fail_over": "X", "augment": "|".join(AUGMENTATIONS), "ram": "SIZE",
                   "flash": "SIZE", "target": "|".join(TARGETS)}.get(key, "N")
        if settings is None:
            p.add_argument(flag, metavar=metavar, help=f"[{section}] {key}")
        else:
            field = settings.field(section, key)
            p.add_argument(flag, metavar=metavar, type=_typed(section, key),
                           help=f"{field.description} ({settings.default_text(section, key)})")


def _typed(section: str, key: str):
    """argparse type: the setting's own field parses and range-checks the value."""
    def parse(text: str):
        try:
            return settings.parse_option(section, key, text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    parse.__name__ = key
    return parse


def run(args) -> int:
    require_toolchain("edgepack pipeline")  # before importing the pipeline (pydantic, ...)
    from edgepack.pipeline import pipeline  # noqa: PLC0415  its settings need pydantic (toolchain extra)

    overrides: dict = {}
    for flag, (section, key) in SETTING_OPTIONS.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            overrides.setdefault(section, {})[key] = value
    results = pipeline(args.out, data_path=args.data, config=args.config, quick=args.quick,
                       baseline=args.baseline, overrides=overrides, source_options=source_options(args),
                       ray=args.ray, workers=args.workers)
    failed = [r.id for r in results.rows if r.status == "error"]
    if failed and not args.allow_failed:
        print(f"edgepack: error: {len(failed)} rows failed (listed above; report written): exit 1, "
              "or pass --allow-failed to accept them", file=sys.stderr)
        return 1
    line = none_fit_line(results)
    if line:
        print(f"edgepack: error: {line} (report in {args.out})", file=sys.stderr)
        return EXIT_NONE_FITS
    return 0

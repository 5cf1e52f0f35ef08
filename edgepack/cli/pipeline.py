"""Run the whole job: train, compress, export and compare, resumably, into one report.

Trains the seed's baseline (or reuses --baseline), makes the default compressed variants
(prune 0.5, prune 0.8, prune-2of4, cluster 16, qat, pqat) and the uncompressed fine-tuning control,
exports every model to every format (tflite-fp32/fp16/dynamic/int8, onnx-fp32/int8), and compares
them all on the test set (report.md, report.html, results.json, results.csv, plots).
Settings: defaults < --config FILE (TOML; sections data, train, finetune, variants, export, compare)
< options given here. A re-run skips the stages that are already complete; a run that was killed
resumes where it stopped. --quick is a few-minute smoke run on a subset, labelled as such.

example:
  edgepack pipeline --data ../shared/data/cifar-10-python.tar.gz --out runs/pipeline
  edgepack pipeline --quick --out runs/quick --baseline runs/baseline --max-drop 1.0
"""

from edgepack.cli import add_command, add_data_options, finite_float, positive_int


def register(sub) -> None:
    p = add_command(sub, "pipeline", __doc__, run)
    add_data_options(p)
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (re-use it to resume)")
    p.add_argument("--config", metavar="FILE", help="TOML settings file")
    p.add_argument("--quick", action="store_true", help="few-minute smoke run on a subset")
    p.add_argument("--baseline", metavar="RUN_DIR", help="reuse this trained baseline run folder")
    p.add_argument("--epochs", type=positive_int, help="baseline training epochs (default 10)")
    p.add_argument("--finetune-epochs", type=positive_int, help="fine-tuning epochs of every variant")
    p.add_argument("--runs", type=positive_int, help="timed latency runs per model (default 200)")
    p.add_argument("--max-drop", type=finite_float, metavar="X",
                   help="recommend the smallest, fastest variant within X accuracy points (default 1.0)")
    p.add_argument("--fail-over", type=finite_float, metavar="X",
                   help="exit non-zero when a variant drops more than X accuracy points")


def run(args) -> int:
    from edgepack.pipeline import pipeline

    overrides: dict = {}
    given = (("data", "limit_train", args.limit_train), ("data", "limit_test", args.limit_test),
             ("train", "epochs", args.epochs), ("finetune", "epochs", args.finetune_epochs),
             ("compare", "runs", args.runs), ("compare", "max_drop", args.max_drop),
             ("compare", "fail_over", args.fail_over))
    for section, key, value in given:
        if value is not None:
            overrides.setdefault(section, {})[key] = value
    pipeline(args.out, data_path=args.data, config=args.config, quick=args.quick, baseline=args.baseline,
             overrides=overrides)
    return 0

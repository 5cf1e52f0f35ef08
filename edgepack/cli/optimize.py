"""Search for the smallest or fastest int8 model within an accuracy goal (Optuna, resumable).

Trials chain compress techniques (prune, 2:4, cluster, prune -> cluster, cluster -> CQAT,
prune -> PQAT, prune -> cluster -> PCQAT, QAT; those compress has) with their options (sparsity
0.5-0.9, clusters 8-32, learning rate, epochs, polish phase), export each result to the int8
formats and measure every file with edgepack.runtime: accuracy on VALIDATION images the source never
learned, gzip'ed size, 1-thread batch-1 p50 latency in rounds. The validation images are the training
images the source held out (`edgepack train --validation-split 0.1`; compress runs made from it keep
the record) or --val-data; any other source is refused. The test images are read only at the end, for
the source's test accuracy, the picks and their matched fine-tune controls.

DIR gets study.journal (the Optuna study: re-run the same command to resume a stopped search),
trials/<number>/ (each trial's run folders, files and result.json), controls/, and the report:
report.md, report.json, pareto.csv, pareto.png (the Pareto front, the pick at the goal with its test
accuracy, its change against its control and the commands that reproduce it). Latencies whose round
intervals overlap are ties and never decide the pick. See docs/optimize.md.

example:
  edgepack train --validation-split 0.1 --out runs/baseline
  edgepack optimize --model runs/baseline --max-drop 1 --objective size --out runs/optimize
  edgepack optimize --model runs/baseline --max-drop 0.5 --objective latency --budget-minutes 30 \\
      --out runs/optimize-fast
"""

from edgepack.cli import (
    add_command,
    add_data_options,
    add_source_options,
    add_target_options,
    finite_float,
    positive_int,
    source_options,
)
from edgepack.executor import executor
from edgepack.optimize import SearchOptions, optimize
from edgepack.optimize.search import INT8_FORMATS
from edgepack.optimize.trial import on_executor, run_trials


def register(sub) -> None:
    d = SearchOptions("", "", 0.0, "size")  # the defaults, from one place
    p = add_command(sub, "optimize", __doc__, run)
    p.add_argument("--model", required=True, metavar="RUN_OR_FILE",
                   help="run folder or model file to start from")
    p.add_argument("--out", required=True, metavar="DIR", help="search folder (re-run to resume)")
    p.add_argument("--max-drop", required=True, type=finite_float, metavar="POINTS",
                   help="accuracy points the pick may lose against the source (validation), 0-100")
    p.add_argument("--objective", required=True, metavar="size|latency",
                   help="size: smallest gzip'ed file; latency: fastest 1-thread batch-1 p50")
    add_data_options(p)
    add_source_options(p)
    p.add_argument("--budget-minutes", type=finite_float, default=d.budget_minutes, metavar="M",
                   help="no trial starts that would end past M minutes of search "
                        f"(default {d.budget_minutes:g})")
    p.add_argument("--trials", type=positive_int, metavar="N", help="stop after N finished trials")
    p.add_argument("--quick", action="store_true",
                   help="one epoch per step and a short latency measurement (tests)")
    p.add_argument("--seed", type=int, default=d.seed,
                   help="sampler and training seed (default: the seed of the source's validation split, "
                        "another is refused; 0 with --val-data)")
    p.add_argument("--val-fraction", type=finite_float, default=d.val_fraction, metavar="F",
                   help="the search scores on the training images the source held out (`train "
                        "--validation-split`): their fraction is the source's; another is refused")
    p.add_argument("--val-data", metavar="FOLDER_OR_ARCHIVE",
                   help="score on these held-out images (an image folder or CIFAR-format archive, all its "
                        "images; same class names and image size) and fine-tune on --data's training "
                        "images: needed for a source that held none out (a model file, a run trained "
                        "without --validation-split)")
    p.add_argument("--ray", metavar="ADDRESS",
                   help="run trials as tasks on a Ray cluster, one per host at a time (each times its "
                        "files): auto or HOST:PORT; --out must be on a filesystem every node sees "
                        "(default: $EDGEPACK_RAY_ADDRESS, else in-process; see docs/cluster.md)")
    p.add_argument("--formats", default=",".join(INT8_FORMATS), metavar="A,B",
                   help=f"int8 formats every trial is exported to (default {','.join(INT8_FORMATS)})")
    add_target_options(p)  # the pick must run on the target and fit --ram/--flash


def run(args) -> int:
    opts = SearchOptions(model=args.model, out=args.out, max_drop=args.max_drop, objective=args.objective,
                         data=args.data, budget_minutes=args.budget_minutes, trials=args.trials,
                         quick=args.quick,
                         seed=args.seed, val_fraction=args.val_fraction, val_data=args.val_data,
                         formats=tuple(f.strip() for f in args.formats.split(",") if f.strip()),
                         limit_train=args.limit_train, limit_test=args.limit_test,
                         class_names=source_options(args)["class_names"],
                         preprocessing=source_options(args)["preprocessing"],
                         target=args.target, ram_bytes=args.ram, flash_bytes=args.flash)
    with executor(args.ray) as ex:  # in-process unless --ray / $EDGEPACK_RAY_ADDRESS
        in_process = ex.where == "in-process"
        report = optimize(opts, executor=run_trials if in_process else on_executor(ex), batch=ex.slots())
    print(f"wrote {args.out}/report.md (pick: {report['chosen']['pick'] or 'none within the goal'})")
    return 0

"""Compress a run folder or your own model file (pruning, 2:4, clustering, QAT and chains) into a run folder.

--model takes a run folder (from train or compress) or a model file: a tf_keras .keras or .h5, a
Keras 3 .keras (rebuilt in tf_keras), or a Keras SavedModel folder. For a model file, input size and
class count are read from the model; class names come from --class-names or the data; pixel scaling
from --preprocess (default raw when the model starts with a Rescaling/Normalization layer).
Layers the technique cannot compress (TF-MOT's registries) are printed and listed in metadata.json
(skipped_layers, with the reason).

Techniques (defaults in brackets; fine-tuning uses training images only):
  prune       magnitude pruning to --sparsity [0.5], 2 epochs at 1e-3; every pruned kernel is checked
              to be within 1 point of the target; --polish-epochs [0] more at --polish-learning-rate
              [1e-4] with the masks held (two-phase recipe; the masks are checked unchanged)
  prune-2of4  2 zeros in every 4 consecutive input-channel weights, 2 epochs at 1e-3; the pattern is
              checked in every pruned kernel (the first conv, 3 input channels, ends at 1/3 sparsity);
              --polish-epochs, --polish-learning-rate as for prune
  cluster     --clusters [16] shared values per kernel (k-means++), 2 epochs at 1e-4; checked; from a
              pruned run it keeps the zeros (TF-MOT's preserve_sparsity; checked)
  qat         int8 quantization-aware training, 1 epoch at 1e-4; saved as model.h5
  pqat        pruning-preserving QAT from a prune/prune-2of4 run folder, 1 epoch at 1e-4; the
              source's zeros are checked to survive
  cqat        cluster-preserving QAT from a cluster run folder, 1 epoch at 1e-4; each output channel
              keeps at most the source kernel's distinct values (checked); saved as model.h5
  pcqat       sparsity- and cluster-preserving QAT from a prune -> cluster run folder, 1 epoch at
              1e-4; zeros and shared values checked as for pqat and cqat
  finetune    control: the source trained further (2 epochs at 1e-4), not compressed

Every technique takes --distill WEIGHT (and --temperature [4]): fine-tune on (1 - WEIGHT) x the labels'
cross-entropy + WEIGHT x the softened outputs of the chain's trained model (knowledge distillation;
the teacher is the run the chain started from). A matched control distills the same way.
Every technique takes --augment flip|flip-shift: fine-tune on training images of which a random half
of each batch is mirrored left-right (flip-shift: and each image moved by up to 4 pixels, reflect-
padded; seeded; for photographs, not for digits or text). A matched control augments the same way.

From a compressed run the default variant name is the chain: <source variant>+<own>, e.g.
prune-0.6-polish2+cluster-16+pcqat.

The run folder holds the model, history.json, metrics.json (test set) and metadata.json (technique,
parameters, source run and its sha256, fine-tuning time, measured invariants, gzip'ed model size).
A broken invariant is an error and leaves no folder behind. --data defaults to the data the source
was trained on (its metadata's data_source) if that file still exists, else the usual search below.

example:
  edgepack compress --model runs/baseline --technique prune --sparsity 0.8 --out runs/prune-0.8
  edgepack compress --model runs/prune-0.5 --technique pqat --out runs/pqat
  edgepack compress --model runs/baseline --technique cluster --keep-dense conv1 --out runs/cluster-16
  edgepack compress --model runs/baseline --technique prune --sparsity 0.6 --polish-epochs 2 --out runs/p
  edgepack compress --model runs/p --technique cluster --out runs/pc    # prune-0.6-polish2+cluster-16
  edgepack compress --model runs/pc --technique pcqat --out runs/pcq
  edgepack compress --model my.keras --class-names labels.txt --preprocess unit --technique prune \\
      --data DATA --out runs/my-prune
"""

from edgepack.cli import (
    add_command,
    add_data_options,
    add_source_options,
    finite_float,
    positive_float,
    positive_int,
    source_options,
)
from edgepack.compress import compress
from edgepack.fitting import AUGMENTATIONS


def register(sub) -> None:
    p = add_command(sub, "compress", __doc__, run)
    p.add_argument("--model", required=True, metavar="RUN_DIR|FILE",
                   help="run folder (from train or compress) or model file to compress (see above)")
    p.add_argument("--technique", required=True, metavar="NAME",
                   help="prune, prune-2of4, cluster, qat, pqat, cqat, pcqat or finetune (see above)")
    p.add_argument("--out", required=True, metavar="DIR", help="run folder to write")
    add_data_options(p)
    add_source_options(p)
    p.add_argument("--sparsity", type=finite_float, help="prune: target share of zeros per kernel, in (0, 1)")
    p.add_argument("--clusters", type=int, help="cluster: distinct values per kernel, >= 2")
    p.add_argument("--polish-epochs", type=int, metavar="N",
                   help="prune, prune-2of4: N more epochs at --polish-learning-rate with the masks held "
                        "(default 0: one phase)")
    p.add_argument("--polish-learning-rate", type=positive_float, metavar="RATE",
                   help="prune, prune-2of4: adam learning rate of the polish phase (default 1e-4)")
    p.add_argument("--keep-dense", nargs="+", metavar="LAYER",
                   help="prune, prune-2of4, cluster: leave these layers uncompressed")
    p.add_argument("--distill", type=finite_float, metavar="WEIGHT",
                   help="every technique: weight in [0, 1] of distillation from the chain's trained model "
                        "(soft targets; 0 = off, the default)")
    p.add_argument("--temperature", type=positive_float, metavar="T",
                   help="with --distill: softmax temperature of the soft targets (default 4)")
    p.add_argument("--augment", choices=AUGMENTATIONS, metavar="|".join(AUGMENTATIONS),
                   help="every technique: fine-tune on randomly changed training images; flip mirrors half "
                        "of each batch left-right, flip-shift also moves each image up to 4 pixels (for "
                        "photos, not for digits or text; default none)")
    p.add_argument("--epochs", type=positive_int, help="fine-tuning epochs (default: the technique's)")
    p.add_argument("--learning-rate", type=positive_float,
                   help="adam learning rate (default: the technique's)")
    p.add_argument("--batch-size", type=positive_int, help="batch size (default 32)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--force", action="store_true", help="replace DIR if it exists (only once complete)")


def run(args) -> int:
    # Only the options given are passed: the library refuses those the technique does not take.
    params = {"sparsity": args.sparsity, "clusters": args.clusters, "keep_dense": args.keep_dense,
              "epochs": args.epochs, "learning_rate": args.learning_rate, "batch_size": args.batch_size,
              "polish_epochs": args.polish_epochs, "polish_learning_rate": args.polish_learning_rate,
              "distill": args.distill, "temperature": args.temperature, "augment": args.augment}
    out = compress(args.model, args.technique, args.out, params=params, data_path=args.data, force=args.force,
                   limit_train=args.limit_train, limit_test=args.limit_test, seed=args.seed,
                   **source_options(args))
    print(f"wrote {out}")
    return 0

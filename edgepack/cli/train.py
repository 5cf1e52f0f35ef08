"""Train the tutorial's baseline CIFAR-10 CNN and write a run folder.

The default is the tutorial's recipe: adam, sparse categorical cross-entropy, 10 epochs, batch 32,
pixels scaled to [0, 1]. The run folder holds model.keras, history.json, metrics.json (test
accuracy, macro and per-class precision/recall/F1, confusion matrix) and metadata.json.

example:
  edgepack train --data ../shared/data/cifar-10-python.tar.gz --out runs/baseline
  edgepack train --epochs 1 --limit-train 10000 --out runs/smoke --force
  edgepack train --data my_images/ --image-size 64x64 --out runs/mine   (train/CLASS/*.png, test/CLASS/...)
"""

from edgepack.cli import add_command, add_data_options, finite_float, image_size, positive_float, positive_int
from edgepack.train import TrainConfig, train


def register(sub) -> None:
    p = add_command(sub, "train", __doc__, run)
    add_data_options(p)
    p.add_argument("--out", required=True, metavar="DIR", help="run folder to write")
    p.add_argument("--epochs", type=positive_int, default=10, help="training epochs (default 10)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="batch size (default 32)")
    p.add_argument("--learning-rate", type=positive_float, default=1e-3,
                   help="adam learning rate (default 1e-3)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--validation-split", type=finite_float, default=0.0,
                   help="share of training images held out (seeded, stratified), never fitted on: val_* "
                        "history, and the split `edgepack optimize --val-fraction` scores on (default 0)")
    p.add_argument("--image-size", type=image_size, metavar="HxW",
                   help="image folders: resize every image to H x W (default: their common size)")
    p.add_argument("--force", action="store_true", help="replace DIR if it exists (only once complete)")


def run(args) -> int:
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
                         seed=args.seed, validation_split=args.validation_split,
                         limit_train=args.limit_train, limit_test=args.limit_test, image_size=args.image_size)
    out = train(args.data, args.out, config, force=args.force)
    print(f"wrote {out}")
    return 0

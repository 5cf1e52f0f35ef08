"""Build an image folder (train/CLASS/*.png, test/CLASS/*.png) from CIFAR-10, for the README's
"Your own model" example: a few classes, upscaled so the set is not 32x32.

    python scripts/make_image_folder.py --data ../shared/data/cifar-10-python.tar.gz --out my-images

Images are upscaled with Pillow's BICUBIC filter; which images are taken is a seeded, class-balanced
subset of each split (edgepack.data.balanced_subset), so the same options make the same files.
The folder is written whole or not at all (edgepack.rundir.atomic_dir).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from PIL import Image  # noqa: TID253  this script needs Pillow (the images extra)

from edgepack import rundir
from edgepack.data import balanced_subset, load_data
from edgepack.errors import EdgepackError


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="cifar-10-python.tar.gz or cifar-10-batches-py (default: searched)")
    p.add_argument("--out", required=True, help="the image folder to create")
    p.add_argument("--classes", default="airplane,cat,ship", help="comma-separated CIFAR-10 class names")
    p.add_argument("--size", type=int, default=64, help="side of the square PNGs in pixels (default 64)")
    p.add_argument("--train-per-class", type=int, default=500, help="training images per class")
    p.add_argument("--test-per-class", type=int, default=100, help="test images per class")
    p.add_argument("--seed", type=int, default=0, help="which images are taken")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    return p.parse_args(argv)


def pick(labels: np.ndarray, class_ids: list[int], per_class: int, seed: int) -> np.ndarray:
    """Indices of `per_class` images of each of `class_ids` (seeded), in the data's order."""
    among = np.flatnonzero(np.isin(labels, class_ids))
    return among[balanced_subset(labels[among], per_class * len(class_ids), seed)]


def write_split(folder, x: np.ndarray, y: np.ndarray, idx: np.ndarray, names: tuple, size: int) -> None:
    for i in idx:
        target = folder / names[y[i]] / f"{i:05d}.png"  # the index in the split: traceable to the source
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(x[i]).resize((size, size), Image.Resampling.BICUBIC).save(target)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        wanted = [c.strip() for c in args.classes.split(",") if c.strip()]
        if args.size < 1 or args.train_per_class < 1 or args.test_per_class < 1:
            raise EdgepackError("--size, --train-per-class and --test-per-class must be >= 1")
        ds = load_data(args.data)
        unknown = [c for c in wanted if c not in ds.class_names]
        if len(set(wanted)) < 2 or unknown:
            raise EdgepackError(f"--classes needs at least 2 distinct CIFAR-10 class names, unknown: "
                                f"{', '.join(unknown) or 'none'} (known: {', '.join(ds.class_names)})")
        ids = [ds.class_names.index(c) for c in dict.fromkeys(wanted)]
        with rundir.atomic_dir(args.out, args.force) as tmp:
            write_split(tmp / "train", ds.x_train, ds.y_train,
                        pick(ds.y_train, ids, args.train_per_class, args.seed), ds.class_names, args.size)
            write_split(tmp / "test", ds.x_test, ds.y_test,
                        pick(ds.y_test, ids, args.test_per_class, args.seed), ds.class_names, args.size)
    except EdgepackError as e:
        print(f"make_image_folder: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {len(ids)} classes, {args.size}x{args.size} PNGs, "
          f"{args.train_per_class} training and {args.test_per_class} test images per class")
    return 0


if __name__ == "__main__":
    sys.exit(main())

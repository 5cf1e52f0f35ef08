"""Prove exported files' accuracy on a target's own engines: arm64 = aarch64 ONNX Runtime and LiteRT.

Runs every given .onnx / .tflite file (or every one in a given folder) on aarch64 builds of ONNX
Runtime 1.32 and LiteRT 1.4.0 under qemu-user emulation, and the same file on this machine, and
prints each file's accuracy on both, their top-1 agreement and the largest output difference.
ARM64 engines use other int8 kernels (NEON dot product, i8mm) than x86: this shows what a phone,
Raspberry Pi or Graviton server computes. Emulation is exact but slow: no latency is measured.

The first run builds the emulated Python (58 MB of Debian arm64 packages and PyPI aarch64
wheels, 200 MB unpacked) into ~/.cache/edgepack (--root to choose); needs Linux, root, qemu-user
(apt-get install qemu-user), apt-get, dpkg and unshare. Images: the CIFAR-10 test set (--data,
--limit-test), or --images X.npy (uint8 N,H,W,C) with optional --labels Y.npy, or FOLDER/images.npy
(agreement only). Emulated float is slow (~75-130 CPU-s per 1,000 images of the tutorial CNN; int8
~8-13): use --limit-test for float files.

example:
  edgepack target-check --target arm64 runs/export/baseline --data cifar-10-python.tar.gz --limit-test 2000
  edgepack target-check --target arm64 model.onnx --images x.npy --labels y.npy --cpu cortex-a72
"""

from pathlib import Path

import numpy as np

from edgepack.cli import add_command, add_data_options, positive_int
from edgepack.data import load_data
from edgepack.errors import EdgepackError
from edgepack.target import arm64, arm64_check

TARGETS = ("arm64",)


def register(sub) -> None:
    p = add_command(sub, "target-check", __doc__, run)
    p.add_argument("paths", nargs="+", metavar="PATH", help="exported files, or folders of them")
    p.add_argument("--target", required=True, choices=TARGETS, help="where the files will run")
    add_data_options(p, limits=False)
    p.add_argument("--limit-test", type=positive_int, metavar="N",
                   help="use a seeded, class-balanced subset of N test images (--images: the first N; "
                        "default: all)")
    p.add_argument("--images", metavar="NPY", help="uint8 images (N, H, W, C) instead of --data")
    p.add_argument("--labels", metavar="NPY", help="their class indices (N,), for accuracy")
    p.add_argument("--cpu", default=arm64.DEFAULT_CPU, choices=list(arm64.CPUS),
                   help="emulated CPU: " + "; ".join(f"{k}: {c.summary}" for k, c in arm64.CPUS.items()))
    p.add_argument("--root", metavar="DIR", help=f"the emulated Python's folder (default: "
                   f"~/.cache/edgepack/{arm64.ROOT_NAME}; built if missing)")
    p.add_argument("--rebuild", action="store_true", help="build the emulated Python again")
    p.add_argument("--out", metavar="JSON", help="also write the results to this JSON file")


def images_and_labels(args):
    """(images, labels or None) from --images/--labels, FOLDER/images.npy or the data's test set."""
    def load(path, what):
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise EdgepackError(f"--{what} {path}: not a readable .npy file ({e})") from None

    if args.labels and not args.images:
        raise EdgepackError("--labels needs --images (the data's test set has its own labels)")
    if args.images:
        images = load(args.images, "images")
        labels = load(args.labels, "labels") if args.labels else None
    elif args.data is None and any((Path(p) / "images.npy").is_file() for p in args.paths):
        images, labels = load(next(Path(p) / "images.npy" for p in args.paths
                                   if (Path(p) / "images.npy").is_file()), "images"), None
    else:
        ds = load_data(args.data, limit_test=args.limit_test)
        images, labels = ds.x_test, ds.y_test
    if images.dtype != np.uint8 or images.ndim != 4:
        raise EdgepackError(f"images must be uint8 (N, H, W, C), got {images.dtype} {images.shape}")
    if labels is not None and labels.reshape(-1).shape != (len(images),):
        raise EdgepackError(f"{labels.size} labels for {len(images)} images")
    if args.limit_test and args.images:
        images, labels = images[:args.limit_test], None if labels is None else labels[:args.limit_test]
    return images, labels


def run(args) -> int:
    files = arm64_check.model_files(args.paths)
    images, labels = images_and_labels(args)
    root = Path(args.root) if args.root else None
    if args.rebuild:
        arm64.build_root(root, force=True)
    result = arm64_check.evaluate(files, images, labels, root=root, cpu=args.cpu)
    print(arm64_check.table(result))
    if args.out:
        arm64_check.write_json(result, Path(args.out))
    return 0 if all(r.runs and not r.error for r in result.files) else 1

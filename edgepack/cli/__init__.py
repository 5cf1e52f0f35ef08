"""The `edgepack` command line: a thin layer that parses options and calls library functions.

Each subcommand lives in its own module `edgepack.cli.<name>` with a `register(subparsers)` that
adds its parser (help text = the module's docstring, with an example) and sets `func(args)`.
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys

from edgepack import __version__
from edgepack.errors import EdgepackError
from edgepack.target import DEFAULT, TARGETS
from edgepack.target.budget import UNITS, parse_bytes

# Subcommands in the order `edgepack --help` lists them (module edgepack.cli.<name>, "-" as "_").
COMMANDS = ("train", "compress", "export", "predict", "verify", "compare", "pipeline", "optimize", "bench",
            "explain", "target-check")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors in edgepack's format (exit code 2)."""

    def error(self, message: str):
        self.exit(2, f"edgepack: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="edgepack", description=__doc__.splitlines()[0] if __doc__ else None,
                     epilog="Run `edgepack COMMAND --help` for a command's options and an example.")
    parser.add_argument("--version", action="version", version=f"edgepack {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        module_name = f"edgepack.cli.{name.replace('-', '_')}"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name == module_name:
                continue  # command not built yet
            raise
        module.register(sub)
    return parser


def add_command(sub, name: str, doc: str, func) -> argparse.ArgumentParser:
    """Add a subcommand whose --help is `doc` (first line = summary) and whose action is `func`."""
    summary = doc.strip().splitlines()[0]
    p = sub.add_parser(name, help=summary, description=doc.strip(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=func)
    return p


def add_data_options(p: argparse.ArgumentParser, limits: bool = True) -> None:
    p.add_argument("--data", metavar="PATH",
                   help="cifar-10-python.tar.gz, cifar-10-batches-py folder, or an image folder: "
                        "DIR/train/CLASS/*.png|jpg and DIR/test/CLASS/..., or DIR/CLASS/*.png|jpg split "
                        "by a seeded, stratified rule (default: $EDGEPACK_DATA, then the Keras cache, "
                        "then download CIFAR-10)")
    if limits:
        p.add_argument("--limit-train", type=positive_int, metavar="N",
                       help="use a seeded, class-balanced subset of N training images")
        p.add_argument("--limit-test", type=positive_int, metavar="N",
                       help="use a seeded, class-balanced subset of N test images")


def add_source_options(p: argparse.ArgumentParser) -> None:
    """--class-names and --preprocess: what edgepack needs to know about a user's model file
    (edgepack.rundir.load_source); a run folder records both and ignores them."""
    p.add_argument("--class-names", metavar="NAMES",
                   help="a user's model file: class names as a,b,c or a labels file (one per line); "
                        "default: the data's")
    p.add_argument("--preprocess", metavar="SPEC",
                   help="a user's model file: pixel scaling unit ([0,1]), symmetric ([-1,1]), raw (the "
                        "model rescales itself) or mean-std:M1,M2,M3/S1,S2,S3; default: raw if the model "
                        "starts with a Rescaling/Normalization layer, else required")


def source_options(args) -> dict:
    """The keyword arguments of edgepack.rundir.load_source from parsed options."""
    return {"class_names": args.class_names, "preprocessing": args.preprocess}


def image_size(text: str) -> tuple[int, int]:
    """HxW (e.g. 64x64) -> (height, width)."""
    h, sep, w = text.lower().partition("x")
    try:
        size = (int(h), int(w))
    except ValueError:
        size = None
    if not sep or size is None or min(size) < 1:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH such as 64x64, got {text!r}")
    return size


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    value = finite_float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def add_target_options(p: argparse.ArgumentParser) -> None:
    """--target, --ram, --flash (edgepack.target; docs/targets.md)."""
    where = "; ".join(f"{n}: {t.summary}" for n, t in TARGETS.items())
    p.add_argument("--target", choices=list(TARGETS), default=DEFAULT,
                   help=f"where the files will run: {where} (default {DEFAULT})")
    p.add_argument("--ram", type=byte_size, metavar="SIZE",
                   help=f"the target's RAM for the tensor arena, e.g. 64KiB (units {', '.join(UNITS)}; "
                        "no space)")
    p.add_argument("--flash", type=byte_size, metavar="SIZE",
                   help="the target's flash for the model file, e.g. 256KiB")


def byte_size(text: str) -> int:
    """argparse type: "64KiB" -> 65536 (edgepack.target.budget.parse_bytes)."""
    try:
        return parse_bytes(text)
    except EdgepackError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except EdgepackError as e:
        print(f"edgepack: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # disk full, permissions, a folder where a file should be, ...
        where = f" ({e.filename})" if e.filename else ""
        print(f"edgepack: error: {e.strerror or e}{where}: check the path and free space", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("edgepack: interrupted", file=sys.stderr)
        return 130

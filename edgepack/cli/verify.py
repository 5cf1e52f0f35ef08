"""Check that a deployed model file reproduces its golden vectors (runtime only, no TensorFlow).

Export writes <file>.golden.npz next to each file: 16 held-out test images and the file's expected
probabilities. This runs FILE on them with this machine's kernels and compares within the format's
tolerance (float32 1e-4, float16 1e-2, int8 16/256, same top-1 where the expected one leads clearly).
Exit 0 on pass, 1 on fail (the line names the first bad image). GOLDEN defaults to FILE.golden.npz;
files exported before edgepack wrote golden vectors have none: re-export them. --kernels tflm runs
FILE on TensorFlow Lite Micro (`export --target tflm` writes golden vectors whose expected outputs are
TFLM's; a file with TFLM look-up-table weights runs nowhere else).

example:
  edgepack verify runs/export/baseline/tflite-int8.tflite runs/export/baseline/tflite-int8.tflite.golden.npz
  edgepack verify runs/export/baseline/tflite-int8.tflite
  edgepack verify runs/tflm/pc/model.tflite --kernels tflm
"""

from edgepack.cli import add_command, positive_int
from edgepack.errors import EdgepackError
from edgepack.runtime import KERNELS
from edgepack.runtime.golden import verify

KERNEL_CHOICES = (*KERNELS, "tflm")


def register(sub) -> None:
    p = add_command(sub, "verify", __doc__, run)
    p.add_argument("model", metavar="FILE", help="exported .onnx or .tflite file (with its metadata)")
    p.add_argument("golden", metavar="GOLDEN", nargs="?",
                   help="its .golden.npz file (default: FILE.golden.npz)")
    p.add_argument("--threads", type=positive_int, metavar="N",
                   help="inference threads (default: the runtime's own default)")
    p.add_argument("--kernels", default="default", choices=KERNEL_CHOICES,
                   help="which kernels run FILE: default (what an app gets), reference, no-xnnpack "
                        "(.tflite), tflm (.tflite on TensorFlow Lite Micro)")


def run(args) -> int:
    try:
        result = verify(args.model, args.golden, threads=args.threads, kernels=args.kernels)
    except EdgepackError:
        raise
    except ValueError as e:  # kernels that the file's engine does not have (e.g. tflm for .onnx)
        raise EdgepackError(f"{args.model}: {e}") from None
    print(result.line)
    return 0 if result.passed else 1

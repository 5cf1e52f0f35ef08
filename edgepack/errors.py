"""The errors edgepack shows users: one line that names the problem and the fix.

The CLI prints `edgepack: error: <message>` for every `EdgepackError` and exits non-zero;
library callers can catch them by type.
"""

import importlib.util


class EdgepackError(Exception):
    """A problem with the user's input, files or environment (not a bug in edgepack)."""


class KeyProblem(ValueError):
    """A problem a record's own check finds (raised inside edgepack.typed.validate), with the key path it
    belongs to, relative to that record ("variants[1].source"): the one-line error names the key."""

    def __init__(self, path: str, message: str):
        super().__init__(message)
        self.path = path


class DataError(EdgepackError, ValueError):
    """A data file is missing, corrupt, unsafe or of the wrong shape."""


class RunFolderError(EdgepackError):
    """A folder is not a complete edgepack run (or cannot be written)."""


class MissingToolchain(EdgepackError):
    """A command needs the `toolchain` extra (TensorFlow and friends) that is not installed."""


# What the `toolchain` extra brings that training, compression, export and reports import.
TOOLCHAIN_MODULES = ("tensorflow", "tf_keras", "tensorflow_model_optimization", "onnx", "tf2onnx",
                     "sklearn", "matplotlib", "pydantic", "filelock")


def require_toolchain(what: str) -> None:
    """Fail with one line (before any work) if a module of the toolchain extra is not installed."""
    missing = [m for m in TOOLCHAIN_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingToolchain(
            f"{what} needs the toolchain extra ({', '.join(missing)} not installed): "
            "run pip install 'edgepack[toolchain]'"
        )

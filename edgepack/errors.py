"""The errors edgepack shows users: one line that names the problem and the fix.

The CLI prints `edgepack: error: <message>` for every `EdgepackError` and exits non-zero;
library callers can catch them by type.
"""


class EdgepackError(Exception):
    """A problem with the user's input, files or environment (not a bug in edgepack)."""


class DataError(EdgepackError, ValueError):
    """A data file is missing, corrupt, unsafe or of the wrong shape."""


class RunFolderError(EdgepackError):
    """A folder is not a complete edgepack run (or cannot be written)."""


class MissingToolchain(EdgepackError):
    """A command needs the `toolchain` extra (TensorFlow and friends) that is not installed."""


def require_toolchain(what: str) -> None:
    """Fail with one line if TensorFlow, tf_keras or TF-MOT cannot be imported."""
    import importlib.util

    missing = [m for m in ("tensorflow", "tf_keras", "tensorflow_model_optimization")
               if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingToolchain(
            f"{what} needs the toolchain extra ({', '.join(missing)} not installed): "
            "run pip install 'edgepack[toolchain]'"
        )

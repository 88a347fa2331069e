"""User-facing errors: raised with a one-line message naming the cause and the fix.

The CLI prints these as a single line and exits non-zero; any other exception is a bug and keeps its
traceback (shown with ``--debug``).
"""


class EffedgeError(Exception):
    """An error caused by the user's input or environment, with a message that says how to fix it."""


class RunError(EffedgeError):
    """The input was valid but the work failed at run time: a build, a CUDA call, a parity check (exit code 1)."""


class VariantError(EffedgeError, ValueError):
    """Unknown variant name or an out-of-range compound coefficient."""


class CheckpointError(EffedgeError):
    """A checkpoint that cannot be found, read, or mapped onto the model."""


class BackendUnavailable(EffedgeError):
    """A backend's runtime (TensorRT, the CUDA bindings, a driver or a GPU) is missing on this machine."""

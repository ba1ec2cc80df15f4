"""The errors a user fixes (bad input, bad params, a missing or broken file) and the exit code that says so.

Every expected error subclasses :class:`BadInputError`; ``advreid <stage>`` prints its message alone on stderr and
exits with :data:`EXIT_BAD_INPUT`, so callers (the Prefect flow) retry only other failures. Anything else is a bug and
keeps its traceback. This module imports nothing from the project, so every module can import it.
"""

from __future__ import annotations

EXIT_BAD_INPUT = 2  # argparse's own exit status for bad arguments: one code for "fix your input"


class BadInputError(Exception):
    """An input, params value or file is wrong; the message names it, what is wrong, and how to fix it."""


class CheckpointError(BadInputError, ValueError):
    """A checkpoint file is missing, truncated, unsafe to unpickle, or not the kind the caller expects."""


class DataSizeError(BadInputError, ValueError):
    """The data are too small for a setting (e.g. re-ranking's k1 above the number of query + gallery images)."""


# Raised by the standard library with a path-naming message for a file the user must provide.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (BadInputError, FileNotFoundError)

"""The errors a user can fix. The CLI prints their message as one line and exits non-zero.

Anything else that escapes is a bug in progan and keeps its traceback.
"""


class ProganError(Exception):
    """Base of every error caused by input the user can correct. Exit code 1."""

    exit_code = 1


class UsageError(ProganError):
    """A wrong option or option combination. Exit code 2, like a parse error."""

    exit_code = 2


class DataError(ProganError):
    """A missing, unreadable or foreign input file or folder."""


class CheckpointError(ProganError):
    """A run folder or checkpoint that cannot be resumed or loaded."""

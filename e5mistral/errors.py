"""User errors, and how the command-line entry points report them.

A :class:`UserError` is a mistake the user can fix (a bad value, a missing file, an empty
dataset): its message says what is wrong, the value seen and the fix, in one line. The commands
print it as ``error: ...`` and exit with status 2, without a traceback; any other exception is a
bug and keeps its traceback.

Example:
    >>> raise UserError("dataset file 'rows.jsonl' is empty; add rows or point --dataset_name elsewhere.")
    Traceback (most recent call last):
    ...
    e5mistral.errors.UserError: dataset file 'rows.jsonl' is empty; add rows or point --dataset_name elsewhere.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

__all__ = ["USER_ERROR_EXIT", "UserError", "run_command"]

USER_ERROR_EXIT = 2


class UserError(ValueError):
    """A mistake in the user's input: printed as one line by the commands, which then exit with status 2."""


def run_command(main: Callable[[], int | None], *, interrupted: Callable[[], str] | None = None) -> int:
    """Run a command's ``main``: a :class:`UserError` becomes one ``error:`` line and exit status 2.

    ``interrupted`` (optional) returns the line to print on Ctrl-C (what was saved and the command
    that resumes); the exit status is then 130, as a shell gives an interrupted program.
    """
    try:
        return int(main() or 0)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return USER_ERROR_EXIT
    except KeyboardInterrupt:
        message = interrupted() if interrupted is not None else "interrupted."
        print(f"\n{message}", file=sys.stderr)
        return 130

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

import shlex
import sys
from collections.abc import Callable, Sequence

from .secrets import redact

__all__ = ["USER_ERROR_EXIT", "UserError", "first_line", "resume_command", "run_command"]

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


def resume_command(argv: Sequence[str], prog: str | Sequence[str], *, launcher: str | None = None) -> str:
    """The command line that reruns a command (and so resumes it), every argument passed through
    :func:`~e5mistral.secrets.redact` (a ``--hub_token``, URL credentials), shell-quoted.

    ``prog`` is the script path (``sys.argv[0]``) or the words that name the command (``("-m",
    "e5mistral.cli.generate")``); ``launcher`` is put in front as it is (say ``"accelerate launch
    <the same launch options>"``), the running interpreter when not given.

    Example:
        >>> resume_command(["--base-url", "http://me:pw@host/v1", "--output", "my out"], "gen.py").split(" ", 1)[1]
        "gen.py --base-url 'http://***@host/v1' --output 'my out'"
        >>> resume_command(["--output_dir", "out"], "scripts/train.py", launcher="python")
        'python scripts/train.py --output_dir out'
    """
    words = [prog] if isinstance(prog, str) else list(prog)
    head = launcher if launcher is not None else shlex.quote(sys.executable)
    return f"{head} {shlex.join([*words, *(redact(arg) for arg in argv)])}"


def first_line(error: BaseException) -> str:
    """The first line of an error's message (its type's name when the message is empty), for a
    one-line report that names the cause.

    Example:
        >>> first_line(ValueError("bad header\\nat byte 12"))
        'bad header'
    """
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__

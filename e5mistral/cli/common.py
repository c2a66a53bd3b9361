"""What the commands share: the embedder's arguments (``evaluate`` and ``mine``), one-line failures, ``main``.

:class:`EmbedderArguments` declares the flags once (``--model``, ``--batch-size``, ``--max-length``,
``--device``, ``--dtype`` and, where a command offers it, ``--trust-remote-code``) and loads the
:class:`~e5mistral.E5Embedder` they describe.

Example:
    >>> import argparse
    >>> parser = argparse.ArgumentParser()
    >>> EmbedderArguments.add_arguments(parser, model_help="model folder or Hub id")
    >>> EmbedderArguments.from_namespace(parser.parse_args(["--model", "out/e5", "--batch-size", "8"]))
    EmbedderArguments(model='out/e5', batch_size=8, max_length=512, device=None, dtype=None, trust_remote_code=False)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import NoReturn

from e5mistral.errors import UserError, first_line, run_command

__all__ = ["DTYPES", "EmbedderArguments", "exit_process", "failure_line", "run_as_command"]

DTYPES = ("float32", "bfloat16", "float16")


def failure_line(error: BaseException) -> str:
    """``"TypeName: first line of the message"``, for a failure reported on one line.

    Example:
        >>> failure_line(ConnectionError("offline\\nmore detail"))
        'ConnectionError: offline'
    """
    text = str(error).strip()
    return f"{type(error).__name__}: {first_line(error)}" if text else type(error).__name__


def exit_process(code: int) -> NoReturn:
    """Exit with ``code``; after a multi-process run, without the interpreter's teardown.

    A process group's gloo worker threads may still drop the last reference to a tensor that has a
    Python object after the command returned (DeepSpeed keeps the groups alive past
    ``destroy_process_group``, so they are never joined). If the interpreter is finalizing then,
    that thread's GIL acquire ends in ``std::terminate``: "terminate called without an active
    exception", SIGABRT, and ``accelerate launch`` reports a failed run whose files were all
    written. So once a process group exists this destroys it, runs the ``atexit`` handlers (loggers,
    trackers), flushes the standard streams and leaves through ``os._exit``; otherwise it is
    ``sys.exit(code)``.

    Example:
        >>> exit_process(main())  # doctest: +SKIP
    """
    import atexit
    import os

    dist = sys.modules.get("torch.distributed")  # never imported: no group (and no torch import to exit)
    if dist is None or not (dist.is_available() and dist.is_initialized()):
        sys.exit(code)
    dist.destroy_process_group()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def run_as_command(run: Callable[[list[str] | None], object], argv: list[str] | None) -> int:
    """``run(argv)`` as a command's ``main``: exit status 0, or (:func:`e5mistral.errors.run_command`) 2
    after one ``error:`` line for a :class:`UserError`; what ``run`` returns is for callers in Python."""

    def command() -> int:
        run(argv)
        return 0

    return run_command(command)


@dataclass
class EmbedderArguments:
    """The model a command embeds with and how it runs.

    Attributes:
        model: a saved model folder or a Hub id (an e5mistral export or compatible).
        batch_size: texts per forward pass.
        max_length: token limit per text, EOS included.
        device: e.g. ``cuda``, ``cuda:1``, ``cpu`` (``None``: cuda if available).
        dtype: the weights' dtype, one of :data:`DTYPES` (``None``: as saved).
        trust_remote_code: load a Hub model's own code.
    """

    model: str
    batch_size: int = 32
    max_length: int = 512
    device: str | None = None
    dtype: str | None = None
    trust_remote_code: bool = False

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, *, model_help: str, trust_remote_code: bool = False) -> None:
        """Add the flags to ``parser``; ``--trust-remote-code`` only where the command offers it."""
        parser.add_argument("--model", required=True, help=model_help)
        parser.add_argument("--batch-size", type=int, default=cls.batch_size, help="texts per forward pass")
        parser.add_argument("--max-length", type=int, default=cls.max_length, help="token limit per text, EOS included")
        parser.add_argument("--device", default=None, help="e.g. cuda, cuda:1, cpu (default: cuda if available)")
        parser.add_argument("--dtype", default=None, choices=DTYPES, help="weights dtype (default: as saved)")
        if trust_remote_code:
            parser.add_argument("--trust-remote-code", action="store_true", help="load a Hub model's own code")

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> EmbedderArguments:
        """The arguments parsed by a parser that :meth:`add_arguments` set up."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)})

    def resolved_device(self) -> str:
        """``device``, or ``cuda`` when a GPU is there, else ``cpu``."""
        import torch

        return self.device or ("cuda" if torch.cuda.is_available() else "cpu")

    def load(self):
        """The :class:`~e5mistral.E5Embedder`; a ``--model`` that is neither a folder here nor on the Hub is a UserError."""
        import torch

        from e5mistral.encoding import E5Embedder

        try:
            return E5Embedder.from_pretrained(
                self.model,
                device=self.resolved_device(),
                dtype=getattr(torch, self.dtype) if self.dtype else None,
                trust_remote_code=self.trust_remote_code,
                batch_size=self.batch_size,
                max_length=self.max_length,
            )
        except OSError as error:
            if Path(self.model).exists():
                raise  # a folder that is there but does not load: not a mistake in the argument
            raise UserError(
                f"--model {self.model} is not a folder here and could not be loaded from the Hub "
                f"({failure_line(error)}); pass a saved model folder or a reachable Hub id"
            ) from None

"""The append-only generation log (JSONL, one line per request id) and the run manifest beside it.

Faults the log survives, and what a rerun of the same command does about them:

- A write fails (disk full, I/O error): the bytes of that record are cut off again, so the log
  ends on a whole line, and :class:`GenerationLogError` stops the run naming the log path; the
  record's request is pending.
- A kill mid-write leaves a torn last line: it is cut off when the log is opened again, and its
  request is asked again.
- Two runs on one log at once: refused (an exclusive lock on the log), since both would ask the
  same pending requests.
- `run.json` (the arguments that shaped the plan, checked by :func:`check_manifest`) is written
  then renamed, so a kill never leaves it torn; one torn anyway is rewritten while the log is
  empty and refused once it holds records.

Example:
    >>> log = GenerationLog("out/raw/generations.jsonl")  # doctest: +SKIP
    >>> log.append({"id": "0-sts-example-000000", ...}); log.close()  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import os
from pathlib import Path
from typing import Any

from ..errors import UserError
from .builder import read_generation_log

__all__ = ["GenerationLog", "GenerationLogError", "check_manifest", "truncate_partial_last_line"]


def truncate_partial_last_line(path: Path, chunk: int = 1 << 16) -> None:
    """Cut a last line without its newline (a writer killed mid-write), reading only the tail."""
    with open(path, "r+b") as f:
        end = f.seek(0, os.SEEK_END)
        position = end
        while position > 0:
            start = max(0, position - chunk)
            f.seek(start)
            block = f.read(position - start)
            if position == end and block.endswith(b"\n"):
                return
            cut = block.rfind(b"\n")
            if cut >= 0:
                f.truncate(start + cut + 1)
                return
            position = start
        f.truncate(0)


class GenerationLogError(RuntimeError):
    """The generation log cannot be written or read; the message names its path and the fix."""


class GenerationLog:
    """The append-only JSONL log: `records` maps request id -> record (first one wins).

    Opening takes an exclusive lock (a second run on the same log is refused) and repairs a
    last line cut short by a killed writer. Every append writes a whole line on an `O_APPEND`
    descriptor; a short write is continued, and a failed one (disk full) is cut back to the
    last whole line before :class:`GenerationLogError` is raised, so the file never holds a
    partial line that a later append would glue onto.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise GenerationLogError(
                f"{self.path} is being written by another generator run; wait for it to finish "
                "(or stop it) before resuming, or write to a new --output folder"
            ) from None
        try:
            truncate_partial_last_line(self.path)
            self.records = {r["id"]: r for r in read_generation_log(self.path)}
        except BaseException:
            os.close(self._fd)
            raise
        self._size = os.fstat(self._fd).st_size  # end of the last whole line
        self._broken: str | None = None

    def append(self, record: dict[str, Any]) -> None:
        """Write one record as one line; raises GenerationLogError (the line not written)."""
        if self._broken:
            raise GenerationLogError(self._broken)
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        written = 0
        try:
            while written < len(line):  # os.write may write less than asked (e.g. a disk filling up)
                written += os.write(self._fd, line[written:])
        except OSError as error:
            self._broken = (
                f"could not append to the generation log {self.path}: {error.strerror or error} "
                f"(errno {errno.errorcode.get(error.errno, error.errno)}); the run stopped with "
                f"{len(self.records)} requests logged, none lost: fix the cause (e.g. free disk "
                "space), then rerun the same command to resume"
            )
            try:
                os.ftruncate(self._fd, self._size)  # drop the partial line; opening would too
            except OSError:
                pass
            raise GenerationLogError(self._broken) from error
        self._size += len(line)
        self.records.setdefault(record["id"], record)

    def close(self) -> None:
        os.close(self._fd)  # releases the lock


def check_manifest(log_path: Path, config: Any) -> None:
    """Check the plan's arguments (a dataclass such as ``GenerationConfig``) against ``run.json``
    beside the log, or write them there on a first run. A resumed run that differs is a
    :class:`~e5mistral.errors.UserError` naming the argument.

    Example:
        >>> check_manifest(Path("out/raw/generations.jsonl"), GenerationConfig(kinds=("sts",)))  # doctest: +SKIP
    """
    manifest_path = log_path.parent / "run.json"
    current = dataclasses.asdict(config)
    current["kinds"] = list(config.kinds)
    previous = None
    if manifest_path.exists():
        try:
            previous = json.loads(manifest_path.read_text(encoding="utf-8"))
        except ValueError as error:
            if log_path.exists() and log_path.stat().st_size:
                raise GenerationLogError(
                    f"{manifest_path} is unreadable ({error}) but {log_path} holds records: restore "
                    "run.json, or delete it to resume on trust that the arguments are the same"
                ) from None
            previous = None  # torn before any request was logged: write it again
    if previous is not None:
        for key, value in current.items():
            if previous.get(key) != value:
                raise UserError(
                    f"{log_path} was generated with {key}={previous.get(key)!r}, now {key}={value!r}; "
                    "resume with the same arguments, or write to a new --output folder"
                )
    else:
        temporary = manifest_path.with_name(f".{manifest_path.name}.tmp")
        try:  # write-then-rename: a kill never leaves a torn run.json
            temporary.write_text(json.dumps(current, indent=2) + "\n", encoding="utf-8")
            os.replace(temporary, manifest_path)
        except OSError as error:
            raise GenerationLogError(f"could not write {manifest_path}: {error}") from error

"""The one error boundary every tool and recipe ``main`` runs inside.

A user mistake (a bad argument, config value, input file or output path) or an environment failure the
user has to fix (disk full, no permission) ends the program with ONE line on stderr,
``error: <file or key>: <reason>``, and exit status 1; a Python traceback is kept for bugs only.
Command-line syntax errors stay argparse's (usage + one line, status 2); a run stopped by a preemption
signal after saving exits with status 75 (see :mod:`eat.train.preempt`).

    from eat.cli import cli_main

    @cli_main
    def main(argv: list[str] | None = None) -> None:
        ...

What counts as a user-facing error is :func:`user_errors`: the package's own error types (all
raised with a message naming the file or key), ``ValueError`` (the library's argument checks), and
``OSError`` (formatted as ``<file>: <strerror>``). ``UnicodeDecodeError`` is a ``ValueError``; the package's
readers of text files (configs, manifests, label files) turn it into a message naming the file first.
Ctrl-C ends with ``error: interrupted`` and status 130.
"""

from __future__ import annotations

import errno
import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from safetensors import SafetensorError

from eat.audio.io import AudioError
from eat.data.loaders import BadDataError
from eat.train.checkpoint import CheckpointError

F = TypeVar("F", bound=Callable[..., Any])


class UsageError(Exception):
    """A tool's inputs or output folder cannot be used; ``str(err)`` names the file or option."""


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types :func:`cli_main` reports in one line."""
    return (UsageError, ValueError, OSError, FloatingPointError, SafetensorError, BadDataError, CheckpointError,
            AudioError)


def format_error(err: BaseException) -> str:
    """``err`` as one line: ``<file>: <reason>`` for OS errors, else the first line of its message."""
    if isinstance(err, OSError) and err.strerror:
        where = err.filename if err.filename is not None else None
        reason = err.strerror
        if err.errno == errno.ENOSPC:
            reason = "no space left on device"
        if isinstance(err, FileExistsError) and where is not None and Path(where).exists():
            kind = "a file" if Path(where).is_file() else "a folder"
            reason = f"already exists as {kind}"
        return f"{where}: {reason}" if where is not None else reason
    text = str(err).strip()
    if isinstance(err, UnicodeDecodeError):
        return f"not UTF-8 text ({err.reason} at byte {err.start})"
    if err.__class__.__name__ == "SafetensorError" and ("No space left" in text or "code: 28" in text):
        return "cannot write: no space left on device"
    first = text.splitlines()[0] if text else type(err).__name__
    return first


def fail(message: str) -> None:
    """Exit with ``error: <message>`` (one line) and status 1."""
    sys.exit(f"error: {' '.join(message.split())}" if "\n" in message else f"error: {message}")


def cli_main(fn: F) -> F:
    """Run a ``main`` inside the error boundary (see the module docstring)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            sys.exit(130)
        except user_errors() as e:
            fail(format_error(e))

    return wrapper  # type: ignore[return-value]

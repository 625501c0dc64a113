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

What counts as a user-facing error is the tuple :data:`USER_ERRORS`: the package's own error types (all
raised with a message naming the file or key), ``ValueError`` (the library's argument checks), and
``OSError`` (formatted as ``<file>: <strerror>``). ``UnicodeDecodeError`` is a ``ValueError``; readers of
text files turn it into a message naming the file (see :func:`read_text`).
"""

from __future__ import annotations

import errno
import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class UsageError(Exception):
    """A tool's inputs or output folder cannot be used; ``str(err)`` names the file or option."""


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types :func:`cli_main` reports in one line."""
    from safetensors import SafetensorError

    from eat.data.loaders import BadDataError
    from eat.train.checkpoint import CheckpointError

    return (UsageError, ValueError, OSError, FloatingPointError, SafetensorError, BadDataError, CheckpointError)


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
            sys.exit("error: interrupted")
        except user_errors() as e:
            fail(format_error(e))

    return wrapper  # type: ignore[return-value]


def read_text(path: str | os.PathLike, what: str = "") -> str:
    """The UTF-8 text of ``path``; missing, unreadable or non-UTF-8 files raise :class:`UsageError`
    naming the file (and ``what`` it should be)."""
    label = f"{path}" + (f" ({what})" if what else "")
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{label}: file not found") from None
    except IsADirectoryError:
        raise UsageError(f"{label}: is a folder, not a file") from None
    except UnicodeDecodeError as e:
        raise UsageError(f"{label}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise UsageError(f"{label}: cannot read ({e.strerror or e})") from None


def output_dir(path: str | os.PathLike, what: str = "--out") -> Path:
    """Create the output folder ``path`` (and its parents); a file in the way raises :class:`UsageError`."""
    p = Path(path)
    for q in (p, *p.parents):
        if q.exists() and not q.is_dir():
            raise UsageError(f"{what} {p}: {q} is a file, not a folder")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"{what} {p}: cannot create ({e.strerror or e})") from None
    return p

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

import contextlib
import errno
import functools
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from safetensors import SafetensorError

from eat.audio.io import AudioError
from eat.data.loaders import BadDataError
from eat.train.checkpoint import CheckpointError

F = TypeVar("F", bound=Callable[..., Any])


class UsageError(Exception):
    """A tool's inputs or output folder cannot be used; ``str(err)`` names the file or option."""


def check_workers(value: int, option: str = "--workers") -> int:
    """The check of every tool's ``--workers``: a whole number >= 0, where 0 does the work in the tool's own
    process (no worker threads or processes); a negative one is a :class:`UsageError` naming the option."""
    if value < 0:
        raise UsageError(f"{option}: must be >= 0 (0: no worker threads or processes), got {value}")
    return value


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


@contextlib.contextmanager
def about(where: str | Path) -> Iterator[None]:
    """Name ``where`` (a file, an option, ``--a FILE / --b FILE``) in a user error raised inside that does
    not name it already: ``with about(path): check(read(path))`` turns "features must be (N, D)" into
    ``<where>: features must be (N, D)``. Bugs (other exception types) pass through untouched."""
    try:
        yield
    except user_errors() as e:
        message = format_error(e)
        if str(where) in message:
            raise
        raise UsageError(f"{where}: {message}") from None


def fail(message: str) -> None:
    """Exit with ``error: <message>`` (one line) and status 1."""
    sys.exit(f"error: {' '.join(message.split())}" if "\n" in message else f"error: {message}")


def end_progress_bars() -> None:
    """Close the progress bars (tqdm) an exception left open, each ending with its last state and a newline,
    so that the error line that follows is a line of its own, in a terminal and in a log file (an open
    bar's line ends in ``\r``, and the error was printed onto it)."""
    try:
        from tqdm import tqdm
    except ImportError:
        return
    for bar in list(getattr(tqdm, "_instances", ())):
        try:
            bar.leave = True  # where it stopped is part of the story
            bar.close()
        except Exception:  # noqa: BLE001 - a bar that cannot close must not hide the error
            pass


def cli_main(fn: F) -> F:
    """Run a ``main`` inside the error boundary (see the module docstring)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SystemExit as e:
            if isinstance(e.code, str):  # sys.exit("error: ...") from inside the tool
                end_progress_bars()
            raise
        except KeyboardInterrupt:
            end_progress_bars()
            print("error: interrupted", file=sys.stderr)
            sys.exit(130)
        except user_errors() as e:
            end_progress_bars()
            fail(format_error(e))

    return wrapper  # type: ignore[return-value]

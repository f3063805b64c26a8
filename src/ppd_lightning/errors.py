"""The package's user-facing errors and the one handler every command line uses.

A *user error* is a problem with what the user handed in (a file, a folder layout, a config key, an
argument) or with the machine (a full disk), not a bug. Every such error the package raises is a
:class:`PPDError`; the commands (``train.py``, ``evaluate.py``, ``python -m ppd_lightning.predict``,
``python -m ppd_lightning.data.make_shards``) print it as one line, ``error: <message>``, on stderr and
exit with status 1. ``PPD_TRACEBACK=1`` shows the full traceback instead. Anything else (a ``ValueError``
from a wrong call inside the package, an ``IndexError``, an error inside torch) is a bug and keeps its
traceback.

The classes, each a :class:`PPDError` and a subclass of the built-in exception a caller would catch:

- :class:`InputError` (``ValueError``): a file's content, an argument or a layout is not what was expected;
  :class:`ConfigError` names a config key, :class:`CheckpointError` a weights file. The data and evaluation
  code define their own subclasses (``SampleError``, ``RawDataError``, ``UnsafeNameError``, ...).
- :class:`MissingFileError` (``FileNotFoundError``): a file or folder the user named does not exist.
- :class:`DivergenceError` (``RuntimeError``): training diverged.
- :class:`DiskFullError` (``OSError``): a write failed because the disk or quota is full.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

__all__ = [
    "TRACEBACK_ENV",
    "CheckpointError",
    "ConfigError",
    "DiskFullError",
    "DivergenceError",
    "InputError",
    "MissingFileError",
    "PPDError",
    "exit_on_user_error",
    "is_user_error",
    "one_line",
    "run_main",
]

TRACEBACK_ENV = "PPD_TRACEBACK"
DISK_FULL_ERRNOS = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


class PPDError(Exception):
    """Base of the package's own errors: the message names the file or key and what was expected."""


class InputError(PPDError, ValueError):
    """What was handed in (a file's content, an argument, a folder layout) is not what was expected."""


class ConfigError(InputError):
    """A config value of the wrong type or out of range; the message names the key."""


class CheckpointError(InputError):
    """A weights or checkpoint file that cannot be loaded; the message names the file."""


class MissingFileError(PPDError, FileNotFoundError):
    """A file or folder the user named does not exist; the message names it."""


class DivergenceError(PPDError, RuntimeError):
    """Training diverged: too many non-finite losses in a row, or the model predicts non-finite depth."""


class DiskFullError(PPDError, OSError):
    """A write failed because the disk (or quota) is full; the message names the path."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


def is_user_error(exc: BaseException) -> bool:
    """One of the package's errors, or a full disk (raised by any writer, ours or a library's)."""
    return isinstance(exc, PPDError) or is_disk_full(exc)


def one_line(exc: BaseException) -> str:
    """The error as one line: its message (for an error a DataLoader worker re-raised, the message at the
    end of the worker's traceback that torch puts into it)."""
    if is_disk_full(exc) and not isinstance(exc, DiskFullError):
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}disk full (no space left on device)"
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if len(lines) > 1 and lines[0].startswith("Caught ") and "Original Traceback" in text:
        last = lines[-1]  # "SomeError: message", the worker's own exception
        return last.split(": ", 1)[1] if ": " in last else last
    if not lines:
        return type(exc).__name__
    joined = lines[0]
    for ln in lines[1:]:  # a message laid out on several lines (e.g. a benchmark layout) becomes one line
        joined += (" " if joined.endswith((".", ":", ";", ",")) else "; ") + ln
    return joined


def _wants_traceback() -> bool:
    return os.environ.get(TRACEBACK_ENV, "").strip().lower() not in ("", "0", "false", "no")


@contextlib.contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Around a command's body: a user error -> ``error: <one line>`` on stderr and ``SystemExit(1)``,
    unless ``PPD_TRACEBACK=1``. Works inside a Hydra task function (which would otherwise print its
    own traceback); other exceptions pass through untouched."""
    try:
        yield
    except Exception as exc:
        if _wants_traceback() or not is_user_error(exc):
            raise
        sys.stderr.write(f"error: {one_line(exc)}\n")
        sys.stderr.flush()
        raise SystemExit(1) from None


def run_main(main: Callable[..., int | None], *args: Any) -> int:
    """``sys.exit(run_main(main))`` in a ``__main__`` block: main's exit status, or 1 on a user error."""
    with exit_on_user_error():
        return main(*args) or 0
    return 1  # pragma: no cover - exit_on_user_error raises SystemExit

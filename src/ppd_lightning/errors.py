"""The package's user-facing errors and the one handler every command line uses.

A *user error* is a problem with what the user handed in (a file, a folder layout, a config key, a full
disk), not a bug: the commands (``train.py``, ``evaluate.py``, ``python -m ppd_lightning.predict``,
``python -m ppd_lightning.data.make_shards``) print it as one line, ``error: <message>``, on stderr and exit
with status 1. ``PPD_TRACEBACK=1`` shows the full traceback instead.

User errors are the subclasses of :class:`PPDError`, every other error class the package defines (the
data and evaluation code's: ``SourceError``, ``ShardError``, ``BenchmarkLayoutError``...), a disk-full ``OSError`` and a missing or
forbidden file the user named (``FileNotFoundError``/``PermissionError`` with a file name), and the
``ValueError``/``RuntimeError`` the package raises itself (its own checks, whose messages name the
file or key). Anything else (an ``IndexError`` in our code, an error inside torch) is a bug and keeps its
traceback.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DiskFullError",
    "DivergenceError",
    "PPDError",
    "TRACEBACK_ENV",
    "check_config",
    "exit_on_user_error",
    "is_user_error",
    "one_line",
    "run_main",
]

TRACEBACK_ENV = "PPD_TRACEBACK"
_PACKAGE_DIR = str(Path(__file__).resolve().parent)
_ENTRY_SCRIPTS = ("train.py", "evaluate.py")


class PPDError(Exception):
    """Base of the package's own errors: the message names the file or key and what was expected."""


class CheckpointError(PPDError, ValueError):
    """A checkpoint that cannot be loaded; the message names the file and what was expected."""


class ConfigError(PPDError, ValueError):
    """A config value of the wrong type or out of range; the message names the key."""


class DivergenceError(PPDError, RuntimeError):
    """Training diverged: too many non-finite losses in a row, or the model predicts non-finite depth."""


class DiskFullError(PPDError, OSError):
    """A write failed because the disk (or quota) is full; the message names the path."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


def _package_error_class(exc: BaseException) -> bool:
    """Whether the error's class (or a base of it) is one the package defines: BenchmarkLayoutError,
    UnsafeNameError (evaluation), SourceError, SampleError, ShardError, NoReadableSamplesError (data), ...
    Found by module, so this module imports none of them and a moved class stays covered."""
    return any(
        c.__module__ == "ppd_lightning" or c.__module__.startswith("ppd_lightning.")
        for c in type(exc).__mro__
        if c is not BaseException and issubclass(c, BaseException)
    )


def _is_package_file(filename: str) -> bool:
    filename = os.path.abspath(filename)
    return filename.startswith(_PACKAGE_DIR + os.sep) or os.path.basename(filename) in _ENTRY_SCRIPTS


def _raised_by_package(exc: BaseException) -> bool:
    """Whether the innermost frame of the traceback is the package's code (or an entry script); for an
    error a DataLoader worker re-raised, the innermost frame of the worker's traceback in its message."""
    worker_frames = (
        re.findall(r'File "([^"]+)", line \d+', str(exc)) if "Original Traceback" in str(exc) else []
    )
    if worker_frames:
        return _is_package_file(worker_frames[-1])
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return _is_package_file(tb.tb_frame.f_code.co_filename)


def _unwrap(exc: BaseException) -> BaseException:
    """Hydra's ``instantiate`` wraps what the constructor raised; the cause is the error."""
    seen = 0
    while type(exc).__name__ == "InstantiationException" and exc.__cause__ is not None and seen < 10:
        exc, seen = exc.__cause__, seen + 1
    return exc


def is_user_error(exc: BaseException) -> bool:
    exc = _unwrap(exc)
    if isinstance(exc, PPDError) or _package_error_class(exc):
        return True
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return exc.filename is not None or _raised_by_package(exc)
    return isinstance(exc, (ValueError, RuntimeError)) and _raised_by_package(exc)


def one_line(exc: BaseException) -> str:
    """The error as one line: its message (the last line of a DataLoader worker's re-raised traceback)."""
    exc = _unwrap(exc)
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC and not isinstance(exc, DiskFullError):
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}disk full (no space left on device)"
    text = str(exc).strip()
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}"
    if isinstance(exc, KeyError) and exc.args:
        text = str(exc.args[0])
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if len(lines) > 1 and lines[0].startswith("Caught ") and "Original Traceback" in text:
        last = lines[-1]  # "SomeError: message" from the worker's traceback
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


# --- config checks ---------------------------------------------------------------------------------


def _get(cfg: Mapping, key: str) -> tuple[bool, Any]:
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _describe(v: Any) -> str:
    return repr(v) if isinstance(v, str) else f"{v!r} ({type(v).__name__})"


def check_config(cfg: Mapping, spec: Mapping[str, tuple[str, float | None]]) -> None:
    """Check the types (and lower bounds) of config keys that the code compares or computes with.

    ``spec``: ``{"data.batch_size": ("int", 1), "model.optimizer.lr": ("float", 0), "data.train_size":
    ("size", 1), "trainer.max_steps": ("int", -1), ...}``; kinds ``int``, ``float`` (ints accepted),
    ``size`` (``[H, W]`` of ints), ``int?``/``float?``/``size?`` (``None`` allowed). Keys absent from
    ``cfg`` are skipped. Raises :class:`ConfigError` naming the key, what was expected and what it got."""
    for key, (kind, low) in spec.items():
        present, v = _get(cfg, key)
        if not present:
            continue
        base = kind.rstrip("?")
        if v is None:
            if kind.endswith("?"):
                continue
            raise ConfigError(f"{key}: expected {_expected(base, low)}, got null")
        if base == "int":
            ok = _is_int(v) and (low is None or v >= low)
        elif base == "float":
            ok = (_is_int(v) or isinstance(v, float)) and (low is None or v >= low)
        elif base == "size":
            ok = (
                isinstance(v, Sequence)
                and not isinstance(v, str)
                and len(v) == 2
                and all(_is_int(x) and (low is None or x >= low) for x in v)
            )
        else:  # pragma: no cover - a typo in a spec
            raise ValueError(f"check_config: unknown kind {kind!r} for {key}")
        if not ok:
            raise ConfigError(f"{key}: expected {_expected(base, low)}, got {_describe(v)}")


def _expected(kind: str, low: float | None) -> str:
    bound = f" >= {low}" if low is not None else ""
    return {
        "int": f"an integer{bound}",
        "float": f"a number{bound}",
        "size": f"[H, W] of integers{bound}",
    }[kind]

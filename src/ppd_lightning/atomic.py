"""Atomic file writes, one implementation for the whole package.

Every file a command leaves behind (results, manifests, configs, predictions, pictures, point clouds) is
written to a temporary file in the target's directory, flushed to disk, then renamed over the target: a
reader never sees a half-written file and a crash leaves the previous version (or nothing) in place.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ppd_lightning.errors import DiskFullError

_DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))

__all__ = ["remove_stale_temporaries", "replacing", "write_bytes", "write_json", "write_npy", "write_text"]

# ``.<target name>.<writer pid>.<8 hex>.tmp``, beside the target (see ``replacing``)
_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$")


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, someone else's
        return True
    except OverflowError:
        return False
    return True


def remove_stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporaries ``replacing`` left in ``directory`` (not its subdirectories) when its
    writer was killed (``kill -9``, OOM, power loss): files named like ours whose writer process is gone.
    A temporary of a process still running on this machine is kept (it may be mid-write). Returns the
    deleted paths; a missing directory has none."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for entry in directory.iterdir():
        m = _TEMP_NAME.match(entry.name)
        if m is None or not entry.is_file() or entry.is_symlink():
            continue
        pid = int(m["pid"])
        if pid == os.getpid() or _process_alive(pid):
            continue
        entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


@contextlib.contextmanager
def replacing(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open a temporary file beside ``path`` for binary writing. On a clean exit it is flushed, fsynced
    and renamed over ``path``; on an exception it is deleted and ``path`` is left as it was. A full disk
    (``ENOSPC``, or a full quota) is a :class:`~ppd_lightning.errors.DiskFullError` naming ``path``.

    The temporary file is created exclusively with the umask's permissions (``mkstemp`` would make it
    0600, and every result file owner-only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path)
    try:
        with open(tmp, "xb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno in _DISK_FULL and not isinstance(e, DiskFullError):
            raise DiskFullError(
                e.errno, f"{path}: disk full (no space left on device while writing; {path} left as it was)"
            ) from e
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with replacing(path) as f:
        f.write(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any, sort_keys: bool = False) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=sort_keys) + "\n")


def write_npy(path: str | os.PathLike, array, dtype=np.float32) -> Path:
    buf = io.BytesIO()
    np.save(buf, np.asarray(array, dtype=dtype), allow_pickle=False)
    return write_bytes(path, buf.getvalue())

"""Atomic file writes, one implementation for the whole package.

Every file a command leaves behind (results, manifests, configs, predictions, pictures, point clouds) is
written to a temporary file in the target's directory, flushed to disk, then renamed over the target: a
reader never sees a half-written file and a crash leaves the previous version (or nothing) in place.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

__all__ = ["replacing", "write_bytes", "write_json", "write_npy", "write_text"]


@contextlib.contextmanager
def replacing(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open a temporary file beside ``path`` for binary writing. On a clean exit it is flushed, fsynced
    and renamed over ``path``; on an exception it is deleted and ``path`` is left as it was.

    The temporary file is created exclusively with the umask's permissions (``mkstemp`` would make it
    0600, and every result file owner-only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
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

"""Depth shards as files: plain POSIX tar streams of encoded samples (see :mod:`.codec`).

Reading (:func:`iter_tar_samples`, with truncation detection), atomic writing
(:class:`AtomicShardWriter` on :func:`ppd_lightning.atomic.replacing`, :func:`write_shard_atomic`) and
shard URL expansion (:func:`expand_shard_urls`). Samples here are dicts of member bytes; this module
never decodes them.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ppd_lightning.atomic import replacing
from ppd_lightning.errors import InputError, PPDError


class ShardError(PPDError, OSError):
    """A shard cannot be opened or its tar stream is truncated/corrupt."""


def split_member_name(name: str) -> tuple[str, str]:
    """``"dir/abc.rgb.png"`` -> ``("dir/abc", "rgb.png")`` (key = path up to the basename's first dot)."""
    dirname, base = os.path.split(name)
    if "." not in base:
        return name, ""
    stem, ext = base.split(".", 1)
    return (f"{dirname}/{stem}" if dirname else stem), ext


class _TailReader:
    """File wrapper remembering the total size read and the last 1024 bytes (end-of-archive check)."""

    def __init__(self, fileobj):
        self._f = fileobj
        self.total = 0
        self.tail = b""

    def read(self, size: int = -1) -> bytes:
        data = self._f.read(size)
        self.total += len(data)
        self.tail = (self.tail + data)[-1024:]
        return data

    def drain(self) -> None:
        while self.read(1 << 16):
            pass


def iter_tar_samples(fileobj, url: str = "") -> Iterator[dict[str, Any]]:
    """Stream samples ``{"__key__", "__url__", member: bytes}`` from a tar file object.

    Members of one key must be contiguous (the writer guarantees it). A truncated or corrupt tar
    stream raises :class:`ShardError` after yielding every complete sample before the damage; the
    sample that was being assembled when the damage happened is dropped. Python's ``tarfile``
    silently stops at a stream that ends between members, so the end is checked explicitly: a
    complete tar is a whole number of 512-byte blocks ending with the zero end-of-archive blocks.
    """
    reader = _TailReader(fileobj)
    current: dict[str, Any] | None = None
    try:
        with tarfile.open(fileobj=reader, mode="r|*") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                key, ext = split_member_name(info.name)
                if not ext:
                    continue
                if current is not None and current["__key__"] != key:
                    yield current  # complete: the next key's header has been read
                    current = None
                f = tar.extractfile(info)
                data = f.read() if f is not None else b""
                if len(data) != info.size:
                    raise ShardError(f"{url}: member {info.name} is truncated")
                if current is None:
                    current = {"__key__": key, "__url__": url}
                current[ext] = data
        reader.drain()
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        if isinstance(exc, ShardError):
            raise
        raise ShardError(f"{url}: corrupt or truncated tar ({type(exc).__name__}: {exc})") from None
    if reader.total % 512 or len(reader.tail) < 1024 or reader.tail.count(0) != 1024:
        raise ShardError(
            f"{url}: truncated tar (ends after {reader.total} bytes without end-of-archive blocks)"
        )
    if current is not None:
        yield current


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o444
    info.mtime = 0  # deterministic bytes: identical inputs give identical shards
    info.uname = info.gname = ""
    return info


class _Aborted(Exception):
    """Handed to :func:`~ppd_lightning.atomic.replacing` to make it drop the temporary file."""


class AtomicShardWriter:
    """Stream encoded samples into an uncompressed POSIX tar that appears under ``path`` only when
    complete.

    Built on :func:`ppd_lightning.atomic.replacing`: samples go to its temporary file beside ``path``
    (same directory, so the final rename is atomic; :attr:`tmp`). :meth:`commit` ends the tar and lets
    ``replacing`` flush, fsync and rename it into place. :meth:`abort`, an exception inside a ``with``
    block, or leaving the block without :meth:`commit` hands ``replacing`` the exception, which
    deletes the temporary file: a crash never leaves a half-written shard under the final name, and
    an existing shard at ``path`` is left as it was.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._replacing = replacing(self.path)
        self._fh = self._replacing.__enter__()
        self.tmp = Path(self._fh.name)
        self._open = True
        self.count = 0
        try:
            self._tar = tarfile.open(fileobj=self._fh, mode="w", format=tarfile.PAX_FORMAT)  # noqa: SIM115
        except BaseException as exc:
            self._finish(exc)
            raise

    def _finish(self, exc: BaseException | None) -> None:
        """Leave ``replacing``: rename into place when ``exc`` is None, else delete the temporary file
        (an error of ``replacing`` itself propagates)."""
        self._open = False
        if exc is None:
            self._replacing.__exit__(None, None, None)
        else:
            self._replacing.__exit__(type(exc), exc, exc.__traceback__)

    def _check_open(self) -> None:
        if not self._open:
            raise ValueError(f"shard writer for {self.path} is already committed or aborted")

    def write(self, sample: dict[str, bytes]) -> None:
        self._check_open()
        key = sample["__key__"]
        for member, data in sample.items():
            if member.startswith("__"):
                continue
            self._tar.addfile(_tarinfo(f"{key}.{member}", len(data)), io.BytesIO(data))
        self.count += 1

    def commit(self) -> int:
        """Finish the tar, fsync and rename it into place; returns its size in bytes."""
        self._check_open()
        try:
            self._tar.close()  # the end-of-archive blocks
        except BaseException as exc:
            self._finish(exc)
            raise
        self._finish(None)
        return self.path.stat().st_size

    def abort(self, exc: BaseException | None = None) -> None:
        """Drop the temporary file (nothing happens when already committed or aborted)."""
        if self._open:
            self._finish(exc if exc is not None else _Aborted(f"{self.path}: shard write aborted"))

    def __enter__(self) -> AtomicShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.abort(exc)  # not committed (exception or early exit): drop the partial tar


def stale_temporaries(out_dir: str | Path, name_glob: str) -> list[Path]:
    """Temporary files that killed atomic writers left in ``out_dir`` for targets matching
    ``name_glob`` (e.g. ``"hypersim-*.tar"``, ``"manifest.json"``).

    Matches the temporaries of :func:`ppd_lightning.atomic.replacing` (``.<name>.<pid>.<hex>.tmp``),
    which :class:`AtomicShardWriter` uses. Only delete them while no other writer works in ``out_dir``
    (``make_shards`` holds the directory lock).
    """
    return sorted(p for p in Path(out_dir).glob(f".{name_glob}.*.tmp") if p.is_file())


def write_shard_atomic(path: str | Path, samples: list[dict[str, bytes]]) -> int:
    """Write encoded samples to ``path`` atomically (see :class:`AtomicShardWriter`); returns bytes."""
    with AtomicShardWriter(path) as writer:
        for sample in samples:
            writer.write(sample)
        return writer.commit()


def expand_shard_urls(urls: str | list[str] | tuple[str, ...]) -> list[str]:
    """Expand a brace pattern (``dir/shard-{000000..000009}.tar``), a directory or a list of either.

    A directory expands to its ``*.tar`` files in sorted order. Raises ``InputError`` when nothing
    is left, naming the pattern.
    """
    import braceexpand  # a webdataset dependency; imported lazily to keep this module light

    items = [urls] if isinstance(urls, str) else list(urls)
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise InputError(f"shard urls must be strings, got {type(item).__name__}: {item!r}")
        if "://" not in item and not item.startswith("pipe:") and os.path.isdir(item):
            out.extend(sorted(str(p) for p in Path(item).glob("*.tar")))
        else:
            out.extend(braceexpand.braceexpand(os.path.expanduser(item)))
    if not out:
        raise InputError(f"shard pattern {urls!r} expands to no shards")
    return out

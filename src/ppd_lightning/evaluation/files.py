"""Read-only access to the files of a benchmark root: a folder or a ``.tar`` (compressed or not).

Generic: nothing here knows a benchmark layout (that is :mod:`ppd_lightning.evaluation.datasets`).
Every member name is confined to its root (:func:`confine_name`), since names become output paths.
"""

from __future__ import annotations

import os
import re
import tarfile
from pathlib import Path

from ppd_lightning.errors import InputError, MissingFileError

__all__ = ["BenchmarkFiles", "UnsafeNameError", "confine_name"]


class UnsafeNameError(InputError):
    """A benchmark member name (or a name derived from one) that would leave its root."""


def confine_name(name: str, what: str = "name") -> str:
    """``name`` as a normalised relative POSIX path that stays inside its root.

    Leading ``./``, repeated and trailing ``/`` and inner ``.`` parts are folded; ``..`` parts are
    resolved textually. Raises :class:`UnsafeNameError` naming ``name`` when it is absolute (``/x``,
    ``C:/x``, ``\\x``), climbs out of the root, or is empty.
    """
    raw = str(name)
    text = raw.replace("\\", "/")
    if text.startswith("/") or re.match(r"^[A-Za-z]:", text):
        raise UnsafeNameError(f"{what} {raw!r} is an absolute path; only names relative to the root are read")
    parts: list[str] = []
    for part in text.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise UnsafeNameError(f"{what} {raw!r} climbs out of its root ('..'); refused")
            parts.pop()
            continue
        parts.append(part)
    if not parts:
        raise UnsafeNameError(f"{what} {raw!r} is empty after normalisation")
    return "/".join(parts)


class BenchmarkFiles:
    """Read-only access to the files of a folder or of an uncompressed/compressed ``.tar``.

    Names are POSIX paths relative to the root (a leading ``./`` in a tar is dropped). A tar is indexed
    once: an uncompressed one by byte range, read with a plain file handle per process (safe in
    DataLoader workers); a compressed one through one ``tarfile`` handle per process, which keeps its
    member table, so a read does not rescan the archive.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).expanduser()
        self._tar_index: dict[str, tuple[int, int]] | None = None
        self._compressed = False
        self._handle: tuple[int, object] | None = None
        if self.root.is_dir():
            names = []
            for dirpath, _, files in os.walk(self.root):
                rel = Path(dirpath).relative_to(self.root).as_posix()
                names.extend(f if rel == "." else f"{rel}/{f}" for f in files)
            self._names = sorted(names)
        elif self.root.is_file() and tarfile.is_tarfile(self.root):
            try:  # uncompressed: members are read by byte range
                with tarfile.open(self.root, "r:") as tf:
                    members = tf.getmembers()
            except tarfile.ReadError:
                self._compressed = True
                with tarfile.open(self.root) as tf:
                    members = tf.getmembers()
            files = [m for m in members if m.isfile()]
            self._tar_index = {self._norm(m.name): (m.offset_data, m.size) for m in files}
            if self._compressed:  # extracted by the name as stored, e.g. "./a.png"
                self._member_names = {self._norm(m.name): m.name for m in files}
            self._names = sorted(self._tar_index)
        else:
            raise MissingFileError(f"{self.root}: no such folder or tar archive")
        self._set = set(self._names)

    def _norm(self, name: str) -> str:
        """The member name as a clean relative POSIX path (``./`` and ``a/./b``, ``a//b`` folded).

        A name that is absolute or climbs out of the archive (``../x``, ``a/../../x``) is refused:
        names become output paths (panels, predictions, spreads) and prediction paths.
        """
        return confine_name(name, f"member of {self.root}")

    @property
    def names(self) -> list[str]:
        return self._names

    def exists(self, name: str) -> bool:
        return name in self._set

    def read(self, name: str) -> bytes:
        if self._tar_index is None:
            try:
                return (self.root / name).read_bytes()
            except FileNotFoundError:
                raise MissingFileError(f"{self.root / name}: no such file") from None
        if name not in self._tar_index:
            raise MissingFileError(f"{name}: no such member in {self.root}")
        if self._handle is None or self._handle[0] != os.getpid():
            handle = tarfile.open(self.root) if self._compressed else open(self.root, "rb")  # noqa: SIM115
            self._handle = (os.getpid(), handle)  # one per process, closed with the process
        fh = self._handle[1]
        if self._compressed:
            return fh.extractfile(self._member_names[name]).read()
        offset, size = self._tar_index[name]
        fh.seek(offset)
        return fh.read(size)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_handle"] = None
        return state

"""Raw dataset layouts that ``make_shards`` converts, plus the embedded synthetic world.

Each source module exposes ``NAME``, ``list_items(root, **options) -> list`` (a deterministic,
sorted list of small picklable items, one per sample) and ``load_item(root, item, **options) ->
RawSample``. ``load_item`` raises :class:`SourceError` naming the offending file.
Modules are imported lazily so that importing this package stays cheap.
"""

from __future__ import annotations

import importlib
import re
from types import ModuleType

SOURCES = ("synthetic", "hypersim", "vkitti2", "tartanair", "urbansyn", "unrealstereo4k", "folder")


class SourceError(ValueError):
    """A raw source file is missing, unreadable or not what the layout promises."""


def get_source(name: str) -> ModuleType:
    if name not in SOURCES:
        raise ValueError(f"unknown source {name!r}; expected one of {SOURCES}")
    return importlib.import_module(f"{__name__}.{name}")


def sanitize_key(text: str) -> str:
    """Make a tar-safe sample key: letters, digits, ``_`` and ``-`` only (no dots or slashes)."""
    return re.sub(r"[^A-Za-z0-9_\-]+", "_", text).strip("_")

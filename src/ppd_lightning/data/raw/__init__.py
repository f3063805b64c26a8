"""Raw datasets: the official layouts that ``make_shards`` converts, plus the embedded synthetic world.
("Raw" is the word for these; "sources" are the shard sets a DataModule mixes; ``BenchmarkFiles`` reads
benchmarks; ``WeightsLike`` is what a weights reader takes.)

Each raw-dataset module exposes ``NAME``, ``list_items(root, **options) -> list`` (a deterministic,
sorted list of small picklable items, one per sample) and ``load_item(root, item, **options) ->
RawSample``. ``load_item`` raises :class:`RawDataError` naming the offending file.
Modules are imported lazily so that importing this package stays cheap.
"""

from __future__ import annotations

import importlib
import re
from types import ModuleType

from ppd_lightning.errors import ConfigError, InputError

RAW_DATASETS = ("synthetic", "hypersim", "vkitti2", "tartanair", "urbansyn", "unrealstereo4k", "folder")


class RawDataError(InputError):
    """A raw dataset file is missing, unreadable or not what the layout promises."""


def get_raw_dataset(name: str) -> ModuleType:
    if name not in RAW_DATASETS:
        raise ConfigError(f"unknown raw dataset {name!r}; expected one of {RAW_DATASETS}")
    return importlib.import_module(f"{__name__}.{name}")


def sanitize_key(text: str) -> str:
    """Make a tar-safe sample key: letters, digits, ``_`` and ``-`` only (no dots or slashes)."""
    return re.sub(r"[^A-Za-z0-9_\-]+", "_", text).strip("_")

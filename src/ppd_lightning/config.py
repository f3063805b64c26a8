"""Typed configs: dataclass schemas (OmegaConf structured configs) checked against a composed Hydra config.

The YAML files in ``conf/`` hold the values; a schema holds the types and bounds of the keys the code
computes with. :func:`check` merges a composed config onto its schema and turns every mismatch into one
:class:`~ppd_lightning.errors.ConfigError` naming the key and what was expected
(``data.batch_size: expected an integer >= 1, got 'abc'``); :func:`typed` also returns the schema's
dataclass instance, so code reads ``cfg.num_workers`` instead of ``cfg.get("num_workers", 0)``.

The check runs when a command starts, inside its error handler, not while Hydra composes: Hydra reports
composition errors in its own multi-line format before any handler of ours runs.

Bounds and shapes are field metadata: ``field(default=MISSING, metadata=minimum(1))``, ``metadata=size()``
(``[H, W]`` of integers >= 1). A schema may leave keys undeclared (``extras=True``): the instantiated
groups (``data``, ``model``, ``trainer``) have keys of their own that their constructors check.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf, ValidationError
from omegaconf.errors import ConfigKeyError

from ppd_lightning.errors import ConfigError

__all__ = ["check", "minimum", "size", "typed"]

T = TypeVar("T")


def minimum(value: float) -> dict:
    """Field metadata: the value must be >= ``value``."""
    return {"min": value}


def size(low: int = 1) -> dict:
    """Field metadata: ``[H, W]``, two integers >= ``low``."""
    return {"size": 2, "min": low}


def _unstructured(node: DictConfig) -> None:
    OmegaConf.set_struct(node, False)
    for key in node:
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            _unstructured(child)


def _describe(value: Any) -> str:
    return repr(value) if isinstance(value, str) else f"{value!r} ({type(value).__name__})"


def _hint(owner: type, f: dataclasses.Field) -> Any:
    return typing.get_type_hints(owner)[f.name]  # resolves string annotations too


def _dataclass_in(annotation: Any) -> type | None:
    for arg in (annotation, *typing.get_args(annotation)):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def _field_at(schema: type, key: str) -> tuple[dataclasses.Field, type] | None:
    """The schema field a dotted key names and the dataclass holding it (None: an undeclared key)."""
    cls: type | None = schema
    found = None
    for part in key.split("."):
        if cls is None:
            return None
        f = next((f for f in dataclasses.fields(cls) if f.name == part), None)
        if f is None:
            return None
        found, cls = (f, cls), _dataclass_in(_hint(cls, f))
    return found


def _expected(f: dataclasses.Field, owner: type) -> str:
    annotation = _hint(owner, f)
    args = typing.get_args(annotation)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), annotation) if optional else annotation
    low = f.metadata.get("min")
    bound = f" >= {low}" if low is not None else ""
    if f.metadata.get("size"):
        text = f"[H, W] of integers{bound}"
    elif base is bool:
        text = "true or false"
    elif base is int:
        text = f"an integer{bound}"
    elif base is float:
        text = f"a number{bound}"
    elif base is str:
        text = "a string"
    elif typing.get_origin(base) in (list, tuple):
        text = "a list"
    elif typing.get_origin(base) in (dict, Mapping) or dataclasses.is_dataclass(base):
        text = "a mapping"
    else:
        text = str(base)
    return f"{text} or null" if optional else text


def _error(schema: type, cfg: Any, key: str) -> ConfigError:
    at = _field_at(schema, key)
    present = OmegaConf.select(cfg, key, default="<missing>", throw_on_missing=False)
    got = "nothing (the key is missing)" if present == "<missing>" else _describe(_plain(present))
    if at is None:
        return ConfigError(f"{key}: not a known key (got {got})")
    return ConfigError(f"{key}: expected {_expected(*at)}, got {got}")


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _check_bounds(root: type, schema: type, merged: DictConfig, cfg: Any, prefix: str = "") -> None:
    for f in dataclasses.fields(schema):
        key = f"{prefix}{f.name}"
        if f.name not in merged or OmegaConf.is_missing(merged, f.name):
            continue
        value = merged[f.name]
        nested = _dataclass_in(_hint(schema, f))
        if nested is not None and isinstance(value, DictConfig):
            _check_bounds(root, nested, value, cfg, f"{key}.")
            continue
        if value is None or not f.metadata:
            continue
        value = _plain(value)
        low, n = f.metadata.get("min"), f.metadata.get("size")
        items = value if n else [value]
        if n and (not isinstance(value, list) or len(value) != n):
            raise _error(root, cfg, key)
        if low is not None and any(v < low for v in items):
            raise _error(root, cfg, key)


def check(schema: type, cfg: Any, extras: bool = False) -> DictConfig:
    """``cfg`` merged onto ``schema``: typed values, or a :class:`ConfigError` naming the first key whose
    value has the wrong type, breaks a bound, or (unless ``extras``) is not in the schema."""
    base = OmegaConf.structured(schema)
    if extras:
        _unstructured(base)
    try:
        merged = OmegaConf.merge(base, cfg)
    except (ValidationError, ConfigKeyError) as e:
        key = re.sub(r"\[\d+\]$", "", str(e.full_key or ""))  # an element of a list: name the list
        raise _error(schema, cfg, key) from None
    _check_bounds(schema, schema, merged, cfg)
    return merged


def typed(schema: type[T], cfg: Any) -> T:
    """The checked config as an instance of ``schema`` (every key declared, every required one given)."""
    merged = check(schema, cfg)
    missing = OmegaConf.missing_keys(merged)
    if missing:
        key = sorted(missing)[0]
        at = _field_at(schema, key)
        raise ConfigError(f"{key}: missing (expected {_expected(*at) if at else 'a value'})")
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


"""Our training checkpoints, read without Lightning: how they are recognised, their recorded training
metadata, and the DiT weights in them (EMA or raw).

A checkpoint written by :class:`~ppd_lightning.training.module.PPDLightningModule` carries
``checkpoint[METADATA_KEY]`` = ``{"format": 1, "train_size": [H, W] or None, "variant": ..., "dit": {...}}``
(the frozen encoder's spec is ``checkpoint["semantic_encoder"]``). Checkpoints saved before the metadata
was recorded (format 0) are recognised by Lightning's ``hyper_parameters`` holding ``dit``; their training
crop size is unknown, so :func:`training_area` gives None for them and callers fall back to the released
working area (pass an explicit area for a model trained at another resolution).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from ppd_lightning.errors import CheckpointError
from ppd_lightning.weights.files import StateSource, as_state_dict, load_torch_file, read_object, take_prefix

__all__ = [
    "FORMAT",
    "METADATA_KEY",
    "checkpoint_format",
    "dit_state",
    "is_training_checkpoint",
    "read_checkpoint",
    "training_area",
    "training_metadata",
]

#: where our checkpoints record what they were trained with, and the version of that record
METADATA_KEY = "ppd_lightning"
FORMAT = 1


def training_metadata(dit: Mapping, train_size: Sequence[int] | None) -> dict:
    """The record a training checkpoint carries under ``METADATA_KEY``: the DiT's constructor arguments
    (its variant included) and the training crop ``[H, W]`` (None before any training batch)."""
    size = None if train_size is None else [int(train_size[0]), int(train_size[1])]
    return {"format": FORMAT, "train_size": size, "variant": dit.get("variant", "cascade"), "dit": dict(dit)}


def is_training_checkpoint(obj: object) -> bool:
    """One of ours: the explicit metadata entry, or (format 0, saved before it existed) Lightning's
    ``hyper_parameters`` with our module's ``dit`` argument next to a ``state_dict``."""
    if not isinstance(obj, Mapping):
        return False
    if isinstance(obj.get(METADATA_KEY), Mapping):
        return True
    hp = obj.get("hyper_parameters")
    return isinstance(obj.get("state_dict"), Mapping) and isinstance(hp, Mapping) and "dit" in hp


def checkpoint_format(ckpt: Mapping) -> int:
    """0 for a checkpoint saved before the metadata was recorded, else the recorded format."""
    meta = ckpt.get(METADATA_KEY)
    return int(meta.get("format", 0)) if isinstance(meta, Mapping) else 0


def _check(ckpt: object, name: str) -> dict:
    hp = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    sd = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict) or not isinstance(hp, dict) or not isinstance(hp.get("dit"), dict):
        raise CheckpointError(
            f"{name}: not a ppd-lightning training checkpoint (expected a dict with 'state_dict' and "
            "'hyper_parameters' holding 'dit'; for released weights use --dit/--semantics or official.dit=)"
        )
    if not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{name}: 'state_dict' holds values that are not tensors")
    fmt = checkpoint_format(ckpt)
    if fmt > FORMAT:
        raise CheckpointError(
            f"{name}: '{METADATA_KEY}' format {fmt} is newer than this ppd-lightning reads ({FORMAT}); "
            "update ppd-lightning"
        )
    meta = ckpt.get(METADATA_KEY)
    size = meta.get("train_size") if isinstance(meta, Mapping) else None
    if size is not None and not (
        isinstance(size, (list, tuple))
        and len(size) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
    ):
        raise CheckpointError(
            f"{name}: '{METADATA_KEY}.train_size' must be [H, W] of positive ints or null, got {size!r}"
        )
    return ckpt


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """One of our training checkpoints, checked: the file names itself in every error."""
    return _check(load_torch_file(Path(path), map_location=map_location), str(Path(path)))


def training_area(ckpt: Mapping) -> int | None:
    """Pixels per training crop as recorded in the checkpoint (None: not recorded, i.e. saved before
    any training batch, or before the metadata existed)."""
    meta = ckpt.get(METADATA_KEY)
    size = meta.get("train_size") if isinstance(meta, Mapping) else None
    return None if size is None else int(size[0]) * int(size[1])


def dit_state(source: StateSource | Mapping, use_ema: bool = True) -> tuple[dict[str, torch.Tensor], str]:
    """The DiT weights (keys without prefix) of any weight source, and its name for messages:

    - one of our training checkpoints (path or loaded dict): its EMA DiT (``ema_dit.*``) when it has one
      and ``use_ema``, else the raw ``dit.*``;
    - a released ``ppd.pth``, an exported ``.safetensors`` or a DiT state dict: its ``dit.*`` keys (or all
      keys when none has the prefix; other keys next to ``dit.*`` are an error).
    """
    if isinstance(source, Mapping):
        obj, name = source, "<state dict>"
    else:
        obj, name = read_object(source)
    if is_training_checkpoint(obj):
        sd = _check(obj, name)["state_dict"]
        prefix = "ema_dit." if use_ema and any(k.startswith("ema_dit.") for k in sd) else "dit."
        return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}, name
    if isinstance(source, Mapping) and not isinstance(source.get("state_dict"), Mapping):
        sd = dict(source)
    else:
        sd, name = as_state_dict(obj, name)
    return take_prefix(sd, "dit.", name), name

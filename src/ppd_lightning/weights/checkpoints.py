"""Our training checkpoints, read without Lightning: how they are recognised, their recorded training
metadata, the DiT weights in them (EMA or raw), the ready model they rebuild and the DiT export.

A checkpoint written by :class:`~ppd_lightning.training.module.PPDLightningModule` carries
``checkpoint[METADATA_KEY]`` = ``{"format": 1, "train_size": [H, W] or None, "variant": ..., "dit": {...}}``
and the frozen encoder's spec, ``checkpoint["semantic_encoder"]`` (its weights are not stored). The model
is rebuilt from that record and Lightning's ``hyper_parameters``, not by instantiating anything.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from ppd_lightning import atomic
from ppd_lightning.errors import CheckpointError, InputError
from ppd_lightning.flow import TARGET_SHIFT
from ppd_lightning.models.dit import CascadeSPDiT
from ppd_lightning.models.ppd import TRAIN_AREA, PixelPerfectDepth
from ppd_lightning.weights.encoders import build_from_spec
from ppd_lightning.weights.files import StateDict, WeightsLike, as_state_dict, load_torch_file, read_object

__all__ = [
    "FORMAT",
    "METADATA_KEY",
    "dit_state",
    "export_dit",
    "is_training_checkpoint",
    "load_model_from_checkpoint",
    "read_checkpoint",
    "training_area",
    "training_metadata",
]

log = logging.getLogger(__name__)

#: where our checkpoints record what they were trained with, and the version of that record
METADATA_KEY = "ppd_lightning"
FORMAT = 1


def training_metadata(dit: Mapping, train_size: Sequence[int] | None) -> dict:
    """The record a training checkpoint carries under ``METADATA_KEY``: the DiT's constructor arguments
    (its variant included) and the training crop ``[H, W]`` (None before any training batch)."""
    size = None if train_size is None else [int(train_size[0]), int(train_size[1])]
    return {"format": FORMAT, "train_size": size, "variant": dit.get("variant", "cascade"), "dit": dict(dit)}


def is_training_checkpoint(obj: object) -> bool:
    """One of ours: a mapping with the metadata record (a Lightning checkpoint of another program has none)."""
    return isinstance(obj, Mapping) and isinstance(obj.get(METADATA_KEY), Mapping)


def _check(ckpt: object, name: str) -> dict:
    hp = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    sd = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if (
        not is_training_checkpoint(ckpt)
        or not isinstance(sd, dict)
        or not isinstance(hp, dict)
        or not isinstance(hp.get("dit"), dict)
    ):
        raise CheckpointError(
            f"{name}: not a ppd-lightning training checkpoint (expected a dict with '{METADATA_KEY}', "
            "'state_dict' and 'hyper_parameters' holding 'dit'; for released weights use --dit/--semantics "
            "or official.dit=)"
        )
    if not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{name}: 'state_dict' holds values that are not tensors")
    meta = ckpt[METADATA_KEY]
    fmt = meta.get("format")
    if fmt != FORMAT:
        raise CheckpointError(
            f"{name}: '{METADATA_KEY}.format' is {fmt!r}; this ppd-lightning reads format {FORMAT}"
            + (" (the file is newer: update ppd-lightning)" if isinstance(fmt, int) and fmt > FORMAT else "")
        )
    size = meta.get("train_size")
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
    """Pixels per training crop as recorded (None: saved before any training batch)."""
    size = ckpt[METADATA_KEY].get("train_size")
    return None if size is None else int(size[0]) * int(size[1])


def dit_state(source: WeightsLike, use_ema: bool = True) -> StateDict:
    """The DiT weights (keys without prefix) of any weight source:

    - one of our training checkpoints (path or loaded dict): its EMA DiT (``ema_dit.*``) when it has one
      and ``use_ema``, else the raw ``dit.*``;
    - a released ``ppd.pth``, an exported ``.safetensors`` or a DiT state dict: its ``dit.*`` keys (or all
      keys when none has the prefix; other keys next to ``dit.*`` are an error).
    """
    content, name = read_object(source)
    if is_training_checkpoint(content):
        sd = _check(content, name)["state_dict"]
        prefix = "ema_dit." if use_ema and any(k.startswith("ema_dit.") for k in sd) else "dit."
        return StateDict({k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}, name)
    return as_state_dict(content, name).under("dit.")


def load_model_from_checkpoint(
    path: str | os.PathLike,
    use_ema: bool = True,
    map_location: str | torch.device = "cpu",
    encoder_weights: str | None = None,
) -> PixelPerfectDepth:
    """A training checkpoint -> PixelPerfectDepth (EMA weights when present and ``use_ema``), in eval mode;
    what ``PixelPerfectDepth.from_checkpoint`` calls.

    The encoder is rebuilt from the recorded spec (kind, sizes, and the weights file or the demo's random
    seed), from ``encoder_weights`` if given (it must have the recorded kind and sizes). ``infer`` works at
    the recorded training crop's area (a 512x512 stage-1 model at 512x512, the CPU demo at its 48x64), so a
    model is not run at a resolution it never saw unless asked to; a checkpoint saved before any training
    batch records none and works at the released 1024x768 area."""
    ckpt = read_checkpoint(path, map_location)
    hp = ckpt["hyper_parameters"]
    dit_cfg = dict(hp["dit"])
    spec = ckpt.get("semantic_encoder")
    encoder = None
    if dit_cfg.get("variant", "cascade") != "vanilla":
        if not isinstance(spec, Mapping):
            raise CheckpointError(
                f"{path}: no 'semantic_encoder' spec recorded for its {dit_cfg.get('variant', 'cascade')} DiT"
            )
        try:
            encoder = build_from_spec(dict(spec), weights=encoder_weights)
        except (InputError, KeyError) as e:  # a bad file or spec; a bug keeps its traceback
            raise CheckpointError(f"{path}: cannot rebuild its semantic encoder: {e}") from e
        if dit_cfg.get("semantic_dim", 1) is None:  # "follows the encoder" in the run's config
            dit_cfg["semantic_dim"] = encoder.dim_out
    dit = dit_state(ckpt, use_ema).load_into(CascadeSPDiT(**dit_cfg))
    area = training_area(ckpt)
    if area is None:
        area = TRAIN_AREA
        log.warning(
            "%s records no training crop size (saved before any training step): inference defaults to the "
            "released %d-pixel area; pass the area explicitly if it was trained at another resolution",
            path,
            TRAIN_AREA,
        )
    shift = (hp.get("target") or {}).get("shift", TARGET_SHIFT)  # the target shift it was trained with
    model = PixelPerfectDepth(dit, encoder, steps=hp.get("val_steps", 4), area=area, shift=shift)
    return model.to(map_location).eval()


def export_dit(path_in: str | os.PathLike, path_out: str | os.PathLike, use_ema: bool = True) -> Path:
    """Write the (EMA) DiT of a training checkpoint as ``dit.*`` safetensors, loadable by ``load_dit``."""
    from safetensors.torch import save

    sd = dit_state(read_checkpoint(path_in), use_ema).tensors
    return atomic.write_bytes(path_out, save({f"dit.{k}": v.contiguous() for k, v in sd.items()}))

"""Rebuilding a ready model from one of our training checkpoints, and exporting its DiT in the released
key format. No Lightning: the model is built from the checkpoint's recorded hyper-parameters."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from ppd_lightning import atomic
from ppd_lightning.errors import CheckpointError
from ppd_lightning.flow import TARGET_SHIFT
from ppd_lightning.models import CascadeSPDiT, PixelPerfectDepth
from ppd_lightning.models.ppd import TRAIN_AREA
from ppd_lightning.weights.checkpoints import dit_state, read_checkpoint, training_area
from ppd_lightning.weights.encoders import build_from_spec, build_semantic_encoder
from ppd_lightning.weights.files import load_strict

__all__ = ["export_dit", "load_model_from_checkpoint"]

log = logging.getLogger(__name__)


def load_model_from_checkpoint(
    path: str | os.PathLike,
    use_ema: bool = True,
    map_location: str | torch.device = "cpu",
    encoder_weights: str | None = None,
) -> PixelPerfectDepth:
    """A training checkpoint -> PixelPerfectDepth (EMA weights when present and ``use_ema``).

    The frozen encoder's weights are not stored in our checkpoints; its spec is
    (``checkpoint["semantic_encoder"]``: kind ``da2``/``moge2``, sizes, and the weights file or the demo's
    random seed), and the encoder is rebuilt from it, from ``encoder_weights`` if given (the file must
    have the recorded kind and sizes). Checkpoints written before the spec was recorded fall back to the
    run's ``model.encoder`` config. ``infer`` works at the recorded training crop's area by default (a
    512x512 stage-1 model at 512x512, the CPU demo at its 48x64), so a model is not run at a resolution it
    never saw unless asked to; a checkpoint without that record works at the released 1024x768 area."""
    ckpt = read_checkpoint(path, map_location)
    hp = ckpt["hyper_parameters"]
    dit_cfg = dict(hp["dit"])
    spec = ckpt.get("semantic_encoder")
    encoder = None
    needs_encoder = dit_cfg.get("variant", "cascade") != "vanilla"
    try:
        if needs_encoder and isinstance(spec, dict):
            encoder = build_from_spec(spec, weights=encoder_weights)
        elif needs_encoder:
            legacy = dict(hp["encoder"])
            if encoder_weights:
                legacy["weights"] = encoder_weights
            encoder = build_semantic_encoder(**legacy)
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: cannot rebuild its semantic encoder: {e}") from e
    if dit_cfg.get("semantic_dim", 1) is None:  # "follows the encoder" in the run's config
        if encoder is None:
            raise CheckpointError(
                f"{path}: model.dit.semantic_dim is null and no semantic encoder is recorded"
            )
        dit_cfg["semantic_dim"] = encoder.dim_out
    dit = CascadeSPDiT(**dit_cfg)
    sd, _ = dit_state(ckpt, use_ema)
    load_strict(dit, sd, str(path))
    if not dit.uses_semantics:
        encoder = None
    area = training_area(ckpt)
    if area is None:
        area = TRAIN_AREA
        log.warning(
            "%s records no training crop size (saved before any training step, or by an older version): "
            "inference defaults to the released %d-pixel area; pass the area explicitly if it was trained "
            "at another resolution",
            path,
            TRAIN_AREA,
        )
    shift = (hp.get("target") or {}).get("shift", TARGET_SHIFT)  # the target shift it was trained with
    model = PixelPerfectDepth(dit, encoder, steps=hp.get("val_steps", 4), area=area, shift=shift)
    return model.to(map_location).eval()


def export_dit(path_in: str | os.PathLike, path_out: str | os.PathLike, use_ema: bool = True) -> Path:
    """Write the (EMA) DiT of a training checkpoint as ``dit.*`` safetensors, loadable by ``load_dit``."""
    from safetensors.torch import save

    sd, _ = dit_state(read_checkpoint(path_in), use_ema)
    return atomic.write_bytes(path_out, save({f"dit.{k}": v.contiguous() for k, v in sd.items()}))

"""Our checkpoints: atomic writes, safe loading, and export of the DiT in the released key format."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ppd_lightning import atomic
from ppd_lightning.errors import CheckpointError
from ppd_lightning.models import CascadeSPDiT, PixelPerfectDepth
from ppd_lightning.models.ppd import TRAIN_AREA
from ppd_lightning.official import load_strict, load_torch_file
from ppd_lightning.training.encoders import build_from_spec, build_semantic_encoder

#: what Lightning reads when it resumes a fit
RESUMABLE_KEYS = ("pytorch-lightning_version", "state_dict", "optimizer_states", "loops")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes to a temporary file in the target directory, fsyncs, then renames over the target: a run
    killed mid-write leaves the previous checkpoint intact, never a truncated one."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        with atomic.replacing(path) as f:
            torch.save(checkpoint, f)

    def __init__(self, required_keys: tuple[str, ...] = ()):
        super().__init__()
        #: keys a loaded checkpoint must have (``RESUMABLE_KEYS`` for ``trainer.fit(ckpt_path=...)``)
        self.required_keys = tuple(required_keys)

    def load_checkpoint(self, path, map_location=None, weights_only: bool | None = True) -> dict[str, Any]:
        """What ``trainer.fit(ckpt_path=...)`` resumes from: an empty, truncated or foreign file is one
        :class:`CheckpointError` naming it (not Lightning's ``EOFError`` or ``KeyError``)."""
        if weights_only is False:  # asked for explicitly: Lightning's own loader
            return super().load_checkpoint(path, map_location=map_location, weights_only=False)
        ckpt = load_torch_file(path, map_location=map_location if map_location is not None else "cpu")
        missing = [k for k in self.required_keys if not isinstance(ckpt, dict) or k not in ckpt]
        if missing:
            raise CheckpointError(
                f"{path}: not a resumable ppd-lightning training checkpoint (missing {', '.join(missing)}); "
                "use init_dit= to start from weights only"
            )
        return ckpt


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """One of our training checkpoints, checked: the file names itself in every error."""
    path = Path(path)
    ckpt = load_torch_file(path, map_location=map_location)
    hp = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    sd = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict) or not isinstance(hp, dict) or not isinstance(hp.get("dit"), dict):
        raise CheckpointError(
            f"{path}: not a ppd-lightning training checkpoint (expected a dict with 'state_dict' and "
            "'hyper_parameters' holding 'dit'; for released weights use --dit/--semantics or official.dit=)"
        )
    if not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path}: 'state_dict' holds values that are not tensors")
    return ckpt


def dit_state_from_checkpoint(ckpt: dict, use_ema: bool = True) -> tuple[dict, bool]:
    sd = ckpt["state_dict"]
    prefix = "ema_dit." if use_ema and any(k.startswith("ema_dit.") for k in sd) else "dit."
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}, prefix == "ema_dit."


def training_area(ckpt: dict) -> int | None:
    """Pixels per training crop, read off the mean-target map the module accumulates at the training
    resolution (None for a checkpoint saved before any training step)."""
    mean_map = ckpt["state_dict"].get("mean_target_sum")
    if mean_map is None or mean_map.numel() == 0:
        return None
    return int(mean_map.shape[-2] * mean_map.shape[-1])


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
    run's ``model.encoder`` config. ``infer`` works at the checkpoint's training area by default (a
    512x512 stage-1 model at 512x512, the CPU demo at its 48x64), so a model is not run at a resolution it
    never saw unless asked to."""
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
    sd, _ = dit_state_from_checkpoint(ckpt, use_ema)
    load_strict(dit, sd, str(path))
    if not dit.uses_semantics:
        encoder = None
    area = training_area(ckpt) or TRAIN_AREA
    return PixelPerfectDepth(dit, encoder, steps=hp.get("val_steps", 4), area=area).to(map_location).eval()


def export_dit(path_in: str | os.PathLike, path_out: str | os.PathLike, use_ema: bool = True) -> Path:
    """Write the (EMA) DiT of a training checkpoint as ``dit.*`` safetensors, loadable by ``load_dit``."""
    from safetensors.torch import save

    ckpt = read_checkpoint(path_in)
    sd, _ = dit_state_from_checkpoint(ckpt, use_ema)
    return atomic.write_bytes(path_out, save({f"dit.{k}": v.contiguous() for k, v in sd.items()}))

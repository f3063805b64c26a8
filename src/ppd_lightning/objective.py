"""The training objective of the released model, as one pure function of (DiT, encoder, batch, noise, t).

``training_loss`` is what ``PPDLightningModule.training_step`` computes (like SiT's ``training_losses``):
no Lightning, no randomness (the caller draws ``noise`` and ``t``), no file formats. It follows the
release's ``forward_train`` and its datasets' ``read_depth``:

- valid = 0.1 < d < 80 m inside the batch mask; depth clipped to [0.1, 80]; sky valid at 81 m
  (``DepthTargetTransform.release_depth``); valid ∪ sky is the loss mask;
- target x0 = per-image quantile-normalised log(d + 1) (quantiles over the loss pixels closer than 80 m, so
  never over sky);
- x_t = (1 - t)·x0 + t·ε; loss = Σ m·(v - (ε - x0))² / (Σ m + 1e-6), plus ``grad_loss_weight`` × the 4-scale
  gradient loss on the x0 prediction x_t - t·v.
"""

from __future__ import annotations

import torch
from torch import nn

from ppd_lightning.flow import DepthTargetTransform, LinearPath
from ppd_lightning.losses import MultiScaleGradientLoss, masked_mse

_DEFAULT_TARGET = DepthTargetTransform()
_PATH = LinearPath()


def _shape_error(key: str, got, expected: str) -> ValueError:
    return ValueError(f"training batch: {key!r} must be {expected}, got shape {tuple(got)}")


def check_batch(
    batch: dict, noise: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Validate a batch in DepthShardDataModule's format and the drawn noise / t; return
    (image, depth, mask, sky or None). Each problem is one ValueError naming the key."""
    if not isinstance(batch, dict):
        raise TypeError(f"training batch must be a dict with image, depth, mask (and sky), got {type(batch)}")
    missing = [k for k in ("image", "depth", "mask") if k not in batch]
    if missing:
        raise ValueError(
            f"training batch: missing key(s) {missing}; it needs image, depth, mask (sky optional)"
        )
    image, depth, mask, sky = batch["image"], batch["depth"], batch["mask"], batch.get("sky")
    for key, value in (
        ("image", image),
        ("depth", depth),
        ("mask", mask),
        ("sky", sky),
        ("noise", noise),
        ("t", t),
    ):
        if value is not None and not isinstance(value, torch.Tensor):
            raise ValueError(f"training batch: {key!r} must be a torch.Tensor, got {type(value).__name__}")
    if image.ndim != 4 or image.shape[1] != 3:
        raise _shape_error("image", image.shape, "(B, 3, H, W) RGB in [0, 1]")
    B, _, H, W = image.shape
    one = f"(B, 1, H, W) = {(B, 1, H, W)} like the image"
    if tuple(depth.shape) != (B, 1, H, W):
        raise _shape_error("depth", depth.shape, one + " (metres, 0 where invalid or sky)")
    if tuple(mask.shape) != (B, 1, H, W):
        raise _shape_error("mask", mask.shape, one + " (bool, valid depth)")
    if sky is not None and tuple(sky.shape) != (B, 1, H, W):
        raise _shape_error("sky", sky.shape, one + " (bool)")
    if tuple(noise.shape) != (B, 1, H, W):
        raise _shape_error("noise", noise.shape, one)
    if tuple(t.shape) != (B,):
        raise _shape_error("t", t.shape, f"(B,) = ({B},), one time in [0, 1] per image")
    if not bool(((t >= 0) & (t <= 1)).all()):
        raise ValueError(
            f"training batch: 't' must lie in [0, 1] (official timestep / 1000), got {t.tolist()}"
        )
    if mask.dtype != torch.bool or (sky is not None and sky.dtype != torch.bool):
        # uint8 / 0-1 masks are accepted; anything else (e.g. float depths passed as a mask) is a mistake
        for key, value in (("mask", mask), ("sky", sky)):
            if value is not None and value.dtype != torch.bool and bool(((value != 0) & (value != 1)).any()):
                raise ValueError(
                    f"training batch: {key!r} must be bool (or 0/1), got values outside {{0, 1}}"
                )
    return image, depth, mask.bool(), None if sky is None else sky.bool()


def training_loss(
    dit: nn.Module,
    encoder: nn.Module | None,
    batch: dict,
    *,
    noise: torch.Tensor,
    t: torch.Tensor,
    grad_loss_weight: float = 0.0,
    grad_loss_scales: int = 4,
    target: DepthTargetTransform | None = None,
) -> dict[str, torch.Tensor]:
    """The release's training objective on one batch.

    batch: ``image`` (B,3,H,W) in [0,1]; ``depth`` (B,1,H,W) metres, 0 where invalid or sky; ``mask``
    (B,1,H,W) bool valid, never sky; ``sky`` (B,1,H,W) bool (optional: a batch without it has no sky).
    noise: ε (B,1,H,W). t: (B,) in [0, 1] (official integer timestep / 1000).
    encoder: the frozen semantic encoder (may be None for a DiT without semantics).

    Returns ``loss`` (scalar, differentiable w.r.t. the DiT), ``loss_velocity``, ``loss_gradient`` (when
    ``grad_loss_weight > 0``), ``target`` (x0), ``loss_mask`` (bool, the pixels in the loss), ``lo`` / ``hi``
    (per-image log-depth quantiles), ``x_t``, ``velocity`` (the prediction), ``semantics`` (or None).
    """
    image, depth, mask, sky = check_batch(batch, noise, t)
    tf = target or _DEFAULT_TARGET
    depth, loss_mask = tf.release_depth(depth, mask, sky)
    x0, (lo, hi) = tf(depth, loss_mask)
    t = t.to(device=x0.device, dtype=torch.float32)
    noise = noise.to(device=x0.device, dtype=x0.dtype)
    x_t = _PATH.interpolate(x0, noise, t)
    semantics = None
    if getattr(dit, "uses_semantics", True):
        if encoder is None:
            raise ValueError("training_loss: this DiT uses semantic tokens, but encoder is None")
        with torch.no_grad():
            semantics = encoder(image)
    v = dit(x_t, image, semantics, t).float()
    loss_v = masked_mse(v, _PATH.velocity(x0, noise), loss_mask)
    out = {
        "loss_velocity": loss_v,
        "target": x0,
        "loss_mask": loss_mask,
        "lo": lo,
        "hi": hi,
        "x_t": x_t,
        "velocity": v,
        "semantics": semantics,
    }
    loss = loss_v
    if grad_loss_weight > 0:
        x0_hat = _PATH.x0_from_velocity(x_t, v, t)
        loss_g = MultiScaleGradientLoss(grad_loss_scales)(x0_hat, x0, loss_mask)
        out["loss_gradient"] = loss_g
        loss = loss + grad_loss_weight * loss_g
    out["loss"] = loss
    return out

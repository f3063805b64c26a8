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

from dataclasses import dataclass

import torch
from torch import nn

from ppd_lightning.errors import InputError
from ppd_lightning.flow import TARGET_SHIFT, LinearPath, depth_from_x0, x0_from_depth
from ppd_lightning.losses import MultiScaleGradientLoss, masked_mse

_PATH = LinearPath()


@dataclass
class DepthTargetTransform:
    """Metric depth -> diffusion target, per image: log(d + 1), normalised by the 2 % / 98 % quantiles of
    the valid pixels closer than ``max_depth``, clamped to [-0.5, 1] and shifted by ``shift`` (``TARGET_SHIFT``, -0.5), i.e. the
    target lives in [-1, 0.5] and a prediction p maps back with depth = exp((p - shift) * (hi - lo) + lo) - 1.

    ``release_depth`` turns a batch's depth / mask / sky into the depth and loss mask the release trains on
    (valid = ``min_depth`` < d < ``max_depth``; sky valid at ``max_depth + sky_margin``).
    """

    low_quantile: float = 0.02
    high_quantile: float = 0.98
    max_depth: float = 80.0
    clamp_min: float = -0.5
    clamp_max: float = 1.0
    shift: float = TARGET_SHIFT
    min_depth: float = 0.1
    sky_margin: float = 1.0

    def release_depth(
        self, depth: torch.Tensor, mask: torch.Tensor, sky: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The release's ``read_depth`` on this project's batch format -> (depth, loss mask).

        depth (B,1,H,W) metres (0 where invalid or sky), mask bool (valid, never sky), sky bool or None.
        Valid pixels are ``min_depth < d < max_depth`` inside ``mask`` (so 80-200 m is not valid); depth is
        clipped to [min_depth, max_depth] (non-finite -> min_depth) and sky is set to the clipped maximum
        plus ``sky_margin``: the sky of outdoor sets is > 200 m, which clips to ``max_depth``, so sky is
        ``max_depth + sky_margin`` (81 m). Sky is in the loss mask; it never enters the quantiles, which only
        take pixels closer than ``max_depth``.
        """
        depth = depth.float()
        finite = torch.isfinite(depth)
        valid = mask.bool() & finite & (depth > self.min_depth) & (depth < self.max_depth)
        clipped = torch.where(finite, depth, torch.full_like(depth, self.min_depth))
        clipped = clipped.clamp(self.min_depth, self.max_depth)
        if sky is None:
            return clipped, valid
        sky = sky.bool() & ~valid
        clipped = torch.where(sky, torch.full_like(clipped, self.max_depth + self.sky_margin), clipped)
        return clipped, valid | sky

    def quantiles(self, depth: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B = depth.shape[0]
        sel = mask & (depth < self.max_depth) & torch.isfinite(depth)
        logd = torch.log1p(depth.clamp_min(0)).float()
        flat = torch.where(sel, logd, torch.full_like(logd, float("nan"))).reshape(B, -1)
        q = torch.tensor([self.low_quantile, self.high_quantile], device=depth.device)
        lo, hi = torch.nanquantile(flat, q, dim=1)  # NaN for an image without valid pixels
        lo = torch.nan_to_num(lo, nan=0.0)
        hi = torch.nan_to_num(hi, nan=1.0)
        hi = torch.maximum(hi, lo + 1e-6)  # a flat image must not divide by zero
        return lo, hi

    def __call__(self, depth: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        """depth (B,1,H,W) metres, mask (B,1,H,W) bool -> target (B,1,H,W) and (lo, hi) per image."""
        lo, hi = self.quantiles(depth, mask)
        view = (-1,) + (1,) * (depth.ndim - 1)
        logd = torch.log1p(depth.clamp_min(0).nan_to_num(0.0, 0.0, 0.0)).float()
        norm = (logd - lo.view(view)) / (hi - lo).view(view)
        target = x0_from_depth(norm.clamp(self.clamp_min, self.clamp_max), self.shift)
        return target, (lo, hi)

    def inverse(self, target: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        view = (-1,) + (1,) * (target.ndim - 1)
        logd = depth_from_x0(target, self.shift) * (hi - lo).view(view) + lo.view(view)
        return torch.expm1(logd)


_DEFAULT_TARGET = DepthTargetTransform()


def _shape_error(key: str, got, expected: str) -> InputError:
    return InputError(f"training batch: {key!r} must be {expected}, got shape {tuple(got)}")


def check_batch(
    batch: dict, noise: torch.Tensor, t: torch.Tensor, check_t_range: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Validate a batch in DepthShardDataModule's format and the drawn noise / t; return
    (image, depth, mask, sky or None). Each problem is one InputError naming the key."""
    if not isinstance(batch, dict):
        raise TypeError(f"training batch must be a dict with image, depth, mask (and sky), got {type(batch)}")
    missing = [k for k in ("image", "depth", "mask") if k not in batch]
    if missing:
        raise InputError(
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
            raise InputError(f"training batch: {key!r} must be a torch.Tensor, got {type(value).__name__}")
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
    # reading t back synchronises the GPU: the module, which drew t itself in [0, 1], skips it
    if check_t_range and not bool(((t >= 0) & (t <= 1)).all()):
        raise InputError(
            f"training batch: 't' must lie in [0, 1] (official timestep / 1000), got {t.tolist()}"
        )
    if mask.dtype != torch.bool or (sky is not None and sky.dtype != torch.bool):
        # uint8 / 0-1 masks are accepted; anything else (e.g. float depths passed as a mask) is a mistake
        for key, value in (("mask", mask), ("sky", sky)):
            if value is not None and value.dtype != torch.bool and bool(((value != 0) & (value != 1)).any()):
                raise InputError(
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
    check_t_range: bool = True,
) -> dict[str, torch.Tensor]:
    """The release's training objective on one batch.

    batch: ``image`` (B,3,H,W) in [0,1]; ``depth`` (B,1,H,W) metres, 0 where invalid or sky; ``mask``
    (B,1,H,W) bool valid, never sky; ``sky`` (B,1,H,W) bool (optional: a batch without it has no sky).
    noise: ε (B,1,H,W). t: (B,) in [0, 1] (official integer timestep / 1000).
    encoder: the frozen semantic encoder (may be None for a DiT without semantics).
    check_t_range: check that t lies in [0, 1] (a GPU synchronisation; off for a caller that drew t).

    Returns ``loss`` (scalar, differentiable w.r.t. the DiT), ``loss_velocity``, ``loss_gradient`` (when
    ``grad_loss_weight > 0``), ``target`` (x0), ``loss_mask`` (bool, the pixels in the loss), ``lo`` / ``hi``
    (per-image log-depth quantiles), ``x_t``, ``velocity`` (the prediction), ``semantics`` (or None).
    """
    image, depth, mask, sky = check_batch(batch, noise, t, check_t_range)
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

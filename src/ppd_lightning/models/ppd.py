"""PixelPerfectDepth: frozen semantic encoder + Cascade SP-DiT + Euler sampler."""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import nn

from ppd_lightning.errors import InputError
from ppd_lightning.flow import TARGET_SHIFT, EulerSampler, depth_from_x0
from ppd_lightning.models.dit import CascadeSPDiT
from ppd_lightning.models.semantics import SemanticEncoder
from ppd_lightning.upsampling import UPSAMPLE_MODES, resize_depth

TRAIN_AREA = 1024 * 768  # the released model's second training stage
# infer's "edge" upsampling: neighbouring values of the normalised log depth within this lie on one surface
# (about a 5 % depth ratio when the image's 2-98 % depth range is 2-80 m: 1 unit = ln(81/3) = 3.3)
EDGE_ATOL = 0.015


def fit_to_area(height: int, width: int, area: int, multiple: int) -> tuple[int, int]:
    """Size with about ``area`` pixels and the aspect of (height, width), sides rounded to ``multiple``."""
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    scale = math.sqrt(area / (height * width))
    h = max(multiple, round(height * scale / multiple) * multiple)
    w = max(multiple, round(width * scale / multiple) * multiple)
    return h, w


class PixelPerfectDepth(nn.Module):
    """Monocular relative depth by flow matching in pixel space.

    ``sample`` runs the sampler at the given (valid) size and returns the model's depth, which is
    normalised log-depth: affine-invariant in log(d + 1) (``x0 - shift``, the training target's shift undone:
    ``flow.TARGET_SHIFT`` = -0.5 for the released model, i.e. ``x0 + 0.5`` as it returns it).
    ``infer`` accepts any image size: it resizes to about ``area`` pixels (keeping the aspect, sides
    multiples of the DiT's size multiple), samples, and brings the prediction back to the input size.
    ``area`` defaults to the area the model was trained at (1024x768 for the released weights).
    """

    def __init__(
        self,
        dit: CascadeSPDiT,
        encoder: SemanticEncoder | None = None,
        steps: int = 4,
        area: int = TRAIN_AREA,
        shift: float = TARGET_SHIFT,
    ):
        super().__init__()
        if dit.uses_semantics and encoder is None:
            raise ValueError(f"the {dit.variant} DiT needs a semantic encoder")
        if encoder is not None and dit.uses_semantics and encoder.dim_out != dit.semantic_dim:
            raise ValueError(
                f"semantic encoder width {encoder.dim_out} ({getattr(encoder, 'kind', '?')} tokens) does not "
                f"match the DiT's semantic_dim {dit.semantic_dim}: pair ppd.pth with depth_anything_v2_vitl.pth "
                "and ppd_moge.pth with moge2.pt"
            )
        self.dit = dit
        self.encoder = encoder if dit.uses_semantics else None
        self.sampler = EulerSampler(steps)
        self.shift = float(shift)  # the DepthTargetTransform shift the DiT was trained with
        if area < 1:
            raise ValueError(f"working area must be a positive number of pixels, got {area}")
        self.area = int(area)

    # The two ways to get a ready model from files. The readers live in ppd_lightning.weights (models/
    # know no file formats), imported here, inside the constructors: the one doorway from models to weights.
    @classmethod
    def from_released(
        cls,
        dit: str | os.PathLike,
        semantics: str | os.PathLike | None = None,
        steps: int = 4,
        **dit_overrides,
    ) -> PixelPerfectDepth:
        """A released model from its two files (``ppd.pth`` + ``depth_anything_v2_vitl.pth``, or
        ``ppd_moge.pth`` + ``moge2.pt``), or a released model's name (``"ppd"``, ``"ppd-moge2"``) as
        ``dit`` with ``semantics=None``; sizes inferred from the weights, eval mode."""
        from ppd_lightning.weights.released import load_pixel_perfect_depth

        return load_pixel_perfect_depth(dit, semantics, steps=steps, **dit_overrides)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        use_ema: bool = True,
        map_location: str | torch.device = "cpu",
        encoder_weights: str | os.PathLike | None = None,
    ) -> PixelPerfectDepth:
        """One of our training checkpoints (its EMA DiT by default; the encoder rebuilt from its recorded
        spec, or from ``encoder_weights``), working at the recorded training area, eval mode."""
        from ppd_lightning.weights.checkpoints import load_model_from_checkpoint

        return load_model_from_checkpoint(path, use_ema, map_location, encoder_weights)

    @property
    def size_multiple(self) -> int:
        return self.dit.size_multiple

    def semantics(self, image: torch.Tensor) -> torch.Tensor | None:
        return None if self.encoder is None else self.encoder(image)

    @torch.no_grad()
    def sample(
        self,
        image: torch.Tensor,
        steps: int | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """image (B,3,H,W) in [0,1], sides multiples of ``size_multiple`` -> depth (B,1,H,W)."""
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"image must be (B, 3, H, W) RGB in [0, 1], got {tuple(image.shape)}")
        B, _, H, W = image.shape
        shape = (B, 1, H, W)
        if noise is None:
            noise = torch.randn(
                shape, generator=generator, device=image.device if generator is None else generator.device
            )
            noise = noise.to(image.device)
        elif tuple(noise.shape) != shape:
            raise ValueError(f"noise must be {shape} for this image, got {tuple(noise.shape)}")
        semantics = self.semantics(image)
        x0 = self.sampler.sample(lambda x, t: self.dit(x, image, semantics, t), noise.float(), steps)
        return depth_from_x0(x0, self.shift)

    @torch.no_grad()
    def infer(
        self,
        image: torch.Tensor,
        steps: int | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        area: int | None = None,
        output_mode: str = "edge",
    ) -> torch.Tensor:
        """Any-size image (B,3,H,W) in [0,1] -> depth (B,1,H,W) at the input size.

        The image is resized with antialiased bilinear filtering; the prediction comes back with
        ``output_mode``: ``"edge"`` (default; ``upsampling.edge_aware_upsample`` guided by the image: no
        value between two surfaces, edges where the image has them), ``"bilinear"`` (the release; flying
        pixels at depth edges) or ``"nearest"`` (staircases). ``noise``, if given, must have the working
        size (see ``working_size``). ``area`` overrides the model's working area for this call.
        """
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"image must be (B, 3, H, W) RGB in [0, 1], got {tuple(image.shape)}")
        if output_mode not in UPSAMPLE_MODES:
            raise InputError(f"output_mode must be one of {', '.join(UPSAMPLE_MODES)}, got {output_mode!r}")
        H, W = image.shape[-2:]
        x = self.working_image(image, area)
        h, w = x.shape[-2:]
        depth = self.sample(x, steps=steps, noise=noise, generator=generator)
        if (h, w) != (H, W):
            # the depth is normalised log depth: one surface = values within EDGE_ATOL (absolute)
            edge = dict(guide_low=x, rtol=0.0, atol=EDGE_ATOL) if output_mode == "edge" else {}
            depth = resize_depth(depth, (H, W), output_mode, guide=image, **edge)
        return depth

    def working_size(self, height: int, width: int, area: int | None = None) -> tuple[int, int]:
        return fit_to_area(height, width, self.area if area is None else area, self.size_multiple)

    def working_image(self, image: torch.Tensor, area: int | None = None) -> torch.Tensor:
        """The image (B,3,H,W) as ``infer`` samples it: resized to ``working_size`` (antialiased bilinear),
        clamped to [0, 1] (MoGe-2's geometry for point clouds runs on it too, as in the release)."""
        H, W = image.shape[-2:]
        h, w = self.working_size(H, W, area)
        x = image if (h, w) == (H, W) else F.interpolate(image, (h, w), mode="bilinear", antialias=True)
        return x.clamp(0, 1)

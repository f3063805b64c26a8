"""Frozen semantic encoder: a DINOv2 ViT built from timm, with the two read-outs the released models use.

It maps an RGB image in [0, 1] (sides multiples of 16) to tokens on the H/16 x W/16 grid. The ViT is the
same in both cases: patch 14, position embedding resized bicubically with
``scale_factor = (grid + 0.1) / grid0`` (DINOv2's historical offset, not an exact-size resize, which
gives different numbers). What differs is the pre-processing and the read-out:

- ``kind="da2"`` (Depth Anything V2's ``forward_semantics``, the PPD model): ImageNet normalisation,
  then a bicubic resize to (H/16*14, W/16*14); the final-norm patch tokens of the last block
  (width ``embed_dim``).
- ``kind="moge2"`` (MoGe-2's DINOv2 encoder, the PPD-MoGe2 model): bilinear resize with antialias to
  (H/16*14, W/16*14), then ImageNet normalisation; for each chosen block (``intermediate_layers``: an
  int n = the last n blocks, or a list of block indices) its output normed by the final LayerNorm,
  patch tokens through that block's 1x1 projection to ``dim_out``, summed over the chosen blocks.
- ``kind="pi3"`` (Pi3's DINOv2 with registers, the encoder half of PPVD's semantics, see ``models/pi3.py``):
  bilinear resize without antialias to (H/16*14, W/16*14), then ImageNet normalisation; ``registers``
  register tokens after the class token (they get no position embedding); the position embedding resized
  to the exact grid (``interpolate_offset=0.0``) with an antialiased bicubic filter (``pos_antialias``);
  the final-norm patch tokens of the last block (width ``embed_dim``).
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from timm.layers import SwiGLUPacked
from timm.models.vision_transformer import VisionTransformer
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ENCODER_KINDS = ("da2", "moge2", "pi3")

# DINOv2 family sizes (embed_dim, depth, num_heads). Every member has 64-dim heads.
DINOV2_SIZES: dict[str, tuple[int, int, int]] = {
    "vits": (384, 12, 6),
    "vitb": (768, 12, 12),
    "vitl": (1024, 24, 16),
    "vitg": (1536, 40, 24),
}


def resolve_layers(intermediate_layers: int | list[int] | tuple[int, ...], depth: int) -> list[int]:
    """MoGe-2's ``intermediate_layers`` -> ascending block indices (the order DINOv2 returns them in,
    which is the order the projections are applied in). An int n = the last n blocks."""
    if isinstance(intermediate_layers, bool):
        raise ValueError(
            f"intermediate_layers must be an int or a list of block indices, got {intermediate_layers!r}"
        )
    if isinstance(intermediate_layers, int):
        if not 1 <= intermediate_layers <= depth:
            raise ValueError(
                f"intermediate_layers={intermediate_layers}: expected 1..{depth} (the ViT has {depth} blocks)"
            )
        return list(range(depth - intermediate_layers, depth))
    layers = list(intermediate_layers)
    if not layers or not all(isinstance(i, int) and not isinstance(i, bool) for i in layers):
        raise ValueError(
            f"intermediate_layers must be an int or a non-empty list of ints, got {intermediate_layers!r}"
        )
    if len(set(layers)) != len(layers) or not all(0 <= i < depth for i in layers):
        raise ValueError(
            f"intermediate_layers={layers}: expected distinct block indices in 0..{depth - 1} "
            f"(the ViT has {depth} blocks)"
        )
    return sorted(layers)


class SemanticEncoder(nn.Module):
    """A frozen DINOv2 ViT producing (B, H/16 * W/16, dim_out) tokens. Always in eval mode, never trained.

    ``embed_dim`` is the ViT's width; ``dim_out`` the tokens' width (= ``embed_dim`` for ``kind="da2"``,
    the projections' width for ``kind="moge2"``). ``origin`` says where the weights came from
    (``{"weights": path}`` or ``{"random_seed": s}``), set by the loaders; ``spec()`` is everything needed
    to rebuild the encoder (recorded in our checkpoints).
    """

    def __init__(
        self,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        patch_size: int = 14,
        img_size: int = 518,
        mlp_ratio: float = 4.0,
        swiglu: bool = False,
        layer_scale: bool = True,
        interpolate_offset: float = 0.1,
        stride: int = 16,
        kind: str = "da2",
        intermediate_layers: int | list[int] | None = None,
        dim_out: int | None = None,
        registers: int = 0,
        pos_antialias: bool = False,
    ):
        super().__init__()
        if kind not in ENCODER_KINDS:
            raise ValueError(f"unknown semantic encoder kind {kind!r}; expected one of {ENCODER_KINDS}")
        if kind in ("da2", "pi3") and (intermediate_layers is not None or dim_out not in (None, embed_dim)):
            raise ValueError(
                "intermediate_layers/dim_out are MoGe-2 settings: use kind='moge2' (Depth Anything V2's "
                "encoder reads out the last block at the ViT's width)"
            )
        if kind == "moge2" and (intermediate_layers is None or not dim_out or dim_out < 1):
            raise ValueError(
                "kind='moge2' needs intermediate_layers (int n or list of block indices) and dim_out (> 0), "
                f"got intermediate_layers={intermediate_layers!r}, dim_out={dim_out!r}"
            )
        extra = dict(mlp_layer=SwiGLUPacked, act_layer=nn.SiLU) if swiglu else {}
        self.vit = VisionTransformer(
            img_size=img_size,
            patch_size=patch_size,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            init_values=1.0 if layer_scale else None,
            num_classes=0,
            global_pool="",
            dynamic_img_size=True,  # non-strict patch embedding; we add position embeddings ourselves
            reg_tokens=registers,
            **extra,
        )
        if registers:
            # DINOv2's registers get no position (timm's layout would give them one): forward adds the
            # positions itself, so the parameter keeps DINOv2's (1, 1 + grid0^2, C) shape and name.
            grid0 = img_size // patch_size
            self.vit.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid0 * grid0, embed_dim))
        self.registers = int(registers)
        self.pos_antialias = bool(pos_antialias)
        self.embed_dim, self.patch_size, self.stride = embed_dim, patch_size, stride
        self.interpolate_offset = interpolate_offset
        self.kind = kind
        self._arch = dict(
            kind=kind,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            patch_size=patch_size,
            img_size=img_size,
            mlp_ratio=float(mlp_ratio),
            swiglu=bool(swiglu),
            layer_scale=bool(layer_scale),
            interpolate_offset=float(interpolate_offset),
            stride=stride,
        )
        if registers or pos_antialias:  # only then: the specs of da2/moge2 encoders stay as recorded
            self._arch.update(registers=self.registers, pos_antialias=self.pos_antialias)
        if kind == "moge2":
            self.layers = resolve_layers(intermediate_layers, depth)
            self.dim_out = int(dim_out)
            self.projections = nn.ModuleList(
                nn.Conv2d(embed_dim, self.dim_out, kernel_size=1) for _ in self.layers
            )
            self._arch.update(
                intermediate_layers=intermediate_layers
                if isinstance(intermediate_layers, int)
                else [int(i) for i in intermediate_layers],
                dim_out=self.dim_out,
            )
        else:
            self.layers = [depth - 1]
            self.dim_out = embed_dim
            self.projections = None
        self.origin: dict = {}
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()
        self._pos_cache: dict[tuple, torch.Tensor] = {}

    @classmethod
    def from_size(cls, size: str = "vitl", **kwargs) -> SemanticEncoder:
        if size not in DINOV2_SIZES:
            raise ValueError(f"unknown DINOv2 size {size!r}; expected one of {sorted(DINOV2_SIZES)}")
        dim, depth, heads = DINOV2_SIZES[size]
        kwargs.setdefault("depth", depth)
        kwargs.setdefault("num_heads", heads)
        if size == "vitg":
            kwargs.setdefault("swiglu", True)
            kwargs.setdefault("mlp_ratio", 2 * ((int(dim * 4 * 2 / 3) + 7) // 8 * 8) / dim)  # packed SwiGLU
        return cls(embed_dim=dim, **kwargs)

    @classmethod
    def random(cls, size: str = "vits", **kwargs) -> SemanticEncoder:
        """Randomly initialised encoder: only for tests and the embedded demo (semantics are noise)."""
        warnings.warn(
            f"Using a RANDOMLY INITIALISED DINOv2-{size} semantic encoder: its tokens carry no semantics. "
            "Fine for tests and the CPU demo; load depth_anything_v2_vit*.pth for real training/inference.",
            stacklevel=2,
        )
        return cls.from_size(size, **kwargs)

    def train(self, mode: bool = True) -> SemanticEncoder:
        # Frozen: stays in eval mode whatever the parent module does.
        return super().train(False)

    def spec(self) -> dict:
        """Kind, sizes and origin (weights path or random seed): what rebuilds this encoder."""
        return {**self._arch, **self.origin}

    def _pos_embed(self, grid_h: int, grid_w: int) -> torch.Tensor:
        pos = self.vit.pos_embed
        key = (grid_h, grid_w, pos.device, pos.dtype, pos.data_ptr(), pos._version)
        cached = self._pos_cache.get(key)
        if cached is not None:
            return cached
        n = pos.shape[1] - 1
        g0 = math.isqrt(n)
        if g0 * g0 != n:
            raise ValueError(f"position embedding has {n} patch entries, not a square grid")
        if grid_h == grid_w == g0:
            out = pos
        else:
            patch = pos[:, 1:].float().reshape(1, g0, g0, -1).permute(0, 3, 1, 2)
            if self.interpolate_offset:  # DINOv2: a scale factor when there is an offset, else the size
                scale = ((grid_h + self.interpolate_offset) / g0, (grid_w + self.interpolate_offset) / g0)
                resize = dict(scale_factor=scale)
            else:
                resize = dict(size=(grid_h, grid_w))
            patch = F.interpolate(patch, mode="bicubic", antialias=self.pos_antialias, **resize)
            if patch.shape[-2:] != (grid_h, grid_w):
                raise RuntimeError(
                    f"position embedding resized to {tuple(patch.shape[-2:])}, not {(grid_h, grid_w)}"
                )
            patch = patch.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1)
            out = torch.cat([pos[:, :1].float(), patch], dim=1).to(pos.dtype)
        self._pos_cache = {key: out}  # one grid at a time: training and inference use one size
        return out

    @torch.no_grad()
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"image must be (B, 3, H, W) RGB in [0, 1], got {tuple(image.shape)}")
        H, W = image.shape[-2:]
        if H % self.stride or W % self.stride:
            raise ValueError(f"image height and width must be multiples of {self.stride}, got {H}x{W}")
        gh, gw = H // self.stride, W // self.stride
        if self.projections is not None:  # MoGe-2: projected intermediate layers
            return self.layer_features(image, gh, gw)[0].flatten(2).transpose(1, 2)  # (B, gh*gw, dim_out)
        return self.vit.norm(self.vit.blocks(self._embed(image, gh, gw)))[:, 1 + self.registers :]

    @torch.no_grad()
    def layer_features(
        self, image: torch.Tensor, grid_h: int, grid_w: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """MoGe-2's read-out (``kind="moge2"``) on a ``grid_h`` x ``grid_w`` token grid of the caller's
        choice (MoGe-2's geometry picks its grid from a token budget, not H/16 x W/16).

        Returns the summed projections (B, dim_out, grid_h, grid_w) and the class token (B, embed_dim)
        of the last chosen block, normed by the final LayerNorm (what MoGe-2's scale head reads)."""
        if self.projections is None:
            raise ValueError(f"layer_features is MoGe-2's read-out: this encoder is kind={self.kind!r}")
        vit, prefix = self.vit, 1 + self.registers
        x = self._embed(image, grid_h, grid_w)
        out = None
        chosen = iter(zip(self.layers, self.projections))
        layer, proj = next(chosen)
        for i, block in enumerate(vit.blocks[: self.layers[-1] + 1]):
            x = block(x)
            if i != layer:
                continue
            normed = vit.norm(x)
            tokens = normed[:, prefix:].transpose(1, 2).unflatten(2, (grid_h, grid_w))  # (B, C, gh, gw)
            y = proj(tokens.to(proj.weight.dtype))
            out = y if out is None else out + y
            layer, proj = next(chosen, (None, None))
        return out, normed[:, 0]

    def _embed(self, image: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
        """The kind's pre-processing to (gh*14, gw*14), patch embedding, class token, positions for a
        gh x gw grid, registers: the tokens entering the first block."""
        size = (gh * self.patch_size, gw * self.patch_size)
        if self.kind == "da2":  # normalise, then bicubic
            x = (image.float() - self.mean) / self.std
            x = F.interpolate(x, size=size, mode="bicubic", align_corners=False)
        else:  # MoGe-2: antialiased bilinear, Pi3: plain bilinear; then normalise
            antialias = self.kind == "moge2"
            x = F.interpolate(
                image.float(), size=size, mode="bilinear", align_corners=False, antialias=antialias
            )
            x = (x - self.mean) / self.std
        vit = self.vit
        x = vit.patch_embed(x.to(vit.cls_token.dtype)).flatten(1, 2)  # (B, N, C)
        x = torch.cat([vit.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self._pos_embed(gh, gw)
        if self.registers:  # class token, registers, patches
            x = torch.cat([x[:, :1], vit.reg_token.expand(x.shape[0], -1, -1).to(x.dtype), x[:, 1:]], dim=1)
        return x

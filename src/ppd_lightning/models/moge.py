"""MoGe-2 geometry: the whole model of ``moge2.pt`` (metric point map, depth, intrinsics, mask, normals).

The release's ``run_point_cloud.py`` uses it to make PPD's relative depth metric. The parts:

- encoder: the same DINOv2 ViT + 1x1 projections as the PPD-MoGe2 semantics
  (:class:`~ppd_lightning.models.semantics.SemanticEncoder`, ``kind="moge2"``), run on a token grid chosen
  from a token budget and the image's aspect (:meth:`SemanticEncoder.layer_features`), which also gives
  the class token for the scale head;
- neck: a :class:`ConvStack` over five levels (the grid x 1, 2, 4, 8, 16), the view-plane UV map
  concatenated at every level (level 0: after the features; levels 1-4: the UV map alone);
- heads: points (3), normal (3), mask (1), each a :class:`ConvStack` on the neck's level outputs whose
  last level is the head's output, resized to the image (bilinear); the scale head, an MLP on the class
  token, gives the metric scale (exp);
- ``infer``: focal and z-shift recovered from the affine point map (scipy's least squares, as the
  release) or the shift alone for a known ``fov_x``, intrinsics, the point map re-projected from depth
  (``force_projection``), the metric scale, the mask.

Sizes come from the file (see :func:`ppd_lightning.weights.moge2.load_moge2`); this module knows no file
format. Images are (B, 3, H, W) RGB in [0, 1], any size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ppd_lightning.models.semantics import SemanticEncoder

__all__ = [
    "ConvStack",
    "MoGe2",
    "ResidualConvBlock",
    "recover_focal_shift",
    "view_plane_uv",
]

REMAPS = ("linear", "sinh", "exp", "sinh_exp")
RESAMPLERS = ("conv_transpose", "bilinear", "nearest")


# --- geometry helpers ------------------------------------------------------------------------------


def view_plane_uv(
    width: int, height: int, aspect: float | None = None, dtype=torch.float32, device=None
) -> torch.Tensor:
    """(height, width, 2) view-plane coordinates of the pixel centres, in units of the half diagonal:
    u spans +-a/sqrt(1+a^2) * (w-1)/w and v +-1/sqrt(1+a^2) * (h-1)/h (``aspect`` a defaults to
    width/height; MoGe-2 passes the image's aspect at every level)."""
    a = width / height if aspect is None else aspect
    span_u, span_v = a / math.sqrt(1 + a * a), 1 / math.sqrt(1 + a * a)
    u = torch.linspace(
        -span_u * (width - 1) / width, span_u * (width - 1) / width, width, dtype=dtype, device=device
    )
    v = torch.linspace(
        -span_v * (height - 1) / height, span_v * (height - 1) / height, height, dtype=dtype, device=device
    )
    v, u = torch.meshgrid(v, u, indexing="ij")
    return torch.stack([u, v], dim=-1)


def _projected(xy: np.ndarray, z: np.ndarray, shift) -> np.ndarray:
    return xy / (z + shift)[:, None]


def _closed_form_focal(xy_proj: np.ndarray, uv: np.ndarray):
    """The focal minimising |f * xy_proj - uv|^2 for a fixed shift."""
    return (xy_proj * uv).sum() / np.square(xy_proj).sum()


def _solve_shift(uv: np.ndarray, xyz: np.ndarray, focal: float | None) -> tuple[np.float32, float]:
    """min over the shift s of |f * xy / (z + s) - uv| with scipy's Levenberg-Marquardt (x0 = 0,
    ftol = 1e-3, as the release); ``focal`` None: f is the closed form at each s. Returns the shift
    (float32) and the focal (the closed form evaluated at the float32 shift on the float32 arrays)."""
    from scipy.optimize import least_squares

    xy, z = xyz[:, :2], xyz[:, 2]

    def residuals(shift: np.ndarray) -> np.ndarray:
        xy_proj = _projected(xy, z, shift)
        f = _closed_form_focal(xy_proj, uv) if focal is None else focal
        return (f * xy_proj - uv).ravel()

    shift = least_squares(residuals, x0=0, ftol=1e-3, method="lm").x.squeeze().astype(np.float32)
    if focal is not None:
        return shift, float(focal)
    return shift, float(_closed_form_focal(_projected(xy, z, shift), uv))


def recover_focal_shift(
    points: torch.Tensor,
    mask: torch.Tensor | None = None,
    focal: torch.Tensor | None = None,
    size: tuple[int, int] = (64, 64),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Focal (relative to the half diagonal) and z-shift per image that make the affine point map
    ``points`` (B, H, W, 3) a perspective projection: min |f * xy / (z + s) - uv| over the ``mask``
    (B, H, W) bool pixels, points, mask and UV brought to ``size`` by nearest. With ``focal`` (B,) given,
    only the shift is solved. An image with fewer than 2 masked points gets focal 1, shift 0.
    Returns (focal, shift), each (B,) in ``points``' dtype."""
    B, H, W, _ = points.shape
    uv = view_plane_uv(W, H, dtype=points.dtype, device=points.device)
    points_lr = F.interpolate(points.permute(0, 3, 1, 2), size, mode="nearest").permute(0, 2, 3, 1)
    uv_lr = F.interpolate(uv.permute(2, 0, 1)[None], size, mode="nearest")[0].permute(1, 2, 0)
    points_np, uv_np = points_lr.detach().cpu().numpy(), uv_lr.cpu().numpy()
    if mask is None:
        mask_np = np.ones(points_np.shape[:3], dtype=bool)
    else:
        mask_np = (F.interpolate(mask[:, None].float(), size, mode="nearest")[:, 0] > 0).cpu().numpy()
    focal_np = None if focal is None else focal.detach().float().cpu().numpy()
    focals, shifts = [], []
    for i in range(B):
        xyz, uv_i = points_np[i][mask_np[i]], uv_np[mask_np[i]]
        if len(xyz) < 2:
            focals.append(1.0)
            shifts.append(0.0)
            continue
        shift, f = _solve_shift(uv_i, xyz, None if focal_np is None else focal_np[i])
        focals.append(f)
        shifts.append(float(shift))
    shift = torch.tensor(shifts, dtype=points.dtype, device=points.device)
    if focal is None:
        return torch.tensor(focals, dtype=points.dtype, device=points.device), shift
    return focal.to(points.dtype), shift


def intrinsics_from_focal(focal: torch.Tensor, aspect: float) -> torch.Tensor:
    """(B,) focals relative to the half diagonal -> (B, 3, 3) intrinsics normalised by width and height,
    principal point at the centre."""
    diag = math.sqrt(1 + aspect * aspect)
    fx, fy = focal / 2 * diag / aspect, focal / 2 * diag
    k = torch.zeros(*focal.shape, 3, 3, dtype=focal.dtype, device=focal.device)
    k[..., 0, 0], k[..., 1, 1] = fx, fy
    k[..., 0, 2], k[..., 1, 2], k[..., 2, 2] = 0.5, 0.5, 1.0
    return k


def unproject(depth: torch.Tensor, intrinsics: torch.Tensor) -> torch.Tensor:
    """(B, H, W) planar depth and (B, 3, 3) normalised intrinsics -> (B, H, W, 3) points
    ``depth * K^-1 [u, v, 1]`` with u = (x + 0.5)/W, v = (y + 0.5)/H (pixel centres)."""
    H, W = depth.shape[-2:]
    u = torch.linspace(0.5 / W, 1 - 0.5 / W, W, dtype=depth.dtype, device=depth.device)
    v = torch.linspace(0.5 / H, 1 - 0.5 / H, H, dtype=depth.dtype, device=depth.device)
    v, u = torch.meshgrid(v, u, indexing="ij")
    uv1 = torch.stack([u, v, torch.ones_like(u)], dim=-1)  # (H, W, 3)
    rays = uv1 @ torch.linalg.inv(intrinsics).transpose(-1, -2)[:, None]  # (B, H, W, 3)
    return rays * depth[..., None]


# --- the conv stacks -------------------------------------------------------------------------------


def _conv3x3(dim_in: int, dim_out: int) -> nn.Conv2d:
    return nn.Conv2d(dim_in, dim_out, kernel_size=3, padding=1, padding_mode="replicate")


def _norm(kind: str, dim: int) -> nn.Module:
    if kind != "none":  # the released configs use none; others would need MoGe's exact layers
        raise ValueError(f"residual block norm {kind!r} is not supported (the released MoGe-2 uses 'none')")
    return nn.Identity()


class ResidualConvBlock(nn.Module):
    """[norm, ReLU, 3x3 conv, norm, ReLU, 3x3 conv] + skip ('replicate' padding); the skip is a 1x1 conv
    only when the widths differ."""

    def __init__(
        self, dim_in: int, dim_out: int, dim_hidden: int, in_norm: str = "none", hidden_norm: str = "none"
    ):
        super().__init__()
        self.layers = nn.Sequential(
            _norm(in_norm, dim_in),
            nn.ReLU(),
            _conv3x3(dim_in, dim_hidden),
            _norm(hidden_norm, dim_hidden),
            nn.ReLU(),
            _conv3x3(dim_hidden, dim_out),
        )
        self.skip_connection = nn.Conv2d(dim_in, dim_out, 1) if dim_in != dim_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip_connection(x) + self.layers(x)


def _resampler(kind: str, dim_in: int, dim_out: int) -> nn.Sequential:
    """x2 upsampling then a 3x3 conv: a 2x2 stride-2 transposed conv, or a bilinear/nearest resize."""
    if kind == "conv_transpose":
        return nn.Sequential(
            nn.ConvTranspose2d(dim_in, dim_out, kernel_size=2, stride=2), _conv3x3(dim_out, dim_out)
        )
    if kind == "bilinear":
        return nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), _conv3x3(dim_in, dim_out)
        )
    if kind == "nearest":
        return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), _conv3x3(dim_in, dim_out))
    raise ValueError(f"unknown resampler {kind!r}; expected one of {RESAMPLERS}")


def _per_level(value, levels: int, what: str) -> list:
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != levels:
            raise ValueError(f"{what} has {len(value)} entries for {levels} levels")
        return list(value)
    return [value] * levels


class ConvStack(nn.Module):
    """MoGe-2's multi-level conv stack (the neck, and each head). For level l: the 1x1 ``input_blocks[l]``
    (Identity where ``dim_in[l]`` is None) of that level's input is added to the running map (level 0
    starts it), ``res_blocks[l]`` refine it, ``output_blocks[l]`` (1x1, or Identity where ``dim_out[l]``
    is None) gives the level's output, and ``resamplers[l]`` carries the running map to level l + 1 at
    twice the size. Returns the list of level outputs."""

    def __init__(
        self,
        dim_in,
        dim_res_blocks: Sequence[int],
        dim_out=None,
        resamplers="bilinear",
        num_res_blocks=1,
        dim_times_res_block_hidden: int = 1,
        res_block_in_norm: str = "none",
        res_block_hidden_norm: str = "none",
        activation: str = "relu",
    ):
        super().__init__()
        if activation != "relu":
            raise ValueError(f"activation {activation!r} is not supported (the released MoGe-2 uses 'relu')")
        dims = list(dim_res_blocks)
        n = len(dims)
        dim_in, dim_out = _per_level(dim_in, n, "dim_in"), _per_level(dim_out, n, "dim_out")
        counts = _per_level(num_res_blocks, n, "num_res_blocks")
        kinds = _per_level(resamplers, n - 1, "resamplers")
        self.input_blocks = nn.ModuleList(
            nn.Identity() if i is None else nn.Conv2d(i, d, kernel_size=1) for i, d in zip(dim_in, dims)
        )
        self.res_blocks = nn.ModuleList(
            nn.Sequential(
                *(
                    ResidualConvBlock(
                        d, d, dim_times_res_block_hidden * d, res_block_in_norm, res_block_hidden_norm
                    )
                    for _ in range(c)
                )
            )
            for d, c in zip(dims, counts)
        )
        self.output_blocks = nn.ModuleList(
            nn.Identity() if o is None else nn.Conv2d(d, o, kernel_size=1) for o, d in zip(dim_out, dims)
        )
        self.resamplers = nn.ModuleList(_resampler(k, a, b) for k, a, b in zip(kinds, dims[:-1], dims[1:]))

    @property
    def levels(self) -> int:
        return len(self.res_blocks)

    def forward(self, inputs: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
        outputs, x = [], None
        for level in range(self.levels):
            if inputs[level] is not None:
                feature = self.input_blocks[level](inputs[level])
                x = feature if x is None else x + feature
            x = self.res_blocks[level](x)
            outputs.append(self.output_blocks[level](x))
            if level < self.levels - 1:
                x = self.resamplers[level](x)
        return outputs


def mlp(dims: Sequence[int]) -> nn.Sequential:
    """Linear layers ``dims[0] -> dims[1] -> ...`` with ReLU between (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers += [nn.Linear(a, b)] + ([nn.ReLU()] if i < len(dims) - 2 else [])
    return nn.Sequential(*layers)


# --- the model -------------------------------------------------------------------------------------


class MoGe2(nn.Module):
    """The whole MoGe-2 model. ``encoder`` is a ``kind="moge2"`` :class:`SemanticEncoder` (shareable
    with PPD-MoGe2's semantics); ``neck``, ``points_head`` (required), ``mask_head``, ``normal_head``
    (optional) are :class:`ConvStack` s, ``scale_head`` (optional) an MLP on the class token.
    Frozen, always in eval mode (MoGe-2 resizes with antialias in eval mode)."""

    def __init__(
        self,
        encoder: SemanticEncoder,
        neck: ConvStack,
        points_head: ConvStack,
        mask_head: ConvStack | None = None,
        normal_head: ConvStack | None = None,
        scale_head: nn.Module | None = None,
        remap_output: str = "exp",
        num_tokens_range: tuple[int, int] = (1200, 3600),
    ):
        super().__init__()
        if encoder.kind != "moge2":
            raise ValueError(f"MoGe-2's encoder is a kind='moge2' SemanticEncoder, got kind={encoder.kind!r}")
        if remap_output not in REMAPS:
            raise ValueError(f"remap_output {remap_output!r}: expected one of {REMAPS}")
        lo, hi = (int(v) for v in num_tokens_range)
        if not 1 <= lo <= hi:
            raise ValueError(f"num_tokens_range must be 1 <= min <= max, got {list(num_tokens_range)}")
        self.encoder, self.neck, self.points_head = encoder, neck, points_head
        self.mask_head, self.normal_head, self.scale_head = mask_head, normal_head, scale_head
        self.remap_output, self.num_tokens_range = remap_output, (lo, hi)
        self.origin: dict = {}
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_file(cls, path) -> MoGe2:
        """MoGe-2's ``moge2.pt`` (or its loaded content) -> the model, sizes from the file."""
        from ppd_lightning.weights.moge2 import load_moge2

        return load_moge2(path)

    def train(self, mode: bool = True) -> MoGe2:
        return super().train(False)

    def _remap(self, points: torch.Tensor) -> torch.Tensor:
        if self.remap_output == "linear":
            return points
        if self.remap_output == "sinh":
            return torch.sinh(points)
        xy, z = points.split([2, 1], dim=-1)
        z = torch.exp(z)
        return torch.cat([xy * z if self.remap_output == "exp" else torch.sinh(xy), z], dim=-1)

    @torch.no_grad()
    def forward(self, image: torch.Tensor, num_tokens: int) -> dict[str, torch.Tensor]:
        """image (B, 3, H, W) in [0, 1] -> ``points`` (B, H, W, 3) affine point map, ``normal``
        (B, H, W, 3) unit (if the model has a normal head), ``mask`` (B, H, W) probabilities (if a mask
        head), ``metric_scale`` (B,) (if a scale head). ``num_tokens``: the encoder's token budget."""
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"image must be (B, 3, H, W) RGB in [0, 1], got {tuple(image.shape)}")
        B, _, H, W = image.shape
        aspect = W / H
        base_h, base_w = int((num_tokens / aspect) ** 0.5), int((num_tokens * aspect) ** 0.5)
        if base_h < 1 or base_w < 1:
            raise ValueError(
                f"num_tokens={num_tokens} is too few for a {H}x{W} image (a {base_h}x{base_w} grid)"
            )
        features, cls_token = self.encoder.layer_features(image, base_h, base_w)
        levels = []
        for level in range(self.neck.levels):
            uv = view_plane_uv(
                base_w * 2**level, base_h * 2**level, aspect, dtype=image.dtype, device=image.device
            )
            uv = uv.permute(2, 0, 1)[None].expand(B, -1, -1, -1)
            levels.append(torch.cat([features, uv.to(features.dtype)], dim=1) if level == 0 else uv)
        levels = self.neck(levels)

        def head(stack: ConvStack) -> torch.Tensor:
            return F.interpolate(
                stack(levels)[-1], (H, W), mode="bilinear", align_corners=False, antialias=False
            )

        out = {"points": self._remap(head(self.points_head).permute(0, 2, 3, 1))}
        if self.normal_head is not None:
            out["normal"] = F.normalize(head(self.normal_head).permute(0, 2, 3, 1), dim=-1)
        if self.mask_head is not None:
            out["mask"] = head(self.mask_head)[:, 0].sigmoid()
        if self.scale_head is not None:
            out["metric_scale"] = self.scale_head(cls_token)[:, 0].exp()
        return out

    def default_num_tokens(self, resolution_level: int = 9) -> int:
        """The release's token budget for a resolution level 0..9 (9, the default: the maximum)."""
        lo, hi = self.num_tokens_range
        return int(lo + (resolution_level / 9) * (hi - lo))

    @torch.no_grad()
    def infer(
        self,
        image: torch.Tensor,
        num_tokens: int | None = None,
        fov_x: float | torch.Tensor | None = None,
        resolution_level: int = 9,
        force_projection: bool = True,
        apply_mask: bool = True,
        autocast_dtype: torch.dtype | None = None,
    ) -> dict[str, torch.Tensor]:
        """image (B, 3, H, W) or (3, H, W) in [0, 1] -> ``points`` (B, H, W, 3) metric, camera frame
        (x right, y down, z forward), ``depth`` (B, H, W) metres, both inf off the mask, ``mask`` (B, H, W)
        bool, ``intrinsics`` (B, 3, 3) normalised by width and height, ``normal`` (B, H, W, 3), 0 off the
        mask (if the model has a normal head).

        ``num_tokens`` None: from ``resolution_level`` (9: the top of ``num_tokens_range``). ``fov_x``
        (degrees, a number or (B,)): known horizontal field of view, then only the shift is solved.
        ``autocast_dtype``: the network's precision; None = float16 on CUDA (the release's
        ``use_fp16=True``), float32 elsewhere; the geometry after it is always float32."""
        single = image.ndim == 3
        if single:
            image = image[None]
        if num_tokens is None:
            num_tokens = self.default_num_tokens(resolution_level)
        device = image.device
        if autocast_dtype is None:
            autocast_dtype = torch.float16 if device.type == "cuda" else torch.float32
        image = image.float()
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype != torch.float32):
            out = self.forward(image, num_tokens)
        out = {k: v.float() for k, v in out.items()}
        with torch.autocast(device.type, enabled=False):
            result = self._geometry(out, fov_x, force_projection, apply_mask)
        return {k: v[0] for k, v in result.items()} if single else result

    def _geometry(
        self, out: dict, fov_x, force_projection: bool, apply_mask: bool
    ) -> dict[str, torch.Tensor]:
        points, normal = out["points"], out.get("normal")
        B, H, W, _ = points.shape
        aspect = W / H
        mask = out["mask"] > 0.5 if "mask" in out else None
        if fov_x is None:
            focal, shift = recover_focal_shift(points, mask)
        else:
            half = torch.deg2rad(torch.as_tensor(fov_x, dtype=points.dtype, device=points.device) / 2)
            focal = aspect / math.sqrt(1 + aspect**2) / torch.tan(half)
            focal = focal.expand(B) if focal.ndim == 0 else focal.reshape(B)
            focal, shift = recover_focal_shift(points, mask, focal=focal)
        intrinsics = intrinsics_from_focal(focal, aspect)
        points = points.clone()
        points[..., 2] += shift[:, None, None]
        if mask is not None:
            mask = mask & (points[..., 2] > 0)
        depth = points[..., 2].clone()
        if force_projection:
            points = unproject(depth, intrinsics)
        if "metric_scale" in out:
            points = points * out["metric_scale"][:, None, None, None]
            depth = depth * out["metric_scale"][:, None, None]
        if apply_mask and mask is not None:
            points = torch.where(mask[..., None], points, math.inf)
            depth = torch.where(mask, depth, math.inf)
            if normal is not None:
                normal = torch.where(mask[..., None], normal, 0.0)
        if mask is None:
            mask = torch.ones(depth.shape, dtype=torch.bool, device=depth.device)
        result = {"points": points, "depth": depth, "mask": mask, "intrinsics": intrinsics}
        if normal is not None:
            result["normal"] = normal
        return result

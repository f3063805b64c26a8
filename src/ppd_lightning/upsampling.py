"""Depth from the working size to the image size without flying pixels or staircases.

PPD predicts depth at its working area (about 1024x768) and the image is often larger. Resizing the
depth alone can only go wrong at depth edges: bilinear interpolation (the release) puts pixels between
the near and the far surface, which fly in a point cloud; nearest neighbour keeps the values but moves
the edge onto the low-resolution grid, a staircase of ``scale``-pixel steps.

:func:`edge_aware_upsample` resizes like bilinear interpolation everywhere the four low-resolution
samples around a pixel agree, and at a depth edge *chooses* between them, guided by the full-size
image:

1. **Edge cells.** Every output pixel lies in the cell of its four bilinear neighbours (PyTorch's
   ``align_corners=False`` grid). The four depths agree when ``max - min <= atol + rtol * min(|max|, |min|)``;
   cells where they do not (or where one is not finite) are edge cells. Only their pixels are touched.
2. **Choice.** In an edge cell each neighbour ``q`` is scored by how well its colour in the guide at the
   depth's size, ``g_q``, matches the pixel's own full-size colour ``G_p``, and by how close it is:
   ``cost_q = mean_c (G_p - g_q)^2 / (2 sigma^2) - log w_q``, ``w_q`` its bilinear weight (a joint-bilateral
   weight ``w_q exp(-|G_p - g_q|^2 / 2 sigma^2)`` in log form). The cheapest neighbour wins.
3. **Blend within the surface.** The value is the bilinear blend of the neighbours that agree with the
   winner (same test as 1), weights renormalised: both sides of an edge stay smooth, and no output value
   lies between the two surfaces. The edge sits where the full-size image changes colour, not on the
   low-resolution grid.

Why a choice and not joint bilateral upsampling: a bilateral *average* of the near and the far depth is
still an intermediate depth wherever the two colours are alike (shadows, fog, similar materials), so
it only thins flying pixels out. A choice can pick the wrong side where the colours do not tell, which
moves the edge by at most one low-resolution pixel (the nearest-neighbour error), but it never invents a
depth. The work is proportional to the number of edge pixels; the rest is one ``F.interpolate``.

The guide at the depth's size should be the image the depth was predicted from: ``PixelPerfectDepth.infer``
passes the resized image it sampled from; by default the guide is resized the same way (bilinear,
antialiased). Guides are RGB (or any number of channels) in [0, 1]; uint8 guides are divided by 255.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ppd_lightning.errors import InputError

__all__ = ["UPSAMPLE_MODES", "edge_aware_upsample", "resize_depth"]

UPSAMPLE_MODES = ("edge", "bilinear", "nearest")
RTOL = 0.05  # metric depth: neighbours within 5 % of each other lie on one surface
# colour scale of the choice (per channel, guide in [0, 1]): a difference of SIGMA costs as much as a factor
# e^0.5 in bilinear weight. Chosen on scenes of world 1 (benchmarks/edge_upsampling.py reports world 0): best or
# near-best edge AbsRel for clean, noisy (0.02 and 0.05 per channel) and blurred (0.8 px) guides.
SIGMA = 0.015


# --------------------------------------------------------------------------------------------------
# input handling: numpy or torch, with or without batch/channel axes


def _depth_tensor(depth) -> tuple[torch.Tensor, tuple[int, ...], bool]:
    """depth (h, w), (B, h, w) or (B, 1, h, w) -> ((B, h, w) float tensor, leading shape, was numpy)."""
    is_numpy = not isinstance(depth, torch.Tensor)
    if is_numpy:
        arr = np.asarray(depth)
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise InputError(f"depth must be a numeric array or tensor, got dtype {arr.dtype}")
        d = torch.from_numpy(np.ascontiguousarray(arr))
    else:
        d = depth
    if d.ndim not in (2, 3, 4) or (d.ndim == 4 and d.shape[1] != 1):
        raise InputError(f"depth must be (h, w), (B, h, w) or (B, 1, h, w), got shape {tuple(d.shape)}")
    if d.numel() == 0:
        raise InputError(f"depth is empty: shape {tuple(d.shape)}")
    lead = tuple(d.shape[:-2])
    d = d.reshape(-1, *d.shape[-2:])
    if not d.is_floating_point():
        d = d.float()
    return d, lead, is_numpy


def _guide_tensor(guide, batch: int, device: torch.device, name: str = "guide") -> torch.Tensor:
    """guide: numpy (H, W) / (H, W, C) or torch (C, H, W) / (B, C, H, W) -> (B, C, H, W) on ``device``,
    uint8 kept as uint8 (converted where it is read: the full image is never converted as a whole)."""
    if isinstance(guide, torch.Tensor):
        g = guide
        if g.ndim == 3:
            g = g[None]
        if g.ndim != 4:
            raise InputError(
                f"{name} tensor must be (C, H, W) or (B, C, H, W), got shape {tuple(guide.shape)}"
            )
    else:
        arr = np.asarray(guide)
        if arr.ndim == 2:
            arr = arr[..., None]
        if arr.ndim != 3 or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise InputError(f"{name} array must be numeric (H, W) or (H, W, C), got {arr.dtype} {arr.shape}")
        g = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None]
    if g.shape[0] not in (1, batch):
        raise InputError(f"{name} has batch {g.shape[0]} but depth has {batch}")
    if min(g.shape[-3:]) == 0:
        raise InputError(f"{name} is empty: shape {tuple(g.shape)}")
    if g.dtype != torch.uint8:
        g = g.to(torch.float32)
    return g.to(device).expand(batch, -1, -1, -1)


def _colours(g: torch.Tensor, b: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """(N, C) float32 colours of pixels (b, i, j) of ``g`` (B, C, H, W) in any memory layout (expanded,
    channels-last), uint8 scaled to [0, 1]: one flat gather through the strides."""
    sb, sc, sy, sx = g.stride()
    chan = torch.arange(g.shape[1], device=g.device) * sc
    offsets = ((b * sb + i * sy + j * sx)[:, None] + chan).reshape(-1)
    span = sum((n - 1) * st for n, st in zip(g.shape, g.stride())) + 1
    flat = g.as_strided((span,), (1,))
    c = flat[offsets].reshape(len(b), g.shape[1]).float()
    return c / 255.0 if g.dtype == torch.uint8 else c


def _resize_guide(G: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The guide at the depth's size as ``PixelPerfectDepth.infer`` resizes its input (bilinear, antialiased
    when shrinking); uint8 on the CPU stays uint8 (torch's fast path)."""
    if G.dtype == torch.uint8 and G.device.type != "cpu":
        G = G.float() / 255.0
    shrink = G.shape[-2] > h or G.shape[-1] > w
    return F.interpolate(G, (h, w), mode="bilinear", align_corners=False, antialias=shrink)


def _as_output(out: torch.Tensor, lead: tuple[int, ...], like: torch.Tensor, is_numpy: bool):
    out = out.reshape(*lead, *out.shape[-2:]).to(like.dtype)
    return out.cpu().numpy() if is_numpy else out


def _size(size) -> tuple[int, int]:
    try:
        H, W = (int(s) for s in size)
    except (TypeError, ValueError):
        raise InputError(f"size must be (height, width), got {size!r}") from None
    if H < 1 or W < 1:
        raise InputError(f"size must be positive, got {H}x{W}")
    return H, W


# --------------------------------------------------------------------------------------------------
# the method


def _source_grid(n_out: int, n_in: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """PyTorch's bilinear grid (align_corners=False): each output index's lower source index and the
    weight of the upper one (``min(lower + 1, n_in - 1)``)."""
    src = (torch.arange(n_out, device=device, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5
    src = src.clamp(min=0)
    lower = src.floor().long().clamp(max=n_in - 1)
    return lower, (src - lower).clamp(0, 1).to(torch.float32)


def _pixels_of_cells(cells: torch.Tensor, y0: torch.Tensor, x0: torch.Tensor, h: int, w: int):
    """Output pixels (batch, row, column) whose cell (lower bilinear neighbour ``y0``, ``x0``, both
    non-decreasing) is one of ``cells`` (n, 3), and the index of that cell for each pixel."""
    device = cells.device
    lows = torch.arange(max(h, w), device=device)
    row_start, row_n = torch.searchsorted(y0, lows[:h]), torch.bincount(y0, minlength=h)
    col_start, col_n = torch.searchsorted(x0, lows[:w]), torch.bincount(x0, minlength=w)
    cb, ca, cc = cells.unbind(1)
    per_cell = row_n[ca] * col_n[cc]  # an output pixel belongs to exactly one cell
    cell = torch.repeat_interleave(torch.arange(len(cells), device=device), per_cell)
    first = torch.cumsum(per_cell, 0) - per_cell
    k = torch.arange(len(cell), device=device) - first[cell]
    n_cols = col_n[cc][cell]
    return cb[cell], row_start[ca][cell] + k // n_cols, col_start[cc][cell] + k % n_cols, cell


def _agree(a: torch.Tensor, b: torch.Tensor, rtol: float, atol: float) -> torch.Tensor:
    """Same surface: ``|a - b| <= atol + rtol * min(|a|, |b|)``; False for non-finite values."""
    return (a - b).abs() <= atol + rtol * torch.minimum(a.abs(), b.abs())


def edge_aware_upsample(
    depth,
    guide,
    *,
    guide_low=None,
    rtol: float = RTOL,
    atol: float = 0.0,
    sigma: float = SIGMA,
):
    """Resize ``depth`` to the size of ``guide`` keeping its edges where the guide has them.

    Args:
        depth: (h, w), (B, h, w) or (B, 1, h, w), numpy or torch (any device, any float dtype; integer
            depth comes back float32).
        guide: the full-size image: torch (C, H, W) / (B, C, H, W) or numpy (H, W) / (H, W, C); float in
            [0, 1] or uint8.
        guide_low: the guide at the depth's size (the image the depth was predicted from); by default the
            guide resized bilinearly with antialiasing, as ``PixelPerfectDepth.infer`` resizes its input.
        rtol, atol: two neighbouring depths lie on one surface when ``|a - b| <= atol + rtol * min(|a|, |b|)``
            (relative for metric depth; an absolute ``atol`` for log-like depth).
        sigma: colour scale of the choice at an edge (per channel, guide units).

    Returns:
        depth at (H, W), same library, leading axes, dtype and device as ``depth``. Values at an edge are
        blends of neighbours of one surface only; non-finite depths are never blended (a pixel whose chosen
        neighbour is non-finite takes that value).
    """
    if not (rtol >= 0 and atol >= 0 and math.isfinite(rtol) and math.isfinite(atol)):
        raise InputError(f"rtol and atol must be finite and >= 0, got rtol={rtol}, atol={atol}")
    if not (sigma > 0 and math.isfinite(sigma)):
        raise InputError(f"sigma must be a positive number, got {sigma}")
    d, lead, is_numpy = _depth_tensor(depth)
    original = d
    B, h, w = d.shape
    G = _guide_tensor(guide, B, d.device)
    H, W = G.shape[-2:]
    if (h, w) == (H, W):
        return _as_output(d.clone(), lead, original, is_numpy)
    if guide_low is None:
        g = _resize_guide(G, h, w)
    else:
        g = _guide_tensor(guide_low, B, d.device, "guide_low")
        if tuple(g.shape[-2:]) != (h, w) or g.shape[1] != G.shape[1]:
            raise InputError(
                f"guide_low must have the depth's size {h}x{w} and the guide's {G.shape[1]} channels, "
                f"got {tuple(g.shape[1:])}"
            )
    work = torch.float64 if d.dtype == torch.float64 else torch.float32
    d = d.to(work)
    out = F.interpolate(d[:, None], (H, W), mode="bilinear", align_corners=False)[:, 0]

    # 1. edge cells: the four corners (a, b), (a+1, b), (a, b+1), (a+1, b+1), clamped at the border
    padded = F.pad(d[:, None], (0, 1, 0, 1), mode="replicate")[:, 0]
    left, right = padded[:, :, :-1], padded[:, :, 1:]
    row_hi, row_lo = torch.maximum(left, right), torch.minimum(left, right)
    hi, lo = torch.maximum(row_hi[:, :-1], row_hi[:, 1:]), torch.minimum(row_lo[:, :-1], row_lo[:, 1:])
    cells = (~_agree(hi, lo, rtol, atol)).nonzero()  # (n, 3): batch, row, column; NaN -> an edge cell
    if len(cells) == 0:
        return _as_output(out, lead, original, is_numpy)
    y0, fy = _source_grid(H, h, d.device)
    x0, fx = _source_grid(W, w, d.device)
    b, i, j, cell = _pixels_of_cells(cells, y0, x0, h, w)

    # 2. the choice: per edge cell its corners' depths and guide colours, per pixel its own colour
    cb, ca, cc = cells.unbind(1)
    a1, c1 = (ca + 1).clamp(max=h - 1), (cc + 1).clamp(max=w - 1)
    rows, cols = torch.stack((ca, ca, a1, a1), 1), torch.stack((cc, c1, cc, c1), 1)  # (n, 4)
    corner_depth = d.reshape(-1)[(cb[:, None] * h + rows) * w + cols]
    corner_colour = _colours(g, cb.repeat_interleave(4), rows.reshape(-1), cols.reshape(-1))
    corner_colour = corner_colour.reshape(len(cells), 4, -1)
    values = corner_depth.index_select(0, cell)  # (N, 4)
    wy, wx = fy[i], fx[j]
    weights = torch.stack(((1 - wy) * (1 - wx), (1 - wy) * wx, wy * (1 - wx), wy * wx), 1)
    colour = _colours(G, b, i, j)  # (N, C), whatever G's memory layout
    cost = (colour[:, None] - corner_colour.index_select(0, cell)).square_().mean(2)
    cost = cost.nan_to_num_(nan=math.inf).div_(2 * sigma**2).sub_(weights.log())
    best = values.gather(1, cost.argmin(1, keepdim=True))

    # 3. blend the neighbours of the winner's surface
    same = _agree(values, best, rtol, atol)
    wsum = (weights * same).sum(1)
    blend = (weights * torch.where(same, values, 0)).sum(1) / wsum.clamp(min=1e-12)
    result = torch.where(wsum > 0, blend, best[:, 0])
    out.view(-1)[b * (H * W) + i * W + j] = result.to(out.dtype)
    return _as_output(out, lead, original, is_numpy)


def resize_depth(depth, size, mode: str = "edge", guide=None, **edge_kwargs):
    """``depth`` (as :func:`edge_aware_upsample` takes it) to ``size`` (H, W) by ``mode``.

    ``"bilinear"`` (the release; flying pixels at edges), ``"nearest"`` (nearest-exact; staircases), or
    ``"edge"`` (:func:`edge_aware_upsample`, which needs the full-size ``guide``; ``edge_kwargs`` go to it).
    """
    if mode not in UPSAMPLE_MODES:
        raise InputError(f"upsampling mode must be one of {', '.join(UPSAMPLE_MODES)}, got {mode!r}")
    H, W = _size(size)
    if mode == "edge":
        if guide is None:
            raise InputError("upsampling mode 'edge' needs the full-size image as guide")
        G = guide if isinstance(guide, torch.Tensor) else np.asarray(guide)
        got = tuple(G.shape[-2:]) if isinstance(G, torch.Tensor) else tuple(G.shape[:2])
        if got != (H, W):
            raise InputError(f"the guide is {got[0]}x{got[1]} but the depth is resized to {H}x{W}")
        return edge_aware_upsample(depth, guide, **edge_kwargs)
    if edge_kwargs:
        raise InputError(f"options {sorted(edge_kwargs)} apply to mode 'edge' only, not {mode!r}")
    d, lead, is_numpy = _depth_tensor(depth)
    if tuple(d.shape[-2:]) == (H, W):
        return _as_output(d.clone(), lead, d, is_numpy)
    work = torch.float64 if d.dtype == torch.float64 else torch.float32
    x = d.to(work)[:, None]
    if mode == "bilinear":
        x = F.interpolate(x, (H, W), mode="bilinear", align_corners=False)
    else:
        x = F.interpolate(x, (H, W), mode="nearest-exact")
    return _as_output(x[:, 0], lead, d, is_numpy)

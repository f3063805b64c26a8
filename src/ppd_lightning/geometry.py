"""Pinhole camera geometry: per-pixel maps as (H, W) arrays, intrinsics matrices and back-projection of
planar depth to points.

Used by the edge-aware metric (``evaluation/edges.py``), the benchmarks' intrinsics and ``predict --ply``.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import torch

from ppd_lightning.errors import InputError

__all__ = [
    "as_hw",
    "as_numpy",
    "as_intrinsics_matrix",
    "centred_camera",
    "depth_to_points",
    "focal_from_hfov",
    "intrinsics_matrix",
    "parse_intrinsics",
]


def as_numpy(x: Any) -> np.ndarray:
    """A tensor (any device, detached) or array-like as a numpy array."""
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def as_hw(x: Any, name: str) -> np.ndarray:
    """A per-pixel map as a numpy (H, W) array: a tensor (any device) or array of shape (H, W), (1, H, W)
    or (H, W, 1). Anything else is one :class:`InputError` naming ``name``."""
    x = as_numpy(x)
    if x.ndim == 3 and 1 in (x.shape[0], x.shape[-1]):
        x = x.reshape(x.shape[1:] if x.shape[0] == 1 else x.shape[:2])
    if x.ndim != 2 or 0 in x.shape:
        raise InputError(f"{name}: expected an HxW (or 1xHxW / HxWx1) map, got shape {x.shape}")
    return x


def intrinsics_matrix(fx: float, fy: float | None = None, cx: float = 0.0, cy: float = 0.0) -> np.ndarray:
    """3x3 pinhole intrinsics (float64); ``fy`` defaults to ``fx``."""
    fy = fx if fy is None else fy
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=np.float64)


def as_intrinsics_matrix(intrinsics) -> np.ndarray:
    """A 3x3 matrix or ``(fx, fy, cx, cy)`` (numpy, torch or a sequence) -> 3x3 float64 matrix."""
    if isinstance(intrinsics, torch.Tensor):
        intrinsics = intrinsics.detach().cpu().numpy()
    k = np.asarray(intrinsics, dtype=np.float64)
    if k.shape == (3, 3):
        return k
    if k.shape == (4,):
        return intrinsics_matrix(k[0], k[1], k[2], k[3])
    raise ValueError(f"intrinsics must be 3x3 or (fx, fy, cx, cy), got shape {k.shape}")


def focal_from_hfov(width: float, hfov_degrees: float) -> float:
    """Focal length in pixels of a pinhole camera ``width`` pixels wide with this horizontal field of view."""
    if not 0.0 < hfov_degrees < 180.0:
        raise ValueError(f"horizontal field of view must be in (0, 180) degrees, got {hfov_degrees}")
    return (width / 2.0) / math.tan(math.radians(hfov_degrees) / 2.0)


def centred_camera(height: int, width: int, focal: float) -> dict[str, float]:
    """``{fx, fy, cx, cy}`` of a square-pixel pinhole with its principal point at the image centre
    (pixel-centre coordinates: the centre of a ``width``-pixel row is ``(width - 1) / 2``)."""
    focal = float(focal)
    return {"fx": focal, "fy": focal, "cx": (width - 1) / 2.0, "cy": (height - 1) / 2.0}


def depth_to_points(depth, intrinsics, mask=None):
    """Back-project planar depth (z along the optical axis) to camera-space points.

    Pixel ``(row v, col u)`` (integer indices, pixel centres) maps to
    ``((u - cx) * z / fx, (v - cy) * z / fy, z)``.

    Args:
        depth: (H, W) numpy array or torch tensor.
        intrinsics: 3x3 matrix, or ``(fx, fy, cx, cy)``.
        mask: optional (H, W) bool; defaults to finite positive depth.

    Returns:
        (N, 3) points of the selected pixels in row-major order, same library as ``depth``
        (float32 numpy, or a tensor of ``depth``'s dtype/device).
    """
    is_torch = isinstance(depth, torch.Tensor)
    d = depth if is_torch else torch.from_numpy(np.ascontiguousarray(np.asarray(depth, dtype=np.float32)))
    if d.dim() == 3 and d.shape[0] == 1:
        d = d[0]
    if d.dim() != 2:
        raise ValueError(f"depth must be (H, W), got {tuple(d.shape)}")
    k = as_intrinsics_matrix(intrinsics)
    fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
    if mask is None:
        m = torch.isfinite(d) & (d > 0)
    else:
        m = mask if isinstance(mask, torch.Tensor) else torch.from_numpy(np.asarray(mask, dtype=bool))
        m = m.to(d.device).reshape(d.shape).bool()
    v, u = torch.nonzero(m, as_tuple=True)
    z = d[v, u]
    x = (u.to(z.dtype) - cx) * z / fx
    y = (v.to(z.dtype) - cy) * z / fy
    pts = torch.stack([x, y, z], 1)
    return pts if is_torch else pts.numpy().astype(np.float32)


def parse_intrinsics(values: Any, where: str) -> tuple[float, float, float, float]:
    """``fx,fy,cx,cy`` (a string or 4 numbers) or a 3x3 K (9 numbers) -> (fx, fy, cx, cy)."""
    if isinstance(values, str):
        values = [v for v in re.split(r"[\s,]+", values.strip()) if v]
    try:
        nums = [float(v) for v in values]
    except (TypeError, ValueError):
        raise InputError(f"{where}: intrinsics must be numbers 'fx,fy,cx,cy', got {values!r}") from None
    if len(nums) == 9:
        nums = [nums[0], nums[4], nums[2], nums[5]]
    if len(nums) != 4:
        raise InputError(
            f"{where}: expected 4 intrinsics (fx fy cx cy) or a 3x3 K (9), got {len(nums)} values"
        )
    if not all(math.isfinite(v) for v in nums) or nums[0] <= 0 or nums[1] <= 0:
        raise InputError(f"{where}: intrinsics must be finite with fx, fy > 0, got {nums}")
    return nums[0], nums[1], nums[2], nums[3]

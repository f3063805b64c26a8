"""Edge-aware point-cloud metric: Chamfer distance near depth discontinuities ("flying pixels").

Definition (no reference implementation exists; this is ours):

1. **Edge region.** Canny on the ground-truth *log* depth: Sobel derivatives (3x3) of ``ln d`` feed
   ``cv2.Canny`` with hysteresis thresholds ``low``/``high`` in units of the Sobel response of
   ``ln d`` (defaults 0.1 / 0.2: a depth ratio step of about 5 % or more across a pixel is an
   edge, smooth slanted surfaces are not), L2 gradient. Invalid ground-truth pixels are filled with
   the median valid log depth before filtering. The edges are dilated by ``dilation`` pixels
   (square kernel) and intersected with the valid mask.
2. **Points.** The aligned prediction and the ground truth are back-projected with the intrinsics
   at the *same* edge-region pixels (:func:`ppd_lightning.geometry.depth_to_points`). At most
   ``max_points`` pixels are used (a random subset, the same for both clouds).
3. **Chamfer.** ``CD = 0.5 * (mean_p min_g ||p - g|| + mean_g min_p ||g - p||)`` in metres.

It is 0 for the ground truth against itself. A prediction that smears depth across an occlusion
boundary puts points between the two surfaces, far from every ground-truth point, and scores high;
small smooth errors move points only slightly and score low.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
from torchmetrics import Metric

from ppd_lightning.geometry import as_hw, depth_to_points

__all__ = ["EdgeChamfer", "chamfer_distance", "edge_chamfer", "edge_region"]

_SOBEL_SCALE = 1000.0  # log-depth Sobel response -> int16 for cv2.Canny(dx, dy, ...)


def edge_region(gt, valid, low: float = 0.1, high: float = 0.2, dilation: int = 3) -> np.ndarray:
    """Bool (H, W) mask of the dilated Canny edges of ``ln(gt)`` within ``valid``."""
    d = as_hw(gt, "gt").astype(np.float64)
    v = as_hw(valid, "valid").astype(bool) & np.isfinite(d) & (d > 0)
    if not v.any():
        return np.zeros(d.shape, bool)
    logd = np.where(v, np.log(np.where(v, d, 1.0)), np.median(np.log(d[v])))
    logd = logd.astype(np.float32)
    dx = cv2.Sobel(logd, cv2.CV_32F, 1, 0, ksize=3)
    dy = cv2.Sobel(logd, cv2.CV_32F, 0, 1, ksize=3)
    dx16 = np.clip(np.round(dx * _SOBEL_SCALE), -32767, 32767).astype(np.int16)
    dy16 = np.clip(np.round(dy * _SOBEL_SCALE), -32767, 32767).astype(np.int16)
    edges = cv2.Canny(dx16, dy16, low * _SOBEL_SCALE, high * _SOBEL_SCALE, L2gradient=True) > 0
    if dilation > 0:
        kernel = np.ones((2 * dilation + 1, 2 * dilation + 1), np.uint8)
        edges = cv2.dilate(edges.astype(np.uint8), kernel) > 0
    return edges & v


def chamfer_distance(a: torch.Tensor, b: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Symmetric Chamfer distance ``0.5 * (mean_a min_b |a-b| + mean_b min_a |b-a|)``; (N,3), (M,3)."""
    if len(a) == 0 or len(b) == 0:
        return torch.tensor(float("nan"))

    def one_way(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        mins = [
            torch.cdist(x[i : i + chunk], y, compute_mode="donot_use_mm_for_euclid_dist").min(1).values
            for i in range(0, len(x), chunk)
        ]
        return torch.cat(mins).mean()

    a, b = a.to(torch.float32), b.to(torch.float32)
    return 0.5 * (one_way(a, b) + one_way(b, a))


def edge_chamfer(
    pred,
    gt,
    valid,
    intrinsics,
    low: float = 0.1,
    high: float = 0.2,
    dilation: int = 3,
    max_points: int | None = 16384,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> float:
    """Edge-region Chamfer distance (metres) between the aligned ``pred`` and ``gt`` (H, W);
    NaN when the ground truth has no edge pixel. Regions larger than ``max_points`` are subsampled with
    ``generator``, by default a fixed-seed one, so an image always scores the same in every run."""
    region = edge_region(gt, valid, low, high, dilation)
    v, u = np.nonzero(region)
    if len(v) == 0:
        return math.nan
    if max_points is not None and len(v) > max_points:
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        sel = torch.randperm(len(v), generator=generator)[:max_points].numpy()
        keep = np.zeros(len(v), bool)
        keep[sel] = True
        sub = np.zeros_like(region)
        sub[v[keep], u[keep]] = True
        region = sub
    p = torch.as_tensor(as_hw(pred, "pred").astype(np.float32))
    g = torch.as_tensor(as_hw(gt, "gt").astype(np.float32))
    mask = torch.from_numpy(region)
    if device is not None:
        p, g, mask = p.to(device), g.to(device), mask.to(device)
    pts_p = depth_to_points(p, intrinsics, mask)
    pts_g = depth_to_points(g, intrinsics, mask)
    return float(chamfer_distance(pts_p, pts_g))


class EdgeChamfer(Metric):
    """Mean over images of :func:`edge_chamfer`; images without edges are skipped.

    Sum states (``dist_reduce_fx="sum"``) like :class:`~ppd_lightning.evaluation.metrics.DepthMetrics`.
    ``update`` takes one image's (H, W) maps and its 3x3 intrinsics; the image's value is left in
    :attr:`last_value` (NaN when skipped) for per-image reports.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, **edge_kwargs) -> None:
        metric_kwargs = {k: edge_kwargs.pop(k) for k in list(edge_kwargs) if k in ("sync_on_compute",)}
        super().__init__(**metric_kwargs)
        self.edge_kwargs = edge_kwargs
        self.last_value = math.nan
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred, gt, valid, intrinsics) -> None:  # type: ignore[override]
        value = edge_chamfer(pred, gt, valid, intrinsics, **self.edge_kwargs)
        self.last_value = value
        if math.isfinite(value):
            self.total = self.total + value
            self.count = self.count + 1

    def compute(self) -> torch.Tensor:  # type: ignore[override]
        if int(self.count) == 0:
            return torch.tensor(float("nan"), dtype=torch.float64)
        return self.total / self.count.to(torch.float64)

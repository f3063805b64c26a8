"""Depth metrics: a per-image function and a torchmetrics ``Metric`` with sum states.

Definitions (per image, over its valid pixels ``i = 1..n``, ``p`` = aligned prediction, ``d`` =
ground truth, both in metres; ``p`` is clamped below at ``1e-6`` so the logs are defined). They
follow Marigold's evaluation code (``src/util/metric.py``):

============  ==============================================================================
abs_rel       mean(|p - d| / d)
sq_rel        mean((p - d)^2 / d)
rmse          sqrt(mean((p - d)^2))
rmse_log      sqrt(mean((ln p - ln d)^2))
log10         mean(|log10 p - log10 d|)
silog         100 * sqrt(mean(e^2) - mean(e)^2), e = ln p - ln d   (scale-invariant log RMSE)
delta05       fraction with max(p/d, d/p) < 1.25^0.5
delta1        fraction with max(p/d, d/p) < 1.25
delta2        fraction with max(p/d, d/p) < 1.25^2
delta3        fraction with max(p/d, d/p) < 1.25^3
============  ==============================================================================

The dataset score is the mean of the per-image values over the images that have at least one
valid pixel (images without one are skipped, not counted). A valid pixel (mask, finite ``d > 0``)
whose prediction is not finite is never left out: it fails every delta and makes the image's error
metrics ``inf`` (a NaN can only make a score worse; ``evaluate.py`` refuses such predictions). All values are fractions (``silog``
keeps its customary factor 100).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torchmetrics import Metric

from ppd_lightning.evaluation.reduce import sum_f64

__all__ = ["METRIC_NAMES", "DepthMetrics", "depth_metrics_per_image", "format_table"]

METRIC_NAMES: tuple[str, ...] = (
    "abs_rel",
    "sq_rel",
    "rmse",
    "rmse_log",
    "log10",
    "silog",
    "delta05",
    "delta1",
    "delta2",
    "delta3",
)

_MIN_PRED = 1e-6


def _as_bhw(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.dim() == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.dim() == 2:
        x = x[None]
    if x.dim() != 3:
        raise ValueError(f"{name} must be (B,H,W) or (B,1,H,W), got {tuple(x.shape)}")
    return x


def depth_metrics_per_image(
    pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Per-image metrics, vectorised over the batch.

    Args:
        pred, gt: (B,H,W) or (B,1,H,W) depths in metres (``pred`` already aligned).
        mask: bool, same shape; pixels to score (should imply ``gt > 0``).

    Returns:
        ``(metrics, n_valid)``: a dict name -> float64 tensor (B,) (NaN for images with no valid
        pixel) and the number of valid pixels per image (B,).
    """
    pred, gt, mask = _as_bhw(pred, "pred"), _as_bhw(gt, "gt"), _as_bhw(mask, "mask")
    if pred.shape != gt.shape or pred.shape != mask.shape:
        raise ValueError(f"shape mismatch: {tuple(pred.shape)}, {tuple(gt.shape)}, {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be bool, got {mask.dtype}")
    valid = mask & torch.isfinite(gt) & (gt > 0)
    finite = torch.isfinite(pred)
    m = valid & finite
    # valid pixels whose prediction is not finite count: as failures (deltas) and inf errors
    n_bad = sum_f64(valid & ~finite)
    # float32 element-wise, float64 sums. Invalid pixels get p = d = 1, so every error term is
    # exactly 0 there and only the delta counts need the mask.
    dt = torch.float32 if pred.dtype in (torch.float16, torch.bfloat16, torch.float32) else pred.dtype
    n_ok = sum_f64(m)
    n = n_ok + n_bad
    safe_n = n.clamp_min(1.0)
    one = torch.ones((), dtype=dt, device=pred.device)
    p = torch.where(m, pred.to(dt).clamp_min(_MIN_PRED), one)
    d = torch.where(m, gt.to(dt), one)

    def mean(v: torch.Tensor) -> torch.Tensor:
        return sum_f64(v) / safe_n

    diff = p - d
    sq = diff * diff
    inv_d = 1.0 / d
    e = torch.log(p / d)
    ratio = torch.maximum(p * inv_d, d / p)
    mean_e = mean(e)
    mean_e2 = mean(e * e)
    out = {
        "abs_rel": mean(diff.abs() * inv_d),
        "sq_rel": mean(sq * inv_d),
        "rmse": mean(sq).sqrt(),
        "rmse_log": mean_e2.sqrt(),
        "log10": mean(e.abs()) / math.log(10.0),
        "silog": (mean_e2 - mean_e**2).clamp_min(0.0).sqrt() * 100.0,
        "delta05": mean((ratio < 1.25**0.5) & m),
        "delta1": mean((ratio < 1.25) & m),
        "delta2": mean((ratio < 1.25**2) & m),
        "delta3": mean((ratio < 1.25**3) & m),
    }
    inf = torch.full_like(n, math.inf)
    out = {k: v if k.startswith("delta") else torch.where(n_bad > 0, inf, v) for k, v in out.items()}
    empty = n == 0
    nan = torch.full_like(n, float("nan"))
    out = {k: torch.where(empty, nan, v) for k, v in out.items()}
    return out, n.to(torch.long)


class DepthMetrics(Metric):
    """Mean over images of the per-image depth metrics (see the module docstring).

    One sum state per metric plus the image count, all with ``dist_reduce_fx="sum"``: the result
    across processes is exactly the single-process one (no padded duplicates, provided the sampler
    does not repeat samples). ``compute()`` returns name -> scalar tensor (NaN when no image was
    counted); :attr:`count` holds the number of images counted.
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for name in METRIC_NAMES:
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor) -> None:  # type: ignore[override]
        values, n = depth_metrics_per_image(pred, gt, mask)
        keep = n > 0
        for name in METRIC_NAMES:
            v = values[name]
            setattr(self, name, getattr(self, name) + torch.where(keep, v, torch.zeros_like(v)).sum())
        self.count = self.count + keep.sum()

    def compute(self) -> dict[str, torch.Tensor]:  # type: ignore[override]
        c = self.count.to(torch.float64)
        if int(self.count) == 0:
            return {name: torch.tensor(float("nan"), dtype=torch.float64) for name in METRIC_NAMES}
        return {name: getattr(self, name) / c for name in METRIC_NAMES}


def format_table(
    results: Mapping[str, Mapping[str, Any]], columns: list[str] | None = None, count: str = "n_images"
) -> str:
    """A plain-text table, one row per benchmark: the ``count`` column, then ``columns`` (default: the
    image metrics, lower-is-better then the deltas, and the edge Chamfer when any benchmark has it)."""
    if columns is None:
        columns = [*METRIC_NAMES] + (
            ["edge_chamfer"] if any("edge_chamfer" in r for r in results.values()) else []
        )
    cols = [count, *columns]
    cell = max(9, *(len(c) for c in cols))
    width = max([9, *(len(n) for n in results)])
    head = f"{'benchmark':<{width}} " + " ".join(f"{c:>{cell}}" for c in cols)
    lines = [head, "-" * len(head)]
    for bench, r in results.items():
        cells = [f"{int(r.get(count, 0)):>{cell}d}"]
        cells += [f"{r.get(c, math.nan):>{cell}.4f}" for c in columns]
        lines.append(f"{bench:<{width}} " + " ".join(cells))
    return "\n".join(lines)

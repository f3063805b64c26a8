"""Synthetic data and a plain sequential RANSAC for the alignment tests and measurements.

``kitti_like`` / ``nyu_like`` build (pred, gt, mask) batches whose predictions are affine in
``log(d + 1)`` (slope ``A_TRUE``) apart from gross outliers and noise; ``sequential_ransac`` is
scikit-learn's ``RANSACRegressor`` trial loop written out per image in numpy, for a given sample
sequence; ``sklearn_pairs`` is the sample sequence ``RANSACRegressor(random_state=seed)`` draws.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.utils.random import sample_without_replacement

A_TRUE, B_TRUE = 0.7, 0.4


def _smooth(g: torch.Generator, b: int, h: int, w: int, cells: int = 8) -> torch.Tensor:
    low = torch.rand(b, 1, cells, cells * max(1, w // h), generator=g)
    return torch.nn.functional.interpolate(low, (h, w), mode="bilinear", align_corners=False)[:, 0]


def eigen_crop(h: int, w: int) -> torch.Tensor:
    """Garg/Eigen crop of a KITTI image of any size (fractions of the 375x1242 frame)."""
    m = torch.zeros(h, w, dtype=torch.bool)
    m[int(0.40810811 * h) : int(0.99189189 * h), int(0.03594771 * w) : int(0.96405229 * w)] = True
    return m


def kitti_like(
    seed: int, b: int = 1, h: int = 352, w: int = 1216, valid: float = 0.25, outliers: float = 0.03
):
    """Sparse KITTI-like maps: depth 2-80 m growing towards the top, ``valid`` of the pixels in
    the Eigen crop carry ground truth, ``outliers`` of those have a grossly wrong prediction
    on the far half of the depths (``log(d + 1)`` off by 0.4-1.2, one side: the MAD threshold, about 0.6, admits some of them,
    and lines shifted towards them collect more inliers than the true one); elsewhere the prediction
    is exactly affine: ``log(d + 1) = A_TRUE * pred + B_TRUE``. ``valid`` is the fraction of the
    whole image with ground truth (all of it inside the crop)."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.linspace(1.0, 0.0, h)[None, :, None]
    gt = 2.0 + 78.0 * (0.15 * _smooth(g, b, h, w) + 0.85 * rows) ** 2
    crop = eigen_crop(h, w)
    inside = min(1.0, valid * h * w / max(1, int(crop.sum())))
    mask = crop[None] & (torch.rand(b, h, w, generator=g) < inside)
    pred = (torch.log1p(gt) - B_TRUE) / A_TRUE
    # the outliers are on the far half (where lidar returns are least reliable)
    far = gt > torch.quantile(gt[mask], 0.5)
    bad = (torch.rand(b, h, w, generator=g) < 2 * outliers) & far
    pred = torch.where(bad, pred + (0.4 + 0.8 * torch.rand(b, h, w, generator=g)) / A_TRUE, pred)
    return pred, gt, mask


def nyu_like(seed: int, b: int = 1, h: int = 480, w: int = 640, noise: float = 0.05, outliers: float = 0.05):
    """Dense NYU-like maps (0.5-10 m, 95 % valid) with Gaussian prediction noise ``noise`` (in
    prediction units) and ``outliers`` gross errors (uniform over twice the prediction range)."""
    g = torch.Generator().manual_seed(seed)
    gt = 0.5 + 9.5 * _smooth(g, b, h, w, cells=6) ** 1.5
    mask = torch.rand(b, h, w, generator=g) < 0.95
    pred = (torch.log1p(gt) - B_TRUE) / A_TRUE + noise * torch.randn(b, h, w, generator=g)
    lo, hi = float(pred.min()), float(pred.max())
    bad = torch.rand(b, h, w, generator=g) < outliers
    wild = lo - 0.5 * (hi - lo) + 2 * (hi - lo) * torch.rand(b, h, w, generator=g)
    return torch.where(bad, wild, pred), gt, mask


def sklearn_pairs(n: int, seed: int, trials: int) -> np.ndarray:
    """The first ``trials`` 2-point samples ``RANSACRegressor(random_state=seed)`` draws from ``n``
    points (its estimator takes no random state, so the sampler is the only consumer)."""
    rs = np.random.RandomState(seed)
    return np.stack([sample_without_replacement(n, 2, random_state=rs) for _ in range(trials)])


def _r2(y: np.ndarray, fit: np.ndarray) -> float:
    if y.size < 2:
        return math.nan
    ss_res = float(((y - fit) ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum())
    if ss_tot == 0:
        return 1.0 if ss_res == 0 else 0.0
    return 1.0 - ss_res / ss_tot


def sequential_ransac(
    x: np.ndarray, y: np.ndarray, pairs: np.ndarray, max_trials: int = 1000, p: float = 0.99
):
    """scikit-learn's trial loop, one trial at a time, in float64. Returns ``(a, b, n_trials,
    n_inliers)`` of the winning 2-point line (``a = b = nan`` when no trial is accepted)."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    thr = float(np.median(np.abs(y - np.median(y))))
    eps = np.spacing(1)
    best_n, best_score, best = 1, -math.inf, (math.nan, math.nan)
    limit, k = max_trials, 0
    while k < min(limit, len(pairs)):
        i, j = pairs[k]
        k += 1
        xm, ym = (x[i] + x[j]) / 2, (y[i] + y[j]) / 2
        d1, d2 = x[i] - xm, x[j] - xm
        sxx = d1 * d1 + d2 * d2
        a = (d1 * (y[i] - ym) + d2 * (y[j] - ym)) / sxx if sxx > 0 else 0.0
        b = ym - a * xm
        inl = np.abs(y - (a * x + b)) <= thr
        cnt = int(inl.sum())
        if cnt < best_n:
            continue
        score = _r2(y[inl], a * x[inl] + b)
        if cnt == best_n and score < best_score:
            continue
        best_n, best_score, best = cnt, score, (a, b)
        denom = max(eps, 1 - (cnt / x.size) ** 2)
        dyn = math.inf if denom == 1 else abs(math.ceil(math.log(max(eps, 1 - p)) / math.log(denom)))
        limit = min(limit, dyn)
    return best[0], best[1], k, (best_n if not math.isnan(best[0]) else 0)

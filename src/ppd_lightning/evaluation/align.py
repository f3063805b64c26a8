"""Alignment of affine-invariant predictions to ground truth, per image of a batch.

Two alignments, one implementation each, shared by ``evaluate.py``, the training validation and the
point clouds:

* :func:`align_least_squares` (``marigold`` protocol): per image, the scale and shift minimising
  ``sum_valid (s * p + t - d)^2`` in depth space, closed form; ``max_resolution`` is Marigold's
  ``alignment_max_res``, reproduced exactly (it only narrows the width, see there).
* :func:`align_log_ransac` (``ppd`` protocol): per image, ``log(d + 1) ~= a * p + b`` fitted as
  scikit-learn's ``RANSACRegressor(max_trials=1000)`` on a ``LinearRegression`` does: 2-point
  samples, residual threshold = median absolute deviation (MAD) of ``log(d + 1)``, inliers
  ``|residual| <= threshold``, the sample with the most inliers wins (on a tie: an R^2 on its
  inliers at least as high), dynamic stopping at ``stop_probability``, least-squares refit on the
  winner's inliers. A non-positive slope falls back to ``a = mean(log(d + 1)) / mean(p), b = 0``;
  the result ``exp(a * p + b) - 1`` is clipped to ``[1e-3, max valid d]`` per image.

For the same sequence of 2-point samples the RANSAC is scikit-learn's answer: the same trials, the
same inlier set (its float64 test ``|y - (a x + b)| <= thr``), the same refit. Its trial loop
(:func:`_search`) runs on the host over inlier counts from one of two backends, both counting on
float32 residuals with the float64 test for the pixels within a rounding bound of the threshold
(:func:`_margin`): the float64 counts at half the memory traffic.

* CPU tensors (:class:`_HostPoints`): numpy, one image and one trial at a time (none past the stop)
  into reused buffers, the MAD by two in-place ``np.partition``.
* other devices (:class:`_BatchPoints`): torch, all images at once in padded rows, chunks of 1, 1,
  2, 4, ... trials: few kernel launches and host round trips, what a GPU batch pays for.

Inputs are ``(B, H, W)`` (or ``(B, 1, H, W)``) tensors plus a bool mask of the same shape; outputs have
the input's shape. One (H, W) map: ``align_log_ransac(pred[None], gt[None], mask[None])[0]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ppd_lightning.evaluation.reduce import sum_f64

__all__ = [
    "RansacFit",
    "align_least_squares",
    "align_log_ransac",
    "fit_least_squares",
    "fit_log_ransac",
    "masked_median",
]


def _flatten(x: torch.Tensor) -> torch.Tensor:
    if x.dim() == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.dim() != 3:
        raise ValueError(f"expected (B,1,H,W) or (B,H,W), got {tuple(x.shape)}")
    return x.reshape(x.shape[0], -1)


def _check(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor) -> None:
    if pred.shape != gt.shape or pred.shape != mask.shape:
        raise ValueError(
            f"pred, gt and mask must have the same shape, got {tuple(pred.shape)}, "
            f"{tuple(gt.shape)}, {tuple(mask.shape)}"
        )
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor, got {mask.dtype}")


# --- least squares (marigold) ----------------------------------------------------------------------


def _weighted_lstsq(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row least squares ``y ~= a * x + b`` over the entries where ``w`` is true.

    ``x, y``: (B, N) float; ``w``: (B, N) bool. Sums are accumulated in float64 around the row
    means (numerically the same as ``np.linalg.lstsq`` on these sizes). Rows without a selected
    entry get ``a = 0, b = 0``; rows where ``x`` is constant get ``a = 0, b = mean(y)`` (the
    minimum-norm solution of the centred problem, as ``LinearRegression`` gives).
    """
    # float32 element-wise work, float64 accumulation. Entries outside ``w`` are replaced, not
    # weighted: an inf or NaN there must not reach the sums
    x, y = torch.where(w, x, 0.0), torch.where(w, y, 0.0)
    n = sum_f64(w)
    safe_n = n.clamp_min(1.0)
    mx, my = sum_f64(x) / safe_n, sum_f64(y) / safe_n
    cx = torch.where(w, x - mx[:, None].to(x.dtype), 0.0)
    cy = torch.where(w, y - my[:, None].to(y.dtype), 0.0)
    # the centring used rounded means: correct for the (tiny) residual offsets
    ex, ey = sum_f64(cx) / safe_n, sum_f64(cy) / safe_n
    sxx = sum_f64(cx * cx) - n * ex * ex
    sxy = sum_f64(cx * cy) - n * ex * ey
    degenerate = sxx <= 1e-12 * safe_n * (mx * mx + 1.0)
    a = torch.where(degenerate, 0.0, sxy / torch.where(degenerate, 1.0, sxx))
    b = my - a * mx
    return torch.where(n < 1, 0.0, a), torch.where(n < 1, 0.0, b)


def fit_least_squares(
    pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image ``(scale, shift)`` (float64, shape (B,)) minimising ``||scale*pred + shift - gt||``
    over ``mask``."""
    _check(pred, gt, mask)
    x, y = _flatten(pred), _flatten(gt)
    if not x.is_floating_point() or x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    return _weighted_lstsq(x, y.to(x.dtype), _flatten(mask))


def _marigold_downscale(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Marigold's ``torch.nn.Upsample(scale_factor=factor, mode="nearest")`` on each map as a
    (1, H, W) tensor: a 3-D input is read as (N, C, L), so only the width is resampled (to
    ``floor(W * factor)`` columns, column ``j`` taken from ``floor(j / factor)``) and every row is
    kept. The batch is the N axis, which changes nothing per map. Bool maps go through float32 and
    come back as ``.bool()``, as Marigold's mask does."""
    h, w = x.shape[-2:]
    maps = x.reshape(-1, h, w)
    src = maps.float() if x.dtype == torch.bool else maps
    out = torch.nn.functional.interpolate(src, scale_factor=factor, mode="nearest")
    return out.bool() if x.dtype == torch.bool else out


def align_least_squares(
    pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor, max_resolution: int | None = None
) -> torch.Tensor:
    """Scale-and-shift ``pred`` onto ``gt`` in depth space (marigold protocol); no clipping.

    ``max_resolution``: when ``s = min(max_resolution / H, max_resolution / W) < 1``, the scale and
    shift are fitted on the maps brought down as Marigold's ``alignment_max_res`` does
    (:func:`_marigold_downscale`: the width only, an ETH3D 4032 x 6048 map is fitted at
    4032 x 1024, a portrait 6048 x 4032 one at 6048 x 682), then applied at full resolution.
    Images without a valid pixel are returned unchanged.
    """
    _check(pred, gt, mask)
    h, w = pred.shape[-2:]
    factor = math.inf if max_resolution is None else min(max_resolution / h, max_resolution / w)
    fp, fg, fm = (
        (_marigold_downscale(v, factor) for v in (pred, gt, mask)) if factor < 1 else (pred, gt, mask)
    )
    scale, shift = fit_least_squares(fp, fg, fm)
    has = _flatten(fm).any(1)
    scale, shift = torch.where(has, scale, 1.0), torch.where(has, shift, 0.0)
    view = (-1,) + (1,) * (pred.dim() - 1)
    return pred * scale.view(view).to(pred.dtype) + shift.view(view).to(pred.dtype)


# --- medians ---------------------------------------------------------------------------------------


def _nan_median(xv: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """Per-row median of the non-NaN entries of ``xv`` (B, N), of which row b has ``n[b]``; NaN
    for a row without any. As ``np.median``: the mean of the two middle values for an even count."""
    lower = torch.nanmedian(xv, dim=1).values
    if not bool((n % 2 == 0).any()):
        return lower
    # the upper middle value is the lower one unless fewer than n//2 + 1 values are <= it
    at_most = (xv <= lower[:, None]).sum(1)  # NaN compares false
    above = torch.where(xv > lower[:, None], xv, math.inf).amin(1)
    upper = torch.where(at_most < n // 2 + 1, above, lower)
    return 0.5 * (lower + upper)


def masked_median(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-row median of ``x`` (B, N) over ``mask`` (B, N), NaN for empty rows; as ``np.median``
    (the mean of the two middle values when the count is even)."""
    return _nan_median(torch.where(mask, x, math.nan), mask.sum(1))


def _partition_median(v: np.ndarray) -> float:
    """``np.median`` of a non-empty float array without NaN, partitioning ``v`` in place (one
    selection; for an even count the lower middle value is the maximum of the lower part)."""
    k = v.size // 2
    v.partition(k)
    return float(v[k]) if v.size % 2 else float((v[:k].max() + v[k]) / 2)


def _mad(v: np.ndarray, scratch: np.ndarray) -> float:
    """scikit-learn's threshold ``np.median(np.abs(v - np.median(v)))`` (0 for no value), by two
    in-place selections on ``scratch`` (float64, at least ``v.size`` long)."""
    if not v.size:
        return 0.0
    d = scratch[: v.size]
    np.copyto(d, v)
    med = _partition_median(d)
    return _partition_median(np.abs(np.subtract(v, med, out=d), out=d))


# --- RANSAC: scikit-learn's trial loop ---------------------------------------------------------------

_EPS = float(np.spacing(1))  # scikit-learn's _EPSILON
_U32 = 2.0**-24  # float32 unit roundoff


def _stop_bound(n_inliers: int, n_points: int, probability: float) -> float:
    """scikit-learn's ``_dynamic_max_trials`` for 2-point samples."""
    ratio = n_inliers / n_points
    nom, denom = max(_EPS, 1.0 - probability), max(_EPS, 1.0 - ratio * ratio)
    if nom == 1.0:
        return 0.0
    return math.inf if denom == 1.0 else abs(math.ceil(math.log(nom) / math.log(denom)))


def _two_point_lines(x1, y1, x2, y2):
    """``LinearRegression`` on two points, element-wise in float64 (numpy or torch): the line through
    them, or the horizontal line through their mean when ``x1 == x2`` (its minimum-norm solution:
    the trial counts, it is not skipped)."""
    xm, ym = 0.5 * (x1 + x2), 0.5 * (y1 + y2)
    d1, d2 = x1 - xm, x2 - xm
    sxx = d1 * d1 + d2 * d2
    a = (d1 * (y1 - ym) + d2 * (y2 - ym)) / (sxx + (sxx == 0))  # x1 == x2: 0 / 1
    return a, ym - a * xm


def _margin(a, b, thr, x_max, y_max):
    """Bound on the error of the float32 residual ``|(a x + b) - y|`` (a, b, y rounded to float32,
    three roundings): a float32 residual ``<= thr - margin`` is a float64 inlier, one ``> thr +
    margin`` is not. About 3 units of roundoff are needed; 8 leave room for the rounded bounds."""
    return 8 * _U32 * (y_max + abs(a) * x_max + abs(b) + thr)


def _r2(y, res) -> float:
    """``estimator.score`` on a line's inliers: R^2 from their targets ``y`` and residuals ``res``
    (numpy or torch); NaN for fewer than 2 (scikit-learn's r2_score), 1 or 0 when ``y`` is constant."""
    if y.shape[0] < 2:
        return math.nan
    ss_res, ss_tot = float((res * res).sum()), float(((y - y.mean()) ** 2).sum())
    return 1.0 - ss_res / ss_tot if ss_tot != 0 else float(ss_res == 0)


@dataclass
class RansacFit:
    """Per image (shape (B,)): the fit ``a, b`` of ``log(gt + 1) ~= a * pred + b`` (float64 tensors
    on the input's device: the least-squares refit on the winner's inliers, the ppd fallback
    applied) and the search (numpy): the winning 2-point line ``line_a, line_b`` (NaN: no trial
    accepted), its inlier count on the scored pixels (0: none), the number of trials run
    (scikit-learn's ``n_trials_``) and the winning trial's 0-based index (-1: none); ``gt_max``: the
    largest ground truth among the fitted pixels (float64 tensor, -inf: none)."""

    a: torch.Tensor | None
    b: torch.Tensor | None
    line_a: np.ndarray
    line_b: np.ndarray
    n_inliers: np.ndarray
    n_trials: np.ndarray
    best_trial: np.ndarray
    gt_max: torch.Tensor | None = None


def _search(points, a, b, max_trials: int, probability: float) -> RansacFit:
    """scikit-learn's ``RANSACRegressor.fit`` trial loop per image over the lines ``a, b`` (B, T) of
    its trials: a trial replaces the best with more inliers than it, or as many (at least 1) and an
    R^2 not lower (NaN compares false, as there); an accepted trial lowers the stopping bound to
    ``_dynamic_max_trials`` of its inlier ratio and the image stops after trial ``k >= bound``.
    ``points`` counts the inliers of a chunk of trials; trials past an image's stop are ignored, so
    the result is the sequential loop's whatever the chunk sizes. R^2 is computed only on ties."""
    bsz, limit = len(points.n), min(max_trials, a.shape[1])
    best = np.full(bsz, -1)
    n_best = np.ones(bsz, dtype=np.int64)  # scikit-learn starts at 1: a trial needs >= 1 inlier
    n_trials = np.zeros(bsz, dtype=np.int64)
    bound = [float(limit)] * bsz
    score = [None] * bsz  # R^2 of the best trial, once a tie needed it
    live, done = [i for i in range(bsz) if points.n[i] >= 2], 0
    while live and done < limit:
        t = points.chunk(len(live), done, max(bound[i] for i in live) - done)
        counts = points.count(live, a[live, done : done + t], b[live, done : done + t])
        still = []
        for row, i in enumerate(live):
            for k in range(done, done + t):
                n_trials[i], c = k + 1, int(counts[row, k - done])
                if c == n_best[i] and best[i] >= 0:
                    if score[i] is None:
                        score[i] = points.r2(i, float(a[i, best[i]]), float(b[i, best[i]]))
                    new = points.r2(i, float(a[i, k]), float(b[i, k]))
                    accept = not new < score[i]
                else:
                    new, accept = None, c >= n_best[i]
                if accept:
                    best[i], n_best[i], score[i] = k, c, new
                    bound[i] = min(bound[i], _stop_bound(c, points.n[i], probability))
                if k + 1 >= bound[i]:
                    break
            else:
                still.append(i)
        live, done = still, done + t
    rows = np.flatnonzero(best >= 0)
    line_a, line_b = np.full(bsz, math.nan), np.full(bsz, math.nan)
    a, b = (v.cpu().numpy() if torch.is_tensor(v) else v for v in (a, b))
    line_a[rows], line_b[rows] = a[rows, best[rows]], b[rows, best[rows]]
    return RansacFit(None, None, line_a, line_b, np.where(best >= 0, n_best, 0), n_trials, best)


def _uniform_below(n: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``floor(u * n)`` clamped to ``[0, n - 1]`` for uniform ``u`` in [0, 1) (``n`` broadcasts)."""
    return torch.minimum(torch.floor(u * n).long(), (n - 1).clamp_min(0))


def _draw(shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
    device = generator.device if generator is not None else "cpu"
    return torch.rand(shape, generator=generator, device=device, dtype=torch.float64).cpu()


def _draw_pairs(n: torch.Tensor, trials: int, generator: torch.Generator | None) -> torch.Tensor:
    """(B, trials, 2) pairs of distinct indices below ``n[b]``, uniform. Drawn trial-major, so the
    first k trials of every image do not depend on ``trials`` nor on the backend."""
    u = _draw((trials, n.shape[0], 2), generator)
    i1, i2 = _uniform_below(n, u[..., 0]), _uniform_below(n - 1, u[..., 1])
    return torch.stack([i1, i2 + (i2 >= i1).long()], -1).transpose(0, 1)


def _checked_samples(samples: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    if samples.dim() != 3 or samples.shape[0] != n.shape[0] or samples.shape[2] != 2:
        raise ValueError(f"samples must have shape ({n.shape[0]}, T, 2), got {tuple(samples.shape)}")
    s = samples.to("cpu", torch.long)
    live = (n >= 2)[:, None, None]
    bad = live & ((s < 0) | (s >= n[:, None, None]) | (s[..., :1] == s[..., 1:]))
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"samples of image {i} must be two distinct indices in [0, {int(n[i])}) "
            "(its number of valid pixels)"
        )
    return torch.where(live, s, 0)  # images that are not searched: any index


class _HostPoints:
    """CPU backend: each image's valid pixels as numpy arrays, the prediction ``x`` (float32), the
    target ``y = log(gt + 1)`` (float64) and its float32 copy, the MAD threshold ``thr`` (of these
    points unless given) and the largest ground truth ``gt_max``. Large temporaries are reused:
    fresh ones cost page faults comparable to the work."""

    def __init__(self, x: list[np.ndarray], y: list[np.ndarray], thr: list[float] | None = None, gt_max=None):
        self.x, self.y, self.thr, self.gt_max = x, y, thr, gt_max
        self.n = [v.size for v in x]
        self.y32 = [v.astype(np.float32) for v in y]
        self.x_max, self.y_max = (
            [max(v.max(initial=0), -v.min(initial=0)) for v in z] for z in (x, self.y32)
        )
        n_max = max(self.n, default=0)
        self._f64 = np.empty(n_max)  # scratch: the MAD, the refit
        if thr is None:
            self.thr = [_mad(v, self._f64) for v in y]
        self._res, (self._inl, self._near) = np.empty(n_max, np.float32), np.empty((2, n_max), bool)

    @classmethod
    def build(cls, x: torch.Tensor, g: torch.Tensor, m: torch.Tensor) -> _HostPoints:
        xs, ys, tops = [], [], []
        for xi, gi, mi in zip(x.numpy(), g.numpy(), m.numpy()):
            xi, gi = np.compress(mi, xi), np.compress(mi, gi)
            ends = [v.min(initial=0) for v in (xi, gi)] + [v.max(initial=0) for v in (xi, gi)]
            if not np.isfinite(ends).all():  # (a NaN propagates through min and max)
                keep = np.isfinite(xi) & np.isfinite(gi)
                xi, gi = xi[keep], gi[keep]
            y = np.add(gi, 1.0, dtype=np.float64)  # scikit-learn gets np.log(gt + 1.0)
            ys.append(np.log(np.maximum(y, 1.0, out=y), out=y))  # (negative depths count as 0)
            xs.append(xi)
            tops.append(float(gi.max(initial=-math.inf)))
        return cls(xs, ys, gt_max=torch.tensor(tops, dtype=torch.float64))

    def lines(self, pairs: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        a, b = np.full((2, *pairs.shape[:2]), math.nan)
        for i, (p, x, y) in enumerate(zip(pairs.numpy(), self.x, self.y)):
            if x.size >= 2:
                x1, x2 = x[p[:, 0]].astype(np.float64), x[p[:, 1]].astype(np.float64)
                a[i], b[i] = _two_point_lines(x1, y[p[:, 0]], x2, y[p[:, 1]])
        return a, b

    def subset(self, picks: torch.Tensor) -> _HostPoints:
        """The points ``picks[i]`` of the images with more valid pixels than picks, all of the others."""
        sel = [p if n > p.size else slice(None) for p, n in zip(picks.numpy(), self.n)]
        return _HostPoints([x[s] for x, s in zip(self.x, sel)], [y[s] for y, s in zip(self.y, sel)], self.thr)

    def _inliers(self, i: int, a: float, b: float) -> np.ndarray:
        """scikit-learn's float64 inliers ``|y - (a x + b)| <= thr`` of image ``i`` (a reused buffer):
        float32 residuals, the float64 test for the pixels near the threshold."""
        x, y, thr, inl = self.x[i], self.y[i], self.thr[i], self._inl[: self.n[i]]
        if not abs(a) + abs(b) < 1e30:  # beyond float32: the float64 test everywhere
            return np.less_equal(np.abs(y - (x.astype(np.float64) * a + b)), thr, out=inl)
        res = np.multiply(x, np.float32(a), out=self._res[: self.n[i]])
        np.abs(np.subtract(np.add(res, np.float32(b), out=res), self.y32[i], out=res), out=res)
        margin = _margin(a, b, thr, self.x_max[i], self.y_max[i])
        np.less_equal(res, np.float32(thr + margin), out=inl)
        near = np.greater(res, np.float32(thr - margin), out=self._near[: self.n[i]])
        near = np.flatnonzero(np.logical_and(near, inl, out=near))
        inl[near] = np.abs(y[near] - (x[near].astype(np.float64) * a + b)) <= thr
        return inl

    def chunk(self, n_live: int, done: int, horizon: float) -> int:
        return 1  # a trial is as cheap one at a time: none past the stop

    def count(self, rows: list[int], a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.array(
            [[np.count_nonzero(self._inliers(i, *ab)) for ab in zip(ar, br)] for i, ar, br in zip(rows, a, b)]
        )

    def r2(self, i: int, a: float, b: float) -> float:
        inl = self._inliers(i, a, b)
        y = self.y[i][inl]
        return _r2(y, y - (self.x[i][inl].astype(np.float64) * a + b))

    def refit(self, fit: RansacFit) -> tuple[torch.Tensor, torch.Tensor]:
        ab = np.empty((2, len(self.n)))
        for i, (x, y) in enumerate(zip(self.x, self.y)):
            a, b = 1.0, 0.0  # no consensus set (scikit-learn raises): the reference's `except` branch
            if fit.best_trial[i] >= 0:
                # float64 sums over the inliers, no copies: dx = x - mean, 0 off the inliers
                inl = self._inliers(i, fit.line_a[i], fit.line_b[i])
                k = np.count_nonzero(inl)
                mx = np.add.reduce(x, where=inl, dtype=np.float64) / k
                my = np.add.reduce(y, where=inl) / k
                dx = np.subtract(x, mx, out=self._f64[: x.size], dtype=np.float64)
                np.multiply(dx, inl, out=dx)
                sxx = float(dx @ dx)
                # x constant on the inliers: the minimum-norm solution a = 0, as LinearRegression
                a = 0.0 if sxx <= 1e-12 * k * (mx * mx + 1.0) else float(dx @ y - my * dx.sum()) / sxx
                b = float(my - a * mx)
            if a <= 0:  # the ppd fallback: ratio of the means in log space
                sum_x = float(x.sum(dtype=np.float64))
                a, b = (float(y.sum()) / sum_x if sum_x != 0 else 1.0), 0.0
            ab[:, i] = a, b
        return torch.from_numpy(ab[0]), torch.from_numpy(ab[1])


class _BatchPoints:
    """Torch backend (GPUs): every image's valid pixels packed into rows of a (B, N) tensor, column
    j < n[b] holding image b's j-th valid pixel; padding has ``x = 0``, ``y = NaN`` (never an inlier,
    skipped by the medians and sums). Trials are counted in chunks, all images at once."""

    def __init__(
        self, x: torch.Tensor, y: torch.Tensor, thr: torch.Tensor, gt_max: torch.Tensor | None = None
    ):
        self.x, self.y, self.thr, self.gt_max = x, y, thr, gt_max
        self.n = (~torch.isnan(y)).sum(1).tolist()
        self.y32 = y.float()
        self.x_max = x.abs().amax(1).double() if x.numel() else torch.zeros_like(thr)
        self.y_max = y.nan_to_num(0.0).abs().amax(1) if y.numel() else torch.zeros_like(thr)

    @classmethod
    def build(cls, x: torch.Tensor, g: torch.Tensor, m: torch.Tensor) -> _BatchPoints:
        m = m & torch.isfinite(x) & torch.isfinite(g)
        n = m.sum(1)
        n_max = int(n.max()) if n.numel() else 0
        # pack each row's valid entries to the front in one scatter: position = running count
        pos = torch.where(m, m.cumsum(1) - 1, n_max)
        xc = torch.zeros((x.shape[0], n_max + 1), dtype=x.dtype, device=x.device).scatter_(1, pos, x)
        gc = torch.full_like(xc, math.nan, dtype=g.dtype).scatter_(1, pos, g)
        y = torch.log(gc[:, :n_max].double().clamp_min(0.0) + 1.0)  # NaN stays NaN
        med = _nan_median(y, n)
        thr = torch.nan_to_num(_nan_median((y - med[:, None]).abs(), n), nan=0.0)
        top = (
            gc[:, :n_max].double().nan_to_num(nan=-math.inf).amax(1)
            if n_max
            else torch.full_like(thr, -math.inf)
        )
        return cls(xc[:, :n_max], y, thr, top)

    def lines(self, pairs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = pairs.to(self.x.device).clamp(0, max(self.x.shape[1] - 1, 0))
        if self.x.shape[1] < 2:
            return (torch.full(p.shape[:2], math.nan, dtype=torch.float64, device=p.device),) * 2
        x1, x2 = (self.x.gather(1, p[..., j]).double() for j in (0, 1))
        return _two_point_lines(x1, self.y.gather(1, p[..., 0]), x2, self.y.gather(1, p[..., 1]))

    def subset(self, picks: torch.Tensor) -> _BatchPoints:
        budget = picks.shape[1]
        if self.x.shape[1] <= budget:
            return self
        n = torch.tensor(self.n, device=self.x.device)[:, None]
        cols = torch.where(n > budget, picks.to(self.x.device), torch.arange(budget, device=self.x.device))
        return _BatchPoints(self.x.gather(1, cols), self.y.gather(1, cols), self.thr)

    def chunk(self, n_live: int, done: int, horizon: float) -> int:
        # at most the trials run so far (1, 1, 2, 4, ...: a clean image stops after one), up to the
        # largest current bound, and (n_live, t, N) float32 temporaries of at most 2^24 elements
        cap = max(1, min(64, (1 << 24) // max(1, n_live * self.x.shape[1])))
        return int(max(1, min(horizon, cap, max(1, done))))

    def count(self, rows: list[int], a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
        x, y, y32, thr, x_max, y_max = (self.x, self.y, self.y32, self.thr, self.x_max, self.y_max)
        if len(rows) < self.x.shape[0]:
            x, y, y32, thr, x_max, y_max = (v[rows] for v in (x, y, y32, thr, x_max, y_max))
        if not bool((a.abs() + b.abs() < 1e30).all()):  # beyond float32: the float64 test everywhere
            res = (y[:, None, :] - (a[..., None] * x[:, None, :].double() + b[..., None])).abs()
            return (res <= thr[:, None, None]).sum(2).cpu().numpy()
        # |(b + a x) - y| in float32 (element-wise, never a matmul: TF32 would break the bound)
        res = torch.addcmul(b.float()[..., None], a.float()[..., None], x[:, None, :])
        res.sub_(y32[:, None, :]).abs_()
        margin = _margin(a, b, thr[:, None], x_max[:, None], y_max[:, None])
        lo, hi = ((thr[:, None] + s * margin).float()[..., None] for s in (-1, 1))
        le_hi = res <= hi
        cnt = le_hi.sum(2)
        r, k, j = (le_hi & (res > lo)).nonzero(as_tuple=True)
        if r.numel():
            exact = (y[r, j] - (a[r, k] * x[r, j].double() + b[r, k])).abs() <= thr[r]
            cnt.index_put_((r, k), exact.long() - 1, accumulate=True)
        return cnt.cpu().numpy()

    def r2(self, i: int, a: float, b: float) -> float:
        res = self.y[i] - (a * self.x[i].double() + b)
        inl = res.abs() <= self.thr[i]
        return _r2(self.y[i][inl], res[inl])

    def refit(self, fit: RansacFit) -> tuple[torch.Tensor, torch.Tensor]:
        dev, x = self.x.device, self.x.double()
        found = torch.as_tensor(fit.best_trial >= 0, device=dev)
        a, b = (torch.as_tensor(np.nan_to_num(v), device=dev)[:, None] for v in (fit.line_a, fit.line_b))
        inl = ((self.y - (a * x + b)).abs() <= self.thr[:, None]) & found[:, None]
        a_fit, b_fit = _weighted_lstsq(x, self.y, inl)
        a_fit, b_fit = torch.where(found, a_fit, 1.0), torch.where(found, b_fit, 0.0)
        sum_x, sum_y = x.sum(1), torch.nansum(self.y, 1)
        ratio = torch.where(sum_x != 0, sum_y / torch.where(sum_x != 0, sum_x, 1.0), 1.0)
        pos = a_fit > 0
        return torch.where(pos, a_fit, ratio), torch.where(pos, b_fit, 0.0)


def fit_log_ransac(
    pred: torch.Tensor,
    gt: torch.Tensor,
    mask: torch.Tensor,
    *,
    max_trials: int = 1000,
    stop_probability: float = 0.99,
    generator: torch.Generator | None = None,
    max_score_points: int | None = None,
    samples: torch.Tensor | None = None,
) -> RansacFit:
    """RANSAC fit of ``log(gt + 1) ~= a * pred + b`` per image (see :class:`RansacFit`).

    The result is scikit-learn's ``RANSACRegressor(max_trials=max_trials,
    stop_probability=stop_probability).fit(pred[mask][:, None], np.log(gt[mask] + 1.0))`` (then the
    ppd fallback) for the same sequence of 2-point samples. Pixels count where ``mask`` is true and
    both maps are finite (a negative depth counts as 0). The targets, threshold, lines, inlier
    tests, scores and refit are float64.

    ``samples``: optional (B, T, 2) long tensor; trial ``k`` of image ``b`` uses its valid pixels
    number ``samples[b, k, 0]`` and ``samples[b, k, 1]`` (row-major order of the valid pixels,
    i.e. the order of ``pred[b][mask[b]]``, distinct) instead of random draws from ``generator``;
    at most ``T`` trials run. ``max_score_points``: count inliers on at most this many random valid
    pixels per image (faster on very large maps, but no longer scikit-learn's answer: counts on a
    subset change which trial wins and when the search stops); ``None`` (default): all valid
    pixels. The final inlier set and the least-squares refit always use all valid pixels. With
    ``a <= 0`` (or no usable fit) the fallback of the ppd evaluation applies.
    """
    _check(pred, gt, mask)
    g = _flatten(gt).detach()
    g = g if g.dtype in (torch.float32, torch.float64) else g.double()
    backend = _HostPoints if pred.device.type == "cpu" else _BatchPoints
    every = backend.build(_flatten(pred).detach().float(), g, _flatten(mask))
    n = torch.tensor(every.n, dtype=torch.long)
    pairs = _draw_pairs(n, max_trials, generator) if samples is None else _checked_samples(samples, n)
    scored = every
    if max_score_points is not None:
        scored = every.subset(_uniform_below(n[:, None], _draw((len(n), max_score_points), generator)))
    fit = _search(scored, *every.lines(pairs), max_trials, stop_probability)
    fit.a, fit.b = (v.to(pred.device) for v in every.refit(fit))
    fit.gt_max = every.gt_max.to(pred.device)
    return fit


def align_log_ransac(
    pred: torch.Tensor,
    gt: torch.Tensor,
    mask: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    min_depth: float = 1e-3,
    **options,
) -> torch.Tensor:
    """Align ``pred`` (affine-invariant in ``log(d + 1)`` space) to metric depth (ppd protocol).

    Fits ``log(gt + 1) ~= a * pred + b`` with :func:`fit_log_ransac` (``options``: its
    ``max_trials``, ``stop_probability``, ``max_score_points``, ``samples``) and returns the
    release's ``exp(a * pred + b) - 1`` clipped to ``[min_depth, max gt]`` per image, the maximum
    over the fitted pixels (none: clipped below only). Computed in the prediction's precision, at
    least float32; returned in its dtype (float32 for integers).
    One (H, W) map: ``align_log_ransac(pred[None], gt[None], mask[None])[0]``.
    """
    return _metric_depth(pred, fit_log_ransac(pred, gt, mask, generator=generator, **options), min_depth)


def _metric_depth(pred: torch.Tensor, fit: RansacFit, min_depth: float) -> torch.Tensor:
    """``exp(a * pred + b) - 1`` clipped to ``[min_depth, fit.gt_max]``, per image."""
    p = _flatten(pred).detach()
    p = p if p.dtype in (torch.float32, torch.float64) else p.float()
    top = torch.where(fit.gt_max > -math.inf, fit.gt_max, math.inf).clamp_min(min_depth).to(p.dtype)
    out = torch.addcmul(fit.b.to(p.dtype)[:, None], p, fit.a.to(p.dtype)[:, None]).exp_().sub_(1.0)
    torch.minimum(out.clamp_(min=min_depth), top[:, None], out=out)
    return out.reshape(pred.shape).to(pred.dtype if pred.is_floating_point() else torch.float32)

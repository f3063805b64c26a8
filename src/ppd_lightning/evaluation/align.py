"""Batched alignment of affine-invariant predictions to ground truth, in torch.

Two alignments, one implementation each, shared by ``evaluate.py`` and the training validation:

* :func:`align_least_squares` (``marigold`` protocol): per image, the scale and shift minimising
  ``sum_valid (s * p + t - d)^2`` in depth space (``lstsq([p, 1], d)``), closed form.
* :func:`align_log_ransac` (``ppd`` protocol): per image, ``log(d + 1) ~= a * p + b`` fitted by
  RANSAC with the semantics of scikit-learn's ``RANSACRegressor(max_trials=1000)`` on a
  ``LinearRegression``: 2-point minimal samples, residual threshold = median absolute deviation
  (MAD) of ``log(d + 1)`` over the valid pixels, inliers ``|residual| <= threshold``, the model
  with the most inliers wins, dynamic stopping at ``stop_probability`` and a least-squares refit on
  the winner's inliers. If the fitted slope is not positive, the fallback is the ratio of means
  ``a = mean(log(d + 1)) / mean(p), b = 0``; the result is ``exp(a * p + b) - 1`` clipped to
  ``[1e-3, max valid d]`` per image.

Everything is vectorised over images and RANSAC trials: no per-image Python loop. Inputs are
``(B, H, W)`` (or ``(B, 1, H, W)``) tensors plus a bool mask of the same shape; the output has the
input's shape. Images without enough valid pixels are returned unchanged (least squares: fewer than
one valid pixel) or with the fallback (RANSAC).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import torch

from ppd_lightning.evaluation.reduce import sum_f64

__all__ = [
    "align_least_squares",
    "align_log_ransac",
    "fit_least_squares",
    "fit_log_ransac",
    "masked_median",
]


def _flatten(x: torch.Tensor) -> torch.Tensor:
    if x.dim() == 4:
        if x.shape[1] != 1:
            raise ValueError(f"expected (B,1,H,W) or (B,H,W), got {tuple(x.shape)}")
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


def _weighted_lstsq(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row least squares ``y ~= a * x + b`` over the entries where ``w`` is true.

    ``x, y``: (B, N) float; ``w``: (B, N) bool. Sums are accumulated in float64 around the row
    means (numerically the same as ``np.linalg.lstsq`` on these sizes). Rows with fewer than one
    selected entry get ``a = 0, b = 0``; rows where ``x`` is constant get ``a = 0, b = mean(y)``
    (the minimum-norm solution of the centred problem, as ``LinearRegression`` gives).
    """
    # float32 element-wise work, float64 accumulation (memory-bound; no float64 copies of the maps)
    wf = w.to(x.dtype)
    n = sum_f64(w)
    safe_n = n.clamp_min(1.0)
    mx = sum_f64(x * wf) / safe_n
    my = sum_f64(y * wf) / safe_n
    cx = (x - mx[:, None].to(x.dtype)) * wf
    cy = (y - my[:, None].to(y.dtype)) * wf
    sxx = sum_f64(cx * cx)
    sxy = sum_f64(cx * cy)
    # the centring used float32 means: correct for the (tiny) residual offsets
    ex = sum_f64(cx) / safe_n
    ey = sum_f64(cy) / safe_n
    sxx = sxx - n * ex * ex
    sxy = sxy - n * ex * ey
    degenerate = sxx <= 1e-12 * n.clamp_min(1.0) * (mx * mx + 1.0)
    a = torch.where(degenerate, torch.zeros_like(sxx), sxy / torch.where(degenerate, 1.0, sxx))
    b = my - a * mx
    empty = n < 1
    a = torch.where(empty, torch.zeros_like(a), a)
    b = torch.where(empty, torch.zeros_like(b), b)
    return a, b


def fit_least_squares(
    pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image ``(scale, shift)`` (float64, shape (B,)) minimising ``||scale*pred + shift - gt||``
    over ``mask``."""
    _check(pred, gt, mask)
    x, y = _flatten(pred), _flatten(gt)
    if not x.is_floating_point() or x.dtype == torch.float16 or x.dtype == torch.bfloat16:
        x = x.float()
    return _weighted_lstsq(x, y.to(x.dtype), _flatten(mask))


def align_least_squares(
    pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor, max_resolution: int | None = None
) -> torch.Tensor:
    """Scale-and-shift ``pred`` onto ``gt`` in depth space (marigold protocol); no clipping.

    ``max_resolution``: fit the scale and shift on maps brought down (nearest, by the factor
    ``min(max_resolution / H, max_resolution / W)``, as Marigold's ``alignment_max_res``) when the
    maps are larger, then apply them at full resolution. Images without a valid pixel are returned
    unchanged.
    """
    _check(pred, gt, mask)
    fp, fg, fm = pred, gt, mask
    h, w = pred.shape[-2:]
    factor = None if max_resolution is None else min(max_resolution / h, max_resolution / w)
    if factor is not None and factor < 1:

        def down(x: torch.Tensor) -> torch.Tensor:
            x4 = x.reshape(-1, 1, h, w).to(torch.float32 if x.dtype == torch.bool else x.dtype)
            return torch.nn.functional.interpolate(x4, scale_factor=factor, mode="nearest")[:, 0]

        fp, fg, fm = down(pred), down(gt), down(mask) > 0
    scale, shift = fit_least_squares(fp, fg, fm)
    has = _flatten(fm).any(1)
    scale = torch.where(has, scale, torch.ones_like(scale))
    shift = torch.where(has, shift, torch.zeros_like(shift))
    view = (-1,) + (1,) * (pred.dim() - 1)
    out = pred * scale.view(view).to(pred.dtype) + shift.view(view).to(pred.dtype)
    return out


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
    """Per-row median of ``x`` (B, N) over ``mask`` (B, N), NaN for empty rows.

    Matches ``np.median``: the mean of the two middle values when the count is even. One
    selection (``nanmedian`` gives the lower middle value) plus, for even counts, two linear passes
    for the upper one.
    """
    return _nan_median(torch.where(mask, x, math.nan), mask.sum(1))


def _compact_valid(
    m: torch.Tensor, *rows: torch.Tensor, fills: tuple[float, ...] = ()
) -> tuple[torch.Tensor, ...]:
    """Pack each row's valid entries to the front: (B, N) -> (B, max count), order kept.

    One scatter per tensor, O(N): the positions are the running count of valid entries. Entries
    past a row's count are ``fills[i]`` for the i-th tensor (0 when not given; callers track the
    counts). When every entry is valid the inputs are returned as they are.
    """
    n_max = int(m.sum(1).max().item()) if m.numel() else 0
    if n_max == m.shape[1] and bool(m.all()):
        return tuple(rows)
    pos = torch.where(m, m.cumsum(1) - 1, n_max)
    out = []
    for i, r in enumerate(rows):
        fill = fills[i] if i < len(fills) else 0.0
        packed = torch.full((r.shape[0], n_max + 1), fill, dtype=r.dtype, device=r.device)
        packed.scatter_(1, pos, r)  # invalid entries all land in the spare last column
        out.append(packed[:, :n_max])
    return tuple(out)


def _randint_below(n: torch.Tensor, shape: tuple[int, ...], generator, device) -> torch.Tensor:
    """Uniform integers in ``[0, n_b)`` for each row b (``n`` of shape (B,), result (B, *shape))."""
    gen_device = generator.device if generator is not None else device
    u = torch.rand((n.shape[0], *shape), generator=generator, device=gen_device, dtype=torch.float64)
    u = u.to(device)
    view = (-1,) + (1,) * len(shape)
    k = torch.floor(u * n.view(view).to(torch.float64)).long()
    return torch.minimum(k, (n.view(view) - 1).clamp_min(0))


_EPS64 = sys.float_info.epsilon  # numpy's np.spacing(1), scikit-learn's _EPSILON
_EPS32 = 2.0**-24


def _dynamic_max_trials(n_inliers: torch.Tensor, n_samples: torch.Tensor, probability: float) -> torch.Tensor:
    """scikit-learn's ``_dynamic_max_trials`` for 2-point samples, elementwise (float64)."""
    nom = max(_EPS64, 1.0 - probability)
    if nom == 1.0:
        return torch.zeros_like(n_inliers, dtype=torch.float64)
    ratio = n_inliers.to(torch.float64) / n_samples.to(torch.float64)
    denom = (1.0 - ratio**2).clamp_min(_EPS64)
    bound = torch.ceil(math.log(nom) / torch.log(denom)).abs()
    return torch.where(denom == 1.0, torch.full_like(bound, math.inf), bound)


def _two_point_lines(x1, x2, y1, y2) -> tuple[torch.Tensor, torch.Tensor]:
    """``LinearRegression`` on two points (float64): the line through them, or the horizontal line
    through their mean when ``x1 == x2`` (scikit-learn's minimum-norm solution; no trial is skipped)."""
    xm, ym = 0.5 * (x1 + x2), 0.5 * (y1 + y2)
    dx1, dx2 = x1 - xm, x2 - xm
    sxx = dx1 * dx1 + dx2 * dx2
    ok = sxx > 0
    a = torch.where(
        ok, (dx1 * (y1 - ym) + dx2 * (y2 - ym)) / torch.where(ok, sxx, 1.0), torch.zeros_like(sxx)
    )
    return a, ym - a * xm


@dataclass
class _Points:
    """Pixels on which inliers are tested, per row (B, P): ``x`` float32 and ``y`` float64 (NaN
    where ``valid`` is false; ``x`` is 0 there), their float32 copies ``x32, y32`` centred on the
    valid means ``cx`` (a float32 value) and ``cy``, bounds ``x_max, y_max`` of ``|x32|, |y32|``,
    the sums of the valid ``x`` and ``y`` (float64) and the threshold ``thr``."""

    x: torch.Tensor
    y: torch.Tensor
    valid: torch.Tensor
    count: torch.Tensor
    x32: torch.Tensor
    y32: torch.Tensor
    cx: torch.Tensor
    cy: torch.Tensor
    x_max: torch.Tensor
    y_max: torch.Tensor
    sum_x: torch.Tensor
    sum_y: torch.Tensor
    thr: torch.Tensor


def _points(x: torch.Tensor, y: torch.Tensor, valid: torch.Tensor, count: torch.Tensor, thr) -> _Points:
    safe = count.clamp_min(1).to(torch.float64)
    sum_x = sum_f64(x)  # x is 0 and y NaN outside ``valid``
    sum_y = torch.nansum(y, 1)
    cx = (sum_x / safe).to(torch.float32)
    cy = sum_y / safe
    x32 = x - cx[:, None]
    y32 = (y - cy[:, None]).to(torch.float32)
    if x.numel():
        lo_x, hi_x = torch.aminmax(x32, dim=1)  # padding (x = 0) only widens the bound
        x_max = torch.maximum(hi_x, -lo_x).to(torch.float64)
        y_max = torch.where(valid, y32.abs(), 0.0).amax(1).to(torch.float64)
    else:
        x_max = y_max = torch.zeros_like(safe)
    return _Points(x, y, valid, count, x32, y32, cx.to(torch.float64), cy, x_max, y_max, sum_x, sum_y, thr)


def _bulk_residuals(pts: _Points, rows: torch.Tensor | None, a: torch.Tensor, b: torch.Tensor):
    """``|y - (a x + b)|`` in float32 for the lines ``a, b`` (K, t) (float64) of the rows ``rows``
    (all rows when None) on their points: (K, t, P), NaN where not valid; plus ``lo, hi`` (K, t, 1):
    a float32 residual ``<= lo`` is an inlier in float64 too, one ``> hi`` is not; in between the
    float64 test decides (:func:`_exact_inliers`)."""

    def take(v: torch.Tensor) -> torch.Tensor:
        return v if rows is None else v[rows]

    thr = take(pts.thr)[:, None]
    b_c = b + a * take(pts.cx)[:, None] - take(pts.cy)[:, None]  # the line in centred coordinates
    res = torch.baddbmm(
        b_c.to(torch.float32)[:, :, None], a.to(torch.float32)[:, :, None], take(pts.x32)[:, None, :]
    )
    res.sub_(take(pts.y32)[:, None, :]).abs_()
    margin = (
        8 * _EPS32 * (take(pts.y_max)[:, None] + a.abs() * take(pts.x_max)[:, None] + b_c.abs() + thr) + 1e-30
    )
    lo = (thr - margin).to(torch.float32)[:, :, None]
    hi = (thr + margin).to(torch.float32)[:, :, None]
    return res, lo, hi


def _exact_inliers(pts: _Points, rows, ki, ti, pi, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The float64 inlier test (as scikit-learn's) of pixels ``pi`` against lines ``(ki, ti)``."""
    r = ki if rows is None else rows[ki]
    r64 = pts.y[r, pi] - (a[ki, ti] * pts.x[r, pi].to(torch.float64) + b[ki, ti])
    return r64.abs() <= pts.thr[r]


def _count_inliers(pts: _Points, rows, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Inlier counts (K, t) of the lines ``a, b`` (K, t) on the rows ``rows`` (None: all rows):
    a float32 pass, then the float64 test for the few pixels within a rounding bound of the
    threshold, so the counts are the float64 ones."""
    res, lo, hi = _bulk_residuals(pts, rows, a, b)
    le_hi = res <= hi
    cnt = le_hi.sum(2)
    band = le_hi.logical_and_(res > lo)
    del res
    ki, ti, pi = band.nonzero(as_tuple=True)
    if ki.numel():
        out = (~_exact_inliers(pts, rows, ki, ti, pi, a, b)).long()
        cnt.index_put_((ki, ti), -out, accumulate=True)
    return cnt


def _inlier_mask(pts: _Points, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B, P) float64-exact inlier mask of one line per row (``a, b`` of shape (B,))."""
    res, lo, hi = _bulk_residuals(pts, None, a[:, None], b[:, None])
    inl = res <= hi
    band = inl & (res > lo)
    del res
    ki, ti, pi = band.nonzero(as_tuple=True)
    if ki.numel():
        inl[ki, ti, pi] = _exact_inliers(pts, None, ki, ti, pi, a[:, None], b[:, None])
    return inl[:, 0]


def _inlier_r2(rows, a, b, xs, ys, ms, thr, max_elements) -> torch.Tensor:
    """R^2 of the lines ``(a[k], b[k])`` on their own inliers in row ``rows[k]`` (float64), as
    ``estimator.score(X_inlier, y_inlier)`` in scikit-learn: 1 - ss_res / ss_tot, 1 (0) when ss_tot
    is 0 and ss_res is (not) 0. Fewer than 2 inliers: scikit-learn's score is NaN, which never
    loses a tie; it is returned as +inf (only other such trials can tie with it)."""
    out = []
    step = max(1, max_elements // max(1, ys.shape[1]))
    for s in range(0, rows.shape[0], step):
        r_k, a_k, b_k = rows[s : s + step], a[s : s + step, None], b[s : s + step, None]
        y = ys[r_k]
        res = y - (a_k * xs[r_k].to(torch.float64) + b_k)
        inl = (res.abs() <= thr[r_k][:, None]) & ms[r_k]
        w = inl.to(torch.float64)
        cnt = w.sum(1)
        y_mean = (torch.where(inl, y, 0.0)).sum(1) / cnt.clamp_min(1)
        ss_tot = (torch.where(inl, y - y_mean[:, None], 0.0) ** 2).sum(1)
        ss_res = (torch.where(inl, res, 0.0) ** 2).sum(1)
        r2 = 1.0 - ss_res / torch.where(ss_tot > 0, ss_tot, 1.0)
        r2 = torch.where(ss_tot > 0, r2, (ss_res == 0).to(torch.float64))
        out.append(torch.where(cnt < 2, torch.full_like(r2, math.inf), r2))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64, device=ys.device)


@dataclass
class RansacSearch:
    """Outcome of the trial loop per image (all shape (B,)): the winning 2-point line ``a, b``
    (float64, NaN where no trial was accepted), its inlier count on the scored pixels, the number
    of trials run (scikit-learn's ``n_trials_``) and the 0-based index of the winning trial (-1: none)."""

    a: torch.Tensor
    b: torch.Tensor
    n_inliers: torch.Tensor
    n_trials: torch.Tensor
    best_trial: torch.Tensor


def _ransac_search(
    pts: _Points,
    xc: torch.Tensor,
    yc: torch.Tensor,
    n: torch.Tensor,
    max_trials: int,
    generator: torch.Generator | None,
    stop_probability: float,
    samples: torch.Tensor | None,
    chunk_trials: int,
    max_chunk_elements: int,
) -> RansacSearch:
    """The trial loop of scikit-learn's ``RANSACRegressor.fit``, batched over images and trials.

    Samples are drawn from the packed valid pixels ``xc, yc`` (float32 / float64, ``n`` per row);
    inliers are counted on ``pts``. A chunk of trials is evaluated at once, then scanned in trial
    order with scikit-learn's rules: a trial replaces the best when it has more inliers, or as
    many and an R^2 (on its inliers) at least as high; after each accepted trial the bound becomes
    ``_dynamic_max_trials`` of the best's inlier ratio, and an image stops at the first trial
    ``k >= min(max_trials, bound)``. Trials after the stop are discarded, so the result is the
    sequential procedure's on the same sample sequence. Chunks are sized so that few trials past
    the stop are evaluated: at most the trials run so far (1, 1, 2, 4, ...: a clean image stops
    after one), at most up to the largest current bound of the images still searching, and only
    those images are evaluated.
    """
    bsz, device = xc.shape[0], xc.device
    f64 = torch.float64
    n_score = pts.count
    best_cnt = torch.ones(bsz, dtype=torch.long, device=device)  # scikit-learn starts at 1
    best_score = torch.full((bsz,), -math.inf, dtype=f64, device=device)
    best_known = torch.ones(bsz, dtype=torch.bool, device=device)  # is best_score computed?
    best_a = torch.full((bsz,), math.nan, dtype=f64, device=device)
    best_b = torch.full((bsz,), math.nan, dtype=f64, device=device)
    best_trial = torch.full((bsz,), -1, dtype=torch.long, device=device)
    n_trials = torch.zeros(bsz, dtype=torch.long, device=device)
    done = n < 2
    limit = max_trials if samples is None else min(max_trials, samples.shape[1])
    trials_done = 0
    npts = pts.x.shape[1]
    while trials_done < limit and not bool(done.all()):
        live = ~done
        rows = None if bool(live.all()) else live.nonzero().squeeze(1)
        n_live = bsz if rows is None else int(rows.shape[0])
        # the stop of each searching image is at most its current bound (the bound only drops)
        cur = _dynamic_max_trials(best_cnt, n_score, stop_probability)
        cur = torch.where(best_trial >= 0, cur, math.inf).clamp_max(limit)
        horizon = int(torch.where(live, cur, 0.0).amax().item()) - trials_done
        cap = max(1, min(chunk_trials, max_chunk_elements // max(1, n_live * npts)))
        t = max(1, min(horizon, cap, max(1, trials_done), limit - trials_done))
        if samples is None:  # two distinct valid pixels per trial
            i1 = _randint_below(n, (t,), generator, device)
            i2 = _randint_below((n - 1).clamp_min(1), (t,), generator, device)
            i2 = i2 + (i2 >= i1).long()
        else:
            i1 = samples[:, trials_done : trials_done + t, 0]
            i2 = samples[:, trials_done : trials_done + t, 1]
        x1, x2 = xc.gather(1, i1).to(f64), xc.gather(1, i2).to(f64)
        a, b = _two_point_lines(x1, x2, yc.gather(1, i1), yc.gather(1, i2))
        if rows is None:
            cnt = _count_inliers(pts, None, a, b)
        else:
            cnt = torch.zeros((bsz, t), dtype=torch.long, device=device)
            cnt[rows] = _count_inliers(pts, rows, a[rows], b[rows])

        # sequential scan; item 0 is the best so far, items 1..t this chunk's trials in order.
        # The best's count after each trial is the running maximum of the counts (a trial is
        # accepted with more inliers, or as many and an R^2 at least as high), so the stopping
        # bound, hence where each image stops, needs no score
        cnt_all = torch.cat([best_cnt[:, None], cnt], 1)
        level_all = cnt_all.cummax(1).values
        order = torch.arange(t + 1, device=device)
        accepted = ((cnt >= 1).cummax(1).values) | (best_trial >= 0)[:, None]
        bound = _dynamic_max_trials(level_all[:, 1:], n_score[:, None], stop_probability)
        bound = torch.where(accepted, bound, torch.full_like(bound, math.inf)).clamp_max(max_trials)
        k = trials_done + 1 + order[:t].to(f64)
        stop = k[None, :] >= bound
        stops = stop.any(1)
        end = torch.where(stops, stop.to(torch.int8).argmax(1), t - 1)
        # the best at the stop: among the items up to it with the final count, the highest R^2,
        # the latest on an exact tie; R^2 is computed only where two or more such items compete
        level = level_all.gather(1, (end + 1)[:, None])
        eligible = (cnt_all == level) & (order[None, :] <= (end + 1)[:, None]) & live[:, None]
        score_all = torch.full((bsz, t + 1), -math.inf, dtype=f64, device=device)
        score_all[:, 0] = best_score
        known_all = torch.zeros((bsz, t + 1), dtype=torch.bool, device=device)
        known_all[:, 0] = best_known
        need = eligible & (eligible.sum(1, keepdim=True) > 1) & ~known_all
        if bool(need.any()):
            r_need, items = need.nonzero(as_tuple=True)
            a_all = torch.cat([best_a[:, None], a], 1)
            b_all = torch.cat([best_b[:, None], b], 1)
            score_all[r_need, items] = _inlier_r2(
                r_need,
                a_all[r_need, items],
                b_all[r_need, items],
                pts.x,
                pts.y,
                pts.valid,
                pts.thr,
                max_chunk_elements,
            )
            known_all[r_need, items] = True
        rank = torch.where(eligible, score_all, -math.inf).argsort(dim=1, stable=True).argsort(dim=1)
        pick = torch.where(eligible, rank, -1).argmax(1)
        upd = live & (pick > 0)
        j = (pick - 1).clamp_min(0)[:, None]
        best_cnt = torch.where(upd, cnt.gather(1, j).squeeze(1), best_cnt)
        best_a = torch.where(upd, a.gather(1, j).squeeze(1), best_a)
        best_b = torch.where(upd, b.gather(1, j).squeeze(1), best_b)
        best_score = torch.where(upd, score_all.gather(1, pick[:, None]).squeeze(1), best_score)
        best_known = torch.where(upd, known_all.gather(1, pick[:, None]).squeeze(1), best_known)
        best_trial = torch.where(upd, trials_done + j.squeeze(1), best_trial)
        n_trials = torch.where(done, n_trials, trials_done + 1 + end)
        done = done | stops
        trials_done += t
    return RansacSearch(best_a, best_b, best_cnt.where(best_trial >= 0, 0), n_trials, best_trial)


def fit_log_ransac(
    pred: torch.Tensor,
    gt: torch.Tensor,
    mask: torch.Tensor,
    max_trials: int = 1000,
    generator: torch.Generator | None = None,
    stop_probability: float = 0.99,
    max_score_points: int | None = None,
    chunk_trials: int = 64,
    max_chunk_elements: int = 1 << 24,
    samples: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RANSAC fit of ``log(gt + 1) ~= a * pred + b`` per image; returns ``(a, b)`` as float64 (B,).

    The result is scikit-learn's ``RANSACRegressor(max_trials=max_trials,
    stop_probability=stop_probability).fit(pred[mask][:, None], log(gt[mask] + 1))`` (then the
    ppd fallback) for the same sequence of 2-point samples; see :func:`_ransac_search` for how
    the batched trials keep the sequential semantics. The targets, threshold (MAD), trial lines,
    inlier tests, scores and refit are float64; bulk inlier counting is float32 with a float64
    re-test near the threshold.

    ``samples``: optional (B, T, 2) long tensor; trial ``k`` of image ``b`` uses its valid pixels
    number ``samples[b, k, 0]`` and ``samples[b, k, 1]`` (row-major order of the valid pixels,
    i.e. the order of ``pred[b][mask[b]]``, distinct) instead of random draws; at most ``T``
    trials run. ``max_score_points``: count inliers on at most this many random valid pixels per
    image (faster on very large maps, but no longer scikit-learn's answer: counts on a subset
    change which trial wins and when the search stops); ``None`` (default): all valid pixels.
    The final inlier set and the least-squares refit always use all valid pixels. With ``a <= 0``
    (or no usable fit) the fallback of the ppd evaluation applies (see :func:`align_log_ransac`).
    """
    return _fit_log_ransac(
        pred,
        gt,
        mask,
        max_trials,
        generator,
        stop_probability,
        max_score_points,
        chunk_trials,
        max_chunk_elements,
        samples,
    )[:2]


def _fit_log_ransac(
    pred,
    gt,
    mask,
    max_trials,
    generator,
    stop_probability,
    max_score_points,
    chunk_trials,
    max_chunk_elements,
    samples,
) -> tuple[torch.Tensor, torch.Tensor, RansacSearch]:
    _check(pred, gt, mask)
    f64 = torch.float64
    x = _flatten(pred).to(torch.float32)
    g = _flatten(gt)
    if g.dtype not in (torch.float32, f64):
        g = g.to(f64)
    # log(gt + 1) is finite exactly where gt < inf (negative depths are clamped to 0)
    m = _flatten(mask) & torch.isfinite(x) & (g < math.inf)
    bsz = x.shape[0]
    device = x.device
    n = m.sum(1)
    # valid pixels packed per row: (B, n_max); column j < n_b holds row b's j-th valid pixel.
    # Padding: x = 0, y = NaN (never an inlier, skipped by the medians and sums)
    xc, gc = _compact_valid(m, x, g, fills=(0.0, math.nan))
    yc = torch.log1p(gc.clamp_min(0.0).to(f64))
    n_max = xc.shape[1]
    valid_c = torch.arange(n_max, device=device)[None, :] < n[:, None]
    if samples is not None:
        if samples.dim() != 3 or samples.shape[0] != bsz or samples.shape[2] != 2:
            raise ValueError(f"samples must have shape ({bsz}, T, 2), got {tuple(samples.shape)}")
        samples = samples.to(device=device, dtype=torch.long)
        live = (n >= 2)[:, None, None]
        bad = live & ((samples < 0) | (samples >= n[:, None, None]))
        bad = bad | (live & (samples[..., :1] == samples[..., 1:]))
        if bool(bad.any()):
            b_bad = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"samples of image {b_bad} must be two distinct indices in [0, {int(n[b_bad])}) "
                "(its number of valid pixels)"
            )
        samples = torch.where(live, samples, torch.tensor([0, 1], device=device).clamp_max(max(n_max - 1, 0)))

    # residual threshold: MAD of the targets (scikit-learn's default)
    med = _nan_median(yc, n)
    thr = torch.nan_to_num(_nan_median((yc - med[:, None]).abs(), n), nan=0.0)
    every = _points(xc, yc, valid_c, n, thr)

    # the points on which inliers are counted: all valid pixels unless a budget is given
    if max_score_points is None or n_max <= max_score_points:
        scored = every
    else:
        budget = max_score_points
        s_idx = _randint_below(n, (budget,), generator, device)
        few = (n <= budget)[:, None]
        ms = torch.where(few, valid_c[:, :budget], (n > 0)[:, None].expand(bsz, budget))
        xs = torch.where(few, xc[:, :budget], xc.gather(1, s_idx)).masked_fill(~ms, 0.0)
        ys = torch.where(few, yc[:, :budget], yc.gather(1, s_idx)).masked_fill(~ms, math.nan)
        scored = _points(xs, ys, ms, ms.sum(1), thr)
    search = _ransac_search(
        scored, xc, yc, n, max_trials, generator, stop_probability, samples, chunk_trials, max_chunk_elements
    )

    # final inliers of the winner on all valid pixels, then the least-squares refit: float64 sums
    # of the inliers' x and y (centred on the valid means) and their products, in one matmul
    found = search.best_trial >= 0
    inl = _inlier_mask(every, search.a.nan_to_num(0.0), search.b.nan_to_num(0.0)) & found[:, None]
    feats = torch.empty((bsz, 2, n_max), dtype=f64, device=device)
    torch.sub(xc, every.cx[:, None], out=feats[:, 0])  # exact: float32 values in float64
    torch.sub(yc, every.cy[:, None], out=feats[:, 1])
    feats.masked_fill_(~inl[:, None, :], 0.0)
    gram = torch.bmm(feats, feats.transpose(1, 2))
    sums = feats.sum(2)
    k = inl.sum(1).to(f64)
    safe_k = k.clamp_min(1.0)
    mu, mv = sums[:, 0] / safe_k, sums[:, 1] / safe_k  # the inliers' centred means
    sxx = gram[:, 0, 0] - sums[:, 0] * mu
    sxy = gram[:, 0, 1] - sums[:, 0] * mv
    mx, my = every.cx + mu, every.cy + mv
    # x constant on the inliers: the minimum-norm solution a = 0, b = mean(y), as LinearRegression
    degenerate = sxx <= 1e-12 * safe_k * (mx * mx + 1.0)
    a_fit = torch.where(degenerate, 0.0, sxy / torch.where(degenerate, 1.0, sxx))
    b_fit = my - a_fit * mx
    # no usable fit (scikit-learn raises): the reference's `except` branch, a = 1, b = 0
    usable = k >= 1
    a_fit = torch.where(usable, a_fit, 1.0)
    b_fit = torch.where(usable, b_fit, 0.0)
    # fallback for a non-positive slope: ratio of means in log space
    mean_x, mean_y = every.sum_x, every.sum_y  # the ratio of the means is the ratio of the sums
    ratio = torch.where(mean_x != 0, mean_y / torch.where(mean_x != 0, mean_x, 1.0), 1.0)
    pos = a_fit > 0
    a_out = torch.where(pos, a_fit, ratio)
    b_out = torch.where(pos, b_fit, 0.0)
    return a_out, b_out, search


def align_log_ransac(
    pred: torch.Tensor,
    gt: torch.Tensor,
    mask: torch.Tensor,
    max_trials: int = 1000,
    generator: torch.Generator | None = None,
    stop_probability: float = 0.99,
    max_score_points: int | None = None,
    min_depth: float = 1e-3,
) -> torch.Tensor:
    """Align ``pred`` (affine-invariant in ``log(d + 1)`` space) to metric depth (ppd protocol).

    Fits ``log(gt + 1) ~= a * pred + b`` with :func:`fit_log_ransac`, returns
    ``exp(a * pred + b) - 1`` clipped to ``[min_depth, max valid gt]`` per image (images with no
    valid pixel: clipped below at ``min_depth`` only).
    """
    a, b = fit_log_ransac(
        pred,
        gt,
        mask,
        max_trials=max_trials,
        generator=generator,
        stop_probability=stop_probability,
        max_score_points=max_score_points,
    )
    view = (-1,) + (1,) * (pred.dim() - 1)
    # float32 at least: expm1 in half precision would lose the depth's low bits
    p = pred if pred.dtype in (torch.float32, torch.float64) else pred.float()
    out = torch.expm1(p * a.view(view).to(p.dtype) + b.view(view).to(p.dtype))
    g = _flatten(gt)
    mf = _flatten(mask) & torch.isfinite(g)
    gmax = torch.where(mf, g, torch.full_like(g, -math.inf)).amax(1).to(torch.float64)
    gmax = torch.where(torch.isfinite(gmax), gmax, torch.full_like(gmax, math.inf))
    gmax = torch.maximum(gmax, torch.full_like(gmax, min_depth))
    lo = torch.full_like(gmax, min_depth).view(view).to(out.dtype)
    out = torch.clamp(out, min=lo, max=gmax.view(view).to(out.dtype))
    return out.to(pred.dtype if pred.is_floating_point() else torch.float32)

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


def masked_median(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-row median of ``x`` (B, N) over ``mask`` (B, N), NaN for empty rows.

    Matches ``np.median``: the mean of the two middle values when the count is even. One
    selection (``nanmedian`` gives the lower middle value) plus two linear passes for the upper one.
    """
    xv = torch.where(mask, x, torch.full_like(x, float("nan")))
    lower = torch.nanmedian(xv, dim=1).values
    n = mask.sum(1)
    # the upper middle value is the lower one unless fewer than n//2 + 1 values are <= it
    at_most = (xv <= lower[:, None]).sum(1)  # NaN compares false
    above = torch.where(mask & (x > lower[:, None]), x, torch.full_like(x, float("inf"))).amin(1)
    upper = torch.where(at_most < n // 2 + 1, above, lower)
    return 0.5 * (lower + upper)


def _compact_valid(m: torch.Tensor, *rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Pack each row's valid entries to the front: (B, N) -> (B, max count), order kept.

    One scatter per tensor, O(N): the positions are the running count of valid entries. Entries
    past a row's count are zero; callers track the counts.
    """
    n_max = int(m.sum(1).max().item()) if m.numel() else 0
    pos = torch.where(m, m.cumsum(1) - 1, torch.full_like(m, n_max, dtype=torch.long))
    out = []
    for r in rows:
        packed = torch.zeros(r.shape[0], n_max + 1, dtype=r.dtype, device=r.device)
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


def fit_log_ransac(
    pred: torch.Tensor,
    gt: torch.Tensor,
    mask: torch.Tensor,
    max_trials: int = 1000,
    generator: torch.Generator | None = None,
    stop_probability: float = 0.99,
    max_score_points: int | None = 65536,
    chunk_trials: int = 64,
    max_chunk_elements: int = 1 << 24,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RANSAC fit of ``log(gt + 1) ~= a * pred + b`` per image; returns ``(a, b)`` as float64 (B,).

    Each image's valid pixels are first packed to the front of a row, so trials draw from them
    directly. Trials run in chunks of up to ``chunk_trials`` for all images at once; after each
    chunk, images whose best inlier ratio ``w`` satisfies scikit-learn's stopping rule
    ``trials >= log(1 - stop_probability) / log(1 - w^2)`` stop, and the loop ends when all have
    stopped or ``max_trials`` is reached. Inliers are counted on all valid pixels of an image with
    at most ``max_score_points`` of them, otherwise on ``max_score_points`` of them drawn at random
    (``None``: always all); the final inlier set of the winning model and the least-squares refit
    always use all valid pixels. With ``a <= 0`` (or no usable fit) the fallback of the ppd
    evaluation applies (see :func:`align_log_ransac`).
    """
    _check(pred, gt, mask)
    x = _flatten(pred).to(torch.float32)
    y = torch.log1p(_flatten(gt).to(torch.float32).clamp_min(0.0))
    m = _flatten(mask) & torch.isfinite(x) & torch.isfinite(y)
    bsz = x.shape[0]
    device = x.device
    n = m.sum(1)
    # valid pixels packed per row: (B, n_max); column j < n_b holds row b's j-th valid pixel
    xc, yc = _compact_valid(m, x, y)
    n_max = xc.shape[1]
    valid_c = torch.arange(n_max, device=device)[None, :] < n[:, None]

    # residual threshold: MAD of the targets (scikit-learn's default)
    med = masked_median(yc, valid_c)
    thr = masked_median((yc - med[:, None]).abs(), valid_c)
    thr = torch.nan_to_num(thr, nan=0.0)

    # the points on which inliers are counted: all valid pixels where there are few enough
    if max_score_points is None or n_max <= max_score_points:
        xs, ys, ms = xc, yc, valid_c
    else:
        budget = max_score_points
        s_idx = _randint_below(n, (budget,), generator, device)
        few = (n <= budget)[:, None]
        xs = torch.where(few, xc[:, :budget], xc.gather(1, s_idx))
        ys = torch.where(few, yc[:, :budget], yc.gather(1, s_idx))
        ms = torch.where(few, valid_c[:, :budget], (n > 0)[:, None].expand(bsz, budget))
    n_score = ms.sum(1).clamp_min(1).to(torch.float64)

    best_cnt = torch.full((bsz,), -1, dtype=torch.long, device=device)
    best_a = torch.zeros(bsz, dtype=torch.float32, device=device)
    best_b = torch.zeros(bsz, dtype=torch.float32, device=device)
    best_score = torch.full((bsz,), -math.inf, dtype=torch.float32, device=device)
    done = n < 2
    trials_done = 0
    log_fail = math.log(1.0 - stop_probability) if stop_probability < 1 else -math.inf
    npts = xs.shape[1]
    chunk = max(1, min(chunk_trials, max_chunk_elements // max(1, bsz * npts)))
    step = min(8, chunk)  # grows geometrically: clean images stop after the first few trials
    while trials_done < max_trials and not bool(done.all()):
        t = min(step, max_trials - trials_done)
        step = min(2 * step, chunk)
        # two distinct valid pixels per trial
        i1 = _randint_below(n, (t,), generator, device)
        i2 = _randint_below((n - 1).clamp_min(1), (t,), generator, device)
        i2 = i2 + (i2 >= i1).long()
        x1, x2, y1, y2 = xc.gather(1, i1), xc.gather(1, i2), yc.gather(1, i1), yc.gather(1, i2)
        dx = x2 - x1
        ok = dx.abs() > 0
        a = torch.where(ok, (y2 - y1) / torch.where(ok, dx, torch.ones_like(dx)), torch.zeros_like(dx))
        b = y1 - a * x1
        # (B, t, P) inlier test; ties in the inlier count are broken by the R^2 of the trial's
        # model on its inliers, as scikit-learn does
        fit = a[:, :, None] * xs[:, None, :] + b[:, :, None]
        res = ys[:, None, :] - fit
        inl = (res.abs() <= thr[:, None, None]) & ms[:, None, :]
        inl_f = inl.to(res.dtype)
        cnt = inl.sum(2)
        ss_res = (res * res * inl_f).sum(2)
        ym = ys[:, None, :] - (ys[:, None, :] * inl_f).sum(2, keepdim=True) / cnt.clamp_min(1)[..., None]
        ss_tot = (ym * ym * inl_f).sum(2)
        score = torch.where(ss_tot > 0, 1.0 - ss_res / ss_tot.clamp_min(1e-30), torch.zeros_like(ss_tot))
        cnt = torch.where(ok, cnt, torch.full_like(cnt, -1))
        c_best = cnt.max(1).values
        tied = cnt == c_best[:, None]
        s_best, j = torch.where(tied, score, torch.full_like(score, -math.inf)).max(1)
        better = ((c_best > best_cnt) | ((c_best == best_cnt) & (s_best > best_score))) & ~done
        best_cnt = torch.where(better, c_best, best_cnt)
        best_score = torch.where(better, s_best, best_score)
        best_a = torch.where(better, a.gather(1, j[:, None]).squeeze(1), best_a)
        best_b = torch.where(better, b.gather(1, j[:, None]).squeeze(1), best_b)
        trials_done += t
        # dynamic stopping (scikit-learn's _dynamic_max_trials), w = inlier ratio of the best
        w = best_cnt.clamp_min(0).to(torch.float64) / n_score
        p_no_outlier = 1.0 - w**2
        need = torch.where(
            p_no_outlier <= 0,
            torch.zeros_like(w),
            torch.where(
                p_no_outlier >= 1,
                torch.full_like(w, math.inf),
                log_fail / torch.log(p_no_outlier.clamp(1e-300, 1 - 1e-16)),
            ),
        )
        done = done | (trials_done >= need)

    # final inliers of the winner on all valid pixels, then the least-squares refit
    res = (yc - (best_a[:, None] * xc + best_b[:, None])).abs()
    inl = (res <= thr[:, None]) & valid_c & (best_cnt[:, None] >= 0)
    a_fit, b_fit = _weighted_lstsq(xc, yc, inl)
    usable = inl.sum(1) >= 1
    # no usable fit: the reference's `except` branch, a = 1, b = 0
    a_fit = torch.where(usable, a_fit, torch.ones_like(a_fit))
    b_fit = torch.where(usable, b_fit, torch.zeros_like(b_fit))
    # fallback for a non-positive slope: ratio of means in log space
    safe_n = n.clamp_min(1).to(torch.float64)
    mean_x = sum_f64(xc * valid_c) / safe_n
    mean_y = sum_f64(yc * valid_c) / safe_n
    ratio = torch.where(mean_x != 0, mean_y / torch.where(mean_x != 0, mean_x, 1.0), torch.ones_like(mean_x))
    pos = a_fit > 0
    a_out = torch.where(pos, a_fit, ratio)
    b_out = torch.where(pos, b_fit, torch.zeros_like(b_fit))
    return a_out, b_out


def align_log_ransac(
    pred: torch.Tensor,
    gt: torch.Tensor,
    mask: torch.Tensor,
    max_trials: int = 1000,
    generator: torch.Generator | None = None,
    stop_probability: float = 0.99,
    max_score_points: int | None = 65536,
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

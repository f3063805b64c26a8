"""ppd alignment speed: ``align_log_ransac`` against scikit-learn's RANSAC per image, in one run.

    OMP_NUM_THREADS=1 python benchmarks/metrics_speed.py [--images 4] [--repeats 3] [--device cpu]
        [--sizes 640x480,2048x1360] [--noise 0.05] [--outliers 0.05]

For each size, builds ``--images`` synthetic depth maps whose predictions are affine in log(d + 1)
plus Gaussian noise (``--noise``, in prediction units) and gross outliers (``--outliers``, uniform
over twice the prediction range; ``--noise 1e-4 --outliers 0`` is clean data) and prints, per image:

* ``align``: ``align_log_ransac`` on the batch against the reference recipe per image,
  ``RANSACRegressor(max_trials=1000).fit(pred[mask], log(gt[mask] + 1))``, ``exp(a p + b) - 1``,
  clip; both timed alternately ``--repeats`` times in this process, the median time of each and the
  median of the per-repeat ratios (sklearn time / ours: > 1 is faster than scikit-learn), in wall
  time and (CPU device) in this process's CPU time, which other jobs on a shared machine move less.
* ``+ metrics``: the same with ``depth_metrics_per_image`` against numpy metrics (abs_rel, delta1..).
* ``same answer``: on scikit-learn's own sample sequence (``samples=``), the largest relative
  difference of ``a, b`` and whether the trial count and inlier count are equal. With random samples
  the two sides draw different pairs and differ by RANSAC's spread (``|diff|/gt``, ``abs_rel diff``).
* CPU only, ``steps``: what each step of ours costs on one image (the log targets, the MAD
  threshold, the trials, the final inliers + refit, exp - 1 + clip) next to the same step done as
  scikit-learn does it (``np.log``, ``np.median`` twice, one trial = ``LinearRegression`` on 2
  points + ``predict`` + inlier test, ``LinearRegression`` on the inliers, ``np.exp``).

The ratio is measured in one run on the same machine; on a shared machine run it 2-3 times and take
the median (the load moves both sides).
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time

import numpy as np
import torch
from sklearn.linear_model import LinearRegression, RANSACRegressor
from sklearn.utils.random import sample_without_replacement

from ppd_lightning.evaluation import align as A
from ppd_lightning.evaluation.align import align_log_ransac, fit_log_ransac
from ppd_lightning.evaluation.metrics import depth_metrics_per_image


def make(n: int, h: int, w: int, seed: int = 0, noise: float = 0.05, outliers: float = 0.05):
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 1, h // 16, w // 16, generator=g) * 8 + 0.5
    gt = torch.nn.functional.interpolate(low, (h, w), mode="bilinear", align_corners=False)[:, 0]
    mask = torch.rand(n, h, w, generator=g) > 0.1
    pred = 0.6 * torch.log1p(gt) - 0.2 + noise * torch.randn(n, h, w, generator=g)
    lo, hi = float(pred.min()), float(pred.max())
    bad = torch.rand(n, h, w, generator=g) < outliers
    wild = lo - 0.5 * (hi - lo) + 2 * (hi - lo) * torch.rand(n, h, w, generator=g)
    return torch.where(bad, wild, pred), gt, mask


def sklearn_fit(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> RANSACRegressor:
    return RANSACRegressor(max_trials=1000, random_state=0).fit(pred[mask][:, None], np.log(gt[mask] + 1.0))


def sklearn_align(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> np.ndarray:
    r = sklearn_fit(pred, gt, mask)
    a, b = float(r.estimator_.coef_[0]), float(r.estimator_.intercept_)
    return np.clip(np.exp(a * pred + b) - 1.0, 1e-3, gt[mask].max())


def numpy_metrics(out: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    p, d = out[mask], gt[mask]
    ratio, e = np.maximum(p / d, d / p), np.log(p) - np.log(d)
    return {
        "abs_rel": np.mean(np.abs(p - d) / d),
        "sq_rel": np.mean((p - d) ** 2 / d),
        "rmse": np.sqrt(np.mean((p - d) ** 2)),
        "rmse_log": np.sqrt(np.mean(e**2)),
        "log10": np.mean(np.abs(np.log10(p) - np.log10(d))),
        "silog": 100 * np.sqrt(np.mean(e**2) - np.mean(e) ** 2),
        "delta1": np.mean(ratio < 1.25),
    }


def timed(fn, sync=lambda: None) -> tuple[float, float]:
    """(wall, CPU) seconds of ``fn()``: the CPU time of this process does not count the time other
    jobs of a shared machine hold the cores (both sides run on one thread)."""
    sync()
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    sync()
    return time.perf_counter() - t0, time.process_time() - c0


def best_ms(fn, repeats: int = 9) -> float:
    """The least CPU time of ``repeats`` calls, in ms."""
    return 1e3 * min(timed(fn)[1] for _ in range(repeats))


def same_answer(pred, gt, mask) -> str:
    """Ours on scikit-learn's sample sequence against scikit-learn, image 0."""
    p, g, m = pred[0].double().numpy(), gt[0].double().numpy(), mask[0].numpy()
    r = sklearn_fit(p, g, m)
    rs = np.random.RandomState(0)  # RANSACRegressor(random_state=0)'s draws, in order
    pairs = np.stack([sample_without_replacement(int(m.sum()), 2, random_state=rs) for _ in range(1000)])
    fit = fit_log_ransac(pred[:1], gt[:1], mask[:1], samples=torch.as_tensor(pairs)[None])
    rel = max(
        abs(fit.a.item() - r.estimator_.coef_[0]) / abs(r.estimator_.coef_[0]),
        abs(fit.b.item() - r.estimator_.intercept_) / max(abs(r.estimator_.intercept_), 1e-12),
    )
    same = fit.n_trials[0] == r.n_trials_ and fit.n_inliers[0] == r.inlier_mask_.sum()
    return f"a, b rel {rel:.0e}, trials {r.n_trials_} inliers {int(r.inlier_mask_.sum())} {'equal' if same else 'DIFFER'}"


def steps(pred, gt, mask) -> list[tuple[str, float, float]]:
    """(step, ours ms, scikit-learn-style ms) on image 0, CPU (best of 9)."""
    x, g, m = A._flatten(pred[:1]).float(), A._flatten(gt[:1]), A._flatten(mask[:1])
    pts = A._HostPoints.build(x, g, m)
    lines = pts.lines(A._draw_pairs(torch.tensor(pts.n), 1000, torch.Generator().manual_seed(0)))
    fit = A._search(pts, *lines, 1000, 0.99)
    fit.a, fit.b = pts.refit(fit)
    fit.gt_max = pts.gt_max
    k, mk = int(fit.n_trials[0]), mask[0].numpy()
    gm, pm = gt[0].numpy(), pred[0].numpy()
    xv, yv = pm[mk].astype(np.float64)[:, None], np.log(gm[mk].astype(np.float64) + 1.0)
    thr = float(np.median(np.abs(yv - np.median(yv))))

    def sk_trial():  # one trial of RANSACRegressor.fit: its estimator on 2 points, predict, test
        est = LinearRegression().fit(xv[:2], yv[:2])
        return np.sum(np.abs(yv - est.predict(xv)) <= thr)

    inl = np.abs(yv - (xv[:, 0] * fit.line_a[0] + fit.line_b[0])) <= thr
    a, b, top = float(fit.a[0]), float(fit.b[0]), float(gm[mk].max())
    mad_ms = best_ms(lambda: A._HostPoints(pts.x, pts.y))
    return [
        (
            "valid pixels, log(d + 1)",
            best_ms(lambda: A._HostPoints.build(x, g, m)) - mad_ms,
            best_ms(lambda: np.log(gm[mk].astype(np.float64) + 1.0)),
        ),
        ("MAD threshold (+ float32 copy)", mad_ms, best_ms(lambda: np.median(np.abs(yv - np.median(yv))))),
        (
            f"{k} trials",
            best_ms(lambda: A._search(pts, *lines, 1000, 0.99)),
            best_ms(lambda: [sk_trial() for _ in range(k)]),
        ),
        (
            "final inliers + refit",
            best_ms(lambda: pts.refit(fit)),
            best_ms(lambda: LinearRegression().fit(xv[inl], yv[inl])),
        ),
        (
            "exp - 1, clip",
            best_ms(lambda: A._metric_depth(pred[:1], fit, 1e-3)),
            best_ms(lambda: np.clip(np.exp(a * pm + b) - 1.0, 1e-3, top)),
        ),
    ]


def ours(p, g, m, with_metrics: bool):
    out = align_log_ransac(p, g, m, generator=torch.Generator().manual_seed(0))
    if not with_metrics:
        return out, None
    metrics, _ = depth_metrics_per_image(out, g, m)
    return out, {k: v.cpu() for k, v in metrics.items()}


def theirs(np_maps, with_metrics: bool):
    outs = [sklearn_align(*maps) for maps in np_maps]
    return outs, [numpy_metrics(o, *maps[1:]) for o, maps in zip(outs, np_maps)] if with_metrics else None


def measure(size: str, args, dev: torch.device) -> None:
    w, h = (int(v) for v in size.split("x"))
    pred, gt, mask = make(args.images, h, w, noise=args.noise, outliers=args.outliers)
    dmaps = (pred.to(dev), gt.to(dev), mask.to(dev))
    np_maps = [
        (pred[i].double().numpy(), gt[i].double().numpy(), mask[i].numpy()) for i in range(args.images)
    ]
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    ours(*dmaps, True)  # warm-up
    clock = ("wall", "CPU") if dev.type == "cpu" else ("wall",)
    print(f"\n{size}: {'':20} {'ours ms/img':>12} {'sklearn ms/img':>15} {'ratio':>7}")
    for with_metrics in (False, True):
        times = []
        for _ in range(args.repeats):  # alternately, so that a change of load hits both sides
            t_ours = timed(functools.partial(ours, *dmaps, with_metrics), sync)
            times.append((t_ours, timed(functools.partial(theirs, np_maps, with_metrics))))
        for c, name in enumerate(clock):
            t_o, t_s = ([t[j][c] / args.images for t in times] for j in (0, 1))
            ratios = [s / o for s, o in zip(t_s, t_o)]
            label = f"{'align + metrics' if with_metrics else 'align'}, {name}"
            print(
                f"{'':11}{label:>21} {statistics.median(t_o) * 1e3:>12.1f} {statistics.median(t_s) * 1e3:>15.1f} "
                f"{statistics.median(ratios):>6.2f}x   (ratios {', '.join(f'{r:.2f}' for r in ratios)})"
            )
    out, metrics = ours(*dmaps, True)
    refs, ref_metrics = theirs(np_maps, True)
    diff = ((out.cpu().double() - torch.from_numpy(np.stack(refs))).abs() / gt.double())[mask].max().item()
    ar = np.max(np.abs(metrics["abs_rel"].numpy() - np.array([r["abs_rel"] for r in ref_metrics])))
    print(f"{'':11}random samples: max |diff|/gt {diff:.1e}, abs_rel diff {ar:.1e}")
    print(f"{'':11}sklearn's samples: {same_answer(pred, gt, mask)}")
    if dev.type == "cpu":
        print(f"{'':11}{'steps, one image (CPU ms)':34} {'ours':>8} {'sklearn-style':>14}")
        for name, t1, t2 in steps(pred, gt, mask):
            print(f"{'':11}{name:34} {t1:>8.2f} {t2:>14.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--sizes", default="640x480,2048x1360")
    ap.add_argument("--noise", type=float, default=0.05)
    ap.add_argument("--outliers", type=float, default=0.05)
    args = ap.parse_args()
    dev = torch.device(args.device)
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    print(
        f"device {dev}, torch threads {torch.get_num_threads()}, {args.images} images per size, "
        f"{args.repeats} repeats, noise {args.noise}, outliers {args.outliers}{load}"
    )
    for size in args.sizes.split(","):
        measure(size, args, dev)


if __name__ == "__main__":
    main()

"""Per-image alignment + metrics time: batched torch (ours) vs scikit-learn RANSAC per image.

    python benchmarks/metrics_speed.py [--images 4] [--device cpu] [--noise 0.05] [--outliers 0.05]

For 640x480 and 2048x1360, builds ``--images`` synthetic depth maps with predictions that are
affine in log(d + 1) plus Gaussian noise (``--noise``, in prediction units) and gross outliers
(``--outliers``, uniform over twice the prediction range); ``--noise 1e-4 --outliers 0`` is clean
data, where every pixel is an inlier and both sides give the same answer. On noisy data the two
draw different random samples, so their answers differ by the spread of RANSAC itself; times (a) ``align_log_ransac`` + ``depth_metrics_per_image`` on the whole batch and (b) the
reference recipe per image: ``RANSACRegressor(max_trials=1000)`` on ``log(gt + 1)``, ``exp - 1``,
clip, numpy metrics. Prints both times per image, the ratio, and the largest difference.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.linear_model import RANSACRegressor

from ppd_lightning.evaluation.align import align_log_ransac
from ppd_lightning.evaluation.metrics import depth_metrics_per_image


def sklearn_reference(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, float]:
    x, y = pred[mask][:, None], np.log(gt[mask] + 1.0)
    r = RANSACRegressor(max_trials=1000, random_state=0).fit(x, y)
    a, b = float(r.estimator_.coef_[0]), float(r.estimator_.intercept_)
    out = np.clip(np.exp(a * pred + b) - 1.0, 1e-3, gt[mask].max())
    p, d = out[mask], gt[mask]
    ratio = np.maximum(p / d, d / p)
    e = np.log(p) - np.log(d)
    metrics = {
        "abs_rel": np.mean(np.abs(p - d) / d),
        "sq_rel": np.mean((p - d) ** 2 / d),
        "rmse": np.sqrt(np.mean((p - d) ** 2)),
        "rmse_log": np.sqrt(np.mean(e**2)),
        "log10": np.mean(np.abs(np.log10(p) - np.log10(d))),
        "silog": 100 * np.sqrt(np.mean(e**2) - np.mean(e) ** 2),
        "delta1": np.mean(ratio < 1.25),
    }
    return out, metrics["abs_rel"]


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--sizes", default="640x480,2048x1360")
    ap.add_argument("--noise", type=float, default=0.05)
    ap.add_argument("--outliers", type=float, default=0.05)
    args = ap.parse_args()
    dev = torch.device(args.device)
    print(
        f"device {dev}, torch threads {torch.get_num_threads()}, {args.images} images per size, "
        f"noise {args.noise}, outliers {args.outliers}"
    )
    print(f"{'size':>10} {'torch ms/img':>13} {'sklearn ms/img':>15} {'ratio':>7} {'max |diff|/gt':>14}")
    for size in args.sizes.split(","):
        w, h = (int(v) for v in size.split("x"))
        pred, gt, mask = make(args.images, h, w, noise=args.noise, outliers=args.outliers)
        p, g, m = pred.to(dev), gt.to(dev), mask.to(dev)
        # warm-up, then timed
        for timed in (False, True):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = align_log_ransac(p, g, m, generator=torch.Generator().manual_seed(0))
            metrics, _ = depth_metrics_per_image(out, g, m)
            _ = {k: v.cpu() for k, v in metrics.items()}
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t_torch = (time.perf_counter() - t0) / args.images
            if not timed:
                continue
        t0 = time.perf_counter()
        refs, abs_rels = [], []
        for i in range(args.images):
            ref, ar = sklearn_reference(pred[i].double().numpy(), gt[i].double().numpy(), mask[i].numpy())
            refs.append(ref)
            abs_rels.append(ar)
        t_sk = (time.perf_counter() - t0) / args.images
        ref = torch.from_numpy(np.stack(refs))
        diff = ((out.cpu().double() - ref).abs() / gt.double())[mask].max().item()
        ar_diff = np.max(np.abs(metrics["abs_rel"].cpu().numpy() - np.array(abs_rels)))
        print(
            f"{size:>10} {t_torch * 1e3:>13.2f} {t_sk * 1e3:>15.2f} {t_sk / t_torch:>6.1f}x {diff:>14.2e}"
            f"   (abs_rel diff {ar_diff:.1e})"
        )


if __name__ == "__main__":
    main()

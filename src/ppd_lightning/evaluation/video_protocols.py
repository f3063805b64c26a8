"""Video protocols: Video Depth Anything's (``vda``) and its analogue for PPD/PPVD (``ppd_video``).

Both score one sequence at a time; the numbers (crops, ranges, frame ranges, TAE) come from
``conf/benchmark/<name>.yaml`` (:class:`VideoBenchmarkSpec`) and ``conf/protocol/{vda,ppd_video}.yaml``
(:class:`VideoProtocol`), nowhere else. The steps, for each sequence (frames ``benchmark.frames``):

1. ground truth cropped to ``benchmark.crop`` (``[a:b, c:d]``);
2. the prediction brought onto the cropped grid (:meth:`VideoProtocol.map_prediction`);
3. valid = ``min_depth < gt < max_depth``;
4. ONE scale and shift for the whole sequence by float64 least squares over the valid pixels of all
   its frames (``per_frame: true``: one per frame, a flicker baseline), in disparity space (``vda``:
   ``1 / (gt + disparity_eps) ~ s * max(pred, clip) + t``) or in ``log(d + 1)`` space (``ppd_video``:
   ``log(gt + 1) ~ s * pred + t``);
5. back to depth (:meth:`VideoProtocol.to_depth`), clipped to ``[clip, max_depth]``;
6. ``metric: depth``: AbsRel, RMSE and delta1 per frame over its valid pixels, averaged over the
   frames that have any, then over sequences. ``metric: tae``: :func:`reprojection_abs_rel` of each
   consecutive pair both ways, ``100 * sum / 2(N - 1)`` per sequence, averaged over sequences.

``ppd_video`` uses least squares, not the RANSAC of the image ``ppd`` protocol: the fit covers a whole
sequence (up to 500 frames, ~10^8 pixels), which RANSAC's all-pixel inlier counting
(:func:`~ppd_lightning.evaluation.align.fit_log_ransac`) cannot hold in bounded memory, and with that
many pixels an outlier frame has little leverage on the fit; least squares is also VDA's estimator, so
``vda`` and ``ppd_video`` differ only in the space of the fit, and the result needs no seed.
The sums are accumulated frame by frame (:class:`LeastSquares`), so the fit is the exact
``np.linalg.lstsq`` answer without holding the sequence in memory.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields

import cv2
import numpy as np

from ppd_lightning.errors import ConfigError

__all__ = [
    "DEPTH_METRICS",
    "LeastSquares",
    "VideoBenchmarkSpec",
    "VideoProtocol",
    "frame_metrics",
    "reprojection_abs_rel",
    "tae_pair",
]

#: the per-frame metrics of ``metric: depth`` (VDA's abs_relative_difference, rmse_linear, delta1_acc)
DEPTH_METRICS = ("abs_rel", "rmse", "delta1")


def _require(cfg: Mapping, key: str, where: str):
    if cfg.get(key) is None:
        raise ConfigError(f"{where}.{key} is not set (see conf/{where}/*.yaml)")
    return cfg[key]


def _slice_bound(v, key: str) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) and not (isinstance(v, float) and v.is_integer()):
        raise ConfigError(f"{key}: expected integers (or null), got {v!r}")
    return int(v)


@dataclass(frozen=True)
class VideoBenchmarkSpec:
    """One video benchmark's settings: ``conf/benchmark/<name>.yaml`` (see the keys' comments there)."""

    name: str
    json: str
    dataset: str | None
    crop: tuple[int | None, int | None, int | None, int | None]  # gt[a:b, c:d]
    max_depth: float
    frames: tuple[int | None, int | None]  # [start, stop)
    sequences: int | None
    crop_prediction: bool
    metric: str  # "depth" or "tae"

    @classmethod
    def from_config(cls, cfg: Mapping) -> VideoBenchmarkSpec:
        """From the ``benchmark`` config group; a missing or malformed key is a ``ConfigError``."""
        cfg = dict(cfg)
        get = lambda k: _require(cfg, k, "benchmark")  # noqa: E731
        crop, frames = get("crop"), get("frames")
        if not isinstance(crop, (list, tuple)) or len(crop) != 4:
            raise ConfigError(f"benchmark.crop: expected [a, b, c, d] (gt[a:b, c:d]), got {crop!r}")
        if not isinstance(frames, (list, tuple)) or len(frames) != 2:
            raise ConfigError(f"benchmark.frames: expected [start, stop], got {frames!r}")
        metric = str(get("metric"))
        if metric not in ("depth", "tae"):
            raise ConfigError(f"benchmark.metric: expected depth or tae, got {metric!r}")
        max_depth = float(get("max_depth"))
        if not max_depth > 0:
            raise ConfigError(f"benchmark.max_depth must be > 0, got {max_depth}")
        sequences = cfg.get("sequences")
        if sequences is not None and (isinstance(sequences, bool) or int(sequences) < 1):
            raise ConfigError(f"benchmark.sequences: expected a positive count or null, got {sequences!r}")
        return cls(
            name=str(get("name")),
            json=str(get("json")),
            dataset=None if cfg.get("dataset") is None else str(cfg["dataset"]),
            crop=tuple(_slice_bound(v, "benchmark.crop") for v in crop),  # type: ignore[arg-type]
            max_depth=max_depth,
            frames=tuple(_slice_bound(v, "benchmark.frames") for v in frames),  # type: ignore[arg-type]
            sequences=None if sequences is None else int(sequences),
            crop_prediction=bool(get("crop_prediction")),
            metric=metric,
        )

    def crop_map(self, x: np.ndarray) -> np.ndarray:
        a, b, c, d = self.crop
        return x[a:b, c:d]


@dataclass(frozen=True)
class VideoProtocol:
    """A video protocol's settings: ``conf/protocol/{vda,ppd_video}.yaml``."""

    name: str
    space: str  # "disparity" (vda) or "log1p" (ppd_video)
    per_frame: bool
    min_depth: float
    clip: float
    disparity_eps: float | None = None  # disparity space only

    @classmethod
    def from_config(cls, cfg: Mapping) -> VideoProtocol:
        cfg = dict(cfg)
        if cfg.get("kind") != "video":
            raise ConfigError(
                f"protocol={cfg.get('name')} is for image benchmarks; a video benchmark needs "
                "protocol=vda or protocol=ppd_video"
            )
        get = lambda k: _require(cfg, k, "protocol")  # noqa: E731
        space = str(get("space"))
        if space not in ("disparity", "log1p"):
            raise ConfigError(f"protocol.space: expected disparity or log1p, got {space!r}")
        known = {f.name for f in fields(cls)} | {"kind"}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ConfigError(f"protocol: unknown key(s) {', '.join(unknown)} for protocol={cfg.get('name')}")
        return cls(
            name=str(get("name")),
            space=space,
            per_frame=bool(get("per_frame")),
            min_depth=float(get("min_depth")),
            clip=float(get("clip")),
            disparity_eps=float(get("disparity_eps")) if space == "disparity" else None,
        )

    # -- geometry -----------------------------------------------------------------------------
    def map_prediction(
        self, spec: VideoBenchmarkSpec, pred: np.ndarray, shape: tuple[int, int]
    ) -> np.ndarray:
        """A raw prediction (float32, any size) on the cropped ground truth's grid (``shape``).

        VDA's quirk, reproduced: ``eval.py`` resizes the prediction to the cropped size WITHOUT
        cropping it first (``crop_prediction: false``), so a prediction at the uncropped size is
        squeezed, not cut; ``eval_tae.py --hard_crop`` (``crop_prediction: true``) crops it like the
        ground truth first. Either way a size that still differs is resized by ``cv2.resize``'s
        default, bilinear (``INTER_LINEAR``), in float32.
        """
        pred = np.asarray(pred, np.float32)
        if spec.crop_prediction:
            pred = spec.crop_map(pred)
        if pred.shape != tuple(shape):
            pred = cv2.resize(pred, (int(shape[1]), int(shape[0])), interpolation=cv2.INTER_LINEAR)
        return pred

    def valid(self, spec: VideoBenchmarkSpec, gt: np.ndarray) -> np.ndarray:
        """``min_depth < gt < max_depth``. (VDA's ``eval.py`` sets gt 0 to -1 and ``eval_tae.py``
        leaves it 0: both fall outside; its ``min_depth_eval = 0.1`` is never used, the bound is 1e-3.)"""
        with np.errstate(invalid="ignore"):
            return (gt > self.min_depth) & (gt < spec.max_depth)

    # -- alignment ------------------------------------------------------------------------------
    def fit_values(self, pred: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The least-squares inputs ``(x, y)`` (float64, valid pixels) of one frame."""
        if self.space == "disparity":
            x = np.maximum(pred, np.float32(self.clip))[mask].astype(np.float64)  # VDA: np.clip(infs, 1e-3)
            y = 1.0 / (gt[mask].astype(np.float64) + self.disparity_eps)
        else:
            x = pred[mask].astype(np.float64)
            y = np.log(gt[mask].astype(np.float64) + 1.0)
        return x, y

    def to_depth(self, pred: np.ndarray, scale: float, shift: float, spec: VideoBenchmarkSpec) -> np.ndarray:
        """Aligned metric depth (float64) of a mapped prediction."""
        if self.space == "disparity":
            # VDA: aligned = s * clip(pred, 1e-3) + t, clipped >= 1e-3, inverted, clipped to [1e-3, max]
            disp = np.maximum(
                scale * np.maximum(pred, np.float32(self.clip)).astype(np.float64) + shift, self.clip
            )
            depth = 1.0 / disp
        else:
            depth = np.expm1(scale * pred.astype(np.float64) + shift)
        return np.clip(depth, self.clip, spec.max_depth)


class LeastSquares:
    """Streaming float64 least squares ``y ~ scale * x + shift``, one batch (frame) at a time.

    Keeps the count, means and centred second moments, merged per batch (Chan et al.), so the result
    is ``np.linalg.lstsq([x, 1], y)`` on all the pixels at once (to float64 rounding) without holding
    them: with a constant ``x`` it is lstsq's minimum-norm solution, with no pixel ``(0, 0)``.
    """

    def __init__(self) -> None:
        self.n = 0
        self.mean_x = self.mean_y = self.sxx = self.sxy = 0.0

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        m = int(x.size)
        if m == 0:
            return
        mx, my = float(x.mean()), float(y.mean())
        dx, dy = x - mx, y - my
        sxx, sxy = float(np.dot(dx, dx)), float(np.dot(dx, dy))
        n = self.n + m
        ex, ey = mx - self.mean_x, my - self.mean_y
        w = self.n * m / n
        self.sxx += sxx + ex * ex * w
        self.sxy += sxy + ex * ey * w
        self.mean_x += ex * m / n
        self.mean_y += ey * m / n
        self.n = n

    def solve(self) -> tuple[float, float]:
        if self.n == 0:
            return 0.0, 0.0
        c = self.mean_x
        if self.sxx > 1e-20 * self.n * (c * c + 1.0):  # else x is constant to rounding: rank 1
            scale = self.sxy / self.sxx
            return scale, self.mean_y - scale * self.mean_x
        # the minimum-norm (scale, shift) with scale * c + shift = mean y, as lstsq answers
        return self.mean_y * c / (c * c + 1.0), self.mean_y / (c * c + 1.0)


def frame_metrics(depth: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> tuple[dict[str, float], int]:
    """AbsRel, RMSE and delta1 of one frame over ``mask`` (float64), and its valid-pixel count.

    The definitions of VDA's ``metric.py``, which are those of :mod:`ppd_lightning.evaluation.metrics`
    (mean |p - d| / d, sqrt of the mean squared error, fraction with max(p/d, d/p) < 1.25); computed
    here in numpy for the three that video tables report (a float64 frame in torch costs ~100x more on
    a CPU). NaN when ``mask`` is empty."""
    p, d = depth[mask].astype(np.float64, copy=False), gt[mask].astype(np.float64, copy=False)
    n = int(p.size)
    if n == 0:
        return dict.fromkeys(DEPTH_METRICS, math.nan), 0
    diff = p - d
    values = {
        "abs_rel": float(np.mean(np.abs(diff) / d)),
        "rmse": float(np.sqrt(np.mean(diff * diff))),
        "delta1": float(np.mean(np.maximum(p / d, d / p) < 1.25)),
    }
    return values, n


def reprojection_abs_rel(depth1: np.ndarray, depth2: np.ndarray, k: np.ndarray, t_2_1: np.ndarray) -> float:
    """One direction of VDA's TAE (``eval_tae.py``'s ``tae_torch``), float64.

    Frame 1's depth is back-projected with ``k`` (its ``fx, fy, cx, cy``; VDA does not shift the
    principal point for the crop: reproduced), moved by ``t_2_1`` (4x4), projected, rounded to the
    nearest pixel (half to even) and kept where inside the image; points at any depth, behind the
    camera too, are scattered into an empty map where a LATER point (in row-major source order)
    overwrites an earlier one (VDA's index assignment, not a z-buffer). Returns the mean of
    ``|depth2 - proj| / depth2`` over pixels where both are > 0, and 0 when no point lands or no
    pixel qualifies (VDA returns 0 there, which still counts in the sequence's average).
    """
    h, w = depth1.shape
    fx, fy, cx, cy = float(k[0, 0]), float(k[1, 1]), float(k[0, 2]), float(k[1, 2])
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    z = depth1.astype(np.float64).ravel()
    x, y = (xx.ravel() - cx) * z / fx, (yy.ravel() - cy) * z / fy
    r, t = t_2_1[:3, :3], t_2_1[:3, 3]
    # R @ p + t written per component: ~10x faster than an (N, 3) @ (3, 3) matmul here
    xm, ym, zm = (r[i, 0] * x + r[i, 1] * y + r[i, 2] * z + t[i] for i in range(3))
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.round(xm * fx / zm + cx)
        v = np.round(ym * fy / zm + cy)
    inside = (u >= 0) & (u < w) & (v >= 0) & (v < h)
    if not inside.any():
        return 0.0
    target = v[inside].astype(np.int64) * w + u[inside].astype(np.int64)
    values = zm[inside]
    # the last point aimed at each pixel wins: first occurrences in the reversed order
    _, first_rev = np.unique(target[::-1], return_index=True)
    last = target.size - 1 - first_rev
    proj = np.zeros(h * w, np.float64)
    proj[target[last]] = values[last]
    d2 = depth2.astype(np.float64).ravel()
    both = (proj > 0) & (d2 > 0)
    if not both.any():
        return 0.0
    return float(np.mean(np.abs(d2[both] - proj[both]) / d2[both]))


def tae_pair(
    depth1: np.ndarray, depth2: np.ndarray, k: np.ndarray, pose1: np.ndarray, pose2: np.ndarray
) -> float:
    """Both directions of one consecutive pair, summed: frame 1 -> 2 by ``inv(pose2) @ pose1``,
    frame 2 -> 1 by the inverse of that matrix, both with frame 1's ``k`` (as VDA's ``eval_TAE``)."""
    t_2_1 = np.linalg.inv(pose2) @ pose1
    return reprojection_abs_rel(depth1, depth2, k, t_2_1) + reprojection_abs_rel(
        depth2, depth1, k, np.linalg.inv(t_2_1)
    )


def mean_or_nan(values) -> float:
    values = list(values)
    return float(np.mean(np.asarray(values, np.float64))) if values else math.nan

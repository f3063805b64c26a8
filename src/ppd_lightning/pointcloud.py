"""Metric point clouds as the release's ``run_point_cloud.py`` makes them, and their files.

:func:`metric_point_cloud` takes PPD's relative depth and MoGe-2's metric depth, mask and intrinsics of
the same (resized) image:

1. MoGe-2's depth off its mask is set to its on-mask maximum;
2. the relative depth is aligned to it with the ppd protocol's RANSAC in log(d + 1) on the mask
   (:func:`ppd_lightning.evaluation.align.align_log_ransac`, the one implementation), clipped to
   [1e-3, max of MoGe's depth on the mask];
3. the mask pixels are back-projected with MoGe-2's intrinsics scaled to pixels, at the integer pixel
   indices (as the release), in row-major order, in the camera frame (x right, y down, z forward:
   OpenCV axes);
4. open3d's ``remove_statistical_outlier(nb_neighbors=20, std_ratio=3.0)`` rule drops the outliers
   (:func:`statistical_outlier_mask`).

The filter is written on scipy's k-d tree (``cKDTree``) rather than depending on open3d: scipy is already a
dependency (MoGe-2's focal recovery), open3d is a large binary package that lags new Python versions, and the
rule is a few lines that reproduce open3d's selection exactly (the fixture's 0 mismatches).

Writers (every file atomic): ``.ply`` (``axes="opengl"``, the release's: y and z negated, x right / y up /
z towards the viewer; or ``"opencv"``: the camera frame as computed; the header says which, and whether
the cloud is metric), ``.glb`` (trimesh, a coloured point cloud; glTF's y-up convention = OpenGL axes),
the metric depth ``.npy`` and the camera ``.json`` (intrinsics in pixels and normalised, fields of view).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from ppd_lightning import atomic, visualize
from ppd_lightning.errors import InputError
from ppd_lightning.evaluation.align import align_log_ransac
from ppd_lightning.geometry import centred_camera, depth_to_points, focal_from_hfov, intrinsics_matrix

__all__ = [
    "ASSUMED_FOV",
    "ASSUMED_RANGE",
    "assumed_point_cloud",
    "relative_to_metric",
    "AXES",
    "camera_info",
    "metric_cloud_files",
    "metric_point_cloud",
    "moge_geometry",
    "ply_axes",
    "statistical_outlier_mask",
    "write_camera_json",
    "write_glb",
    "write_metric_outputs",
    "write_point_cloud_ply",
]

AXES = ("opengl", "opencv")
AXES_TEXT = {
    "opencv": "axes opencv: x right, y down, z forward (the camera frame)",
    "opengl": "axes opengl: x right, y up, z towards the viewer (camera frame with y and z negated)",
}


#: predict --ply's assumptions without MoGe-2: metres of the nearest / farthest relative depth, and the
#: horizontal field of view of a centred pinhole (the cloud is NOT metric and its files say so)
ASSUMED_RANGE = (0.5, 20.0)
ASSUMED_FOV = 60.0


def relative_to_metric(rel: np.ndarray, near: float, far: float) -> np.ndarray:
    """Map relative log-depth (0 near .. 1 far, as trained) to metres: log(d + 1) spans the given range."""
    lo, hi = math.log1p(near), math.log1p(far)
    return np.expm1(np.clip(rel, 0.0, 1.5) * (hi - lo) + lo).astype(np.float32)


def assumed_point_cloud(
    rel: np.ndarray,
    rgb: np.ndarray,
    depth_range: tuple[float, float] = ASSUMED_RANGE,
    fov: float = ASSUMED_FOV,
    focal: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The cloud without geometry: ``rel`` mapped onto an assumed metric range, back-projected with a
    centred pinhole of ``fov`` degrees (or ``focal`` pixels) -> (points (N, 3) float32, camera frame x
    right / y down / z forward; colours (N, 3) uint8)."""
    depth = relative_to_metric(rel, *depth_range)
    h, w = depth.shape
    cam = centred_camera(h, w, focal or focal_from_hfov(w, fov))
    valid = np.isfinite(depth) & (depth > 0)
    points = depth_to_points(depth, intrinsics_matrix(cam["fx"], cam["fy"], cam["cx"], cam["cy"]), valid)
    return points, rgb[valid]


def _numpy(x, dtype=None) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    return x if dtype is None else x.astype(dtype, copy=False)


def _hw(x: np.ndarray, name: str) -> np.ndarray:
    x = np.squeeze(x) if x.ndim > 2 else x
    if x.ndim != 2:
        raise InputError(f"{name} must be (H, W), got shape {x.shape}")
    return x


def _rgb_uint8(image, shape: tuple[int, int]) -> np.ndarray:
    img = _numpy(image)
    if img.ndim == 4 and img.shape[0] == 1:
        img = img[0]
    if img.ndim == 3 and img.shape[0] == 3 and img.shape[-1] != 3:  # (3, H, W)
        img = img.transpose(1, 2, 0)
    if img.shape != (*shape, 3):
        raise InputError(f"image must be (H, W, 3) RGB matching the depth's {shape}, got shape {img.shape}")
    if img.dtype != np.uint8:  # float in [0, 1]
        img = np.clip(np.asarray(img, np.float64) * 255.0, 0, 255).round().astype(np.uint8)
    return img


def statistical_outlier_mask(points, nb_neighbors: int = 20, std_ratio: float = 3.0) -> np.ndarray:
    """open3d's ``remove_statistical_outlier`` selection as a (N,) bool mask, exactly: for every point the
    mean distance d_i to its ``nb_neighbors`` nearest points of the cloud, itself included (distance 0),
    Euclidean, float64; m = sum of the d_i > 0 over N (all points), s = sqrt(sum over d_i > 0 of
    (d_i - m)^2 / (N - 1)); kept iff 0 < d_i < m + std_ratio * s. Neighbours are queried in chunks
    (bounded memory for a megapixel cloud) on a scipy k-d tree."""
    from scipy.spatial import cKDTree

    pts = _numpy(points, np.float64).reshape(-1, 3)
    n = len(pts)
    if n < 2:  # no spread to measure (open3d keeps nothing useful either)
        return np.zeros(n, dtype=bool)
    k = min(nb_neighbors, n)
    tree = cKDTree(pts)
    mean_dist = np.empty(n)
    chunk = max(1, (1 << 22) // k)  # ~32 MB of distances per query
    for start in range(0, n, chunk):
        dist, _ = tree.query(pts[start : start + chunk], k=k, workers=-1)
        mean_dist[start : start + chunk] = dist.reshape(len(dist), -1).mean(1)
    positive = mean_dist > 0
    m = mean_dist[positive].sum() / n
    s = math.sqrt(np.square(mean_dist[positive] - m).sum() / (n - 1))
    return positive & (mean_dist < m + std_ratio * s)


def metric_point_cloud(
    depth_rel, moge_depth, moge_mask, intrinsics, image, outlier_filter: bool = True
) -> dict:
    """The release's metric point cloud from PPD's relative depth and MoGe-2's geometry of the same image.

    Args (numpy or torch): ``depth_rel`` (H, W) PPD's relative depth; ``moge_depth`` (H, W) MoGe-2's metric
    depth (any value off the mask, e.g. inf); ``moge_mask`` (H, W) bool; ``intrinsics`` (3, 3) MoGe-2's,
    normalised by width and height; ``image`` (H, W, 3) RGB, uint8 or float in [0, 1].

    Returns a dict of numpy arrays: ``metric_depth`` (H, W) float32 metres (the aligned relative depth,
    every pixel); ``points`` (M, 3) float32, camera frame x right / y down / z forward, the kept mask pixels
    in row-major order; ``colors`` (M, 3) uint8 of those pixels; ``keep`` (N,) bool over the N mask pixels
    (all true without ``outlier_filter``); ``intrinsics`` (3, 3) float64 in pixels.
    """
    rel = _hw(_numpy(depth_rel, np.float32), "depth_rel")
    ref = _hw(_numpy(moge_depth, np.float32), "moge_depth").copy()
    mask = _hw(_numpy(moge_mask), "moge_mask")
    if mask.dtype != bool:
        raise InputError(f"moge_mask must be bool, got {mask.dtype}")
    if not rel.shape == ref.shape == mask.shape:
        raise InputError(
            f"depth_rel, moge_depth and moge_mask must have one shape, got {rel.shape}, {ref.shape}, {mask.shape}"
        )
    k_norm = _numpy(intrinsics, np.float64)
    if k_norm.shape != (3, 3):
        raise InputError(
            f"intrinsics must be (3, 3) (normalised by width and height), got shape {k_norm.shape}"
        )
    rgb = _rgb_uint8(image, rel.shape)
    if not mask.any():
        raise InputError("MoGe-2's mask is empty: no pixel to align the depth to")
    ref[~mask] = ref[mask].max()
    generator = torch.Generator().manual_seed(0)  # the same cloud on every run
    metric = align_log_ransac(
        torch.from_numpy(rel)[None],
        torch.from_numpy(ref)[None],
        torch.from_numpy(mask)[None],
        generator=generator,
    )[0].numpy()
    h, w = rel.shape
    k_pix = k_norm * np.array([[w], [h], [1.0]])  # fx, cx scale by W; fy, cy by H
    points = depth_to_points(metric, k_pix, mask)
    colors = rgb[mask]
    keep = statistical_outlier_mask(points) if outlier_filter else np.ones(len(points), dtype=bool)
    return {
        "metric_depth": metric.astype(np.float32),
        "points": np.ascontiguousarray(points[keep], dtype=np.float32),
        "colors": np.ascontiguousarray(colors[keep]),
        "keep": keep,
        "intrinsics": k_pix,
    }


def moge_geometry(
    moge,
    image: torch.Tensor,
    num_tokens: int | None = None,
    fov_x: float | None = None,
    size: tuple[int, int] | None = None,
) -> dict:
    """MoGe-2 on one image (1, 3, h, w) or (3, h, w) in [0, 1] (PPD's resized input) -> numpy ``depth``
    (H, W) metres (inf off the mask), ``mask`` (H, W) bool, ``intrinsics`` (3, 3) normalised (they hold
    at any size). ``size``: (H, W) to bring depth and mask to, by nearest (real values of MoGe-2's, none
    interpolated across an edge: they are the alignment's target, not the cloud's depth); default (h, w)."""
    out = moge.infer(image if image.ndim == 4 else image[None], num_tokens=num_tokens, fov_x=fov_x)
    depth, mask = out["depth"][:1, None].float(), out["mask"][:1, None]
    if size is not None and tuple(size) != tuple(depth.shape[-2:]):
        depth = torch.nn.functional.interpolate(depth, tuple(size), mode="nearest")
        mask = torch.nn.functional.interpolate(mask.float(), tuple(size), mode="nearest") > 0.5
    return {
        "depth": depth[0, 0].cpu().numpy(),
        "mask": mask[0, 0].cpu().numpy(),
        "intrinsics": out["intrinsics"][0].float().cpu().numpy(),
    }


def metric_cloud_files(
    moge,
    model,
    image: torch.Tensor,
    rgb: np.ndarray,
    depth_rel: np.ndarray,
    stem: str | os.PathLike,
    area: int | None = None,
    axes: str = "opengl",
    outlier_filter: bool = True,
    num_tokens: int | None = None,
) -> list[Path]:
    """``predict --ply`` with MoGe-2: MoGe-2 on PPD's resized image (``model.working_image``, as the
    release), its depth and mask brought to the size of PPD's prediction ``depth_rel`` (H, W), the cloud of
    :func:`metric_point_cloud` with the image ``rgb`` (H, W, 3) -> the files of :func:`write_metric_outputs`."""
    with torch.no_grad():
        working = model.working_image(image, area)
        geo = moge_geometry(moge, working, num_tokens=num_tokens, size=depth_rel.shape)
    cloud = metric_point_cloud(depth_rel, geo["depth"], geo["mask"], geo["intrinsics"], rgb, outlier_filter)
    return write_metric_outputs(stem, cloud, geo["intrinsics"], axes=axes)


# --- files -----------------------------------------------------------------------------------------


def ply_axes(points, axes: str = "opengl") -> np.ndarray:
    """Camera-frame points (x right, y down, z forward) in the file's axes: ``"opencv"`` as they are,
    ``"opengl"`` with y and z negated (the release's .ply)."""
    if axes not in AXES:
        raise InputError(f"axes must be one of {AXES}, got {axes!r}")
    pts = _numpy(points, np.float32).reshape(-1, 3)
    return pts * np.array([1, -1, -1], np.float32) if axes == "opengl" else pts


def write_point_cloud_ply(
    path: str | os.PathLike, points, colors=None, axes: str = "opengl", metric: bool = True
) -> Path:
    """Camera-frame points (and RGB colours) -> a binary ``.ply`` in ``axes``; the header's comments say
    the axes and whether the coordinates are metres."""
    pts = ply_axes(points, axes)
    scale = "metric: metres" if metric else "not metric: an assumed depth range and field of view"
    return visualize.write_ply(path, pts, colors, comments=[AXES_TEXT[axes], scale])


def write_glb(path: str | os.PathLike, points, colors=None, axes: str = "opengl") -> Path:
    """Camera-frame points (and RGB colours) -> a binary glTF (``.glb``) point cloud via trimesh, in
    ``axes`` (default OpenGL, glTF's own convention: y up, the camera looking down -z)."""
    import trimesh

    pts = ply_axes(points, axes)
    rgba = None
    if colors is not None:
        col = _numpy(colors).reshape(-1, 3)
        if col.dtype != np.uint8:
            col = np.clip(np.asarray(col, np.float64) * 255.0, 0, 255).round().astype(np.uint8)
        if len(col) != len(pts):
            raise InputError(f"{len(pts)} points but {len(col)} colours")
        rgba = np.concatenate([col, np.full((len(col), 1), 255, np.uint8)], 1)
    data = trimesh.Scene(trimesh.PointCloud(pts, colors=rgba)).export(file_type="glb")
    return atomic.write_bytes(path, data)


def camera_info(intrinsics, height: int, width: int) -> dict:
    """Normalised (3, 3) intrinsics of an H x W image -> a JSON-able dict: pixels and normalised K, the
    horizontal, vertical and diagonal fields of view in degrees."""
    k = _numpy(intrinsics, np.float64)
    fx, fy, cx, cy = k[0, 0] * width, k[1, 1] * height, k[0, 2] * width, k[1, 2] * height

    def fov(f, c, size):
        return math.degrees(math.atan(c / f) + math.atan((size - c) / f))

    return {
        "width": int(width),
        "height": int(height),
        "fx": fx,
        "fy": fy,
        "cx": cx,
        "cy": cy,
        "K": [[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]],
        "K_normalised": k.tolist(),
        "fov_x_deg": fov(fx, cx, width),
        "fov_y_deg": fov(fy, cy, height),
        "note": "pixel coordinates: integer indices at pixel centres (the release's back-projection)",
    }


def write_camera_json(path: str | os.PathLike, intrinsics, height: int, width: int, **extra) -> Path:
    return atomic.write_json(path, camera_info(intrinsics, height, width) | extra)


def write_metric_outputs(
    stem: str | os.PathLike, cloud: dict, intrinsics, axes: str = "opengl"
) -> list[Path]:
    """The files of one metric cloud (from :func:`metric_point_cloud` with MoGe-2's normalised
    ``intrinsics``): ``<stem>.ply``, ``<stem>.glb``, ``<stem>_metric_depth.npy`` (float32 metres),
    ``<stem>_camera.json``."""
    h, w = cloud["metric_depth"].shape
    return [
        write_point_cloud_ply(f"{stem}.ply", cloud["points"], cloud["colors"], axes=axes, metric=True),
        write_glb(f"{stem}.glb", cloud["points"], cloud["colors"], axes=axes),
        atomic.write_npy(f"{stem}_metric_depth.npy", cloud["metric_depth"]),
        write_camera_json(
            f"{stem}_camera.json", intrinsics, h, w, source="MoGe-2", metric=True, ply_axes=axes
        ),
    ]

"""Hypersim (Roberts et al. 2021), official layout::

    <root>/<scene>/images/scene_<cam>_final_preview/frame.<NNNN>.tonemap.jpg
    <root>/<scene>/images/scene_<cam>_geometry_hdf5/frame.<NNNN>.depth_meters.hdf5   (key "dataset")

``depth_meters`` is the Euclidean distance to the camera centre; it is converted to planar depth
with each pixel's ray: ``z = dist / |((u - cx) / f, (v - cy) / f, 1)|``, focal 886.81 px at 1024x768
(scaled with the width), principal point at the image centre. NaN = invalid; as the release's loader,
only 0.1 < z < 65 m is valid (``VALID_RANGE``; the data loader applies the same range to shards read).
Indoor: no sky.
The tonemapped JPEG is stored unchanged (``rgb.jpg``) unless ``--rgb-format`` says otherwise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...geometry import centred_camera
from ..codec import RawSample
from . import RawDataError, sanitize_key
from ._common import read_rgb, rel

NAME = "hypersim"
# one line for error messages: the files a sample is made of, relative to the root
LAYOUT = "<scene>/images/scene_<cam>_final_preview/frame.<NNNN>.tonemap.jpg + scene_<cam>_geometry_hdf5/frame.<NNNN>.depth_meters.hdf5"
FOCAL_1024 = 886.81  # px at 1024 px wide: the one place for Hypersim's focal length (benchmark included)
VALID_RANGE = (0.1, 65.0)  # metres, exclusive: the release's Hypersim read_depth


def camera(height: int, width: int) -> dict[str, float]:
    """Hypersim's pinhole camera at this image size: the focal length scales with the width
    (``FOCAL_1024`` at 1024 px), principal point at the image centre (pixel-centre coordinates)."""
    return centred_camera(height, width, FOCAL_1024 * width / 1024.0)


def list_items(root: str, **_options) -> list[tuple[str, str]]:
    items = []
    for jpg in sorted(Path(root).glob("*/images/scene_*_final_preview/frame.*.tonemap.jpg")):
        frame = jpg.name.split(".")[1]
        cam_dir = jpg.parent.name.replace("_final_preview", "_geometry_hdf5")
        h5 = jpg.parent.parent / cam_dir / f"frame.{frame}.depth_meters.hdf5"
        items.append((rel(root, jpg), rel(root, h5)))
    return items


def distance_to_planar(dist: np.ndarray, focal: float) -> np.ndarray:
    """Convert distance-to-camera-centre (H, W) into planar depth, pixel centres at (i + 0.5)."""
    h, w = dist.shape
    x = (np.arange(w, dtype=np.float64) + 0.5 - w / 2.0) / focal
    y = (np.arange(h, dtype=np.float64) + 0.5 - h / 2.0) / focal
    norm = np.sqrt(x[None, :] ** 2 + y[:, None] ** 2 + 1.0)
    return (dist / norm).astype(np.float32)


def load_item(root: str, item: tuple[str, str], **_options) -> RawSample:
    import h5py

    jpg, h5 = (Path(root) / p for p in item)
    rgb, data = read_rgb(jpg)
    try:
        with h5py.File(h5, "r") as f:
            if "dataset" not in f:
                raise RawDataError(f"{h5}: no 'dataset' array (keys: {list(f)})")
            dist = np.asarray(f["dataset"], dtype=np.float32)
    except OSError as exc:
        raise RawDataError(f"{h5}: cannot read HDF5 ({exc})") from None
    if dist.shape != rgb.shape[:2]:
        raise RawDataError(f"{h5}: depth is {dist.shape} but {jpg} is {rgb.shape[:2]}")
    h, w = dist.shape
    pinhole = camera(h, w)
    with np.errstate(invalid="ignore"):
        depth = distance_to_planar(dist, pinhole["fx"])
        depth[~((depth > VALID_RANGE[0]) & (depth < VALID_RANGE[1]))] = np.nan  # invalid, as NaN already is
    scene = Path(item[0]).parts[0]
    cam = Path(item[0]).parts[2].replace("scene_", "").replace("_final_preview", "")
    frame = Path(item[0]).name.split(".")[1]
    meta = {"dataset": NAME, **pinhole}
    meta.update(source=item[0], valid_range=list(VALID_RANGE))
    key = sanitize_key(f"{scene}-{cam}-{frame}")
    return RawSample(key=key, rgb=rgb, depth=depth, meta=meta, rgb_bytes=data, rgb_format="jpg")

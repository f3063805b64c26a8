"""UrbanSyn (Gómez et al. 2023), official layout::

    <root>/rgb/rgb_<NNNN>.png
    <root>/depth/depth_<NNNN>.exr      channel Y, value x 1e5 = metres

Read with the ``OpenEXR`` Python bindings (OpenCV wheels are built without EXR). Depth beyond
200 m is sky (stored as the sky mask). The release documents no per-image intrinsics here, so
``fx = fy`` comes from an assumed horizontal field of view (``ASSUMED_HFOV_DEG``) and
``meta["intrinsics"] = "assumed"``; depth itself does not depend on it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...geometry import centred_camera, focal_from_hfov
from ..codec import RawSample
from . import RawDataError, sanitize_key
from ._common import SKY_DEPTH, check_same_size, read_rgb, rel

NAME = "urbansyn"
# one line for error messages: the files a sample is made of, relative to the root
LAYOUT = "rgb/rgb_<NNNN>.png + depth/depth_<NNNN>.exr"
DEPTH_SCALE = 1e5
ASSUMED_HFOV_DEG = 90.0
# the channel names depth is stored under, in the order tried when a file has several
EXR_DEPTH_CHANNELS = ("Y", "Z", "depth", "Depth", "D", "R")


def list_items(root: str, **_options) -> list[tuple[str, str]]:
    items = []
    for img in sorted(Path(root).glob("rgb/rgb_*.png")):
        frame = img.stem.split("_", 1)[1]
        items.append((rel(root, img), rel(root, Path(root) / "depth" / f"depth_{frame}.exr")))
    return items


def read_exr_channel(path: str | Path, channel: str | None = "Y") -> np.ndarray:
    """One channel of an EXR file as float32 (H, W). ``channel=None`` takes the only channel of a
    single-channel file, else the first of ``EXR_DEPTH_CHANNELS`` present."""
    try:
        import OpenEXR
    except ImportError:
        raise RawDataError(
            f"{path}: reading EXR depth needs the OpenEXR package: pip install OpenEXR"
        ) from None
    if not Path(path).is_file():
        raise RawDataError(f"{path}: no such file")
    try:
        with OpenEXR.File(str(path)) as f:
            channels = f.channels()
            if channel is None:
                names = sorted(channels)
                if len(names) == 1:
                    channel = names[0]
                else:
                    channel = next((c for c in EXR_DEPTH_CHANNELS if c in channels), None)
                    if channel is None:
                        raise RawDataError(
                            f"{path}: cannot tell which EXR channel is depth (has {names}); "
                            "name it with --exr-channel"
                        )
            if channel not in channels:
                raise RawDataError(f"{path}: no EXR channel {channel!r} (has {sorted(channels)})")
            arr = np.asarray(channels[channel].pixels, dtype=np.float32)
    except (OSError, RuntimeError) as exc:
        raise RawDataError(f"{path}: cannot read EXR ({exc})") from None
    if arr.ndim != 2:
        raise RawDataError(f"{path}: EXR channel {channel!r} must be (H, W), got shape {arr.shape}")
    return arr


def load_item(root: str, item: tuple[str, str], **_options) -> RawSample:
    img_path, depth_path = (Path(root) / p for p in item)
    rgb, _ = read_rgb(img_path)
    depth = read_exr_channel(depth_path) * DEPTH_SCALE
    check_same_size(rgb, depth, img_path, depth_path)
    h, w = depth.shape
    meta = {"dataset": NAME, **centred_camera(h, w, focal_from_hfov(w, ASSUMED_HFOV_DEG)), "intrinsics": "assumed"}
    meta.update(source=item[0], sky=f"depth > {SKY_DEPTH:g} m")
    return RawSample(key=sanitize_key(img_path.stem), rgb=rgb, depth=depth, meta=meta, sky=depth > SKY_DEPTH)

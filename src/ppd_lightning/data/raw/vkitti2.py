"""Virtual KITTI 2 (Cabon et al. 2020), official layout::

    <root>/<Scene>/<variation>/frames/rgb/Camera_<c>/rgb_<NNNNN>.jpg
    <root>/<Scene>/<variation>/frames/depth/Camera_<c>/depth_<NNNNN>.png     uint16, centimetres
    <root>/<Scene>/<variation>/intrinsic.txt   "frame cameraID K[0,0] K[1,1] K[0,2] K[1,2]" rows

Depth is planar; the uint16 maximum (655.35 m) is sky, which is stored as the sky mask.
The RGB JPEG is stored unchanged (``rgb.jpg``) unless ``--rgb-format`` says otherwise.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from ..codec import RawSample
from . import RawDataError, sanitize_key
from ._common import check_same_size, read_png_u16, read_rgb, rel

NAME = "vkitti2"
# one line for error messages: the files a sample is made of, relative to the root
LAYOUT = "<Scene>/<variation>/frames/{rgb,depth}/Camera_<c>/{rgb_<NNNNN>.jpg,depth_<NNNNN>.png} + <Scene>/<variation>/intrinsic.txt"
SKY_CM = 65535


def list_items(root: str, **_options) -> list[tuple[str, str, str]]:
    items = []
    for depth in sorted(Path(root).glob("*/*/frames/depth/Camera_*/depth_*.png")):
        frame = depth.stem.split("_", 1)[1]
        rgb_dir = depth.parent.parent.parent / "rgb" / depth.parent.name
        rgb = rgb_dir / f"rgb_{frame}.jpg"
        if not rgb.exists() and (rgb_dir / f"rgb_{frame}.png").exists():
            rgb = rgb_dir / f"rgb_{frame}.png"
        intr = depth.parents[3] / "intrinsic.txt"
        items.append((rel(root, rgb), rel(root, depth), rel(root, intr)))
    return items


@lru_cache(maxsize=64)
def read_intrinsics(path: str) -> dict[tuple[int, int], tuple[float, float, float, float]]:
    """``{(frame, camera): (fx, fy, cx, cy)}`` from a VKITTI2 ``intrinsic.txt``."""
    try:
        lines = Path(path).read_text().split("\n")
    except OSError as exc:
        raise RawDataError(f"{path}: cannot read intrinsics ({exc.strerror or exc})") from None
    out = {}
    for n, line in enumerate(lines[1:], start=2):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 6:
            raise RawDataError(f"{path}:{n}: expected 'frame cameraID fx fy cx cy', got {line!r}")
        try:
            out[(int(parts[0]), int(parts[1]))] = tuple(float(x) for x in parts[2:])
        except ValueError:
            raise RawDataError(f"{path}:{n}: non-numeric intrinsics {line!r}") from None
    return out


def load_item(root: str, item: tuple[str, str, str], **_options) -> RawSample:
    rgb_path, depth_path, intr_path = (Path(root) / p for p in item)
    rgb, data = read_rgb(rgb_path)
    cm = read_png_u16(depth_path)
    check_same_size(rgb, cm, rgb_path, depth_path)
    frame = int(depth_path.stem.split("_", 1)[1])
    camera = int(depth_path.parent.name.split("_", 1)[1])
    intr = read_intrinsics(str(intr_path))
    if (frame, camera) not in intr:
        raise RawDataError(f"{intr_path}: no intrinsics for frame {frame} camera {camera}")
    fx, fy, cx, cy = intr[(frame, camera)]
    sky = cm >= SKY_CM
    depth = cm.astype(np.float32) / 100.0
    scene, variation = Path(item[1]).parts[:2]
    meta = {"dataset": NAME, "fx": fx, "fy": fy, "cx": cx, "cy": cy}
    meta.update(source=item[1], sky="depth >= 655.35 m")
    jpg = rgb_path.suffix.lower() == ".jpg"
    return RawSample(
        key=sanitize_key(f"{scene}-{variation}-cam{camera}-{frame:05d}"),
        rgb=rgb,
        depth=depth,
        meta=meta,
        sky=sky,
        rgb_bytes=data if jpg else None,
        rgb_format="jpg" if jpg else None,
    )

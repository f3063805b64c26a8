"""TartanAir (Wang et al. 2020), official layout::

    <root>/<env>/<Easy|Hard>/<P###>/image_left/<NNNNNN>_left.png
    <root>/<env>/<Easy|Hard>/<P###>/depth_left/<NNNNNN>_left_depth.npy    float32 metres, planar

Intrinsics fx = fy = 320, cx = 320, cy = 240 at 640x480 (scaled with the size). Depth beyond
200 m is sky (stored as the sky mask).
"""

from __future__ import annotations

from pathlib import Path

from ..codec import RawSample
from . import sanitize_key
from ._common import SKY_DEPTH, check_same_size, read_npy, read_rgb, rel

NAME = "tartanair"
# one line for error messages: the files a sample is made of, relative to the root
LAYOUT = "<env>/<Easy|Hard>/<P###>/image_left/<NNNNNN>_left.png + depth_left/<NNNNNN>_left_depth.npy"


def list_items(root: str, **_options) -> list[tuple[str, str]]:
    items = []
    for img in sorted(Path(root).glob("**/image_left/*_left.png")):
        depth = img.parent.parent / "depth_left" / f"{img.stem}_depth.npy"
        items.append((rel(root, img), rel(root, depth)))
    return items


def load_item(root: str, item: tuple[str, str], **_options) -> RawSample:
    img_path, depth_path = (Path(root) / p for p in item)
    rgb, _ = read_rgb(img_path)
    depth = read_npy(depth_path).astype("float32")
    check_same_size(rgb, depth, img_path, depth_path)
    h, w = depth.shape
    s = w / 640.0
    t = h / 480.0
    meta = {"dataset": NAME, "fx": 320.0 * s, "fy": 320.0 * t, "cx": 320.0 * s, "cy": 240.0 * t}
    meta.update(source=item[0], sky=f"depth > {SKY_DEPTH:g} m")
    rel_dir = Path(item[0]).parent.parent
    key = sanitize_key("-".join(rel_dir.parts) + "-" + img_path.stem.split("_")[0])
    return RawSample(key=key, rgb=rgb, depth=depth, meta=meta, sky=depth > SKY_DEPTH)

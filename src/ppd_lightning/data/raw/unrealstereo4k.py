"""UnrealStereo4K (Tosi et al. 2021), official layout::

    <root>/<seq>/Image0/<NNNNN>.png            left image
    <root>/<seq>/Disp0/<NNNNN>.npy             left disparity (pixels)
    <root>/<seq>/Extrinsics0/<NNNNN>.txt       line 1: 3x3 intrinsics, line 2: 3x4 extrinsics (left)
    <root>/<seq>/Extrinsics1/<NNNNN>.txt       same for the right camera

Planar depth = f * b / disparity with f = (fx + fy) / 2 and b = |(E1 E0^-1)[0, 3]| (4x4 forms).
Disparity <= 0 is invalid; depth beyond 200 m is sky (stored as the sky mask). Images are
3840x2160: consider ``--downscale 2``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..codec import RawSample
from . import RawDataError, sanitize_key
from ._common import SKY_DEPTH, check_same_size, read_npy, read_rgb, rel

NAME = "unrealstereo4k"
# one line for error messages: the files a sample is made of, relative to the root
LAYOUT = "<seq>/Image0/<NNNNN>.png + Disp0/<NNNNN>.npy + Extrinsics0|1/<NNNNN>.txt"


def list_items(root: str, **_options) -> list[tuple[str, ...]]:
    items = []
    for img in sorted(Path(root).glob("*/Image0/*.png")):
        seq = img.parent.parent
        items.append(
            (
                rel(root, img),
                rel(root, seq / "Disp0" / f"{img.stem}.npy"),
                rel(root, seq / "Extrinsics0" / f"{img.stem}.txt"),
                rel(root, seq / "Extrinsics1" / f"{img.stem}.txt"),
            )
        )
    return items


def read_camera(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(K 3x3, E 4x4) from an UnrealStereo4K camera file."""
    try:
        lines = [ln for ln in Path(path).read_text().splitlines() if ln.strip()]
    except OSError as exc:
        raise RawDataError(f"{path}: cannot read camera file ({exc.strerror or exc})") from None
    try:
        k = np.array(lines[0].split(), dtype=np.float64)
        e = np.array(lines[1].split(), dtype=np.float64)
    except (IndexError, ValueError):
        raise RawDataError(f"{path}: expected 2 lines of numbers (3x3 intrinsics, 3x4 extrinsics)") from None
    if k.size != 9 or e.size != 12:
        raise RawDataError(f"{path}: expected 9 intrinsics and 12 extrinsics values, got {k.size}, {e.size}")
    ext = np.eye(4)
    ext[:3] = e.reshape(3, 4)
    return k.reshape(3, 3), ext


def load_item(root: str, item: tuple[str, ...], **_options) -> RawSample:
    img_path, disp_path, cam0_path, cam1_path = (Path(root) / p for p in item)
    rgb, _ = read_rgb(img_path)
    disp = read_npy(disp_path).astype(np.float32)
    check_same_size(rgb, disp, img_path, disp_path)
    k0, e0 = read_camera(cam0_path)
    _, e1 = read_camera(cam1_path)
    try:
        baseline = abs(float((e1 @ np.linalg.inv(e0))[0, 3]))
    except np.linalg.LinAlgError:
        raise RawDataError(f"{cam0_path}: extrinsics are not invertible") from None
    if baseline <= 0:
        raise RawDataError(f"{cam1_path}: zero stereo baseline against {cam0_path}")
    f = 0.5 * (k0[0, 0] + k0[1, 1])
    with np.errstate(divide="ignore", invalid="ignore"):
        depth = np.where(disp > 0, f * baseline / disp, 0.0).astype(np.float32)
    meta = {"dataset": NAME, "fx": k0[0, 0], "fy": k0[1, 1], "cx": k0[0, 2], "cy": k0[1, 2]}
    meta.update(baseline=baseline, source=item[0], sky=f"depth > {SKY_DEPTH:g} m")
    key = sanitize_key(f"{Path(item[0]).parts[0]}-{img_path.stem}")
    return RawSample(key=key, rgb=rgb, depth=depth, meta=meta, sky=depth > SKY_DEPTH)

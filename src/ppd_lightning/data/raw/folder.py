"""Your own RGB-D data: a folder of images and depth maps, paired by patterns or by a list file.

Pairing (paths relative to the root):

* patterns (default ``--rgb-glob 'rgb/*' --depth-glob 'depth/*'``): every image matched by the rgb
  glob is one sample. The depth (and optional mask / intrinsics) pattern is either a template with
  ``{stem}`` (the image's file name without extension) and ``{dir}`` (the image's directory), e.g.
  ``depth/{stem}_depth.png``, or a glob whose files are paired with the images by stem.
* ``--list pairs.txt``: one sample per line, ``rgb depth [mask]``, whitespace separated, ``#``
  comments and blank lines ignored.

Depth is **planar** (z-buffer) depth; its file format is chosen by extension: 16-bit ``.png``
(times ``--depth-scale``, metres per unit, which is then required), ``.npy``, ``.exr`` (through the
OpenEXR reader UrbanSyn uses) or ``.pfm`` (read here). ``--depth-scale`` also multiplies the float
formats (default 1: metres). 0, negative and non-finite depth is invalid. A mask (any image,
nonzero = valid) further restricts the valid pixels.

Intrinsics (pixels, at the image's resolution): ``--intrinsics fx,fy,cx,cy`` for all images, or a
per-image text file (``--intrinsics-glob``; 4 numbers ``fx fy cx cy`` or the 9 of a 3x3 K), or
none: ``meta.json`` then holds values from an assumed ``ASSUMED_HFOV_DEG`` field of view and
``"intrinsics": "assumed"`` (depth itself does not depend on them).

Held-out split: ``split="train"|"val"`` with ``val_fraction`` (the images whose SHA-1 of their relative
path ranks lowest; deterministic on every machine, independent of the listing order) or ``val_list``
(a file of image paths relative to the root).
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
from pathlib import Path

import cv2
import numpy as np

from ...geometry import centred_camera, focal_from_hfov, parse_intrinsics
from ...visualize import IMAGE_SUFFIXES
from ..codec import RawSample
from . import RawDataError, sanitize_key
from ._common import check_same_size, read_bytes, read_npy, read_png_u16, read_rgb

NAME = "folder"
LAYOUT = "images matched by --rgb-glob paired with depth maps by --depth-glob (or --list pairs.txt)"
DEPTH_EXTS = (".png", ".npy", ".exr", ".pfm")
ASSUMED_HFOV_DEG = 60.0
DEFAULT_NAME = "own"

# --------------------------------------------------------------------------------------------------
# readers


def read_pfm(path: str | Path) -> np.ndarray:
    """A single-channel PFM (``Pf``) as float32 (H, W), top row first, decoded by OpenCV (both byte orders,
    rows stored bottom to top). The stored values are returned as they are: OpenCV divides them by the
    header's |scale|, which depth PFMs' readers ignore, so that division is undone."""
    data = read_bytes(path)
    try:
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:  # e.g. a zero width in the header
        arr = None
    header = re.match(rb"P[fF]\s+\d+\s+\d+\s+(\S+)\s", data[:64])
    if arr is None or header is None:
        raise RawDataError(f"{path}: not a readable PFM file (truncated, or not PFM)")
    if arr.ndim != 2:
        raise RawDataError(f"{path}: a 3-channel PFM ('PF'); depth must be a single-channel 'Pf' file")
    return arr.astype(np.float32) * np.float32(abs(float(header.group(1))))


def read_depth(path: Path, depth_scale: float | None, exr_channel: str | None = None) -> np.ndarray:
    """Depth in metres (float32 (H, W)) from a .png (uint16 x scale), .npy, .exr or .pfm file."""
    ext = path.suffix.lower()
    if ext == ".png":
        if depth_scale is None:
            raise RawDataError(f"{path}: 16-bit PNG depth needs --depth-scale (metres per unit, e.g. 0.001)")
        return read_png_u16(path).astype(np.float32) * np.float32(depth_scale)
    if ext == ".npy":
        arr = read_npy(path)
        if arr.ndim == 3 and 1 in (arr.shape[0], arr.shape[-1]):
            arr = arr.reshape(arr.shape[1:] if arr.shape[0] == 1 else arr.shape[:2])
        if arr.dtype.kind not in "fiu":
            raise RawDataError(f"{path}: depth .npy must hold numbers, got dtype {arr.dtype}")
    elif ext == ".exr":
        from .urbansyn import read_exr_channel

        arr = read_exr_channel(path, exr_channel)
    elif ext == ".pfm":
        arr = read_pfm(path)
    else:
        raise RawDataError(f"{path}: unsupported depth format {ext!r} (expected one of {DEPTH_EXTS})")
    if arr.ndim != 2:
        raise RawDataError(f"{path}: depth must be 2-D (H, W), got shape {arr.shape}")
    arr = arr.astype(np.float32)
    return arr * np.float32(depth_scale) if depth_scale is not None else arr


def read_mask(path: Path) -> np.ndarray:
    arr = cv2.imdecode(np.frombuffer(read_bytes(path), np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise RawDataError(f"{path}: mask is not a decodable image")
    return arr > 0 if arr.ndim == 2 else (arr[..., :3] > 0).any(axis=-1)


# --------------------------------------------------------------------------------------------------
# pairing


def _rel(root: str, path: str) -> str:
    return Path(os.path.relpath(path, root)).as_posix()


def _glob(root: str, pattern: str) -> list[str]:
    return sorted(
        _rel(root, p) for p in glob.glob(os.path.join(root, pattern), recursive=True) if os.path.isfile(p)
    )


def _stem(path: str) -> str:
    return Path(path).stem


def _matcher(root: str, pattern: str | None, what: str):
    """rgb relative path -> the paired file's relative path ("" when there is none)."""
    if not pattern:
        return lambda _rgb: ""
    if "{" in pattern:  # a template

        def from_template(rgb: str) -> str:
            d = Path(rgb).parent.as_posix()
            try:
                p = pattern.format(stem=_stem(rgb), dir="" if d == "." else d)
            except (KeyError, IndexError, ValueError):
                raise RawDataError(
                    f"--{what}-glob {pattern!r}: only {{stem}} and {{dir}} can be substituted"
                ) from None
            return os.path.normpath(p.lstrip("/")).replace(os.sep, "/")

        return from_template
    by_stem: dict[str, str] = {}
    for p in _glob(root, pattern):
        s = _stem(p)
        if s in by_stem:
            raise RawDataError(
                f"--{what}-glob {pattern!r}: two files with the stem {s!r} ({by_stem[s]}, {p}); "
                "use a {stem} template or --list"
            )
        by_stem[s] = p
    return lambda rgb: by_stem.get(_stem(rgb), "")


def _read_list(root: str, list_file: str) -> list[tuple[str, str, str, str]]:
    try:
        lines = Path(list_file).read_text().splitlines()
    except OSError as exc:
        raise RawDataError(f"{list_file}: cannot read the pair list ({exc.strerror or exc})") from None
    items = []
    for n, line in enumerate(lines, start=1):
        parts = line.split("#", 1)[0].split()
        if not parts:
            continue
        if len(parts) not in (2, 3):
            raise RawDataError(
                f"{list_file}:{n}: expected 'rgb depth [mask]' (paths relative to {root}), got {line!r}"
            )
        items.append((parts[0], parts[1], parts[2] if len(parts) == 3 else "", ""))
    return items


def _val_set(root: str, rgbs: list[str], val_fraction: float, val_list: str | None) -> set[str]:
    if val_list:
        try:
            wanted = [ln.split("#", 1)[0].strip() for ln in Path(val_list).read_text().splitlines()]
        except OSError as exc:
            raise RawDataError(
                f"{val_list}: cannot read the validation list ({exc.strerror or exc})"
            ) from None
        wanted = [os.path.normpath(w).replace(os.sep, "/") for w in wanted if w]
        missing = sorted(set(wanted) - set(rgbs))
        if missing:
            raise RawDataError(
                f"{val_list}: {len(missing)} entries are not among the images under {root}: {missing[:5]}"
            )
        return set(wanted)
    if not 0.0 <= val_fraction < 1.0:
        raise RawDataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if val_fraction == 0 or len(rgbs) < 2:
        return set()
    n_val = min(len(rgbs) - 1, max(1, round(len(rgbs) * val_fraction)))
    ranked = sorted(rgbs, key=lambda r: hashlib.sha1(r.encode()).hexdigest())
    return set(ranked[:n_val])


def list_items(
    root: str,
    *,
    rgb_glob: str = "rgb/*",
    depth_glob: str = "depth/*",
    mask_glob: str | None = None,
    intrinsics_glob: str | None = None,
    list_file: str | None = None,
    depth_scale: float | None = None,
    split: str | None = None,
    val_fraction: float = 0.0,
    val_list: str | None = None,
    **_options,
) -> list[tuple[str, str, str, str]]:
    """Sorted ``(rgb, depth, mask, intrinsics)`` relative paths ("" = none) of the chosen split."""
    if list_file:
        items = _read_list(root, list_file)
        if intrinsics_glob:
            intr = _matcher(root, intrinsics_glob, "intrinsics")
            items = [(r, d, m, intr(r)) for r, d, m, _ in items]
    else:
        rgbs = [p for p in _glob(root, rgb_glob) if Path(p).suffix.lower() in IMAGE_SUFFIXES]
        if not rgbs:
            raise RawDataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) match {root}/{rgb_glob} (--rgb-glob)")
        depth, mask, intr = (
            _matcher(root, depth_glob, "depth"),
            _matcher(root, mask_glob, "mask"),
            _matcher(root, intrinsics_glob, "intrinsics"),
        )
        items = [(r, depth(r), mask(r), intr(r)) for r in rgbs]
    items = sorted(set(items))
    rgbs = [it[0] for it in items]
    if len(set(rgbs)) != len(rgbs):
        dup = sorted({r for r in rgbs if rgbs.count(r) > 1})
        raise RawDataError(f"{list_file or root}: images listed more than once: {dup[:5]}")
    if depth_scale is None and any(it[1].lower().endswith(".png") for it in items):
        raise RawDataError(
            f"{root}: the depth maps are 16-bit PNGs: give --depth-scale (metres per unit, "
            "e.g. 0.001 for millimetres)"
        )
    if split is None:
        return items
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train', 'val' or None, got {split!r}")
    val = _val_set(root, rgbs, float(val_fraction), val_list)
    return [it for it in items if (it[0] in val) == (split == "val")]


def load_item(
    root: str,
    item: tuple[str, str, str, str],
    *,
    depth_scale: float | None = None,
    intrinsics: list[float] | None = None,
    exr_channel: str | None = None,
    name: str = DEFAULT_NAME,
    depth_glob: str = "depth/*",
    **_options,
) -> RawSample:
    rgb_rel, depth_rel, mask_rel, intr_rel = item
    rgb_path = Path(root) / rgb_rel
    if not depth_rel:
        raise RawDataError(f"{rgb_path}: no depth file pairs with it (--depth-glob {depth_glob!r})")
    depth_path = Path(root) / depth_rel
    rgb, data = read_rgb(rgb_path)
    depth = read_depth(depth_path, depth_scale, exr_channel)
    check_same_size(rgb, depth, rgb_path, depth_path)
    h, w = depth.shape
    mask = None
    if mask_rel:
        mask_path = Path(root) / mask_rel
        mask = read_mask(mask_path)
        if mask.shape != depth.shape:
            raise RawDataError(f"{mask_path}: mask is {mask.shape} but {depth_path} is {depth.shape}")
    if intr_rel:
        intr_path = Path(root) / intr_rel
        text = read_bytes(intr_path).decode("utf-8", errors="replace")
        fx, fy, cx, cy = parse_intrinsics(text, str(intr_path))
        how = "given"
    elif intrinsics is not None:
        fx, fy, cx, cy = parse_intrinsics(intrinsics, "--intrinsics")
        how = "given"
    else:
        cam = centred_camera(h, w, focal_from_hfov(w, ASSUMED_HFOV_DEG))
        fx, fy, cx, cy, how = cam["fx"], cam["fy"], cam["cx"], cam["cy"], "assumed"
    meta = {"dataset": name, "fx": fx, "fy": fy, "cx": cx, "cy": cy, "intrinsics": how}
    meta.update(source=rgb_rel, depth_source=depth_rel)
    jpg = rgb_path.suffix.lower() in (".jpg", ".jpeg")
    return RawSample(
        key=sanitize_key(str(Path(rgb_rel).with_suffix(""))),
        rgb=rgb,
        depth=depth,
        meta=meta,
        mask=mask,
        rgb_bytes=data if jpg else None,
        rgb_format="jpg" if jpg else None,
    )


def item_files(item: tuple[str, ...]) -> list[str]:
    """The files (relative to the root) one item is made of (for the manifest's source fingerprints)."""
    return [p for p in item if p]

"""The sample codec of the depth shards: one sample's arrays <-> its member bytes.

Members of a sample ``<key>`` (``<key>.<member>`` inside a shard):

``rgb.png`` | ``rgb.jpg``
    8-bit sRGB, 3 channels.
``depth.npy``
    (H, W) planar (z-buffer) depth in metres, float16 or float32. 0 or non-finite means invalid.
``mask.png`` (optional)
    uint8, nonzero = valid. Absent: valid = finite and > 0.
``sky.png`` (optional)
    uint8, nonzero = sky. Sky pixels carry depth 0 in ``depth.npy`` and are never valid.
``meta.json``
    At least ``dataset``, ``fx``, ``fy``, ``cx``, ``cy`` (pixels, at the stored resolution).

This module only encodes and decodes the members of one sample; how samples are grouped into tar
files is :mod:`ppd_lightning.data.shards`. It knows nothing about sources, transforms or the model.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from ppd_lightning.errors import InputError

RGB_MEMBERS = ("rgb.png", "rgb.jpg")
DEPTH_MEMBER = "depth.npy"
MASK_MEMBER = "mask.png"
SKY_MEMBER = "sky.png"
META_MEMBER = "meta.json"
REQUIRED_META = ("dataset", "fx", "fy", "cx", "cy")
DEPTH_DTYPES = ("float16", "float32")
RGB_FORMATS = ("png", "jpg")
# float16 cannot represent more than 65504; anything beyond that becomes inf (= invalid) on purpose.
_FLOAT16_MAX = float(np.finfo(np.float16).max)
_KEY_RE = re.compile(r"^[A-Za-z0-9_\-]+$")


class SampleError(InputError):
    """A sample (or one of its members) is missing, undecodable or inconsistent."""


@dataclass
class RawSample:
    """What a source hands to the shard writer: full-resolution arrays before encoding.

    ``depth`` is planar metres (non-finite or <= 0 = invalid); ``sky`` marks sky pixels (their depth
    is ignored); ``rgb_bytes``/``rgb_format`` pass an already-encoded image through unchanged.
    """

    key: str
    rgb: np.ndarray
    depth: np.ndarray
    meta: dict[str, Any]
    mask: np.ndarray | None = None
    sky: np.ndarray | None = None
    rgb_bytes: bytes | None = None
    rgb_format: str | None = None


@dataclass
class DepthSample:
    """A decoded sample at its stored resolution."""

    rgb: np.ndarray  # (H, W, 3) uint8, RGB order
    depth: np.ndarray  # (H, W) float32 metres, 0 where invalid or sky
    mask: np.ndarray  # (H, W) bool, valid depth (never sky)
    sky: np.ndarray  # (H, W) bool
    meta: dict[str, Any] = field(default_factory=dict)
    key: str = ""


# --------------------------------------------------------------------------------------------------
# encoding


def _encode_png(array: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", array, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise SampleError(f"cv2 could not encode a PNG of shape {array.shape} dtype {array.dtype}")
    return buf.tobytes()


def encode_rgb(rgb: np.ndarray, fmt: str = "png", jpg_quality: int = 95) -> bytes:
    """Encode an (H, W, 3) uint8 RGB array as PNG or JPEG bytes."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise SampleError(f"rgb must be (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    if fmt == "png":
        return _encode_png(bgr)
    if fmt == "jpg":
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(jpg_quality)])
        if not ok:
            raise SampleError("cv2 could not encode a JPEG")
        return buf.tobytes()
    raise ValueError(f"rgb format must be one of {RGB_FORMATS}, got {fmt!r}")


def encode_depth(depth: np.ndarray, dtype: str = "float16") -> bytes:
    """Encode (H, W) metres as ``.npy``; invalid pixels (non-finite, <= 0) are stored as 0."""
    if dtype not in DEPTH_DTYPES:
        raise ValueError(f"depth dtype must be one of {DEPTH_DTYPES}, got {dtype!r}")
    if depth.ndim != 2:
        raise SampleError(f"depth must be (H, W), got shape {depth.shape}")
    d = np.asarray(depth, dtype=np.float32)
    d = np.where(np.isfinite(d) & (d > 0), d, 0.0).astype(dtype)
    buf = io.BytesIO()
    np.save(buf, d, allow_pickle=False)
    return buf.getvalue()


def encode_sample(
    key: str,
    rgb: np.ndarray,
    depth: np.ndarray,
    meta: dict[str, Any],
    mask: np.ndarray | None = None,
    sky: np.ndarray | None = None,
    rgb_format: str = "png",
    depth_dtype: str = "float16",
    jpg_quality: int = 95,
    rgb_bytes: bytes | None = None,
) -> dict[str, bytes]:
    """Turn arrays into the tar members of one sample (``{member_name: bytes}`` plus ``__key__``).

    ``rgb_bytes`` passes already-encoded image bytes through unchanged (e.g. Hypersim's JPEGs, so
    they are not re-compressed); ``rgb_format`` must then name their format. ``sky`` pixels are
    forced invalid (depth 0). ``mask`` is only written when it says more than "depth is valid".
    """
    if not _KEY_RE.match(key):
        raise SampleError(f"sample key {key!r} must match {_KEY_RE.pattern} (no dots or slashes)")
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise SampleError(f"{key}: meta.json lacks required fields {missing}")
    h, w = depth.shape[:2]
    if rgb.shape[:2] != (h, w):
        raise SampleError(f"{key}: rgb is {rgb.shape[:2]} but depth is {(h, w)}")
    depth = np.asarray(depth, dtype=np.float32).copy()
    valid = np.isfinite(depth) & (depth > 0)
    if depth_dtype == "float16":
        valid &= depth <= _FLOAT16_MAX
    members: dict[str, bytes] = {"__key__": key}  # type: ignore[dict-item]
    if sky is not None:
        sky = np.asarray(sky, dtype=bool)
        if sky.shape != (h, w):
            raise SampleError(f"{key}: sky mask is {sky.shape}, expected {(h, w)}")
        valid &= ~sky
        members[SKY_MEMBER] = _encode_png(sky.astype(np.uint8) * 255)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (h, w):
            raise SampleError(f"{key}: mask is {mask.shape}, expected {(h, w)}")
        if np.any(valid & ~mask):
            members[MASK_MEMBER] = _encode_png((mask & valid).astype(np.uint8) * 255)
        valid &= mask
    depth[~valid] = 0.0
    if rgb_bytes is not None:
        members[f"rgb.{rgb_format}"] = rgb_bytes
    else:
        members[f"rgb.{rgb_format}"] = encode_rgb(rgb, rgb_format, jpg_quality)
    members[DEPTH_MEMBER] = encode_depth(depth, depth_dtype)
    meta = {**meta, "height": int(h), "width": int(w), "depth_dtype": depth_dtype, "has_sky": sky is not None}
    members[META_MEMBER] = json.dumps(meta, sort_keys=True).encode()
    return members


# --------------------------------------------------------------------------------------------------
# decoding


def _decode_png_gray(data: bytes, what: str, key: str) -> np.ndarray:
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise SampleError(f"{key}: {what} is not a decodable PNG")
    if arr.ndim != 2:
        raise SampleError(f"{key}: {what} must be single-channel, got shape {arr.shape}")
    return arr


def decode_sample(members: dict[str, Any]) -> DepthSample:
    """Decode the raw members of one sample (as grouped from a tar) into a :class:`DepthSample`.

    Raises :class:`SampleError` naming the key and member on any inconsistency: missing member,
    undecodable image, depth not 2-D, shapes that disagree, meta without required fields.
    """
    key = str(members.get("__key__", "?"))
    rgb_name = next((m for m in RGB_MEMBERS if m in members), None)
    for name, present in (("rgb.png|rgb.jpg", rgb_name), (DEPTH_MEMBER, DEPTH_MEMBER in members)):
        if not present:
            have = sorted(k for k in members if not k.startswith("__"))
            raise SampleError(f"{key}: missing member {name} (has {have})")
    if META_MEMBER not in members:
        raise SampleError(f"{key}: missing member {META_MEMBER}")
    try:
        meta = json.loads(members[META_MEMBER])
    except (ValueError, UnicodeDecodeError) as exc:
        raise SampleError(f"{key}: meta.json is not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or any(k not in meta for k in REQUIRED_META):
        raise SampleError(f"{key}: meta.json must be an object with fields {list(REQUIRED_META)}")

    # Decoded straight to RGB: a reversed-channel view would cost a full copy later in the loader.
    rgb = cv2.imdecode(np.frombuffer(members[rgb_name], np.uint8), cv2.IMREAD_COLOR_RGB)
    if rgb is None:
        raise SampleError(f"{key}: {rgb_name} is not a decodable image")
    try:
        depth = np.load(io.BytesIO(members[DEPTH_MEMBER]), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise SampleError(f"{key}: depth.npy is not a readable .npy ({exc})") from None
    if depth.ndim != 2 or depth.dtype.kind != "f":
        raise SampleError(f"{key}: depth.npy must be a 2-D float array, got {depth.shape} {depth.dtype}")
    if depth.shape != rgb.shape[:2]:
        raise SampleError(f"{key}: depth.npy is {depth.shape} but {rgb_name} is {rgb.shape[:2]}")
    depth = depth.astype(np.float32)
    valid = np.isfinite(depth) & (depth > 0)
    if MASK_MEMBER in members:
        m = _decode_png_gray(members[MASK_MEMBER], MASK_MEMBER, key)
        if m.shape != depth.shape:
            raise SampleError(f"{key}: mask.png is {m.shape}, expected {depth.shape}")
        valid &= m > 0
    if SKY_MEMBER in members:
        sky = _decode_png_gray(members[SKY_MEMBER], SKY_MEMBER, key) > 0
        if sky.shape != depth.shape:
            raise SampleError(f"{key}: sky.png is {sky.shape}, expected {depth.shape}")
        valid &= ~sky
    else:
        sky = np.zeros(depth.shape, dtype=bool)
    depth[~valid] = 0.0
    return DepthSample(rgb=rgb, depth=depth, mask=valid, sky=sky, meta=meta, key=key)

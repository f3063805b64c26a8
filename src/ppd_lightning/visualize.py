"""Visualisation helpers: colourised depth, labelled panels and ``.ply`` files (back-projection is
:mod:`ppd_lightning.geometry`).

All images are ``uint8`` RGB ``(H, W, 3)`` numpy arrays; depths are ``(H, W)`` float arrays (numpy
or torch, converted). Writers are atomic: they write a temporary file next to the target and
``os.replace`` it, so a crash never leaves a truncated file behind.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from ppd_lightning import atomic
from ppd_lightning.geometry import as_hw, as_numpy

__all__ = [
    "colorbar",
    "colorize",
    "colorize_depth",
    "colorize_error",
    "depth_panel",
    "label_image",
    "read_ply",
    "side_by_side",
    "write_image",
    "write_ply",
]

# ColorBrewer "Spectral" (11 classes), red -> violet
_SPECTRAL = np.array(
    [
        [0x9E, 0x01, 0x42],
        [0xD5, 0x3E, 0x4F],
        [0xF4, 0x6D, 0x43],
        [0xFD, 0xAE, 0x61],
        [0xFE, 0xE0, 0x8B],
        [0xFF, 0xFF, 0xBF],
        [0xE6, 0xF5, 0x98],
        [0xAB, 0xDD, 0xA4],
        [0x66, 0xC2, 0xA5],
        [0x32, 0x88, 0xBD],
        [0x5E, 0x4F, 0xA2],
    ],
    dtype=np.float64,
)

_CV2_MAPS = {"turbo": cv2.COLORMAP_TURBO, "inferno": cv2.COLORMAP_INFERNO, "viridis": cv2.COLORMAP_VIRIDIS}


#: image file suffixes read everywhere an image is taken (predict, folders of frames, raw datasets)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def _lut(name: str) -> np.ndarray:
    """A (256, 3) uint8 RGB lookup table; index 0 is the low end of the value range."""
    if name == "spectral":
        xs = np.linspace(0.0, 1.0, len(_SPECTRAL))
        t = np.linspace(0.0, 1.0, 256)
        return np.stack([np.interp(t, xs, _SPECTRAL[:, c]) for c in range(3)], 1).round().astype(np.uint8)
    if name in ("gray", "grey"):
        return np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, 1)
    if name in _CV2_MAPS:
        bgr = cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None], _CV2_MAPS[name])[:, 0]
        return bgr[:, ::-1].copy()
    raise ValueError(f"unknown colormap {name!r}; choose from spectral, gray, {', '.join(_CV2_MAPS)}")


def colorize(
    values,
    mask=None,
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: str = "spectral",
    percentiles: tuple[float, float] = (2.0, 98.0),
    invalid_color: Sequence[int] = (0, 0, 0),
) -> np.ndarray:
    """Map a scalar image to RGB ``uint8``.

    The range is ``[vmin, vmax]``; a missing bound is the given percentile of the valid values
    (robust to outliers). Invalid pixels (``mask`` false, or non-finite) get ``invalid_color``.
    Index 0 of the colormap corresponds to ``vmin``.
    """
    v = as_hw(values, "values").astype(np.float64)
    valid = np.isfinite(v)
    if mask is not None:
        valid &= as_hw(mask, "mask").astype(bool)
    if valid.any() and (vmin is None or vmax is None):
        lo, hi = np.percentile(v[valid], percentiles)
        vmin = lo if vmin is None else vmin
        vmax = hi if vmax is None else vmax
    vmin = 0.0 if vmin is None else float(vmin)
    vmax = 1.0 if vmax is None else float(vmax)
    scale = vmax - vmin if vmax > vmin else 1.0
    t = np.clip((np.where(valid, v, vmin) - vmin) / scale, 0.0, 1.0)
    out = _lut(cmap)[np.round(t * 255).astype(np.int64)]
    out[~valid] = np.asarray(invalid_color, dtype=np.uint8)
    return out


def colorize_depth(
    depth,
    mask=None,
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: str = "spectral",
    percentiles: tuple[float, float] = (2.0, 98.0),
    invalid_color: Sequence[int] = (0, 0, 0),
) -> np.ndarray:
    """Colourise a depth map: near is the low end of ``cmap`` (red for ``spectral``), far the high
    end; robust percentile range unless ``vmin``/``vmax`` are given; invalid pixels
    ``invalid_color`` (black by default). Pixels with depth <= 0 count as invalid."""
    d = as_hw(depth, "depth").astype(np.float64)
    m = np.isfinite(d) & (d > 0)
    if mask is not None:
        m &= as_hw(mask, "mask").astype(bool)
    return colorize(d, m, vmin, vmax, cmap, percentiles, invalid_color)


def colorize_error(
    pred, gt, mask=None, vmax: float = 0.25, cmap: str = "inferno", invalid_color=(128, 128, 128)
) -> np.ndarray:
    """Colourise the absolute relative error ``|pred - gt| / gt`` on ``[0, vmax]``; invalid pixels
    ``invalid_color`` (grey by default)."""
    p = as_hw(pred, "pred").astype(np.float64)
    g = as_hw(gt, "gt").astype(np.float64)
    m = np.isfinite(g) & (g > 0) & np.isfinite(p)
    if mask is not None:
        m &= as_hw(mask, "mask").astype(bool)
    err = np.where(m, np.abs(p - g) / np.where(m, g, 1.0), 0.0)
    return colorize(err, m, 0.0, vmax, cmap, invalid_color=invalid_color)


def _to_uint8_rgb(image) -> np.ndarray:
    x = as_numpy(image)
    if x.ndim == 3 and x.shape[0] == 3 and x.shape[-1] != 3:
        x = np.transpose(x, (1, 2, 0))
    if x.ndim == 2:
        x = np.repeat(x[..., None], 3, 2)
    if x.ndim != 3 or x.shape[2] != 3:
        raise ValueError(f"image must be (H,W,3), (3,H,W) or (H,W), got {x.shape}")
    if x.dtype != np.uint8:
        x = np.clip(np.asarray(x, np.float64) * 255.0, 0, 255).round().astype(np.uint8)
    return np.ascontiguousarray(x)


def label_image(image: np.ndarray, text: str, bar: int | None = None) -> np.ndarray:
    """Return ``image`` (RGB uint8) with a black title bar carrying ``text`` above it."""
    img = _to_uint8_rgb(image)
    h, w = img.shape[:2]
    bar = bar if bar is not None else max(14, min(40, h // 12))
    scale = bar / 30.0
    header = np.zeros((bar, w, 3), np.uint8)
    cv2.putText(
        header, text, (4, int(bar * 0.75)), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA
    )
    return np.concatenate([header, img], 0)


def side_by_side(images: Sequence, labels: Sequence[str] | None = None, gap: int = 4) -> np.ndarray:
    """Concatenate images horizontally (resized to the first one's height), optionally labelled."""
    imgs = [_to_uint8_rgb(x) for x in images]
    if not imgs:
        raise ValueError("side_by_side needs at least one image")
    h = imgs[0].shape[0]
    out = []
    for i, im in enumerate(imgs):
        if im.shape[0] != h:
            w = max(1, round(im.shape[1] * h / im.shape[0]))
            im = cv2.resize(im, (w, h), interpolation=cv2.INTER_NEAREST)
        if labels is not None:
            im = label_image(im, labels[i])
        out.append(im)
        if gap and i < len(imgs) - 1:
            out.append(np.full((out[-1].shape[0], gap, 3), 255, np.uint8))
    return np.concatenate(out, 1)


# Panels paint pixels without a metric depth in two fixed colours, said in the legend under the panel.
INVALID_COLOR = (0, 0, 0)  # no ground truth
SKY_COLOR = (150, 150, 150)  # sky: valid for training (as far), but no metric depth to score


def _upscale(img: np.ndarray, factor: int) -> np.ndarray:
    if factor <= 1:
        return img
    return cv2.resize(img, (img.shape[1] * factor, img.shape[0] * factor), interpolation=cv2.INTER_NEAREST)


def colorbar(
    vmin: float, vmax: float, height: int, cmap: str = "spectral", unit: str = "m", ticks: int = 5
) -> np.ndarray:
    """A vertical colour bar (``vmax`` at the top, as on a map legend) with ``ticks`` labelled values,
    ``height`` pixels tall, white background: the key to a :func:`colorize` image of the same range."""
    height = max(int(height), 16)
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, max(0.3, min(0.5, height / 400))
    labels = [vmax - (vmax - vmin) * i / (ticks - 1) for i in range(ticks)]
    texts = [f"{v:.3g} {unit}".rstrip() for v in labels]
    text_w = max(cv2.getTextSize(t, font, scale, 1)[0][0] for t in texts)
    text_h = cv2.getTextSize("0", font, scale, 1)[0][1]
    pad, strip = text_h, 12
    out = np.full((height, strip + 6 + text_w + 4, 3), 255, np.uint8)
    ramp = np.linspace(1.0, 0.0, height - 2 * pad)  # top = vmax
    out[pad : height - pad, :strip] = _lut(cmap)[np.round(ramp * 255).astype(np.int64)][:, None]
    for i, text in enumerate(texts):
        y = pad + round((height - 2 * pad - 1) * i / (ticks - 1))
        out[y, strip : strip + 3] = 0
        cv2.putText(out, text, (strip + 6, y + text_h // 2), font, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def _legend(width: int, text: str) -> np.ndarray:
    bar = np.full((18, width, 3), 255, np.uint8)
    cv2.putText(bar, text, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return bar


def depth_panel(
    image,
    pred,
    gt,
    mask=None,
    sky=None,
    cmap: str = "spectral",
    error_vmax: float = 0.25,
    labels: Sequence[str] = ("image", "prediction", "ground truth", "abs. rel. error"),
    min_height: int = 0,
    colorbars: bool = False,
    unit: str = "m",
) -> np.ndarray:
    """``image | prediction | ground truth | error`` with labels.

    Prediction and ground truth share one colour range (the robust range of the valid ground
    truth), so colours are comparable. Pixels outside ``mask`` are :data:`INVALID_COLOR` in the ground
    truth and error tiles, ``sky`` pixels :data:`SKY_COLOR`. ``min_height`` upscales every tile by an
    integer factor with nearest neighbours (small validation crops stay pixel-exact but readable);
    ``colorbars`` adds the depth key (in ``unit``) after the ground truth, the error key after the
    error, and a legend line naming the two fixed colours.
    """
    g = as_hw(gt, "gt").astype(np.float64)
    m = np.isfinite(g) & (g > 0)
    if mask is not None:
        m &= as_hw(mask, "mask").astype(bool)
    s = np.zeros_like(m) if sky is None else as_hw(sky, "sky").astype(bool)
    m &= ~s
    if m.any():
        vmin, vmax = np.percentile(g[m], (2.0, 98.0))
    else:
        vmin = vmax = None
    img = _to_uint8_rgb(image)
    p_col = colorize_depth(pred, None, vmin, vmax, cmap)
    g_col = colorize_depth(g, m, vmin, vmax, cmap, invalid_color=INVALID_COLOR)
    e_col = colorize_error(pred, g, m, vmax=error_vmax, invalid_color=INVALID_COLOR)
    g_col[s] = SKY_COLOR
    e_col[s] = SKY_COLOR
    factor = -(-int(min_height) // img.shape[0]) if min_height else 1
    tiles = [_upscale(x, factor) for x in (img, p_col, g_col, e_col)]
    names = list(labels)
    if colorbars:
        h = tiles[0].shape[0]
        lo, hi = (0.0, 1.0) if vmin is None else (float(vmin), float(vmax))
        tiles.insert(3, colorbar(lo, hi, h, cmap, unit))
        tiles.append(colorbar(0.0, error_vmax, h, "inferno", ""))
        names.insert(3, unit)
        names.append("")
    panel = side_by_side(tiles, labels=names)
    if colorbars:
        panel = np.concatenate([panel, _legend(panel.shape[1], "black: no ground truth   grey: sky")], 0)
    return panel


def write_image(path: str | os.PathLike, image) -> Path:
    """Atomically write an RGB image (format from the suffix, e.g. ``.png``/``.jpg``)."""
    img = _to_uint8_rgb(image)
    ok, buf = cv2.imencode(Path(path).suffix or ".png", img[..., ::-1])
    if not ok:
        raise OSError(f"could not encode image for {path}")
    return atomic.write_bytes(path, buf.tobytes())


_PLY_DTYPE_XYZ = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
_PLY_DTYPE_RGB = [("red", "u1"), ("green", "u1"), ("blue", "u1")]


def write_ply(path: str | os.PathLike, points, colors=None, comments: Sequence[str] = ()) -> Path:
    """Atomically write a binary little-endian ``.ply`` point cloud.

    Args:
        points: (N, 3) float (numpy or torch).
        colors: optional (N, 3) RGB, ``uint8`` or float in [0, 1].
        comments: header ``comment`` lines (e.g. the axes convention), one line each.
    """
    pts = as_numpy(points).astype(np.float32).reshape(-1, 3)
    dtype = list(_PLY_DTYPE_XYZ)
    if colors is not None:
        col = as_numpy(colors)
        if col.dtype != np.uint8:
            col = np.clip(np.asarray(col, np.float64) * 255.0, 0, 255).round().astype(np.uint8)
        col = col.reshape(-1, 3)
        if len(col) != len(pts):
            raise ValueError(f"{len(pts)} points but {len(col)} colours")
        dtype += _PLY_DTYPE_RGB
    rec = np.empty(len(pts), dtype=dtype)
    rec["x"], rec["y"], rec["z"] = pts[:, 0], pts[:, 1], pts[:, 2]
    header = ["ply", "format binary_little_endian 1.0"]
    header += [f"comment {' '.join(str(c).split())}" for c in comments if str(c).strip()]
    header.append(f"element vertex {len(pts)}")
    header += ["property float x", "property float y", "property float z"]
    if colors is not None:
        rec["red"], rec["green"], rec["blue"] = col[:, 0], col[:, 1], col[:, 2]
        header += ["property uchar red", "property uchar green", "property uchar blue"]
    header.append("end_header")
    data = ("\n".join(header) + "\n").encode("ascii") + rec.tobytes()
    return atomic.write_bytes(path, data)


def read_ply(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a ``.ply`` written by :func:`write_ply`; returns ``(points, colors or None)``."""
    raw = Path(path).read_bytes()
    end = raw.index(b"end_header\n") + len(b"end_header\n")
    lines = raw[:end].decode("ascii").splitlines()
    if lines[0] != "ply" or lines[1] != "format binary_little_endian 1.0":
        raise ValueError(f"{path}: not a binary little-endian ply")
    n = next(int(line.split()[2]) for line in lines if line.startswith("element vertex"))
    has_rgb = any(line.startswith("property uchar red") for line in lines)
    dtype = _PLY_DTYPE_XYZ + (_PLY_DTYPE_RGB if has_rgb else [])
    rec = np.frombuffer(raw, dtype=dtype, count=n, offset=end)
    pts = np.stack([rec["x"], rec["y"], rec["z"]], 1)
    col = np.stack([rec["red"], rec["green"], rec["blue"]], 1) if has_rgb else None
    return pts, col

"""Helpers shared by the raw-layout converters: checked file reading with path-naming errors."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from . import RawDataError

SKY_DEPTH = 200.0  # outdoor sets: farther than this is sky (kept marked, never trained as depth)


def read_bytes(path: str | Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise RawDataError(f"{path}: cannot read ({exc.strerror or exc})") from None


def read_rgb(path: str | Path) -> tuple[np.ndarray, bytes]:
    """(H, W, 3) uint8 RGB and the file's bytes (for pass-through of JPEGs)."""
    data = read_bytes(path)
    rgb = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB)
    if rgb is None:
        raise RawDataError(f"{path}: not a decodable image")
    return rgb, data


def read_png_u16(path: str | Path) -> np.ndarray:
    arr = cv2.imdecode(np.frombuffer(read_bytes(path), np.uint8), cv2.IMREAD_ANYDEPTH)
    if arr is None:
        raise RawDataError(f"{path}: not a decodable PNG")
    if arr.ndim != 2 or arr.dtype != np.uint16:
        raise RawDataError(f"{path}: expected a single-channel uint16 PNG, got {arr.shape} {arr.dtype}")
    return arr


def read_npy(path: str | Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise RawDataError(f"{path}: not a readable .npy ({exc})") from None


def check_same_size(rgb: np.ndarray, depth: np.ndarray, rgb_path, depth_path) -> None:
    if depth.ndim != 2:
        raise RawDataError(f"{depth_path}: depth must be 2-D, got shape {depth.shape}")
    if rgb.shape[:2] != depth.shape:
        raise RawDataError(f"{depth_path}: depth is {depth.shape} but {rgb_path} is {rgb.shape[:2]}")


def rel(root: str | Path, path: Path) -> str:
    return path.relative_to(root).as_posix()

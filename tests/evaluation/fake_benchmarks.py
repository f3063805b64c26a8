"""Tiny fake benchmark archives in each layout, built by the tests themselves."""

import tarfile
from pathlib import Path

import cv2
import numpy as np


def _png16(path: Path, depth_m: np.ndarray, scale: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.round(depth_m * scale).astype(np.uint16))


def _rgb(path: Path, h: int, w: int, seed: int) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    params = [cv2.IMWRITE_JPEG_QUALITY, 100] if path.suffix.lower() == ".jpg" else []
    assert cv2.imwrite(str(path), img[..., ::-1], params)
    return img


def two_level(h: int, w: int, near: float = 2.0, far: float = 4.0) -> np.ndarray:
    """Left half ``near``, right half ``far`` (metres)."""
    d = np.full((h, w), far, np.float32)
    d[:, : w // 2] = near
    return d


def ramp(h: int, w: int, near: float = 2.0, far: float = 8.0) -> np.ndarray:
    """Continuous depth (metres) from ``near`` (left) to ``far`` (right), gently varying down the
    rows: every pixel has its own value, as in real maps (two levels make the MAD threshold of
    the ppd protocol's RANSAC 0, which no real map does)."""
    cols = np.linspace(0.0, 1.0, w, dtype=np.float64)[None, :]
    rows = np.linspace(0.0, 1.0, h, dtype=np.float64)[:, None]
    t = 0.85 * cols + 0.15 * rows**2
    return (near + (far - near) * t).astype(np.float32)


def build(name: str, root: Path) -> dict:
    """Write a fake ``name`` benchmark under ``root``; returns {rgb name: depth in metres}."""
    gts: dict[str, np.ndarray] = {}
    if name == "nyuv2":
        for i, scene in enumerate(["bathroom_0001", "kitchen_0002"]):
            d = two_level(480, 640)
            d[0, 0] = 0  # invalid
            _rgb(root / f"test/{scene}/rgb_{i:04d}.png", 480, 640, i)
            _png16(root / f"test/{scene}/depth_{i:04d}.png", d, 1000)
            _png16(root / f"test/{scene}/filled_{i:04d}.png", d + 1, 1000)  # ignored
            gts[f"test/{scene}/rgb_{i:04d}.png"] = d
    elif name == "kitti":
        for i, frame in enumerate(["0000000005", "0000000010"]):
            h, w = 375, 1242
            rgb = f"2011_09_26/2011_09_26_drive_0002_sync/image_02/data/{frame}.png"
            _rgb(root / rgb, h, w, i)
            if i == 0:  # the second frame has no ground truth
                d = two_level(h, w, 10.0, 20.0)
                d[:100] = 0  # lidar covers the lower part only
                _png16(
                    root / f"2011_09_26_drive_0002_sync/proj_depth/groundtruth/image_02/{frame}.png", d, 256
                )
                gts[rgb] = d
    elif name == "eth3d":
        h, w = 12, 16
        for i, scene in enumerate(["courtyard", "pipes"]):
            rgb = f"rgb/{scene}/images/dslr_images/DSC_{i:04d}.JPG"
            _rgb(root / rgb, h, w, i)
            d = two_level(h, w, 3.0, 6.0)
            d[1, 1] = np.inf
            p = root / f"depth/{scene}_dslr_depth/{scene}/ground_truth_depth/dslr_images/DSC_{i:04d}.JPG"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(d.astype("<f4").tobytes())
            gts[rgb] = d
    elif name == "scannet":
        for i, scene in enumerate(["scene0001_00", "scene0002_00"]):
            d = two_level(24, 32, 1.5, 3.0)
            d[2, 3] = 0
            _rgb(root / f"{scene}/color/{i * 100}.jpg", 24, 32, i)
            _png16(root / f"{scene}/depth/{i * 100}.png", d, 1000)
            gts[f"{scene}/color/{i * 100}.jpg"] = d
    elif name == "diode":
        for i, kind in enumerate(["indoors", "outdoor"]):
            base = f"{kind}/scene_0000{i}/scan_0000{i}/0000{i}_0000{i}_{kind}_000_010"
            d = ramp(24, 32, 2.0, 8.0)
            mask = np.ones_like(d, bool)
            mask[:, -2:] = False
            _rgb(root / f"{base}.png", 24, 32, i)
            np.save(root / f"{base}_depth.npy", d[..., None])
            np.save(root / f"{base}_depth_mask.npy", mask.astype(np.float32))
            gts[f"{base}.png"] = d
    elif name == "hypersim":
        for i, scene in enumerate(["ai_001_001", "ai_002_003"]):
            d = two_level(48, 64, 2.0, 5.0)
            _rgb(root / f"{scene}/rgb_cam_00_fr{i:04d}.png", 48, 64, i)
            _png16(root / f"{scene}/depth_plane_cam_00_fr{i:04d}.png", d, 1000)
            gts[f"{scene}/rgb_cam_00_fr{i:04d}.png"] = d
    else:
        raise ValueError(name)
    return gts


def to_tar(folder: Path, tar_path: Path, prefix: str = "", mode: str = "w") -> Path:
    with tarfile.open(tar_path, mode) as tf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                tf.add(p, arcname=prefix + p.relative_to(folder).as_posix())
    return tar_path

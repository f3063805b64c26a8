"""Tiny fake video benchmarks in the layout VDA's extraction scripts write, built by the tests.

A camera moves (and turns) inside a box-shaped room; each frame's ground truth is the true depth of
the room (ray-box intersection), stored as a uint16 PNG of ``factor`` units per metre (or a float32
``.npy``), with holes (0) and far outliers (beyond the benchmark's max depth). Poses are
camera-to-world 4x4, K the 4x4 ``intrinsic_depth`` of ScanNet. Predictions are disparity (or
log-depth) with a per-frame scale/shift wobble (flicker), noise and wild pixels.
"""

import json
from pathlib import Path

import cv2
import numpy as np

ROOM_LO = np.array([-3.0, -2.0, -1.0])
ROOM_HI = np.array([3.0, 2.0, 9.0])


def intrinsics(h: int, w: int) -> np.ndarray:
    k = np.eye(4)
    k[0, 0], k[1, 1], k[0, 2], k[1, 2] = 0.9 * w, 0.85 * w, 0.5 * w - 0.3, 0.5 * h + 0.2
    return k


def pose(t: float, seq: int) -> np.ndarray:
    """Camera-to-world: a slow walk forward and sideways while turning."""
    yaw, pitch = 0.05 * t + 0.1 * seq, 0.02 * np.sin(t)
    cy, sy, cp, sp = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch)
    r_yaw = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    r_pitch = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    m = np.eye(4)
    m[:3, :3] = r_yaw @ r_pitch
    m[:3, 3] = [0.15 * t - 0.5 + 0.2 * seq, 0.03 * np.cos(t), 0.2 * t]
    return m


def render_depth(k: np.ndarray, cam_to_world: np.ndarray, h: int, w: int) -> np.ndarray:
    """Camera-z depth (metres) of the room seen by the camera."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    d_cam = np.stack([(xx - k[0, 2]) / k[0, 0], (yy - k[1, 2]) / k[1, 1], np.ones_like(xx)], -1)
    d = d_cam @ cam_to_world[:3, :3].T
    o = cam_to_world[:3, 3]
    with np.errstate(divide="ignore"):
        s = np.where(d > 0, (ROOM_HI - o) / d, (ROOM_LO - o) / d)
    return s.min(-1)  # d_cam has z = 1, so the ray parameter is the camera-z depth


def build(
    root: Path,
    dataset: str = "scannet",
    json_name: str = "scannet_video.json",
    n_seq: int = 3,
    n_frames: int = 7,
    h: int = 40,
    w: int = 56,
    factor: float = 1000.0,
    image_dir: str = "color",
    image_crop: tuple = (8, -8, 11, -11),
    camera: bool = True,
    npy_gt: bool = False,
    seed: int = 0,
) -> dict:
    """Write the sequences and their JSON; returns {"json": path, "frames": {image: true depth at
    the image's size}, "listing": the JSON}.

    The images (``<seq>/<image_dir>/<n>.jpg``) are ``image_crop`` of the full frame, as VDA's
    extraction writes ``color`` (ScanNet's 8:-8, 11:-11); ``image_crop=None`` keeps them whole
    (``color_origin``). Frame 2 of sequence 0 has no valid pixel at all."""
    rng = np.random.default_rng(seed)
    listing = {dataset: []}
    truth = {}
    k = intrinsics(h, w)
    for s in range(n_seq):
        name = f"scene{s:04d}_00"
        frames = []
        for f in range(n_frames):
            cam = pose(f + 0.3 * s, s)
            depth = render_depth(k, cam, h, w)
            stored = depth.copy()
            holes = rng.random((h, w)) < 0.06
            stored[holes] = 0.0
            stored[rng.random((h, w)) < 0.02] = 14.0  # beyond 10 m: out of the valid range
            if s == 0 and f == 2:
                stored[:] = 0.0
            img_rel = f"{name}/{image_dir}/{f * 3}.jpg"
            ext = "npy" if npy_gt else "png"
            gt_rel = f"{name}/depth/{f * 3}.{ext}"
            (root / gt_rel).parent.mkdir(parents=True, exist_ok=True)
            if npy_gt:
                np.save(root / gt_rel, (stored * factor).astype(np.float32))
            else:
                assert cv2.imwrite(str(root / gt_rel), np.round(stored * factor).astype(np.uint16))
            rgb = (np.clip(np.stack([depth * 25, depth * 10 + 40 * s, 255 - depth * 20], -1), 0, 255)).astype(
                np.uint8
            )
            seen = depth
            if image_crop is not None:
                a, b, c, d = image_crop
                rgb, seen = rgb[a:b, c:d], depth[a:b, c:d]
            (root / img_rel).parent.mkdir(parents=True, exist_ok=True)
            assert cv2.imwrite(str(root / img_rel), rgb[..., ::-1])
            item = {"image": img_rel, "gt_depth": gt_rel, "factor": factor}
            if camera:
                item["K"] = k.tolist()
                item["pose"] = cam.tolist()
            frames.append(item)
            truth[img_rel] = seen  # what the image shows
        listing[dataset].append({name: frames})
    path = root / json_name
    path.write_text(json.dumps(listing, indent=2))
    return {"json": path, "frames": truth, "listing": listing}


def disparity_predictions(
    pred_dir: Path,
    truth: dict,
    size=None,
    space: str = "disparity",
    seed: int = 1,
    flicker: float = 0.15,
    noise: float = 0.01,
    wild: float = 0.01,
) -> None:
    """Save a prediction per frame: disparity (or log(d + 1)) of the true depth with a per-frame
    scale/shift wobble, noise, and a few wild pixels; ``size=(h, w)`` resizes (nearest) before
    saving (a prediction at another size than the ground truth's crop)."""
    rng = np.random.default_rng(seed)
    for i, (image, depth) in enumerate(sorted(truth.items())):
        scale = 2.0 * (1.0 + flicker * np.sin(1.7 * i))
        shift = 0.05 * np.cos(i)
        base = 1.0 / depth if space == "disparity" else np.log(depth + 1.0)
        pred = scale * base + shift + noise * rng.standard_normal(depth.shape)
        pred[rng.random(depth.shape) < wild] *= 4.0
        pred = pred.astype(np.float32)
        if size is not None:
            pred = cv2.resize(pred, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
        path = pred_dir / Path(image).with_suffix(".npy")
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, pred)

"""Files the app tests serve: a tiny random PPD in the released formats, images of the synthetic world, and
broken files."""

from pathlib import Path

import cv2
import numpy as np
import torch
from model_helpers import da2_checkpoint, released_dit_checkpoint

from ppd_lightning.data.raw.synthetic import render_scene
from ppd_lightning.visualize import read_ply

AREA = 64 * 48  # the tiny model works at this many pixels (the released default would be far too slow)
STEPS = 2


def tiny_ppd_files(folder: Path) -> tuple[Path, Path]:
    """``ppd.pth`` and ``depth_anything_v2_vitl.pth`` of a tiny random model, in the released formats."""
    folder.mkdir(parents=True, exist_ok=True)
    dit, semantics = folder / "ppd.pth", folder / "depth_anything_v2_vitl.pth"
    torch.save(released_dit_checkpoint(), dit)
    torch.save(da2_checkpoint(dim=24), semantics)
    return dit, semantics


def scene_png(path: Path, height: int = 48, width: int = 64, index: int = 0) -> Path:
    rgb, _, _ = render_scene(seed=3, index=index, height=height, width=width)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), rgb[..., ::-1])
    return path


def truncated_png(path: Path, good: Path) -> Path:
    """A PNG cut off after its header: what an interrupted download leaves."""
    path.write_bytes(good.read_bytes()[:80])
    return path


def camera_frame_ply(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A ``.ply``'s points in the camera frame (x right, y down, z forward) and colours: a file whose header
    says ``axes opengl`` has y and z negated (the release's convention); one without the comment is in the
    camera frame."""
    points, colours = read_ply(path)
    header = path.read_bytes().split(b"end_header", 1)[0].decode("ascii")
    if "comment axes opengl" in header:
        points = points * np.array([1, -1, -1], np.float32)
    return points, colours

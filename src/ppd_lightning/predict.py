"""Depth and point clouds for your own images.

    python -m ppd_lightning.predict photos/*.jpg --dit ppd.pth --semantics depth_anything_v2_vitl.pth --out out/
    python -m ppd_lightning.predict photos/*.jpg --dit ppd_moge.pth --semantics moge2.pt --out out/
    python -m ppd_lightning.predict photo.png --ckpt outputs/train/<run>/checkpoints/last.ckpt --out out/

Outputs mirror the images' paths relative to the folder the inputs have in common (``d1/photo.png`` and
``d2/photo.png`` -> ``<out>/d1/photo_*`` and ``<out>/d2/photo_*``; two images that differ only by their
suffix keep it: ``photo_png_*``, ``photo_jpg_*``). For every image ``<name>``: ``<name>_depth.npy`` (float32 H x W, the model's relative depth: normalised
log-depth, 0 = near end, 1 = far end of the scene), ``<name>_depth.png`` (colourised), ``<name>_panel.png``
(image | depth) and, with ``--ply``, ``<name>.ply``: a coloured point cloud. PPD's depth is relative
(affine in log(d + 1)), so the point cloud maps it to metres with an assumed ``--depth-range`` and a
pinhole camera of ``--fov`` degrees (horizontal), or ``--focal`` pixels.

Every image written is listed (``<image> -> <outputs>``); an image that cannot be read or predicted is
reported and skipped, and the command then exits with status 1 after the others are done.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from ppd_lightning import atomic, visualize
from ppd_lightning.errors import DiskFullError, exit_on_user_error, is_user_error, one_line
from ppd_lightning.geometry import centred_camera, depth_to_points, focal_from_hfov, intrinsics_matrix
from ppd_lightning.weights import load_model_from_checkpoint, load_pixel_perfect_depth

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def read_rgb(path: Path) -> np.ndarray:
    rgb = cv2.imread(str(path), cv2.IMREAD_COLOR_RGB)
    if rgb is None:
        raise ValueError(f"{path}: not a readable image (expected one of {sorted(IMAGE_SUFFIXES)})")
    return rgb


def relative_to_metric(rel: np.ndarray, near: float, far: float) -> np.ndarray:
    """Map relative log-depth (0 near .. 1 far, as trained) to metres: log(d + 1) spans the given range."""
    lo, hi = math.log1p(near), math.log1p(far)
    return np.expm1(np.clip(rel, 0.0, 1.5) * (hi - lo) + lo).astype(np.float32)


def collect_images(inputs: list[str]) -> list[Path]:
    """Image files of the inputs (a directory: its images, not recursive), each once, in order."""
    paths: list[Path] = []
    seen: set[str] = set()
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            found = [p]
        else:
            raise FileNotFoundError(f"{p}: no such image file or directory")
        for q in found:
            if os.path.abspath(q) not in seen:
                seen.add(os.path.abspath(q))
                paths.append(q)
    if not paths:
        raise FileNotFoundError(
            f"no images found in {inputs} (expected files with suffix {sorted(IMAGE_SUFFIXES)})"
        )
    return paths


def output_names(images: list[Path]) -> list[Path]:
    """One distinct relative output base per image (no suffix): its path relative to the folder all
    images share, without the suffix; images that would still collide (``photo.png``, ``photo.jpg``)
    keep their suffix in the name (``photo_png``, ``photo_jpg``)."""
    absolute = [Path(os.path.abspath(p)) for p in images]
    root = Path(os.path.commonpath([str(p.parent) for p in absolute]))
    bases = [p.relative_to(root).with_suffix("") for p in absolute]
    counts: dict[str, int] = {}
    for b in bases:
        counts[str(b).lower()] = counts.get(str(b).lower(), 0) + 1
    names = [
        b.with_name(f"{b.name}_{p.suffix.lstrip('.').lower()}") if counts[str(b).lower()] > 1 else b
        for b, p in zip(bases, absolute)
    ]
    if len({str(n).lower() for n in names}) != len(names):  # e.g. photo.png and photo.PNG: numbered
        names = [n.with_name(f"{n.name}_{i}") for i, n in enumerate(names)]
    return names


def load_model(args: argparse.Namespace):
    if args.ckpt:
        return load_model_from_checkpoint(args.ckpt, use_ema=not args.no_ema, encoder_weights=args.semantics)
    if not (args.dit and args.semantics):
        raise SystemExit(
            "error: give --dit ppd.pth --semantics depth_anything_v2_vitl.pth, "
            "or --dit ppd_moge.pth --semantics moge2.pt, or --ckpt"
        )
    return load_pixel_perfect_depth(args.dit, args.semantics)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("images", nargs="+", help="image files or directories")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--dit", help="released ppd.pth or ppd_moge.pth (or an exported .safetensors)")
    ap.add_argument(
        "--semantics",
        help="its encoder: depth_anything_v2_vitl.pth or moge2.pt (with --ckpt: the encoder file at a new path)",
    )
    ap.add_argument("--ckpt", help="one of our training checkpoints instead of --dit/--semantics")
    ap.add_argument("--no-ema", action="store_true", help="with --ckpt: the raw instead of the EMA weights")
    ap.add_argument("--steps", type=int, default=4, help="Euler steps (default 4)")
    ap.add_argument(
        "--area",
        type=int,
        help="working area in pixels (default: the model's training area; 1024*768 for the released weights)",
    )
    ap.add_argument("--seed", type=int, default=0, help="initial-noise seed")
    ap.add_argument("--ply", action="store_true", help="also write a coloured .ply point cloud")
    ap.add_argument(
        "--depth-range",
        type=float,
        nargs=2,
        default=(0.5, 20.0),
        metavar=("NEAR", "FAR"),
        help="metres assumed for the nearest/farthest relative depth in the .ply (default 0.5 20)",
    )
    ap.add_argument(
        "--fov", type=float, default=60.0, help="horizontal field of view in degrees for the .ply"
    )
    ap.add_argument("--focal", type=float, help="focal length in pixels (overrides --fov)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    if args.steps < 1:
        ap.error("--steps must be >= 1")
    if args.area is not None and args.area < 256:
        ap.error(f"--area is a pixel count (e.g. {1024 * 768} for 1024x768), got {args.area}")
    near, far = args.depth_range
    if not 0 <= near < far:
        ap.error(f"--depth-range needs 0 <= NEAR < FAR, got {near} {far}")

    images = collect_images(args.images)
    names = output_names(images)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    model = load_model(args).to(device).eval()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    written: list[Path] = []
    failed: list[tuple[Path, str]] = []
    for path, name in zip(tqdm(images, desc="predicting", unit="image"), names):
        stem = out / name
        try:
            files = predict_one(model, path, stem, args, device, autocast)
        except DiskFullError:
            raise  # nothing more can be written
        except Exception as e:  # noqa: BLE001 - one bad image is reported, the others go on
            if not is_user_error(e) and not isinstance(e, (OSError, cv2.error)):
                raise
            failed.append((path, one_line(e)))
            tqdm.write(f"skipped {path}: {one_line(e)}", file=sys.stderr)
            continue
        written += files
        tqdm.write(f"{path} -> {', '.join(str(f) for f in files)}")
    n_ok = len(images) - len(failed)
    print(f"wrote {n_ok} of {len(images)} prediction(s) ({len(written)} files) to {out}")
    if failed:
        print(f"error: {len(failed)} image(s) failed:", file=sys.stderr)
        for path, why in failed:
            print(f"  {path}: {why}", file=sys.stderr)
        return 1
    return 0


def predict_one(model, path: Path, stem: Path, args, device, autocast) -> list[Path]:
    """Depth of one image -> the files written (``<stem>_depth.npy`` ...)."""
    rgb = read_rgb(path)
    image = torch.from_numpy(rgb).permute(2, 0, 1)[None].float().div(255).to(device)
    g = torch.Generator(device=device).manual_seed(args.seed)
    with torch.no_grad(), autocast:
        rel = model.infer(image, steps=args.steps, generator=g, area=args.area)
    rel = rel[0, 0].float().cpu().numpy()
    if not np.isfinite(rel).all():
        raise ValueError(
            f"{path}: the model predicted non-finite depth ({int((~np.isfinite(rel)).sum())} pixels)"
        )
    files = [atomic.write_npy(f"{stem}_depth.npy", rel)]
    colour = visualize.colorize_depth(rel - rel.min() + 1e-3)
    files.append(visualize.write_image(f"{stem}_depth.png", colour))
    panel = visualize.side_by_side([rgb, colour], ["image", "depth"])
    files.append(visualize.write_image(f"{stem}_panel.png", panel))
    if args.ply:
        near, far = args.depth_range
        depth = relative_to_metric(rel, near, far)
        h, w = depth.shape
        focal = args.focal or focal_from_hfov(w, args.fov)
        valid = np.isfinite(depth) & (depth > 0)
        cam = centred_camera(h, w, focal)
        pts = depth_to_points(depth, intrinsics_matrix(cam["fx"], cam["fy"], cam["cx"], cam["cy"]), valid)
        files.append(visualize.write_ply(f"{stem}.ply", pts, rgb[valid]))
    return files


def cli(argv: list[str] | None = None) -> int:
    """``python -m ppd_lightning.predict``: ``main`` with its errors as one line (PPD_TRACEBACK=1: traceback)."""
    with exit_on_user_error():
        return main(argv)
    return 1  # pragma: no cover


if __name__ == "__main__":
    sys.exit(cli())

"""Depth and point clouds for your own images.

    python -m ppd_lightning.predict photos/*.jpg --dit ppd.pth --semantics depth_anything_v2_vitl.pth --out out/
    python -m ppd_lightning.predict photos/*.jpg --dit ppd_moge.pth --semantics moge2.pt --out out/
    python -m ppd_lightning.predict photo.png --ckpt outputs/train/<run>/checkpoints/last.ckpt --out out/

For every image ``<name>``: ``<name>_depth.npy`` (float32 H x W, the model's relative depth: normalised
log-depth, 0 = near end, 1 = far end of the scene), ``<name>_depth.png`` (colourised), ``<name>_panel.png``
(image | depth) and, with ``--ply``, ``<name>.ply``: a coloured point cloud. PPD's depth is relative
(affine in log(d + 1)), so the point cloud maps it to metres with an assumed ``--depth-range`` and a
pinhole camera of ``--fov`` degrees (horizontal), or ``--focal`` pixels.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from ppd_lightning import atomic, visualize

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
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            paths += sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            paths.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such image file or directory")
    if not paths:
        raise FileNotFoundError(
            f"no images found in {inputs} (expected files with suffix {sorted(IMAGE_SUFFIXES)})"
        )
    return paths


def load_model(args: argparse.Namespace):
    if args.ckpt:
        from ppd_lightning.training.checkpoint import load_model_from_checkpoint

        return load_model_from_checkpoint(args.ckpt, use_ema=not args.no_ema, encoder_weights=args.semantics)
    if not (args.dit and args.semantics):
        raise SystemExit(
            "error: give --dit ppd.pth --semantics depth_anything_v2_vitl.pth, "
            "or --dit ppd_moge.pth --semantics moge2.pt, or --ckpt"
        )
    from ppd_lightning.official import load_pixel_perfect_depth

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
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    model = load_model(args).to(device).eval()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    for path in tqdm(images, desc="predicting", unit="image"):
        rgb = read_rgb(path)
        image = torch.from_numpy(rgb).permute(2, 0, 1)[None].float().div(255).to(device)
        g = torch.Generator(device=device).manual_seed(args.seed)
        with torch.no_grad(), autocast:
            rel = model.infer(image, steps=args.steps, generator=g, area=args.area)
        rel = rel[0, 0].float().cpu().numpy()
        stem = out / path.stem
        atomic.write_npy(f"{stem}_depth.npy", rel)
        colour = visualize.colorize_depth(rel - rel.min() + 1e-3)
        visualize.write_image(f"{stem}_depth.png", colour)
        visualize.write_image(f"{stem}_panel.png", visualize.side_by_side([rgb, colour], ["image", "depth"]))
        if args.ply:
            depth = relative_to_metric(rel, near, far)
            h, w = depth.shape
            focal = args.focal or (w / 2) / math.tan(math.radians(args.fov) / 2)
            valid = np.isfinite(depth) & (depth > 0)
            pts = visualize.depth_to_points(depth, (focal, focal, (w - 1) / 2, (h - 1) / 2), valid)
            visualize.write_ply(f"{stem}.ply", pts, rgb[valid])
    print(f"wrote {len(images)} prediction(s) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

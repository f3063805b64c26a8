"""Depth and point clouds for your own images.

    python -m ppd_lightning.predict photos/*.jpg --dit ppd.pth --semantics depth_anything_v2_vitl.pth --out out/
    python -m ppd_lightning.predict photos/*.jpg --dit ppd_moge.pth --semantics moge2.pt --out out/
    python -m ppd_lightning.predict photo.png --ckpt outputs/train/<run>/checkpoints/last.ckpt --out out/
    python -m ppd_lightning.predict clip.mp4 --dit ppvd.pth --semantics pi3.safetensors --out out/
    python -m ppd_lightning.predict frames_dir/ --frames --dit ppvd.pth --semantics pi3.safetensors --out out/

Videos (a video suffix such as ``.mp4``, or folders of frames with ``--frames``) go through PPVD window by
window in bounded memory; their flags and outputs are :mod:`ppd_lightning.video.run`'s.

Outputs mirror the images' paths relative to the folder the inputs have in common (``d1/photo.png`` and
``d2/photo.png`` -> ``<out>/d1/photo_*`` and ``<out>/d2/photo_*``; two images that differ only by their
suffix keep it: ``photo_png_*``, ``photo_jpg_*``). For every image ``<name>``: ``<name>_depth.npy`` (float32 H x W, the model's relative depth: normalised
log-depth, 0 = near end, 1 = far end of the scene), ``<name>_depth.png`` (colourised), ``<name>_panel.png``
(image | depth) and, with ``--ply``, ``<name>.ply``: a coloured point cloud. PPD's depth is relative
(affine in log(d + 1)). With MoGe-2's geometry (``--geometry moge2.pt``, or automatically when
``--semantics`` is MoGe-2's whole ``moge2.pt``, read once for both) the cloud is metric, as the release's
``run_point_cloud.py`` makes it (:mod:`ppd_lightning.pointcloud`): MoGe-2 runs on PPD's resized image, the
depth is aligned to MoGe-2's (RANSAC in log(d + 1)) and back-projected with its intrinsics, outliers
filtered; also written: ``<name>_metric_depth.npy`` (metres), ``<name>_camera.json`` (intrinsics, fields
of view) and ``<name>.glb``. Without it, the cloud maps the relative depth onto an assumed
``--depth-range`` with a pinhole camera of ``--fov`` degrees (horizontal) or ``--focal`` pixels: not
metric, as its header and the log say. ``--ply-axes``: ``opengl`` (default, the release's: x right, y up,
z towards the viewer) or ``opencv`` (the camera frame: x right, y down, z forward).

Every image written is listed (``<image> -> <outputs>``); an image that cannot be read or predicted is
reported and skipped, and the command then exits with status 1 after the others are done.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from ppd_lightning import atomic, pointcloud, visualize
from ppd_lightning.errors import DiskFullError, DivergenceError, InputError, is_user_error, one_line, run_main
from ppd_lightning.models.moge import MoGe2
from ppd_lightning.models.ppd import PixelPerfectDepth
from ppd_lightning.upsampling import UPSAMPLE_MODES
from ppd_lightning.video.run import add_video_arguments, predict_videos, wants_video
from ppd_lightning.visualize import IMAGE_SUFFIXES
from ppd_lightning.weights.hub import is_released_name, resolve_model_files
from ppd_lightning.weights.moge2 import load_moge2, load_released_with_geometry


def read_rgb(path: Path) -> np.ndarray:
    rgb = cv2.imread(str(path), cv2.IMREAD_COLOR_RGB)
    if rgb is None:
        raise InputError(f"{path}: not a readable image (expected one of {sorted(IMAGE_SUFFIXES)})")
    return rgb


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


def resolve_names(args: argparse.Namespace) -> None:
    """``--model`` and released names in ``--dit``/``--semantics``/``--geometry`` -> the files' paths
    (found in a weights folder or downloaded: :func:`ppd_lightning.weights.hub.resolve_model_files`)."""
    if args.model and (args.ckpt or args.dit):
        raise InputError("give --model, --dit/--semantics or --ckpt, not several")
    named = [v for v in (args.dit, args.semantics, args.geometry) if is_released_name(v)]
    if not (args.model or named):
        return
    files = resolve_model_files(
        None if args.ckpt else args.dit,
        args.semantics,
        args.geometry,
        model=args.model,
        weights_dir=args.weights_dir,
    )
    args.dit = None if args.ckpt else files.dit
    args.semantics, args.geometry = files.semantics, files.geometry if args.geometry else None


def load_model(args: argparse.Namespace) -> PixelPerfectDepth:
    if args.ckpt:
        return PixelPerfectDepth.from_checkpoint(
            args.ckpt, use_ema=not args.no_ema, encoder_weights=args.semantics
        )
    if not (args.dit and args.semantics):
        raise InputError(
            "give --model ppd (or ppd-moge2), --dit ppd.pth --semantics depth_anything_v2_vitl.pth, "
            "or --dit ppd_moge.pth --semantics moge2.pt, or --ckpt"
        )
    return PixelPerfectDepth.from_released(args.dit, args.semantics)


def load_models(args: argparse.Namespace) -> tuple[PixelPerfectDepth, MoGe2 | None]:
    """PPD and, for metric point clouds (``--ply``), MoGe-2: ``--geometry``, or ``--semantics`` when it is
    a whole MoGe-2 file (read once: its encoder is PPD-MoGe2's semantics)."""
    if args.ply and args.dit and args.semantics and not args.ckpt:
        return load_released_with_geometry(args.dit, args.semantics, args.geometry)
    return load_model(args), load_moge2(args.geometry) if args.ply and args.geometry else None


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m ppd_lightning.predict`` (images and videos)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("images", nargs="+", help="images or image folders; or videos (--frames: frame folders)")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument(
        "--model",
        help="a released model by name, downloaded on first use: ppd, ppd-moge2 (images), ppvd (videos)",
    )
    ap.add_argument(
        "--weights-dir", help="folder of released files (those on Google Drive only: ppd_moge.pth, ppvd.pth)"
    )
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
    ap.add_argument(
        "--upsample",
        choices=UPSAMPLE_MODES,
        default="edge",
        help="how the depth comes back to the image size: edge (default: guided by the image, no flying "
        "pixels or staircases), bilinear (the release) or nearest",
    )
    ap.add_argument("--ply", action="store_true", help="also write a coloured .ply point cloud")
    ap.add_argument(
        "--depth-range",
        type=float,
        nargs=2,
        default=pointcloud.ASSUMED_RANGE,
        metavar=("NEAR", "FAR"),
        help="metres assumed for the nearest/farthest relative depth in the .ply (default 0.5 20)",
    )
    ap.add_argument(
        "--fov",
        type=float,
        default=pointcloud.ASSUMED_FOV,
        help="horizontal field of view in degrees for the .ply",
    )
    ap.add_argument("--focal", type=float, help="focal length in pixels (overrides --fov)")
    ap.add_argument(
        "--geometry",
        help="MoGe-2's moge2.pt: metric point clouds (implies --ply; automatic when --semantics is moge2.pt)",
    )
    ap.add_argument(
        "--ply-axes",
        choices=pointcloud.AXES,
        default="opengl",
        help="axes of the written clouds: opengl (default, the release's: y up, z towards the viewer) or "
        "opencv (the camera frame: y down, z forward)",
    )
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_video_arguments(ap)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.steps < 1:
        ap.error("--steps must be >= 1")
    if args.area is not None and args.area < 256:
        ap.error(f"--area is a pixel count (e.g. {1024 * 768} for 1024x768), got {args.area}")
    near, far = args.depth_range
    if not 0 <= near < far:
        ap.error(f"--depth-range needs 0 <= NEAR < FAR, got {near} {far}")
    resolve_names(args)
    if wants_video(args):
        return predict_videos(args)
    args.ply = args.ply or bool(args.geometry)
    return predict_images(args)


def predict_images(args: argparse.Namespace) -> int:
    """Every image of ``args.images``: its files, listed as written; a failing image is reported, the
    others go on (exit status 1 at the end)."""
    images = collect_images(args.images)
    names = output_names(images)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    model, geometry = load_models(args)
    model = model.to(device).eval()
    if geometry is not None:
        geometry = geometry.to(device).eval()
        source = geometry.origin.get("weights", "?")
        print(f"point clouds: metric (MoGe-2 geometry of {source}), {args.ply_axes} axes")
    elif args.ply:
        near, far = args.depth_range
        print(
            f"point clouds: not metric (an assumed {near:g}-{far:g} m depth range and field of view; "
            f"--geometry moge2.pt for metric clouds), {args.ply_axes} axes"
        )
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    written: list[Path] = []
    failed: list[tuple[Path, str]] = []
    for path, name in zip(tqdm(images, desc="predicting", unit="image"), names):
        stem = out / name
        try:
            files = predict_one(model, path, stem, args, device, autocast, geometry)
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


def predict_one(model, path: Path, stem: Path, args, device, autocast, geometry=None) -> list[Path]:
    """Depth of one image -> the files written (``<stem>_depth.npy`` ...)."""
    rgb = read_rgb(path)
    image = torch.from_numpy(rgb).permute(2, 0, 1)[None].float().div(255).to(device)
    g = torch.Generator(device=device).manual_seed(args.seed)
    with torch.no_grad(), autocast:
        rel = model.infer(image, steps=args.steps, generator=g, area=args.area, output_mode=args.upsample)
    rel = rel[0, 0].float().cpu().numpy()
    if not np.isfinite(rel).all():
        raise DivergenceError(
            f"{path}: the model predicted non-finite depth ({int((~np.isfinite(rel)).sum())} pixels)"
        )
    files = [atomic.write_npy(f"{stem}_depth.npy", rel)]
    colour = visualize.colorize_depth(rel - rel.min() + 1e-3)
    files.append(visualize.write_image(f"{stem}_depth.png", colour))
    panel = visualize.side_by_side([rgb, colour], ["image", "depth"])
    files.append(visualize.write_image(f"{stem}_panel.png", panel))
    if args.ply and geometry is not None:
        files += pointcloud.metric_cloud_files(
            geometry, model, image, rgb, rel, stem, area=args.area, axes=args.ply_axes
        )
    elif args.ply:
        pts, colors = pointcloud.assumed_point_cloud(rel, rgb, args.depth_range, args.fov, args.focal)
        files.append(
            pointcloud.write_point_cloud_ply(f"{stem}.ply", pts, colors, args.ply_axes, metric=False)
        )
    return files


def cli(argv: list[str] | None = None) -> int:
    """``python -m ppd_lightning.predict``: ``main`` with its errors as one line (PPD_TRACEBACK=1: traceback)."""
    return run_main(main, argv)


if __name__ == "__main__":
    sys.exit(cli())

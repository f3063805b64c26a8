"""``python -m ppd_lightning.data.make_shards``: write depth shards from a raw dataset layout (or the embedded
synthetic world), and verify them.

    python -m ppd_lightning.data.make_shards synthetic --out data/synthetic --num-samples 2000 \\
        --height 192 --width 256 --seed 0 --samples-per-shard 250 --workers 2
    python -m ppd_lightning.data.make_shards vkitti2 /data/vkitti2 --out data/vkitti2 --workers 8
    python -m ppd_lightning.data.make_shards folder my_rgbd --out data/own --depth-scale 0.001
    python -m ppd_lightning.data.make_shards verify data/vkitti2

The writing is :mod:`.writer` (resumable, atomic, manifest), the checking :mod:`.verify`; this module only
turns flags into their arguments.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

from ppd_lightning.errors import InputError, MissingFileError, run_main

from .raw import RAW_DATASETS
from .verify import MAX_PLAUSIBLE_DEPTH, verify_shards
from .writer import write_folder_shards, write_shards

__all__ = ["build_parser", "main"]


def _add_write_flags(p: argparse.ArgumentParser, default_sps: int) -> None:
    p.add_argument("--out", required=True, help="output directory for the shards and manifest.json")
    p.add_argument("--samples-per-shard", type=int, default=default_sps)
    p.add_argument("--workers", type=int, default=1, help="parallel worker processes (one shard each)")
    p.add_argument(
        "--rgb-format",
        choices=("auto", "png", "jpg"),
        default="auto",
        help="auto: keep a source's own JPEG bytes (Hypersim), else lossless PNG",
    )
    p.add_argument("--jpg-quality", type=int, default=95)
    p.add_argument("--depth-dtype", choices=("float16", "float32"), default="float16")
    p.add_argument(
        "--downscale", type=int, default=1, help="integer downscale factor (e.g. 2 for 4K sources)"
    )
    p.add_argument("--limit", type=int, default=None, help="convert only the first N items (for a quick try)")
    p.add_argument("--no-progress", action="store_true")


def _add_folder_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("pairing (paths relative to ROOT)")
    g.add_argument("--rgb-glob", default="rgb/*", help="images, one sample each (default: rgb/*)")
    g.add_argument(
        "--depth-glob",
        default="depth/*",
        help="depth per image: a glob paired by file stem (default: depth/*) or a template with "
        "{stem} and {dir}, e.g. 'depth/{stem}_depth.png'",
    )
    g.add_argument(
        "--mask-glob", default=None, help="optional valid masks (nonzero = valid), as --depth-glob"
    )
    g.add_argument("--list", dest="list_file", default=None, help="pair list: 'rgb depth [mask]' per line")
    d = p.add_argument_group("depth and camera")
    d.add_argument(
        "--depth-scale",
        type=float,
        default=None,
        help="metres per stored unit; required for 16-bit PNG depth (e.g. 0.001 for millimetres); "
        "multiplies .npy/.exr/.pfm depth too (default 1: metres)",
    )
    d.add_argument(
        "--exr-channel", default=None, help="EXR channel holding depth (default: the only one, or Y/Z/R)"
    )
    d.add_argument("--intrinsics", default=None, help="fx,fy,cx,cy in pixels, for every image")
    d.add_argument(
        "--intrinsics-glob",
        default=None,
        help="per-image text file with fx fy cx cy or a 3x3 K, paired like --depth-glob",
    )
    d.add_argument("--name", default="own", help="dataset name in meta.json (= the validation set's name)")
    s = p.add_argument_group("held-out split: OUT/train and OUT/val")
    s.add_argument(
        "--val-fraction",
        type=float,
        default=None,
        help="fraction of images held out for validation, chosen by a hash of their path (default 0.1; "
        "0 = no validation split)",
    )
    s.add_argument(
        "--val-list", default=None, help="file of image paths (relative to ROOT) to hold out instead"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ppd_lightning.data.make_shards", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("synthetic", help="render the embedded procedural world")
    p.add_argument("--num-samples", type=int, required=True)
    p.add_argument("--height", type=int, default=192)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    _add_write_flags(p, default_sps=500)
    for name in RAW_DATASETS[1:]:
        if name == "folder":
            continue
        p = sub.add_parser(name, help=f"convert a raw {name} download")
        p.add_argument("root", help=f"root directory of the raw {name} layout")
        _add_write_flags(p, default_sps=100)
    p = sub.add_parser(
        "folder",
        help="your own RGB-D data: images + depth (16-bit PNG, .npy, .exr, .pfm) [+ masks]",
        description="Convert a folder of your own RGB-D data into OUT/train and OUT/val shards.",
    )
    p.add_argument("root", help="the folder holding your images and depth maps")
    _add_folder_flags(p)
    _add_write_flags(p, default_sps=100)
    p = sub.add_parser(
        "verify", help="decode every sample and report counts, bad members, flagged samples, depth ranges"
    )
    p.add_argument("urls", nargs="+", help="shard directory, brace pattern or shard files")
    p.add_argument(
        "--max-depth",
        type=float,
        default=MAX_PLAUSIBLE_DEPTH,
        help=f"flag samples with valid depth beyond this many metres (default {MAX_PLAUSIBLE_DEPTH:g})",
    )
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    return parser


def _folder_options(args: argparse.Namespace) -> dict[str, Any]:
    """The folder source's options from the CLI: checked here, stored in the manifests as given."""
    from ppd_lightning.geometry import parse_intrinsics

    def existing(path: str | None, flag: str) -> str | None:
        if path is None:
            return None
        for cand in (Path(path), Path(args.root) / path):
            if cand.is_file():
                return str(cand.resolve())
        raise MissingFileError(f"{flag} {path}: no such file (looked in . and in {args.root})")

    if args.list_file and (args.rgb_glob != "rgb/*" or args.depth_glob != "depth/*" or args.mask_glob):
        raise InputError("--list replaces --rgb-glob/--depth-glob/--mask-glob: give one or the other")
    if args.intrinsics and args.intrinsics_glob:
        raise InputError("give --intrinsics or --intrinsics-glob, not both")
    if args.val_list and args.val_fraction is not None:
        raise InputError("give --val-fraction or --val-list, not both")
    if args.val_fraction is None:
        args.val_fraction = 0.1
    if not 0.0 <= args.val_fraction < 1.0:
        raise InputError(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    if args.depth_scale is not None and not (math.isfinite(args.depth_scale) and args.depth_scale > 0):
        raise InputError(
            f"--depth-scale must be a positive number of metres per unit, got {args.depth_scale}"
        )
    opts: dict[str, Any] = {"name": args.name}
    if args.list_file:
        opts["list_file"] = existing(args.list_file, "--list")
    else:
        opts.update(rgb_glob=args.rgb_glob, depth_glob=args.depth_glob)
        if args.mask_glob:
            opts["mask_glob"] = args.mask_glob
    if args.depth_scale is not None:
        opts["depth_scale"] = args.depth_scale
    if args.exr_channel:
        opts["exr_channel"] = args.exr_channel
    if args.intrinsics:
        opts["intrinsics"] = list(parse_intrinsics(args.intrinsics, "--intrinsics"))
    if args.intrinsics_glob:
        opts["intrinsics_glob"] = args.intrinsics_glob
    if args.val_list:
        opts["val_list"] = existing(args.val_list, "--val-list")
    else:
        opts["val_fraction"] = args.val_fraction
    return opts


def _print_summary(manifest: dict[str, Any], label: str = "") -> None:
    n = sum(s.get("samples") or 0 for s in manifest["shards"].values())
    skipped = sum(len(s.get("skipped", [])) for s in manifest["shards"].values())
    print(f"{label}{len(manifest['paths'])} shards, {n} samples, {skipped} source items skipped")
    print(f"{label}urls: {manifest['pattern']}")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if args.command == "verify":
        t0 = time.perf_counter()
        report = verify_shards(args.urls if len(args.urls) > 1 else args.urls[0], max_depth=args.max_depth)
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            for line in report["bad"]:
                print(f"BAD  {line}")
            for line in report["flagged"]:
                print(f"FLAG {line}")
            print(
                f"{report['shards']} shards, {report['samples']} good samples, {len(report['bad'])} bad, "
                f"{len(report['flagged'])} flagged, "
                f"datasets {report['datasets']}, depth [{report['depth_min']}, {report['depth_max']}] m, "
                f"sky {100 * report['sky_fraction']:.1f}% of pixels ({time.perf_counter() - t0:.1f} s)"
            )
        return 1 if report["bad"] or report["flagged"] or report["samples"] == 0 else 0
    write_kw = dict(
        samples_per_shard=args.samples_per_shard,
        workers=args.workers,
        rgb_format=args.rgb_format,
        depth_dtype=args.depth_dtype,
        jpg_quality=args.jpg_quality,
        downscale=args.downscale,
        limit=args.limit,
        progress=not args.no_progress,
    )
    if args.command == "folder":
        for split, manifest in write_folder_shards(
            args.root, args.out, _folder_options(args), **write_kw
        ).items():
            _print_summary(manifest, f"{split}: ")
        return 0
    if args.command == "synthetic":
        root, options = (
            None,
            {"num_samples": args.num_samples, "height": args.height, "width": args.width, "seed": args.seed},
        )
    else:
        root, options = args.root, {}
    _print_summary(write_shards(args.command, args.out, root=root, options=options, **write_kw))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))  # a user error is one line `error: ...` (PPD_TRACEBACK=1: the traceback)

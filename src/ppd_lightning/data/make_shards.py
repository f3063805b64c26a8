"""Write depth shards from a raw dataset layout (or the embedded synthetic world), and verify them.

    python -m ppd_lightning.data.make_shards synthetic --out data/synthetic --num-samples 2000 \\
        --height 192 --width 256 --seed 0 --samples-per-shard 250 --workers 2
    python -m ppd_lightning.data.make_shards vkitti2 /data/vkitti2 --out data/vkitti2 --workers 8
    python -m ppd_lightning.data.make_shards verify data/vkitti2

Shard ``i`` of a source always holds items ``[i * samples_per_shard, (i + 1) * samples_per_shard)`` of
the source's sorted item list, so a re-run only writes the shards that are missing (resumable);
each shard is streamed to a temporary file and renamed when complete (atomic). ``manifest.json``
in the output directory records the parameters (a re-run with different ones is refused) and
per-shard counts, bytes, depth ranges and the source files that were skipped as unreadable.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import math
import multiprocessing
import os
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

from ppd_lightning import atomic

from .codec import RawSample, SampleError, decode_sample, encode_sample
from .shards import (
    AtomicShardWriter,
    ShardError,
    expand_shard_urls,
    iter_tar_samples,
    stale_temporaries,
)
from .sources import SOURCES, SourceError, get_source

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
FORMAT_VERSION = 1
# verify flags valid depth beyond this (metres): no real or rendered scene needs more; sky is marked apart
MAX_PLAUSIBLE_DEPTH = 1000.0


def shard_name(source: str, index: int) -> str:
    return f"{source}-{index:06d}.tar"


def shard_pattern(out_dir: str | Path, source: str, num_shards: int) -> str:
    """The brace pattern naming all shards of a source (what ``DepthShardDataModule`` takes)."""
    if num_shards == 1:
        return str(Path(out_dir) / shard_name(source, 0))
    return str(Path(out_dir) / f"{source}-{{{0:06d}..{num_shards - 1:06d}}}.tar")


def _downscale(sample: RawSample, k: int) -> RawSample:
    """Integer downscale: rgb by area averaging, depth/mask/sky by picking one exact value per block."""
    import cv2

    h, w = sample.depth.shape
    hh, ww = h // k * k, w // k * k
    off = k // 2
    pick = (slice(off, hh, k), slice(off, ww, k))
    rgb = cv2.resize(sample.rgb[:hh, :ww], (ww // k, hh // k), interpolation=cv2.INTER_AREA)
    meta = dict(sample.meta)
    meta.update(
        fx=meta["fx"] / k,
        fy=meta["fy"] / k,
        cx=(meta["cx"] + 0.5) / k - 0.5,
        cy=(meta["cy"] + 0.5) / k - 0.5,
        downscale=k,
    )
    return RawSample(
        key=sample.key,
        rgb=rgb,
        depth=sample.depth[pick],
        meta=meta,
        mask=None if sample.mask is None else sample.mask[pick],
        sky=None if sample.sky is None else sample.sky[pick],
    )


def _write_one_shard(task: dict[str, Any]) -> dict[str, Any]:
    """Load, encode and write the items of one shard. Runs in a worker process.

    A source file that cannot be read is logged with its path and skipped; the shard is written
    with the remaining samples. Any other failure removes the temporary file and propagates.
    """
    mod = get_source(task["source"])
    skipped: list[dict[str, str]] = []
    dmin, dmax, count = math.inf, 0.0, 0
    with AtomicShardWriter(task["path"]) as writer:
        for item in task["items"]:
            try:
                sample = mod.load_item(task["root"], item, **task["options"])
                if task["downscale"] > 1:
                    sample = _downscale(sample, task["downscale"])
                passthrough = task["rgb_format"] == "auto" and sample.rgb_bytes is not None
                members = encode_sample(
                    sample.key,
                    sample.rgb,
                    sample.depth,
                    sample.meta,
                    mask=sample.mask,
                    sky=sample.sky,
                    rgb_format=sample.rgb_format if passthrough else _concrete_format(task["rgb_format"]),
                    depth_dtype=task["depth_dtype"],
                    jpg_quality=task["jpg_quality"],
                    rgb_bytes=sample.rgb_bytes if passthrough else None,
                )
            except (SourceError, SampleError, OSError) as exc:
                log.warning("skipping %s: %s", item, exc)
                skipped.append({"item": str(item), "error": str(exc)})
                continue
            writer.write(members)
            count += 1
            valid = sample.depth[np.isfinite(sample.depth) & (sample.depth > 0)]
            if sample.sky is not None:
                valid = sample.depth[np.isfinite(sample.depth) & (sample.depth > 0) & ~sample.sky]
            if valid.size:
                dmin, dmax = min(dmin, float(valid.min())), max(dmax, float(valid.max()))
        nbytes = writer.commit()
    return {
        "name": Path(task["path"]).name,
        "samples": count,
        "bytes": nbytes,
        "depth_min": dmin if count else None,
        "depth_max": dmax if count else None,
        "skipped": skipped,
    }


def _watch_parent(parent_pid: int, interval: float = 0.2) -> None:
    """Worker initializer: exit as soon as the parent is gone (kill -9 included).

    A killed parent cannot shut its pool down, and the workers would otherwise wait forever on the
    task queue (whose write end they hold themselves). A daemon thread polls ``os.getppid()``: when
    the worker has been re-parented, it exits at once; a shard it was writing stays a temporary
    file, which the next run removes.
    """

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _item_files(mod: Any, item: Any) -> list[str]:
    if hasattr(mod, "item_files"):
        return list(mod.item_files(item))
    parts = item if isinstance(item, (tuple, list)) else (item,)
    return [p for p in parts if isinstance(p, str) and p]


def sources_fingerprint(mod: Any, root: str | None, items: list[Any]) -> str:
    """SHA-1 over a shard's items and the size + modification time of every source file they name.

    A raw file that is fixed (rewritten), added or removed after its shard was written changes the
    fingerprint, so a re-run converts that shard again; one ``stat`` per file, nothing is read.
    """
    h = hashlib.sha1()
    for item in items:
        h.update(repr(item).encode())
        if root is None:
            continue
        for rel_path in _item_files(mod, item):
            try:
                st = os.stat(os.path.join(root, rel_path))
                h.update(f"|{st.st_size}:{st.st_mtime_ns}".encode())
            except OSError:
                h.update(b"|missing")
    return h.hexdigest()


def _scan_shard(path: Path) -> dict[str, Any] | None:
    """Manifest entry of a complete shard found on disk but not in the manifest (e.g. finished by a
    worker after its parent was killed); None when the shard is unreadable."""
    from webdataset import gopen

    dmin, dmax, count = math.inf, 0.0, 0
    try:
        with gopen(str(path), "rb") as stream:
            for members in iter_tar_samples(stream, str(path)):
                s = decode_sample(members)
                count += 1
                if s.mask.any():
                    v = s.depth[s.mask]
                    dmin, dmax = min(dmin, float(v.min())), max(dmax, float(v.max()))
    except (ShardError, SampleError, OSError) as exc:
        log.warning("%s: unreadable (%s): converting it again", path, exc)
        return None
    return {
        "name": path.name,
        "samples": count,
        "bytes": path.stat().st_size,
        "depth_min": dmin if count and dmin != math.inf else None,
        "depth_max": dmax if count else None,
        "skipped": [],
        "rebuilt_from_disk": True,
    }


def _concrete_format(fmt: str) -> str:
    return "png" if fmt == "auto" else fmt


@contextlib.contextmanager
def _dir_lock(out_dir: Path):
    """Serialise writers of one output directory (e.g. every DDP rank calling ensure_*)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / ".make_shards.lock", "w") as fh:
        try:
            import fcntl

            fcntl.flock(fh, fcntl.LOCK_EX)
        except (ImportError, OSError):  # no flock (Windows, some network filesystems): still safe,
            pass  # because every shard write is atomic and deterministic, only work is duplicated
        yield


def write_shards(
    source: str,
    out_dir: str | Path,
    *,
    root: str | Path | None = None,
    options: dict[str, Any] | None = None,
    samples_per_shard: int = 500,
    workers: int = 1,
    rgb_format: str = "auto",
    depth_dtype: str = "float16",
    jpg_quality: int = 95,
    downscale: int = 1,
    limit: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Convert ``source`` into shards under ``out_dir``; returns the manifest (with ``pattern`` and
    ``paths``). Existing complete shards are kept (resume); parameters must match the manifest."""
    from tqdm import tqdm

    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    if rgb_format not in ("auto", "png", "jpg"):
        raise ValueError(f"rgb_format must be auto, png or jpg, got {rgb_format!r}")
    if downscale < 1:
        raise ValueError(f"downscale must be >= 1, got {downscale}")
    out_dir = Path(out_dir)
    options = dict(options or {})
    mod = get_source(source)
    root_str = None if root is None else str(Path(root).resolve())
    if root_str is not None and not Path(root_str).is_dir():
        raise FileNotFoundError(f"{source}: raw dataset root {root_str} is not a directory")
    items = mod.list_items(root_str, **options)
    if limit is not None:
        items = items[:limit]
    if not items:
        layout = getattr(mod, "LAYOUT", None)
        expected = f"; expected {root_str}/{layout}" if layout else ""
        raise SourceError(f"{source}: no samples found under {root_str}{expected}")
    num_shards = math.ceil(len(items) / samples_per_shard)
    params = {
        "format_version": FORMAT_VERSION,
        "source": source,
        "root": root_str,
        "options": options,
        "num_items": len(items),
        "samples_per_shard": samples_per_shard,
        "num_shards": num_shards,
        "rgb_format": rgb_format,
        "depth_dtype": depth_dtype,
        "jpg_quality": jpg_quality,
        "downscale": downscale,
    }
    with _dir_lock(out_dir):
        manifest_path = out_dir / MANIFEST
        shards: dict[str, Any] = {}
        if manifest_path.exists():
            old = json.loads(manifest_path.read_text())
            diff = {
                k: (old.get("params", {}).get(k), v)
                for k, v in params.items()
                if old.get("params", {}).get(k) != v
            }
            if diff:
                raise ValueError(
                    f"{out_dir} already holds shards written with other parameters "
                    f"(manifest {manifest_path}: {diff} as (old, new)); use another --out or delete it"
                )
            shards = old.get("shards", {})
        # left by a killed run (shards and the manifest); we hold the lock
        for stale in stale_temporaries(out_dir, f"{source}-*.tar") + stale_temporaries(out_dir, MANIFEST):
            stale.unlink(missing_ok=True)
        paths = [out_dir / shard_name(source, i) for i in range(num_shards)]
        chunks = [items[i * samples_per_shard : (i + 1) * samples_per_shard] for i in range(num_shards)]
        prints = [sources_fingerprint(mod, root_str, chunk) for chunk in chunks]
        # The manifest is rebuilt from the shards on disk: entries of deleted shards are dropped, shards
        # that a killed run finished without recording them are scanned and recorded.
        shards = {name: info for name, info in shards.items() if (out_dir / name).exists()}
        for i, p in enumerate(paths):
            if p.exists() and p.name not in shards:
                info = _scan_shard(p)
                if info is None:
                    p.unlink(missing_ok=True)
                    continue
                shards[p.name] = {**info, "sources": prints[i]}
        todo = []
        for i, p in enumerate(paths):
            recorded = shards.get(p.name, {}).get("sources")
            if not p.exists():
                todo.append(i)
            elif recorded is None:  # written before fingerprints were recorded: adopt the current one
                shards[p.name]["sources"] = prints[i]
            elif recorded != prints[i]:
                log.info("%s: its source files changed since it was written: converting it again", p.name)
                todo.append(i)
        manifest = {"params": params, "shards": shards, "complete": False}
        atomic.write_json(manifest_path, manifest, sort_keys=True)
        tasks = [
            {
                "source": source,
                "root": root_str,
                "options": options,
                "items": chunks[i],
                "path": str(paths[i]),
                "rgb_format": rgb_format,
                "depth_dtype": depth_dtype,
                "jpg_quality": jpg_quality,
                "downscale": downscale,
                "sources": prints[i],
            }
            for i in todo
        ]
        n_todo = sum(len(t["items"]) for t in tasks)
        bar = tqdm(total=n_todo, unit="sample", desc=f"{source} -> {out_dir}", disable=not progress)
        if len(paths) > len(todo):
            log.info(
                "%s: %d of %d shards already present, skipping them",
                source,
                len(paths) - len(todo),
                len(paths),
            )

        def done(info: dict[str, Any], task: dict[str, Any]) -> None:
            shards[info["name"]] = {**info, "sources": task["sources"]}
            for s in info["skipped"]:
                bar.write(f"skipped {s['item']}: {s['error']}")
            atomic.write_json(manifest_path, manifest, sort_keys=True)
            bar.update(len(task["items"]))

        if workers <= 1 or len(tasks) <= 1:
            for task in tasks:
                done(_write_one_shard(task), task)
        else:
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(
                max_workers=min(workers, len(tasks)),
                mp_context=ctx,
                initializer=_watch_parent,
                initargs=(os.getpid(),),
            ) as pool:
                futures = {pool.submit(_write_one_shard, t): t for t in tasks}
                for fut in as_completed(futures):
                    done(fut.result(), futures[fut])
        bar.close()
        manifest["complete"] = all(p.exists() for p in paths)
        atomic.write_json(manifest_path, manifest, sort_keys=True)
    manifest = dict(manifest)
    manifest["paths"] = [str(p) for p in paths]
    manifest["pattern"] = shard_pattern(out_dir, source, num_shards)
    return manifest


def ensure_synthetic_shards(
    out_dir: str | Path,
    num_samples: int,
    height: int,
    width: int,
    seed: int,
    samples_per_shard: int,
    workers: int = 1,
    progress: bool = True,
) -> list[str]:
    """Make sure ``out_dir`` holds the synthetic world's shards for these parameters.

    Generates only missing shards (idempotent and resumable; safe to call from every DDP rank,
    writers are serialised by a lock file and shard writes are atomic). Returns the explicit list of
    shard paths, in order. Raises ``ValueError`` when ``out_dir`` holds shards made with other
    parameters.
    """
    out_dir = Path(out_dir)
    options = {"num_samples": int(num_samples), "height": int(height), "width": int(width), "seed": int(seed)}
    num_shards = math.ceil(num_samples / samples_per_shard)
    paths = [out_dir / shard_name("synthetic", i) for i in range(num_shards)]
    manifest_path = out_dir / MANIFEST
    if manifest_path.exists() and all(p.exists() for p in paths):
        params = json.loads(manifest_path.read_text()).get("params", {})
        if params.get("options") == options and params.get("samples_per_shard") == samples_per_shard:
            return [str(p) for p in paths]
    manifest = write_shards(
        "synthetic",
        out_dir,
        options=options,
        samples_per_shard=samples_per_shard,
        workers=workers,
        rgb_format="png",
        depth_dtype="float16",
        progress=progress,
    )
    return manifest["paths"]


# --------------------------------------------------------------------------------------------------
# verify


def verify_shards(
    urls: str | list[str], progress: bool = True, max_depth: float = MAX_PLAUSIBLE_DEPTH
) -> dict[str, Any]:
    """Decode every sample of every shard; return counts, bad members, flagged samples and depth ranges.

    ``flagged`` lists decodable samples that would train nothing or train on garbage: no valid depth
    pixel at all, or valid depth beyond ``max_depth`` metres (an unmarked sky/background sentinel or
    a wrong unit, e.g. 1e30 m). Flagged samples are counted in ``samples``.
    """
    from tqdm import tqdm
    from webdataset import gopen

    shards = expand_shard_urls(urls)
    report: dict[str, Any] = {
        "shards": len(shards),
        "samples": 0,
        "bad": [],
        "flagged": [],
        "per_shard": {},
        "datasets": {},
        "max_depth": max_depth,
    }
    dmin, dmax, sky_px, all_px = math.inf, 0.0, 0, 0
    for url in tqdm(shards, unit="shard", desc="verify", disable=not progress):
        info = {"samples": 0, "bad": 0, "flagged": 0}
        try:
            with gopen(url, "rb") as stream:
                for members in iter_tar_samples(stream, url):
                    try:
                        s = decode_sample(members)
                    except SampleError as exc:
                        info["bad"] += 1
                        report["bad"].append(f"{url}: {exc}")
                        continue
                    info["samples"] += 1
                    name = str(s.meta["dataset"])
                    report["datasets"][name] = report["datasets"].get(name, 0) + 1
                    if s.mask.any():
                        v = s.depth[s.mask]
                        lo, hi = float(v.min()), float(v.max())
                        dmin, dmax = min(dmin, lo), max(dmax, hi)
                        if hi > max_depth:
                            n_far = int((v > max_depth).sum())
                            report["flagged"].append(
                                f"{url}: {s.key}: {n_far} valid pixels deeper than {max_depth:g} m (up to "
                                f"{hi:.3g} m): unmarked sky/background or a wrong depth unit?"
                            )
                            info["flagged"] += 1
                    else:
                        report["flagged"].append(f"{url}: {s.key}: no valid depth pixel")
                        info["flagged"] += 1
                    sky_px += int(s.sky.sum())
                    all_px += s.sky.size
        except (ShardError, OSError) as exc:
            info["bad"] += 1
            report["bad"].append(f"{url}: {exc}")
        report["per_shard"][url] = info
        report["samples"] += info["samples"]
    report["depth_min"] = None if dmin == math.inf else dmin
    report["depth_max"] = dmax if report["samples"] else None
    report["sky_fraction"] = sky_px / all_px if all_px else 0.0
    return report


# --------------------------------------------------------------------------------------------------
# CLI


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
    for name in SOURCES[1:]:
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
    from .sources.folder import parse_intrinsics

    def existing(path: str | None, flag: str) -> str | None:
        if path is None:
            return None
        for cand in (Path(path), Path(args.root) / path):
            if cand.is_file():
                return str(cand.resolve())
        raise FileNotFoundError(f"{flag} {path}: no such file (looked in . and in {args.root})")

    if args.list_file and (args.rgb_glob != "rgb/*" or args.depth_glob != "depth/*" or args.mask_glob):
        raise ValueError("--list replaces --rgb-glob/--depth-glob/--mask-glob: give one or the other")
    if args.intrinsics and args.intrinsics_glob:
        raise ValueError("give --intrinsics or --intrinsics-glob, not both")
    if args.val_list and args.val_fraction is not None:
        raise ValueError("give --val-fraction or --val-list, not both")
    if args.val_fraction is None:
        args.val_fraction = 0.1
    if not 0.0 <= args.val_fraction < 1.0:
        raise ValueError(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    if args.depth_scale is not None and not (math.isfinite(args.depth_scale) and args.depth_scale > 0):
        raise ValueError(
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


def write_folder_shards(
    root: str | Path, out_dir: str | Path, options: dict[str, Any], **kw
) -> dict[str, Any]:
    """Convert a folder of own RGB-D data into ``out_dir/train`` and (when the split holds any image)
    ``out_dir/val``; returns ``{split: manifest}``."""
    from .sources import folder

    holds_out = bool(options.get("val_list")) or float(options.get("val_fraction", 0.0)) > 0
    root_str = str(Path(root).resolve())
    if not Path(root_str).is_dir():
        raise FileNotFoundError(f"folder: {root_str} is not a directory")
    out: dict[str, Any] = {}
    for split in ("train", "val") if holds_out else ("train",):
        opts = {**options, "split": split}
        if split == "val" and not folder.list_items(root_str, **opts):
            log.warning("folder: the validation split is empty (too few images for the fraction)")
            continue
        out[split] = write_shards("folder", Path(out_dir) / split, root=root_str, options=opts, **kw)
    return out


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
    from ppd_lightning.errors import run_main

    sys.exit(run_main(main))  # a user error is one line `error: ...` (PPD_TRACEBACK=1: the traceback)

"""Writing depth shards: a raw dataset layout (or the embedded synthetic world) -> ``<source>-NNNNNN.tar``
plus ``manifest.json``. The command line is :mod:`.make_shards`; checking written shards is :mod:`.verify`.

Shard ``i`` of a source always holds items ``[i * samples_per_shard, (i + 1) * samples_per_shard)`` of
the source's sorted item list, so a re-run only writes the shards that are missing (resumable); each
shard is streamed to a temporary file and renamed when complete (atomic). ``manifest.json`` in the
output directory records the parameters (a re-run with different ones is refused) and per shard its
count, bytes, depth range, the source files skipped as unreadable and a fingerprint of its source
files (a shard whose files changed is converted again). After a killed run (``kill -9`` included) the
manifest is rebuilt from the shards on disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ppd_lightning import atomic
from ppd_lightning.errors import InputError, MissingFileError

from .codec import RawSample, SampleError, decode_sample, encode_sample
from .shards import AtomicShardWriter, ShardError, iter_tar_samples, stale_temporaries
from .raw import RawDataError, get_raw_dataset

__all__ = [
    "MANIFEST",
    "ensure_synthetic_shards",
    "shard_name",
    "shard_pattern",
    "sources_fingerprint",
    "write_folder_shards",
    "write_shards",
]

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
FORMAT_VERSION = 1


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
    mod = get_raw_dataset(task["source"])
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
            except (RawDataError, SampleError, OSError) as exc:
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


@dataclass
class _Plan:
    """What ``write_shards`` is asked for: the manifest's parameters and, per shard, its path, its items
    and the fingerprint of their source files."""

    source: str
    out_dir: Path
    params: dict[str, Any]
    paths: list[Path]
    chunks: list[list[Any]]
    prints: list[str]

    @property
    def manifest_path(self) -> Path:
        return self.out_dir / MANIFEST

    def task(self, i: int) -> dict[str, Any]:
        p = self.params
        return {
            "source": self.source,
            "root": p["root"],
            "options": p["options"],
            "items": self.chunks[i],
            "path": str(self.paths[i]),
            "rgb_format": p["rgb_format"],
            "depth_dtype": p["depth_dtype"],
            "jpg_quality": p["jpg_quality"],
            "downscale": p["downscale"],
            "sources": self.prints[i],
        }


def _plan(
    source, out_dir, root, options, samples_per_shard, rgb_format, depth_dtype, jpg_quality, downscale, limit
):
    if samples_per_shard < 1:
        raise InputError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    if rgb_format not in ("auto", "png", "jpg"):
        raise InputError(f"rgb_format must be auto, png or jpg, got {rgb_format!r}")
    if downscale < 1:
        raise InputError(f"downscale must be >= 1, got {downscale}")
    mod = get_raw_dataset(source)
    root_str = None if root is None else str(Path(root).resolve())
    if root_str is not None and not Path(root_str).is_dir():
        raise MissingFileError(f"{source}: raw dataset root {root_str} is not a directory")
    items = mod.list_items(root_str, **options)
    if limit is not None:
        items = items[:limit]
    if not items:
        layout = getattr(mod, "LAYOUT", None)
        expected = f"; expected {root_str}/{layout}" if layout else ""
        raise RawDataError(f"{source}: no samples found under {root_str}{expected}")
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
    chunks = [items[i * samples_per_shard : (i + 1) * samples_per_shard] for i in range(num_shards)]
    return _Plan(
        source=source,
        out_dir=Path(out_dir),
        params=params,
        paths=[Path(out_dir) / shard_name(source, i) for i in range(num_shards)],
        chunks=chunks,
        prints=[sources_fingerprint(mod, root_str, chunk) for chunk in chunks],
    )


def _recorded_shards(plan: _Plan) -> dict[str, Any]:
    """The manifest's shard entries, after checking its parameters are the plan's."""
    if not plan.manifest_path.exists():
        return {}
    old = json.loads(plan.manifest_path.read_text())
    recorded = old.get("params", {})
    diff = {k: (recorded.get(k), v) for k, v in plan.params.items() if recorded.get(k) != v}
    if diff:
        raise InputError(
            f"{plan.out_dir} already holds shards written with other parameters "
            f"(manifest {plan.manifest_path}: {diff} as (old, new)); use another --out or delete it"
        )
    return old.get("shards", {})


def _reconcile(plan: _Plan, shards: dict[str, Any]) -> list[int]:
    """Bring the manifest's entries in line with the shards on disk and return the shards to write.

    Entries of deleted shards are dropped; a shard a killed run finished without recording it is
    scanned and recorded (an unreadable one is deleted); a shard whose source files changed since it was
    written (its fingerprint) is written again.
    """
    for name in [n for n in shards if not (plan.out_dir / n).exists()]:
        del shards[name]
    todo = []
    for i, p in enumerate(plan.paths):
        if p.exists() and p.name not in shards:
            info = _scan_shard(p)
            if info is None:
                p.unlink(missing_ok=True)
            else:
                shards[p.name] = {**info, "sources": plan.prints[i]}
        if not p.exists():
            todo.append(i)
        elif shards[p.name].get("sources") != plan.prints[i]:
            log.info("%s: its source files changed since it was written: converting it again", p.name)
            todo.append(i)
    return todo


def _run(tasks: list[dict[str, Any]], workers: int, done: Callable[[dict, dict], None]) -> None:
    """Write the tasks' shards, in this process or in ``workers`` processes that exit with their parent."""
    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            done(_write_one_shard(task), task)
        return
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

    plan = _plan(
        source, out_dir, root, dict(options or {}), samples_per_shard, rgb_format, depth_dtype,
        jpg_quality, downscale, limit,
    )  # fmt: skip
    with _dir_lock(plan.out_dir):
        shards = _recorded_shards(plan)
        # left by a killed run (shards and the manifest); we hold the lock
        for stale in stale_temporaries(plan.out_dir, f"{source}-*.tar") + stale_temporaries(
            plan.out_dir, MANIFEST
        ):
            stale.unlink(missing_ok=True)
        todo = _reconcile(plan, shards)
        manifest = {"params": plan.params, "shards": shards, "complete": False}
        atomic.write_json(plan.manifest_path, manifest, sort_keys=True)
        tasks = [plan.task(i) for i in todo]
        if len(plan.paths) > len(todo):
            log.info(
                "%s: %d of %d shards already present, skipping them",
                source,
                len(plan.paths) - len(todo),
                len(plan.paths),
            )
        bar = tqdm(
            total=sum(len(t["items"]) for t in tasks), unit="sample", desc=f"{source} -> {plan.out_dir}",
            disable=not progress,
        )  # fmt: skip

        def done(info: dict[str, Any], task: dict[str, Any]) -> None:
            shards[info["name"]] = {**info, "sources": task["sources"]}
            for s in info["skipped"]:
                bar.write(f"skipped {s['item']}: {s['error']}")
            atomic.write_json(plan.manifest_path, manifest, sort_keys=True)
            bar.update(len(task["items"]))

        _run(tasks, workers, done)
        bar.close()
        manifest["complete"] = all(p.exists() for p in plan.paths)
        atomic.write_json(plan.manifest_path, manifest, sort_keys=True)
    return {
        **manifest,
        "paths": [str(p) for p in plan.paths],
        "pattern": shard_pattern(plan.out_dir, source, len(plan.paths)),
    }


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


def write_folder_shards(
    root: str | Path, out_dir: str | Path, options: dict[str, Any], **kw
) -> dict[str, Any]:
    """Convert a folder of own RGB-D data into ``out_dir/train`` and (when the split holds any image)
    ``out_dir/val``; returns ``{split: manifest}``."""
    from .raw import folder

    holds_out = bool(options.get("val_list")) or float(options.get("val_fraction", 0.0)) > 0
    root_str = str(Path(root).resolve())
    if not Path(root_str).is_dir():
        raise MissingFileError(f"folder: {root_str} is not a directory")
    out: dict[str, Any] = {}
    for split in ("train", "val") if holds_out else ("train",):
        opts = {**options, "split": split}
        if split == "val" and not folder.list_items(root_str, **opts):
            log.warning("folder: the validation split is empty (too few images for the fraction)")
            continue
        out[split] = write_shards("folder", Path(out_dir) / split, root=root_str, options=opts, **kw)
    return out

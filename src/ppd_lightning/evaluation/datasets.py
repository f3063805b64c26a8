"""Readers for the zero-shot depth benchmarks, from an extracted folder or the ``.tar`` itself.

Layouts (those of the widely used preprocessed evaluation archives; any leading folder inside the
archive is accepted):

=========  ===================================================================================
nyuv2      ``test/<scene>/rgb_XXXX.png`` + ``depth_XXXX.png`` (uint16, mm); ``filled_*`` ignored
kitti      ``<date>/<drive>_sync/image_02/data/<frame>.png`` +
           ``<drive>_sync/proj_depth/groundtruth/image_02/<frame>.png`` (uint16, /256); frames
           without ground truth are skipped
eth3d      ``rgb/<scene>/images/dslr_images/<name>.JPG`` +
           ``depth/<scene>_dslr_depth/<scene>/ground_truth_depth/dslr_images/<name>.JPG`` (raw
           float32, H x W of the image unless ``depth_shape`` is given; inf = invalid)
scannet    ``<scene>/color/<n>.jpg`` + ``<scene>/depth/<n>.png`` (uint16, mm)
diode      ``{indoors,outdoor}/scene_*/scan_*/<id>.png`` + ``<id>_depth.npy`` (H x W x 1, m) +
           ``<id>_depth_mask.npy``
hypersim   ``<scene>/rgb_cam_XX_frXXXX.png`` + ``depth_plane_cam_XX_frXXXX.png`` (uint16 mm,
           planar depth), 1024 x 768, focal 886.81 px
=========  ===================================================================================

A split file (one relative rgb path per line; an optional second column is the depth path, as in
the common split lists, ``None`` there meaning "no ground truth": skipped) restricts and orders
the set; without one, pairs are found by scanning the root.
"""

from __future__ import annotations

import io
import logging
import os
import re
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from torch.utils.data import Dataset

__all__ = [
    "BENCHMARKS",
    "BenchmarkDataset",
    "BenchmarkLayoutError",
    "FileSource",
    "Sample",
    "build_benchmark",
]

log = logging.getLogger(__name__)


class BenchmarkLayoutError(FileNotFoundError):
    """A benchmark root is missing, or holds no pair in the expected layout."""


class FileSource:
    """Read-only access to the files of a folder or of an uncompressed/compressed ``.tar``.

    Names are POSIX paths relative to the root (a leading ``./`` in a tar is dropped). A tar is indexed
    once: an uncompressed one by byte range, read with a plain file handle per process (safe in
    DataLoader workers); a compressed one through one ``tarfile`` handle per process, which keeps its
    member table, so a read does not rescan the archive.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).expanduser()
        self._tar_index: dict[str, tuple[int, int]] | None = None
        self._compressed = False
        self._handle: tuple[int, object] | None = None
        if self.root.is_dir():
            names = []
            for dirpath, _, files in os.walk(self.root):
                rel = Path(dirpath).relative_to(self.root).as_posix()
                names.extend(f if rel == "." else f"{rel}/{f}" for f in files)
            self._names = sorted(names)
        elif self.root.is_file() and tarfile.is_tarfile(self.root):
            try:  # uncompressed: members are read by byte range
                with tarfile.open(self.root, "r:") as tf:
                    members = tf.getmembers()
            except tarfile.ReadError:
                self._compressed = True
                with tarfile.open(self.root) as tf:
                    members = tf.getmembers()
            files = [m for m in members if m.isfile()]
            self._tar_index = {self._norm(m.name): (m.offset_data, m.size) for m in files}
            if self._compressed:  # extracted by the name as stored, e.g. "./a.png"
                self._member_names = {self._norm(m.name): m.name for m in files}
            self._names = sorted(self._tar_index)
        else:
            raise FileNotFoundError(str(self.root))
        self._set = set(self._names)

    @staticmethod
    def _norm(name: str) -> str:
        while name.startswith("./"):
            name = name[2:]
        return name.lstrip("/")

    @property
    def names(self) -> list[str]:
        return self._names

    def exists(self, name: str) -> bool:
        return name in self._set

    def read(self, name: str) -> bytes:
        if self._tar_index is None:
            return (self.root / name).read_bytes()
        if name not in self._tar_index:
            raise FileNotFoundError(f"{name} not in {self.root}")
        if self._handle is None or self._handle[0] != os.getpid():
            handle = tarfile.open(self.root) if self._compressed else open(self.root, "rb")  # noqa: SIM115
            self._handle = (os.getpid(), handle)  # one per process, closed with the process
        fh = self._handle[1]
        if self._compressed:
            return fh.extractfile(self._member_names[name]).read()
        offset, size = self._tar_index[name]
        fh.seek(offset)
        return fh.read(size)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_handle"] = None
        return state


@dataclass
class Sample:
    """One benchmark image with its ground truth (numpy, before any protocol crop)."""

    name: str  # rgb path relative to the root, the key for predictions and the CSV
    image: np.ndarray  # (H, W, 3) uint8 RGB
    depth: np.ndarray  # (H, W) float32 metres; invalid pixels may hold 0, inf or nan
    valid: np.ndarray  # (H, W) bool: finite, > 0 and the benchmark's own mask where it has one
    intrinsics: np.ndarray | None = None  # 3x3 where the benchmark defines it
    meta: dict = field(default_factory=dict)


def _decode_rgb(data: bytes, name: str) -> np.ndarray:
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION)
    if arr is None:
        raise ValueError(f"cannot decode image {name}")
    return arr


def _decode_png16(data: bytes, name: str, scale: float) -> tuple[np.ndarray, np.ndarray]:
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.dtype != np.uint16 or arr.ndim != 2:
        got = None if arr is None else f"{arr.dtype} {arr.shape}"
        raise ValueError(f"{name}: expected a single-channel uint16 PNG, got {got}")
    depth = arr.astype(np.float32) / np.float32(scale)
    return depth, arr > 0


class BenchmarkDataset(Dataset):
    """Base reader: a list of ``(rgb, depth)`` relative paths in a :class:`FileSource`.

    Subclasses set ``name``, ``layout`` (human-readable), ``rgb_pattern`` (regex with a
    ``prefix`` group for any leading folder), and implement :meth:`depth_candidates` and
    :meth:`load_depth`.
    """

    name: str = ""
    layout: str = ""
    rgb_pattern: re.Pattern

    def __init__(
        self,
        root: str | os.PathLike,
        split: str | os.PathLike | None = None,
        intrinsics: Sequence[float] | None = None,
        limit: int | None = None,
    ) -> None:
        self.root = Path(root).expanduser()
        try:
            self.files = FileSource(self.root)
        except FileNotFoundError:
            raise BenchmarkLayoutError(self._layout_error(f"root {self.root} does not exist")) from None
        self.intrinsics = None if intrinsics is None else np.asarray(intrinsics, np.float64)
        self.pairs: list[tuple[str, str]] = self._from_split(Path(split)) if split else self._scan()
        if not self.pairs:
            where = f" (split {split})" if split else ""
            msg = f"found no {self.name} pairs in {self.root}{where}"
            raise BenchmarkLayoutError(self._layout_error(msg))
        if limit is not None:
            self.pairs = self.pairs[: int(limit)]

    def _layout_error(self, what: str) -> str:
        return (
            f"{what}. Expected the {self.name} layout, as a folder or a .tar:\n  {self.layout}\n"
            f"Set it with benchmark.root=<DIR or .tar> (or roots.{self.name}=... / data_root=...)."
        )

    # -- pair discovery ----------------------------------------------------------------------
    def depth_candidates(self, match: re.Match) -> list[str]:
        raise NotImplementedError

    def _depth_for(self, rgb: str) -> str | None:
        match = self.rgb_pattern.search(rgb)
        if match is None:
            return None
        return next((c for c in self.depth_candidates(match) if self.files.exists(c)), None)

    def _scan(self) -> list[tuple[str, str]]:
        pairs, missing = [], 0
        for rgb in self.files.names:
            if self.rgb_pattern.search(rgb) is None:
                continue
            depth = self._depth_for(rgb)
            if depth is None:
                missing += 1
                continue
            pairs.append((rgb, depth))
        if missing:
            log.info("%s: %d images without ground truth skipped", self.name, missing)
        return pairs

    def _resolve(self, rel: str) -> str | None:
        if self.files.exists(rel):
            return rel
        hits = [n for n in self.files.names if n.endswith("/" + rel)]
        return hits[0] if len(hits) == 1 else None

    def _from_split(self, split: Path) -> list[tuple[str, str]]:
        if not split.is_file():
            raise BenchmarkLayoutError(f"split file {split} does not exist")
        pairs, skipped = [], 0
        for lineno, line in enumerate(split.read_text().splitlines(), 1):
            tokens = line.split()
            if not tokens or tokens[0].startswith("#"):
                continue
            if len(tokens) > 1 and tokens[1] == "None":
                skipped += 1
                continue
            rgb = self._resolve(tokens[0])
            if rgb is None:
                raise BenchmarkLayoutError(f"{split}:{lineno}: {tokens[0]} not found in {self.root}")
            if len(tokens) > 1 and tokens[1].lower() not in ("", "none"):
                depth = self._resolve(tokens[1])
            else:
                depth = self._depth_for(rgb)
            if depth is None:
                raise BenchmarkLayoutError(
                    f"{split}:{lineno}: no ground truth for {tokens[0]} in {self.root}; "
                    f"expected\n  {self.layout}"
                )
            pairs.append((rgb, depth))
        if skipped:
            log.info("%s: %d split entries without ground truth skipped", self.name, skipped)
        return pairs

    # -- loading -----------------------------------------------------------------------------
    def load_depth(self, depth_name: str, image_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def default_intrinsics(self, h: int, w: int) -> np.ndarray | None:
        return None

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> Sample:
        rgb_name, depth_name = self.pairs[index]
        image = _decode_rgb(self.files.read(rgb_name), rgb_name)
        depth, valid = self.load_depth(depth_name, image.shape[:2])
        if depth.shape != image.shape[:2]:
            raise ValueError(
                f"{self.name}: {depth_name} is {depth.shape[0]}x{depth.shape[1]} but {rgb_name} is "
                f"{image.shape[0]}x{image.shape[1]}"
            )
        valid = valid & np.isfinite(depth) & (depth > 0)
        h, w = depth.shape
        if self.intrinsics is not None:
            k = self.intrinsics
            k = k if k.shape == (3, 3) else np.array([[k[0], 0, k[2]], [0, k[1], k[3]], [0, 0, 1.0]])
        else:
            k = self.default_intrinsics(h, w)
        depth = depth.astype(np.float32, copy=False)
        return Sample(rgb_name, image, depth, valid, k, {"depth_name": depth_name})


class NYUv2(BenchmarkDataset):
    name = "nyuv2"
    layout = "test/<scene>/rgb_XXXX.png + test/<scene>/depth_XXXX.png (uint16, mm)"
    rgb_pattern = re.compile(r"^(?P<prefix>(?:.*/)?)(?P<dir>test/[^/]+)/rgb_(?P<id>[^/]+)\.png$")

    def depth_candidates(self, m):
        return [f"{m['prefix']}{m['dir']}/depth_{m['id']}.png"]

    def load_depth(self, depth_name, image_shape):
        return _decode_png16(self.files.read(depth_name), depth_name, 1000.0)


class KITTI(BenchmarkDataset):
    name = "kitti"
    layout = (
        "<date>/<drive>_sync/image_02/data/<frame>.png + "
        "<drive>_sync/proj_depth/groundtruth/image_02/<frame>.png (uint16, /256)"
    )
    rgb_pattern = re.compile(
        r"^(?P<prefix>(?:.*/)?)(?P<date>\d{4}_\d{2}_\d{2})/(?P<drive>[^/]+_sync)/image_02/data/(?P<frame>[^/]+)\.png$"
    )

    def depth_candidates(self, m):
        tail = f"{m['drive']}/proj_depth/groundtruth/image_02/{m['frame']}.png"
        return [f"{m['prefix']}{tail}", f"{m['prefix']}{m['date']}/{tail}"]

    def load_depth(self, depth_name, image_shape):
        return _decode_png16(self.files.read(depth_name), depth_name, 256.0)


class ETH3D(BenchmarkDataset):
    name = "eth3d"
    layout = (
        "rgb/<scene>/images/dslr_images/<name>.JPG + "
        "depth/<scene>_dslr_depth/<scene>/ground_truth_depth/dslr_images/<name>.JPG (raw float32 HxW)"
    )
    rgb_pattern = re.compile(
        r"^(?P<prefix>(?:.*/)?)rgb/(?P<scene>[^/]+)/images/dslr_images/(?P<file>[^/]+\.(?:JPG|jpg))$"
    )

    def __init__(
        self,
        root,
        split=None,
        intrinsics=None,
        limit=None,
        depth_shape: Sequence[int] | None = None,
    ):
        self.depth_shape = None if depth_shape is None else (int(depth_shape[0]), int(depth_shape[1]))
        super().__init__(root, split, intrinsics, limit)

    def depth_candidates(self, m):
        s = m["scene"]
        return [f"{m['prefix']}depth/{s}_dslr_depth/{s}/ground_truth_depth/dslr_images/{m['file']}"]

    def load_depth(self, depth_name, image_shape):
        raw = self.files.read(depth_name)
        h, w = self.depth_shape or image_shape
        if len(raw) != h * w * 4:
            raise ValueError(
                f"eth3d: {depth_name} has {len(raw)} bytes, expected {h}x{w} float32 = {h * w * 4} bytes "
                "(set benchmark.depth_shape=[H,W] if the depth maps differ from the images)"
            )
        depth = np.frombuffer(raw, dtype="<f4").reshape(h, w).copy()
        return depth, np.isfinite(depth)


class ScanNet(BenchmarkDataset):
    name = "scannet"
    layout = "<scene>/color/<n>.jpg + <scene>/depth/<n>.png (uint16, mm)"
    rgb_pattern = re.compile(r"^(?P<prefix>(?:.*/)?)(?P<scene>[^/]+)/color/(?P<id>[^/]+)\.jpg$")

    def depth_candidates(self, m):
        return [f"{m['prefix']}{m['scene']}/depth/{m['id']}.png"]

    def load_depth(self, depth_name, image_shape):
        return _decode_png16(self.files.read(depth_name), depth_name, 1000.0)


class DIODE(BenchmarkDataset):
    name = "diode"
    layout = "{indoors,outdoor}/scene_*/scan_*/<id>.png + <id>_depth.npy (HxWx1, m) + <id>_depth_mask.npy"
    rgb_pattern = re.compile(
        r"^(?P<prefix>(?:.*/)?)(?P<dir>(?:indoors|outdoor)/scene_[^/]+/scan_[^/]+)/(?P<id>[^/]+)\.png$"
    )

    def depth_candidates(self, m):
        return [f"{m['prefix']}{m['dir']}/{m['id']}_depth.npy"]

    def _depth_for(self, rgb):
        depth = super()._depth_for(rgb)
        if depth is not None and not self.files.exists(depth[: -len(".npy")] + "_mask.npy"):
            return None
        return depth

    def load_depth(self, depth_name, image_shape):
        depth = np.load(io.BytesIO(self.files.read(depth_name)), allow_pickle=False)
        mask_name = depth_name[: -len(".npy")] + "_mask.npy"
        mask = np.load(io.BytesIO(self.files.read(mask_name)), allow_pickle=False)
        depth = np.asarray(depth, np.float32).reshape(image_shape)
        return depth, np.asarray(mask).reshape(image_shape) > 0


class Hypersim(BenchmarkDataset):
    name = "hypersim"
    layout = "<scene>/rgb_cam_XX_frXXXX.png + <scene>/depth_plane_cam_XX_frXXXX.png (uint16 mm, planar)"
    rgb_pattern = re.compile(r"^(?P<prefix>(?:.*/)?)(?P<scene>[^/]+)/rgb_(?P<id>cam_[^/]+_fr[^/]+)\.png$")
    focal = 886.81  # px at 1024 x 768

    def depth_candidates(self, m):
        return [f"{m['prefix']}{m['scene']}/depth_plane_{m['id']}.png"]

    def load_depth(self, depth_name, image_shape):
        return _decode_png16(self.files.read(depth_name), depth_name, 1000.0)

    def default_intrinsics(self, h, w):
        # focal scales with the width (886.81 px at 1024); principal point at the image centre
        f = self.focal * w / 1024.0
        return np.array([[f, 0.0, (w - 1) / 2.0], [0.0, f, (h - 1) / 2.0], [0.0, 0.0, 1.0]])


BENCHMARKS: dict[str, type[BenchmarkDataset]] = {
    c.name: c for c in (NYUv2, KITTI, ETH3D, ScanNet, DIODE, Hypersim)
}


def build_benchmark(name: str, root, split=None, limit: int | None = None, **options) -> BenchmarkDataset:
    """Instantiate the reader ``name`` (one of :data:`BENCHMARKS`) on ``root``."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}")
    if root is None or str(root) == "":
        cls = BENCHMARKS[name]
        raise BenchmarkLayoutError(
            f"no root given for {name}. Expected the {name} layout, as a folder or a .tar:\n  {cls.layout}\n"
            f"Set it with benchmark.root=<DIR or .tar> (or roots.{name}=... / data_root=...)."
        )
    options = {k: v for k, v in options.items() if v is not None}
    return BENCHMARKS[name](root, split=split, limit=limit, **options)

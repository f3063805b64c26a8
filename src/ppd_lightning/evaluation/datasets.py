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
the set; without one, pairs are found by scanning the root. Files are read through
:class:`ppd_lightning.evaluation.files.BenchmarkFiles` (a folder or a tar, names confined to the root).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from torch.utils.data import Dataset

from ppd_lightning.data.raw import hypersim as hypersim_source
from ppd_lightning.errors import ConfigError, InputError, MissingFileError
from ppd_lightning.evaluation.files import BenchmarkFiles, UnsafeNameError, confine_name
from ppd_lightning.geometry import as_hw, as_intrinsics_matrix, intrinsics_matrix

__all__ = [
    "BENCHMARKS",
    "BenchmarkDataset",
    "BenchmarkLayoutError",
    "PINNED_SPLITS",
    "SPLITS_DIR",
    "Sample",
    "build_benchmark",
    "pinned_splits",
    "resolve_split",
]

log = logging.getLogger(__name__)

#: the split lists shipped with the package (the ones published numbers use; see its README)
SPLITS_DIR = Path(__file__).resolve().with_name("splits")


class BenchmarkLayoutError(MissingFileError):
    """A benchmark root is missing, or holds no pair in the expected layout."""


@dataclass
class Sample:
    """One benchmark image with its ground truth (numpy, before any protocol crop)."""

    name: str  # rgb path relative to the root, the key for predictions and the CSV
    image: np.ndarray | None  # (H, W, 3) uint8 RGB at the depth's size; None when not decoded
    depth: np.ndarray  # (H, W) float32 metres; invalid pixels may hold 0, inf or nan
    valid: np.ndarray  # (H, W) bool: finite, > 0 and the benchmark's own mask where it has one
    intrinsics: np.ndarray | None = None  # 3x3 where the benchmark defines it
    meta: dict = field(default_factory=dict)


def _decode_rgb(data: bytes, name: str) -> np.ndarray:
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION)
    if arr is None:
        raise InputError(f"cannot decode image {name}")
    return arr


def _image_hw(data: bytes, name: str) -> tuple[int, int]:
    """(H, W) of an encoded image as stored (EXIF orientation ignored), from its header when
    Pillow can read it, else by decoding it."""
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
        return int(h), int(w)
    except Exception:  # noqa: BLE001 - no Pillow or an odd format: decode instead
        return _decode_rgb(data, name).shape[:2]


def _fit_image(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The rgb brought to the depth's (H, W) when they differ (area when shrinking, else cubic)."""
    h, w = shape
    if image.shape[:2] == (h, w):
        return image
    shrink = h * w < image.shape[0] * image.shape[1]
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)


def _decode_png16(data: bytes, name: str, depth_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Metres and validity (stored value > 0) of a single-channel uint16 PNG holding
    ``depth_scale`` metres per unit."""
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.dtype != np.uint16 or arr.ndim != 2:
        got = None if arr is None else f"{arr.dtype} {arr.shape}"
        raise InputError(f"{name}: expected a single-channel uint16 PNG, got {got}")
    # Divided by the units per metre (1000, 256): a float32 division is correctly rounded, a product
    # with float32(0.001) is not, and would change the last bit of some depths.
    depth = arr.astype(np.float32) / np.float32(1.0 / depth_scale)
    return depth, arr > 0


class BenchmarkDataset(Dataset):
    """Base reader: a list of ``(rgb, depth)`` relative paths in a :class:`BenchmarkFiles`.

    Subclasses set ``name``, ``layout`` (human-readable), ``rgb_pattern`` (regex with a
    ``prefix`` group for any leading folder), and implement :meth:`depth_candidates`. Ground truth
    stored as a uint16 PNG needs only ``depth_scale`` (metres per stored unit; 0 = invalid); other
    storage overrides :meth:`load_depth`.
    """

    name: str = ""
    layout: str = ""
    rgb_pattern: re.Pattern
    #: metres per unit of a uint16-PNG ground truth (e.g. 0.001 for millimetres); None: no PNG depth
    depth_scale: float | None = None

    def __init__(
        self,
        root: str | os.PathLike,
        split: str | os.PathLike | None = None,
        intrinsics: Sequence[float] | None = None,
        limit: int | None = None,
        allow_missing: bool = False,
    ) -> None:
        self.root = Path(root).expanduser()
        try:
            self.files = BenchmarkFiles(self.root)
        except MissingFileError:
            raise BenchmarkLayoutError(self._layout_error(f"root {self.root} does not exist")) from None
        self.intrinsics = None if intrinsics is None else np.asarray(intrinsics, np.float64)
        self._prefixes: list[str] = []
        self._by_base: dict[str, list[str]] | None = None
        split_path = resolve_split(split)
        #: which images were evaluated: None when the root was scanned, else the split file's
        #: name, sha256, the number of entries with ground truth, and those missing from the root
        self.split_info: dict | None = None
        if split_path is not None:
            self.pairs = self._from_split(split_path, allow_missing=bool(allow_missing))
        else:
            self.pairs = self._scan()
        if not self.pairs:
            where = f" (split {split_path})" if split_path else ""
            msg = f"found no {self.name} pairs in {self.root}{where}"
            raise BenchmarkLayoutError(self._layout_error(msg))
        if limit is not None:
            self.pairs = self.pairs[: int(limit)]
            if self.split_info is not None:
                self.split_info["limit"] = int(limit)

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
        """A split path in the root: as is, under a leading folder already seen, or the one file
        whose path ends with it (which fixes the leading folder for the next lines)."""
        try:
            rel = confine_name(rel, "split entry")
        except UnsafeNameError:
            return None
        if self.files.exists(rel):
            return rel
        for prefix in self._prefixes:
            if self.files.exists(prefix + rel):
                return prefix + rel
        if self._by_base is None:
            self._by_base = {}
            for n in self.files.names:
                self._by_base.setdefault(n.rsplit("/", 1)[-1], []).append(n)
        hits = [n for n in self._by_base.get(rel.rsplit("/", 1)[-1], []) if n.endswith("/" + rel)]
        if len(hits) != 1:
            return None
        self._prefixes.append(hits[0][: -len(rel)])
        return hits[0]

    def _from_split(self, split: Path, allow_missing: bool = False) -> list[tuple[str, str]]:
        data = split.read_bytes()
        pairs: list[tuple[str, str]] = []
        missing: list[str] = []
        skipped = 0
        for lineno, line in enumerate(data.decode("utf-8").splitlines(), 1):
            tokens = line.split()
            if not tokens or tokens[0].startswith("#"):
                continue
            if len(tokens) > 1 and tokens[1] == "None":
                skipped += 1
                continue
            rgb = self._resolve(tokens[0])
            if rgb is None:
                missing.append(f"{tokens[0]} (line {lineno})")
                continue
            depth = None
            if len(tokens) > 1 and tokens[1].lower() not in ("", "none"):
                depth = self._resolve(tokens[1])
            if depth is None:
                depth = self._depth_for(rgb)
            if depth is None:
                want = tokens[1] if len(tokens) > 1 else f"the ground truth of {tokens[0]}"
                missing.append(f"{want} (line {lineno})")
                continue
            pairs.append((rgb, depth))
        if skipped:
            log.info("%s: %d split entries without ground truth skipped", self.name, skipped)
        listed = len(pairs) + len(missing)
        self.split_info = {
            "name": split.stem if split.parent == SPLITS_DIR else str(split),
            "sha256": hashlib.sha256(data).hexdigest(),
            "entries": listed,
            "missing": len(missing),
        }
        if missing:
            shown = "\n  ".join(missing[:20])
            more = f"\n  ... and {len(missing) - 20} more" if len(missing) > 20 else ""
            head = f"split {split}: {len(missing)} of {listed} listed files are missing from {self.root}"
            if not allow_missing:
                raise BenchmarkLayoutError(
                    f"{head}:\n  {shown}{more}\nExpected the {self.name} layout:\n  {self.layout}\n"
                    "Fix the root, or set allow_missing=true to evaluate the rest (the numbers are then "
                    "NOT comparable with published ones), or benchmark.split=null to scan the root."
                )
            log.warning(
                "PARTIAL RUN, numbers NOT comparable: %s (allow_missing=true):\n  %s%s", head, shown, more
            )
            self.split_info["missing_files"] = missing
        return pairs

    # -- loading -----------------------------------------------------------------------------
    def load_depth(self, depth_name: str, rgb_name: str) -> tuple[np.ndarray, np.ndarray]:
        """Depth (metres) and the reader's own validity for ``depth_name``; ``rgb_name`` is its
        image, for readers that need its size. Here: a uint16 PNG of ``depth_scale`` metres per unit."""
        if self.depth_scale is None:
            raise NotImplementedError(
                f"{type(self).__name__} sets no depth_scale and overrides no load_depth"
            )
        return _decode_png16(self.files.read(depth_name), depth_name, self.depth_scale)

    def default_intrinsics(self, h: int, w: int) -> np.ndarray | None:
        return None

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> Sample:
        return self.get(index)

    def get(self, index: int, with_image: bool = True) -> Sample:
        """Sample ``index``; ``with_image=False`` leaves the rgb undecoded (``image=None``): scoring
        saved predictions does not need it. An rgb whose size differs from the depth's is resized
        to the depth's size (what a model sees; the ground truth is never resampled)."""
        rgb_name, depth_name = self.pairs[index]
        depth, valid = self.load_depth(depth_name, rgb_name)
        if depth.ndim != 2 or valid.shape != depth.shape:
            raise InputError(
                f"{self.name}: {depth_name}: expected an HxW depth map and mask, got {depth.shape} "
                f"and {valid.shape}"
            )
        image = None
        meta: dict = {"depth_name": depth_name}
        if with_image:
            image = _decode_rgb(self.files.read(rgb_name), rgb_name)
            if image.shape[:2] != depth.shape:
                meta["rgb_shape"] = tuple(image.shape[:2])
                image = _fit_image(image, depth.shape)
        valid = valid & np.isfinite(depth) & (depth > 0)
        h, w = depth.shape
        if self.intrinsics is not None:
            k = as_intrinsics_matrix(self.intrinsics)
        else:
            k = self.default_intrinsics(h, w)
        depth = depth.astype(np.float32, copy=False)
        return Sample(rgb_name, image, depth, valid, k, meta)


def _load_npy(data: bytes, name: str) -> np.ndarray:
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same named error
        raise InputError(f"{name}: not a readable .npy array ({type(e).__name__}: {e})") from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf":
        raise InputError(f"{name}: expected a numeric .npy array, got {getattr(arr, 'dtype', type(arr))}")
    return arr


class NYUv2(BenchmarkDataset):
    name = "nyuv2"
    layout = "test/<scene>/rgb_XXXX.png + test/<scene>/depth_XXXX.png (uint16, mm)"
    rgb_pattern = re.compile(r"^(?P<prefix>(?:.*/)?)(?P<dir>test/[^/]+)/rgb_(?P<id>[^/]+)\.png$")
    depth_scale = 0.001  # mm

    def depth_candidates(self, m):
        return [f"{m['prefix']}{m['dir']}/depth_{m['id']}.png"]


class KITTI(BenchmarkDataset):
    name = "kitti"
    layout = (
        "<date>/<drive>_sync/image_02/data/<frame>.png + "
        "<drive>_sync/proj_depth/groundtruth/image_02/<frame>.png (uint16, /256)"
    )
    rgb_pattern = re.compile(
        r"^(?P<prefix>(?:.*/)?)(?P<date>\d{4}_\d{2}_\d{2})/(?P<drive>[^/]+_sync)/image_02/data/(?P<frame>[^/]+)\.png$"
    )
    depth_scale = 1 / 256

    def depth_candidates(self, m):
        tail = f"{m['drive']}/proj_depth/groundtruth/image_02/{m['frame']}.png"
        return [f"{m['prefix']}{tail}", f"{m['prefix']}{m['date']}/{tail}"]


class ETH3D(BenchmarkDataset):
    name = "eth3d"
    layout = (
        "rgb/<scene>/images/dslr_images/<name>.JPG + "
        "depth/<scene>_dslr_depth/<scene>/ground_truth_depth/dslr_images/<name>.JPG (raw float32 HxW)"
    )
    rgb_pattern = re.compile(
        r"^(?P<prefix>(?:.*/)?)rgb/(?P<scene>[^/]+)/images/dslr_images/(?P<file>[^/]+\.(?:JPG|jpg))$"
    )
    native_shape = (4032, 6048)  # (H, W) of every released ETH3D depth map (raw float32)

    def __init__(
        self,
        root,
        split=None,
        intrinsics=None,
        limit=None,
        depth_shape: Sequence[int] | None = None,
        allow_missing: bool = False,
    ):
        self.depth_shape = None if depth_shape is None else (int(depth_shape[0]), int(depth_shape[1]))
        super().__init__(root, split, intrinsics, limit, allow_missing=allow_missing)

    def depth_candidates(self, m):
        s = m["scene"]
        return [f"{m['prefix']}depth/{s}_dslr_depth/{s}/ground_truth_depth/dslr_images/{m['file']}"]

    def load_depth(self, depth_name, rgb_name):
        raw = self.files.read(depth_name)
        if self.depth_shape is not None:  # explicit override
            h, w = self.depth_shape
        elif len(raw) == self.native_shape[0] * self.native_shape[1] * 4:  # the released maps
            h, w = self.native_shape
        else:  # a re-sampled archive: the image's size
            h, w = _image_hw(self.files.read(rgb_name), rgb_name)
        if len(raw) != h * w * 4:
            native = "x".join(map(str, self.native_shape))
            raise InputError(
                f"eth3d: {depth_name} has {len(raw)} bytes, expected {h}x{w} float32 = {h * w * 4} bytes "
                f"(ETH3D's maps are {native}; set benchmark.options.depth_shape=[H,W] for other sizes)"
            )
        depth = np.frombuffer(raw, dtype="<f4").reshape(h, w).copy()
        return depth, np.isfinite(depth)


class ScanNet(BenchmarkDataset):
    name = "scannet"
    layout = "<scene>/color/<n>.jpg + <scene>/depth/<n>.png (uint16, mm)"
    rgb_pattern = re.compile(r"^(?P<prefix>(?:.*/)?)(?P<scene>[^/]+)/color/(?P<id>[^/]+)\.jpg$")
    depth_scale = 0.001  # mm

    def depth_candidates(self, m):
        return [f"{m['prefix']}{m['scene']}/depth/{m['id']}.png"]


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

    def load_depth(self, depth_name, rgb_name):
        mask_name = depth_name[: -len(".npy")] + "_mask.npy"
        depth = as_hw(_load_npy(self.files.read(depth_name), depth_name), depth_name).astype(np.float32)
        mask = as_hw(_load_npy(self.files.read(mask_name), mask_name), mask_name)
        if mask.shape != depth.shape:
            raise InputError(f"diode: {mask_name} is {mask.shape}, its depth {depth_name} is {depth.shape}")
        return depth, mask > 0


class Hypersim(BenchmarkDataset):
    name = "hypersim"
    layout = "<scene>/rgb_cam_XX_frXXXX.png + <scene>/depth_plane_cam_XX_frXXXX.png (uint16 mm, planar)"
    rgb_pattern = re.compile(r"^(?P<prefix>(?:.*/)?)(?P<scene>[^/]+)/rgb_(?P<id>cam_[^/]+_fr[^/]+)\.png$")
    depth_scale = 0.001  # mm, planar depth

    def depth_candidates(self, m):
        return [f"{m['prefix']}{m['scene']}/depth_plane_{m['id']}.png"]

    def default_intrinsics(self, h, w):
        # the data source's camera: focal scaled with the width, principal point at the image centre
        cam = hypersim_source.camera(h, w)
        return intrinsics_matrix(cam["fx"], cam["fy"], cam["cx"], cam["cy"])


BENCHMARKS: dict[str, type[BenchmarkDataset]] = {
    c.name: c for c in (NYUv2, KITTI, ETH3D, ScanNet, DIODE, Hypersim)
}


#: the pinned split list each benchmark is evaluated on by default (files in :data:`SPLITS_DIR`)
PINNED_SPLITS: dict[str, str] = {
    "nyuv2": "nyuv2_test",  # 654
    "kitti": "kitti_eigen_test",  # 697 lines, 652 with ground truth
    "eth3d": "eth3d",  # 454
    "scannet": "scannet_val_800",  # 800
    "diode": "diode_val_all",  # 771 (diode_val_indoor 325, diode_val_outdoor 446)
}


def pinned_splits() -> list[str]:
    """Names of the shipped split lists (``benchmark.split=<name>``)."""
    return sorted(p.stem for p in SPLITS_DIR.glob("*.txt"))


def resolve_split(split) -> Path | None:
    """A split given as a path to a file or as the name of a shipped list; ``None`` (or ``""``):
    scan the root. Raises :class:`BenchmarkLayoutError` naming it when it is neither."""
    if split is None or str(split).strip() == "":
        return None
    text = str(split)
    shipped = SPLITS_DIR / f"{text}.txt"
    if "/" not in text and "\\" not in text and shipped.is_file():  # a shipped list's name wins
        return shipped
    path = Path(text).expanduser()
    if path.is_file():
        return path
    raise BenchmarkLayoutError(
        f"split file {split} does not exist; give a path, a shipped list ({', '.join(pinned_splits())}), "
        "or benchmark.split=null to scan the root"
    )


def build_benchmark(name: str, root, split=None, limit: int | None = None, **options) -> BenchmarkDataset:
    """Instantiate the reader ``name`` (one of :data:`BENCHMARKS`) on ``root``.

    ``split``: a split file or the name of a shipped list (:data:`PINNED_SPLITS` are the defaults
    of ``conf/benchmark/*.yaml``); ``None`` scans the root. ``allow_missing=True`` (an option)
    evaluates the listed files that exist when some are missing, with a warning."""
    if name not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}")
    if root is None or str(root) == "":
        cls = BENCHMARKS[name]
        raise BenchmarkLayoutError(
            f"no root given for {name}. Expected the {name} layout, as a folder or a .tar:\n  {cls.layout}\n"
            f"Set it with benchmark.root=<DIR or .tar> (or roots.{name}=... / data_root=...)."
        )
    options = {k: v for k, v in options.items() if v is not None}
    return BENCHMARKS[name](root, split=split, limit=limit, **options)

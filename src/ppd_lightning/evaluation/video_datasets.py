"""Readers for the video benchmarks in the layout Video Depth Anything's extraction scripts write.

``benchmark/dataset_extract/dataset_extract_{sintel,scannet,kitti,bonn,nyuv2}.py`` leave, per data
set, one folder (``benchmark.root``, a folder or a ``.tar`` of it) holding the frames and JSON lists::

    {"<dataset>": [{"<sequence>": [{"image": rel, "gt_depth": rel, "factor": f,
                                    ("K": 3x3 or 4x4, "pose": 4x4 camera-to-world)}, ...]}, ...]}

with every path relative to the root. Ground truth depth is the stored value divided by ``factor``
(a single-channel integer PNG, or a ``.npy``). Saved predictions mirror the ``image`` paths with a
``.npy`` suffix under ``predictions=<DIR>`` (VDA's ``infer.py`` writes them under
``<infer_path>/<dataset>/``: that sub-folder is found too).

Only the JSON is read up front; frames are decoded one at a time (:meth:`VideoBenchmark.depth`,
:meth:`VideoBenchmark.image`, :meth:`SavedVideoPredictions.load`), so a sequence of any length is
scored in bounded memory. Which JSON, frames and sequences a benchmark uses is its config
(``conf/benchmark/<name>.yaml``).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ppd_lightning.errors import InputError, MissingFileError
from ppd_lightning.evaluation.files import BenchmarkFiles, UnsafeNameError, confine_name
from ppd_lightning.geometry import as_hw

__all__ = ["SavedVideoPredictions", "VideoBenchmark", "VideoFrame", "VideoSequence"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VideoFrame:
    """One entry of a sequence in the JSON (paths confined to the root)."""

    index: int  # position in the sequence as listed in the JSON (before the benchmark's frame range)
    image: str
    gt_depth: str
    factor: float
    K: np.ndarray | None = None  # (3, 3) or (4, 4) as listed; the TAE uses fx, fy, cx, cy
    pose: np.ndarray | None = None  # (4, 4) camera-to-world


@dataclass(frozen=True)
class VideoSequence:
    name: str
    frames: tuple[VideoFrame, ...]


def _matrix(value, shapes: Sequence[tuple[int, int]], what: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.shape not in shapes or not np.isfinite(arr).all():
        want = " or ".join(f"{h}x{w}" for h, w in shapes)
        got = "not numeric" if arr is None else f"shape {arr.shape}"
        raise InputError(f"{what}: expected a finite {want} matrix, got {got}")
    return arr


def _decode_array(data: bytes, name: str) -> np.ndarray:
    """A stored depth map as VDA reads it: ``np.load`` for ``.npy``, ``cv2.imread(..., -1)`` else."""
    if name.lower().endswith(".npy"):
        try:
            arr = np.load(io.BytesIO(data), allow_pickle=False)
        except Exception as e:  # noqa: BLE001 - any unreadable file gets one named error
            raise InputError(f"{name}: not a readable .npy array ({type(e).__name__}: {e})") from None
        if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf":
            raise InputError(f"{name}: expected a numeric .npy array, got {getattr(arr, 'dtype', type(arr))}")
    else:
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if arr is None or arr.dtype.kind not in "ui":
            got = "undecodable" if arr is None else str(arr.dtype)
            raise InputError(f"{name}: expected a single-channel integer (uint16) PNG, got {got}")
    return as_hw(arr, name)


class VideoBenchmark:
    """The sequences of one JSON list under ``root``.

    ``dataset``: the JSON's top-level key (``None``: its only key). ``frames = (start, stop)``: the
    frames ``[start:stop]`` of every sequence (``stop`` ``None``: to the end). ``sequences``: only
    the first N entries of the list. ``need_camera``: every kept frame must have ``K`` and ``pose``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        json_name: str,
        dataset: str | None = None,
        frames: tuple[int, int | None] = (0, None),
        sequences: int | None = None,
        need_camera: bool = False,
    ) -> None:
        self.root = Path(root).expanduser()
        try:
            self.files = BenchmarkFiles(self.root)
        except MissingFileError:
            raise MissingFileError(
                f"benchmark root {self.root} does not exist; expected the folder VDA's "
                f"dataset_extract script writes, holding {json_name} (set benchmark.root=<DIR>)"
            ) from None
        self.json_name = confine_name(json_name, "benchmark.json")
        if not self.files.exists(self.json_name):
            jsons = [n for n in self.files.names if n.endswith(".json")]
            found = f"; it holds {', '.join(jsons[:10])}" if jsons else "; it holds no .json"
            raise MissingFileError(
                f"{self.root / self.json_name}: no such file (the benchmark's list{found})"
            )
        data = self.files.read(self.json_name)
        #: the JSON's sha256, so a metrics file records exactly which list was scored
        self.json_sha256 = hashlib.sha256(data).hexdigest()
        where = str(self.root / self.json_name)
        try:
            listing = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InputError(f"{where}: not valid JSON ({e})") from None
        if not isinstance(listing, dict) or not listing:
            raise InputError(f'{where}: expected {{"<dataset>": [{{"<sequence>": [frames]}}, ...]}}')
        if dataset is None:
            if len(listing) != 1:
                raise InputError(
                    f"{where}: holds {', '.join(map(str, listing))}; say which (benchmark.dataset)"
                )
            dataset = next(iter(listing))
        if dataset not in listing:
            raise InputError(
                f"{where}: no key {dataset!r} (benchmark.dataset); it holds {', '.join(map(str, listing))}"
            )
        self.dataset = dataset
        entries = listing[dataset]
        if not isinstance(entries, list):
            raise InputError(f"{where}: [{dataset!r}] must be a list of {{sequence: [frames]}}")
        self.n_listed = len(entries)
        if sequences is not None:
            entries = entries[: int(sequences)]
        start, stop = frames
        self.sequences: list[VideoSequence] = []
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or not entry:
                raise InputError(f"{where}: [{dataset!r}][{i}] must be {{sequence name: [frames]}}")
            for name, items in entry.items():
                seq_where = f"{where}: sequence {name!r}"
                if not isinstance(items, list):
                    raise InputError(f"{seq_where}: expected a list of frames")
                kept = [
                    self._frame(items[k], k, seq_where, need_camera) for k in range(len(items))[start:stop]
                ]
                if kept:
                    self.sequences.append(VideoSequence(str(name), tuple(kept)))
                else:
                    log.warning("%s: no frame in [%s:%s], skipped", seq_where, start, stop)
        if not self.sequences:
            raise InputError(f"{where}: no sequence with frames in [{start}:{stop}]")

    @staticmethod
    def _frame(item, index: int, where: str, need_camera: bool) -> VideoFrame:
        what = f"{where}, frame {index}"
        if not isinstance(item, dict):
            raise InputError(f"{what}: expected an object with image, gt_depth, factor")
        missing = [k for k in ("image", "gt_depth", "factor") if k not in item]
        if need_camera:
            missing += [k for k in ("K", "pose") if k not in item]
        if missing:
            raise InputError(f"{what}: missing {', '.join(missing)}")
        try:
            image, gt = confine_name(item["image"], "image"), confine_name(item["gt_depth"], "gt_depth")
        except UnsafeNameError as e:
            raise UnsafeNameError(f"{what}: {e}") from None
        factor = item["factor"]
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor > 0:
            raise InputError(f"{what}: factor must be a positive number, got {factor!r}")
        k = _matrix(item["K"], [(3, 3), (3, 4), (4, 4)], f"{what}: K") if "K" in item else None
        pose = _matrix(item["pose"], [(4, 4)], f"{what}: pose") if "pose" in item else None
        return VideoFrame(index, image, gt, float(factor), k, pose)

    def __len__(self) -> int:
        return len(self.sequences)

    @property
    def n_frames(self) -> int:
        return sum(len(s.frames) for s in self.sequences)

    def depth(self, frame: VideoFrame) -> np.ndarray:
        """Ground truth in metres, float64 (H, W): the stored value / ``factor``, computed as VDA's
        ``get_gt`` does (so a float32 ``.npy`` is divided in float32, a PNG in float64)."""
        raw = _decode_array(self.files.read(frame.gt_depth), str(self.root / frame.gt_depth))
        return np.asarray(raw / frame.factor).astype(np.float64, copy=False)

    def image(self, frame: VideoFrame) -> np.ndarray:
        """The frame as uint8 RGB (H, W, 3)."""
        data = self.files.read(frame.image)
        arr = cv2.imdecode(
            np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION
        )
        if arr is None:
            raise InputError(f"{self.root / frame.image}: cannot decode the image")
        return arr

    def images(self, sequence: VideoSequence) -> Iterator[np.ndarray]:
        """The frames of ``sequence`` decoded one at a time."""
        for frame in sequence.frames:
            yield self.image(frame)


class SavedVideoPredictions:
    """Predictions of any method as ``<dir>/<image path with .npy suffix>`` (float32 H x W).

    :meth:`for_benchmark` also accepts VDA's ``infer.py`` layout, ``<dir>/<dataset>/<image>.npy``.
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory).expanduser()
        if not self.directory.is_dir():
            raise MissingFileError(
                f"predictions directory {self.directory} does not exist; expected "
                "<DIR>/<the json's image path with its suffix replaced by .npy>"
            )

    def for_benchmark(self, benchmark: VideoBenchmark) -> SavedVideoPredictions:
        """Self, or ``<dir>/<dataset>`` when the first frame's prediction is only found there."""
        first = benchmark.sequences[0].frames[0]
        sub = self.directory / benchmark.dataset
        if (
            not self.path(first).is_file()
            and sub.is_dir()
            and SavedVideoPredictions(sub).path(first).is_file()
        ):
            log.info("predictions: using VDA's layout %s", sub)
            return SavedVideoPredictions(sub)
        return self

    def path(self, frame: VideoFrame) -> Path:
        return self.directory / Path(frame.image).with_suffix(".npy")

    def exists(self, frame: VideoFrame) -> bool:
        return self.path(frame).is_file()

    def load(self, frame: VideoFrame) -> np.ndarray:
        """The prediction as float32 (H, W), as VDA's ``get_infer`` reads a ``.npy``."""
        path = self.path(frame)
        if not path.is_file():
            raise MissingFileError(
                f"no prediction for {frame.image}: expected {path} (float32 HxW .npy named after the image "
                "path; allow_missing=true skips missing frames, as VDA's eval.py does)"
            )
        arr = _decode_array(path.read_bytes(), str(path))
        return arr.astype(np.float32, copy=False)

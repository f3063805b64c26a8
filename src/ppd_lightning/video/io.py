"""Videos in and out, frame by frame: decoding, resampling, the depth store, and atomic writers.

Decoding goes through PyAV (FFmpeg's demuxers and decoders as a library) rather than OpenCV's
``VideoCapture``: a damaged packet or a frame the decoder flags as corrupt is an exception we can name
by frame index (``VideoCapture.read`` just returns ``False`` and a video silently stops early), the
stream's frame rate, time base and header frame count are exposed exactly (a ``Fraction`` such as
30000/1001, not a rounded float), and the wheels carry FFmpeg's full set of codecs (H.264/HEVC/VP9/AV1
decoders, libx264 for encoding) independently of how OpenCV was built.

Everything here streams: a video of any length is read, resized and written holding one frame at a
time. The depths of a whole video go to a :class:`DepthStore` (an anonymous temporary file) so that the
colour range of the whole video is known before the depth video is written (the release's one min/max
per video), and are then read back frame by frame.

Every output is written under a temporary name beside its target and renamed at the end
(:func:`ppd_lightning.atomic.replacing`, or :func:`replacing_dir` for a folder of frames): an interrupted
run leaves no half-written file under a final name.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import secrets
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from ppd_lightning import atomic
from ppd_lightning.errors import InputError, MissingFileError
from ppd_lightning.visualize import IMAGE_SUFFIXES

__all__ = [
    "FRAME_SUFFIXES",
    "VIDEO_SUFFIXES",
    "DepthStore",
    "FolderFrames",
    "VideoFrames",
    "VideoInfo",
    "is_video",
    "open_frames",
    "replacing_dir",
    "scaled_size",
    "video_codec",
    "write_npz",
    "write_png16",
    "writing_video",
]

VIDEO_SUFFIXES = set(
    [".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts", ".wmv"]
)
FRAME_SUFFIXES = IMAGE_SUFFIXES  # one list of image suffixes (visualize.py)
DEFAULT_FOLDER_FPS = Fraction(30)


def is_video(path: str | os.PathLike) -> bool:
    """A video file, by its suffix."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def scaled_size(width: int, height: int, max_res: int | None) -> tuple[int, int]:
    """``(width, height)`` with the long side brought down to ``max_res`` (aspect kept, each side rounded to
    an even number, down, as H.264 4:2:0 needs); never enlarged."""
    long_side = max(width, height)
    if not max_res or long_side <= max_res:
        return width, height
    s = max_res / long_side
    return max(2, 2 * math.floor(width * s / 2 + 1e-9)), max(2, 2 * math.floor(height * s / 2 + 1e-9))


@dataclass(frozen=True)
class VideoInfo:
    """What the frames of a :class:`VideoFrames` / :class:`FolderFrames` will be."""

    path: Path
    fps: Fraction  # of the frames yielded (after ``fps=`` resampling)
    width: int  # of the frames yielded (after ``max_res=``)
    height: int
    frames: int | None  # how many will be yielded, when the header says (None: unknown)
    source_fps: Fraction
    source_size: tuple[int, int]  # (width, height) as stored


class _Frames:
    """The shared part of a video and a folder of frames: resampling to ``fps``, ``max_frames`` and the
    downscale to ``max_res``, on top of ``_source()`` (each stored frame's time and RGB).
    Iterable more than once (each pass decodes again, giving the same frames)."""

    info: VideoInfo

    def __init__(self, fps: float | None, max_frames: int | None, max_res: int | None):
        if fps is not None and not fps > 0:
            raise InputError(f"fps must be > 0, got {fps}")
        if max_frames is not None and max_frames < 1:
            raise InputError(f"max_frames must be >= 1, got {max_frames}")
        if max_res is not None and max_res < 2:
            raise InputError(f"max_res must be >= 2 pixels, got {max_res}")
        self.max_frames = max_frames
        self.max_res = max_res

    def _source(self) -> Iterator[tuple[float | None, np.ndarray]]:
        """(time in seconds or None, RGB uint8) of every stored frame."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[np.ndarray]:
        info = self.info
        size = (info.width, info.height)
        resample = info.fps != info.source_fps
        n, next_tick, t0 = 0, 0, None
        source = self._source()
        try:
            for i, (t, rgb) in enumerate(source):
                if resample:  # keep the first frame at or after each tick of the output rate
                    t = i / info.source_fps if t is None else t
                    t0 = t if t0 is None else t0
                    tick = math.floor((t - t0) * info.fps + 1e-6)
                    if tick < next_tick:
                        continue
                    next_tick = tick + 1
                if self.max_frames is not None and n >= self.max_frames:
                    break
                if (rgb.shape[1], rgb.shape[0]) != size:
                    rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
                yield rgb
                n += 1
        finally:
            source.close()


class VideoFrames(_Frames):
    """The RGB ``uint8`` (H, W, 3) frames of a video file, in order, decoded one at a time.

    ``fps``: resample to this rate (keeps the first frame at or after each tick; a rate at or above the
    source's keeps every frame); ``max_frames``: stop after this many; ``max_res``: downscale so the long
    side is at most this (area interpolation). ``info`` has the resulting rate and size.

    A file that is not a video, has no video stream, has a packet that cannot be decoded, a frame the
    decoder flags as corrupt, or ends before the frame count in its header is an
    :class:`~ppd_lightning.errors.InputError` naming the file and the frame index (0-based, in the file).
    """

    def __init__(
        self, path, fps: float | None = None, max_frames: int | None = None, max_res: int | None = None
    ):
        super().__init__(fps, max_frames, max_res)
        self.path = Path(path)
        if not self.path.is_file():
            raise MissingFileError(f"{self.path}: no such video file")
        with self._open() as container:
            stream = container.streams.video[0]
            source_fps = stream.average_rate or stream.guessed_rate or stream.base_rate
            if not source_fps:
                raise InputError(f"{self.path}: the video stream has no frame rate")
            self._header_frames = int(stream.frames or 0)
            self._duration = (
                float(stream.duration * stream.time_base) if stream.duration and stream.time_base else None
            )
            w, h = stream.codec_context.width, stream.codec_context.height
        if not (w and h):
            raise InputError(f"{self.path}: the video stream has no frame size")
        out_fps = source_fps if fps is None else min(Fraction(fps).limit_denominator(1001 * 1000), source_fps)
        n = self._header_frames or None
        if n is not None and out_fps != source_fps:
            n = math.ceil(n * out_fps / source_fps)
        if n is not None and max_frames is not None:
            n = min(n, max_frames)
        self.info = VideoInfo(
            self.path, out_fps, *scaled_size(w, h, max_res), n, Fraction(source_fps), (w, h)
        )

    def _open(self):
        try:
            container = av.open(str(self.path), mode="r")
        except av.FFmpegError as e:
            raise InputError(f"{self.path}: not a readable video ({_reason(e)})") from None
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            container.close()
            raise InputError(f"{self.path}: no video stream (streams: {', '.join(kinds)})")
        return container

    def _source(self) -> Iterator[tuple[float | None, np.ndarray]]:
        index = 0
        first_time = last_time = None
        with self._open() as container:
            stream = container.streams.video[0]
            # no frame threading: it reports a bad packet a few packets late, so the frame named would be wrong
            start, fps = stream.start_time or 0, self.info.source_fps
            packets = container.demux(stream)
            while True:
                try:
                    packet = next(packets)
                except StopIteration:
                    break
                except av.FFmpegError as e:
                    raise InputError(f"{self.path}: frame {index} cannot be read ({_reason(e)})") from None
                try:
                    frames = packet.decode()
                except av.FFmpegError as e:  # the packet's own frame (decode order differs with B-frames)
                    at = (
                        index
                        if packet.pts is None
                        else round(float((packet.pts - start) * stream.time_base * fps))
                    )
                    raise InputError(f"{self.path}: frame {at} cannot be decoded ({_reason(e)})") from None
                for frame in frames:
                    if frame.is_corrupt:
                        raise InputError(f"{self.path}: frame {index} is corrupt (the decoder flagged it)")
                    last_time = frame.time
                    first_time = last_time if first_time is None else first_time
                    yield frame.time, frame.to_ndarray(format="rgb24")
                    index += 1
        if self._ended_early(index, first_time, last_time):
            raise InputError(
                f"{self.path}: the video ends early, at frame {index}; its header says {self._header_frames} "
                "frames (a truncated file?)"
            )

    def _ended_early(self, count: int, first_time: float | None, last_time: float | None) -> bool:
        """Fewer frames than the header counts and, when the timestamps tell, the last one more than a
        frame short of the stream's end (an edit list that hides a few frames is not an early end)."""
        if not self._header_frames or count >= self._header_frames:
            return False
        if first_time is None or last_time is None or self._duration is None:
            return True
        frame_time = 1 / float(self.info.source_fps)
        return (first_time + self._duration) - (last_time + frame_time) > 1.5 * frame_time


def _reason(e: Exception) -> str:
    return getattr(e, "strerror", None) or str(e)


def _natural_key(path: Path) -> list:
    return [int(p) if p.isdigit() else p.lower() for p in re.split(r"(\d+)", path.name)]


class FolderFrames(_Frames):
    """The image files of a folder (``FRAME_SUFFIXES``, natural order: ``2.png`` before ``10.png``) as the
    frames of a video at ``fps`` (default 30; a folder has no rate of its own, so nothing is dropped),
    with ``max_frames`` and ``max_res`` as :class:`VideoFrames`. Every frame must have the first one's
    size; an unreadable or differently sized file is an InputError naming it and its index."""

    def __init__(
        self, path, fps: float | None = None, max_frames: int | None = None, max_res: int | None = None
    ):
        super().__init__(fps, max_frames, max_res)
        self.path = Path(path)
        if not self.path.is_dir():
            raise MissingFileError(f"{self.path}: no such folder of frames")
        self.files = sorted(
            (p for p in self.path.iterdir() if p.is_file() and p.suffix.lower() in FRAME_SUFFIXES),
            key=_natural_key,
        )
        if not self.files:
            raise InputError(
                f"{self.path}: no frames (expected image files with suffix {sorted(FRAME_SUFFIXES)})"
            )
        h, w = self._read(0, self.files[0]).shape[:2]
        rate = DEFAULT_FOLDER_FPS if fps is None else Fraction(fps).limit_denominator(1001 * 1000)
        n = len(self.files) if max_frames is None else min(len(self.files), max_frames)
        self.info = VideoInfo(self.path, rate, *scaled_size(w, h, max_res), n, rate, (w, h))

    def _read(self, index: int, path: Path) -> np.ndarray:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise InputError(f"{path}: frame {index} of {self.path} is not a readable image")
        return np.ascontiguousarray(bgr[..., ::-1])

    def _source(self) -> Iterator[tuple[float | None, np.ndarray]]:
        size = self.info.source_size
        for i, path in enumerate(self.files):
            rgb = self._read(i, path)
            if (rgb.shape[1], rgb.shape[0]) != size:
                raise InputError(
                    f"{path}: frame {i} of {self.path} is {rgb.shape[1]}x{rgb.shape[0]}, the first frame "
                    f"{size[0]}x{size[1]} (every frame must have the same size)"
                )
            yield None, rgb


def open_frames(
    path,
    *,
    folder: bool = False,
    fps: float | None = None,
    max_frames: int | None = None,
    max_res: int | None = None,
) -> VideoFrames | FolderFrames:
    """The frames of a video file, or of a folder of images with ``folder=True``."""
    cls = FolderFrames if folder else VideoFrames
    return cls(path, fps=fps, max_frames=max_frames, max_res=max_res)


# ----------------------------------------------------------------------------------------------------------------
# Writing


def video_codec() -> str:
    """The encoder for the videos we write: H.264 (libx264) when this PyAV has it, else MPEG-4 part 2."""
    for name in ("libx264", "mpeg4"):
        if name in av.codecs_available:
            try:
                av.codec.Codec(name, "w")
            except Exception:  # noqa: BLE001 - listed but not usable for encoding
                continue
            return name
    raise RuntimeError("this PyAV build has neither a libx264 nor an mpeg4 encoder")


_CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}


class _Encoder:
    """Frames into one video stream; the first frame fixes the size (odd sizes are padded by repeating the
    last row/column: yuv420p needs even ones)."""

    def __init__(self, container, path: Path, fps: Fraction, codec: str, crf: int | None):
        self.container, self.path, self.fps, self.codec, self.crf = container, path, fps, codec, crf
        self.stream = None
        self.frames = 0

    def write(self, rgb: np.ndarray) -> None:
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"{self.path}: a frame must be (H, W, 3) uint8, got {rgb.dtype} {rgb.shape}")
        h, w = rgb.shape[:2]
        if self.stream is None:
            self.stream = self.container.add_stream(self.codec, rate=self.fps)
            self.stream.width, self.stream.height = w + w % 2, h + h % 2
            self.stream.pix_fmt = "yuv420p"
            if self.codec == "libx264" and self.crf is not None:
                self.stream.options = {"crf": str(self.crf)}
            elif self.codec == "mpeg4":
                self.stream.bit_rate = max(1_000_000, 4 * w * h)
            self.size = (w, h)
        elif (w, h) != self.size:
            raise ValueError(
                f"{self.path}: frame {self.frames} is {w}x{h}, the first {self.size[0]}x{self.size[1]}"
            )
        if w % 2 or h % 2:
            rgb = np.pad(rgb, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        self.container.mux(self.stream.encode(frame))
        self.frames += 1

    def finish(self) -> None:
        if self.stream is None:
            raise ValueError(f"{self.path}: no frames to write")
        self.container.mux(self.stream.encode(None))


@contextlib.contextmanager
def writing_video(path, fps, codec: str | None = None, crf: int | None = 18) -> Iterator[_Encoder]:
    """``with writing_video("x_depth.mp4", fps) as video: video.write(rgb) ...``: an H.264 (or MPEG-4)
    video at ``fps`` (a ``Fraction`` keeps 30000/1001 exact), written under a temporary name and renamed
    to ``path`` when the block ends without an exception (else deleted)."""
    path = Path(path)
    fmt = _CONTAINERS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: unsupported video suffix (choose from {sorted(_CONTAINERS)})")
    with atomic.replacing(path) as f:
        container = av.open(f, mode="w", format=fmt)
        try:
            encoder = _Encoder(container, path, Fraction(fps), codec or video_codec(), crf)
            yield encoder
            encoder.finish()
        except BaseException:
            with contextlib.suppress(Exception):  # the temporary is deleted anyway; keep the first error
                container.close()
            raise
        container.close()


@contextlib.contextmanager
def replacing_dir(path) -> Iterator[Path]:
    """A temporary folder beside ``path`` to fill; on a clean exit it replaces ``path`` (a previous folder
    there is removed only after the new one is in place), on an exception it is deleted."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.old")
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None and old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    elif old is not None:
        old.unlink()


class DepthStore:
    """The (H, W) float32 depths of a video, appended to an anonymous temporary file (gone when closed, or
    when the process dies) and read back one at a time: the whole video's depths without holding them in
    memory. Tracks the minimum and maximum of the finite values (the video's colour range)."""

    def __init__(self, directory=None):
        self._file = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115 - closed by close() / the with block
        self.shape: tuple[int, int] | None = None
        self.count = 0
        self.vmin, self.vmax = math.inf, -math.inf

    def append(self, depth: np.ndarray) -> None:
        depth = np.ascontiguousarray(depth, dtype=np.float32)
        if self.shape is None:
            self.shape = depth.shape
        elif depth.shape != self.shape:
            raise ValueError(f"depth frame {self.count} has shape {depth.shape}, the first {self.shape}")
        finite = depth[np.isfinite(depth)]
        if finite.size:
            self.vmin, self.vmax = min(self.vmin, float(finite.min())), max(self.vmax, float(finite.max()))
        self._file.seek(0, os.SEEK_END)
        self._file.write(depth.tobytes())
        self.count += 1

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[np.ndarray]:
        size = int(np.prod(self.shape)) * 4 if self.shape else 0
        for i in range(self.count):
            self._file.seek(i * size)
            yield np.frombuffer(self._file.read(size), np.float32).reshape(self.shape)

    def range(self) -> tuple[float, float]:
        """(min, max) of the finite depths; (0, 1) if there are none."""
        return (self.vmin, self.vmax) if self.vmin <= self.vmax else (0.0, 1.0)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> DepthStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_npz(path, store: DepthStore, dtype=np.float32, key: str = "depths", **extra) -> Path:
    """An ``.npz`` (as ``np.savez``: ``np.load(path)[key]`` is (T, H, W) in ``dtype``), streamed from
    ``store`` frame by frame; ``extra`` small arrays (e.g. ``fps=``) go beside it. Atomic."""
    if not len(store):
        raise ValueError(f"{path}: no depth frames to write")
    dtype = np.dtype(dtype)
    header = {
        "descr": np.lib.format.dtype_to_descr(dtype),
        "fortran_order": False,
        "shape": (len(store), *store.shape),
    }
    with atomic.replacing(path) as f, zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_STORED) as zf:
        with zf.open(f"{key}.npy", mode="w", force_zip64=True) as member:
            np.lib.format.write_array_header_2_0(member, header)
            for depth in store:
                member.write(depth.astype(dtype, copy=False).tobytes())
        for name, value in extra.items():
            with zf.open(f"{name}.npy", mode="w") as member:
                np.lib.format.write_array(member, np.asarray(value), allow_pickle=False)
    return Path(path)


def write_png16(folder, store: DepthStore, vmin: float, vmax: float) -> Path:
    """Each depth as a 16-bit grey PNG ``000000.png`` ... in ``folder``: 0 = ``vmin``, 65535 = ``vmax`` (the
    video's range, one for every frame) and ``range.json`` saying so, so the depths come back as
    ``vmin + png / 65535 * (vmax - vmin)`` (non-finite depths are written as 0). Atomic (the folder
    appears complete or not at all)."""
    scale = vmax - vmin if vmax > vmin else 1.0
    with replacing_dir(folder) as tmp:
        for i, depth in enumerate(store):
            q = np.round(np.clip(np.nan_to_num((depth - vmin) / scale, nan=0.0), 0.0, 1.0) * 65535).astype(
                np.uint16
            )
            ok, buf = cv2.imencode(".png", q)
            if not ok:
                raise OSError(f"{folder}: could not encode frame {i} as PNG")
            (tmp / f"{i:06d}.png").write_bytes(buf.tobytes())
        info = {"frames": len(store), "min": vmin, "max": vmax, "depth": "min + png / 65535 * (max - min)"}
        (tmp / "range.json").write_text(json.dumps(info, indent=2) + "\n")
    return Path(folder)

"""Depth for a video of any length, in bounded memory: ``predict_video``.

Pass 1 decodes the frames one at a time and feeds them to the video model's streaming
``iter_video``, which infers window by window (16 frames, stride 13 for PPVD) and yields each frame's
stitched depth as soon as it is final. Each depth goes to a :class:`~ppd_lightning.video.io.DepthStore`
(an anonymous temporary file) and, every ``ply_every`` frames, into a metric point cloud. Pass 2 knows
the whole video's depth range (one colour range, as the release) and reads the depths back one by one,
decoding the video a second time for the side-by-side: neither pass holds more than a window of
frames, so peak memory does not grow with the video's length.

Outputs, for ``clip.mp4`` in ``out/`` (each written under a temporary name and renamed when complete):

- ``clip_depths.npz``: ``depths`` (T, H, W) float32 (or float16) relative depth, as the model gives it,
  and ``fps``;
- ``clip_depth.mp4``: the depth, colour-mapped (``inferno``, or grey) with one min/max for the video
  (the smallest depth at the map's dark end);
- ``clip_side_by_side.mp4``: the frame and its colourised depth side by side;
- with ``png16``: ``clip_depth_png16/000000.png ...``, 16-bit grey over the same range, ``range.json``;
- with a geometry model and ``ply_every``: ``clip_points/000000.ply ...``, metric point clouds of every
  N-th frame (:mod:`ppd_lightning.pointcloud`, MoGe-2's metric depth and intrinsics of that frame; the
  image path's axes: OpenGL, x right, y up, z towards the viewer, said in the file's header).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ppd_lightning import pointcloud, visualize
from ppd_lightning.errors import (
    DiskFullError,
    DivergenceError,
    InputError,
    MissingFileError,
    is_user_error,
    one_line,
)
from ppd_lightning.video.io import (
    VIDEO_SUFFIXES,
    DepthStore,
    VideoInfo,
    is_video,
    open_frames,
    replacing_dir,
    write_npz,
    write_png16,
    writing_video,
)

__all__ = [
    "VideoOptions",
    "add_video_arguments",
    "load_video_model",
    "output_paths",
    "predict_video",
    "predict_videos",
    "video_options",
    "wants_video",
]


@dataclass(frozen=True)
class VideoOptions:
    """How ``predict_video`` reads a video and what it writes (the ``predict`` flags of the same names)."""

    frames: bool = False  # the input is a folder of frames, not a video file
    fps: float | None = None  # resample to this rate (a folder: its rate, default 30)
    max_frames: int | None = None
    max_res: int | None = None  # downscale so the long side is at most this
    steps: int = 4  # Euler steps per window
    seed: int = 0  # the initial latent (one for every window)
    grayscale: bool = False  # grey depth video instead of the colour map
    cmap: str = "inferno"  # the release's colour map
    float16: bool = False  # depths in the .npz as float16
    png16: bool = False  # also 16-bit PNG frames
    side_by_side: bool = True
    ply_every: int = 0  # with a geometry model: a point cloud every N-th frame (0: none)
    ply_axes: str = "opengl"  # as the image path's .ply: x right, y up, z towards the viewer
    progress: bool = True

    def __post_init__(self):
        if self.steps < 1:
            raise InputError(f"steps must be >= 1, got {self.steps}")
        if self.ply_every < 0:
            raise InputError(f"ply_every must be >= 0, got {self.ply_every}")


def output_paths(stem: Path, options: VideoOptions) -> dict[str, Path]:
    """The files ``predict_video`` writes for the output base ``stem`` (``out/clip``)."""
    paths = {"npz": Path(f"{stem}_depths.npz"), "depth": Path(f"{stem}_depth.mp4")}
    if options.side_by_side:
        paths["side_by_side"] = Path(f"{stem}_side_by_side.mp4")
    if options.png16:
        paths["png16"] = Path(f"{stem}_depth_png16")
    if options.ply_every:
        paths["points"] = Path(f"{stem}_points")
    return paths


def initial_noise(model, seed: int) -> torch.Tensor | None:
    """The one initial latent of every window (``model.latent_shape``), drawn on the CPU from ``seed`` so
    that a seed gives the same depths on any device (None when the model has no ``latent_shape``: it then
    draws its own)."""
    shape = getattr(model, "latent_shape", None)
    if shape is None:
        return None
    return torch.randn(tuple(shape), generator=torch.Generator().manual_seed(seed))


def _paired(frames, model, options: VideoOptions, noise) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(frame, its depth) in order. The frames the model has taken but not yet given a depth for wait in
    a queue: at most a window and a stride of them."""
    waiting: deque[np.ndarray] = deque()

    def feed():
        for rgb in frames:
            waiting.append(rgb)
            yield rgb

    with torch.no_grad():  # the precision is the model's (PixelPerfectVideoDepth(dtype=torch.bfloat16))
        for depth in model.iter_video(feed(), steps=options.steps, noise=noise):
            if not waiting:
                raise RuntimeError("the video model gave more depths than it was given frames")
            yield waiting.popleft(), depth
    if waiting:
        raise RuntimeError(f"the video model gave no depth for the last {len(waiting)} frame(s)")


def _colorize(depth: np.ndarray, vmin: float, vmax: float, options: VideoOptions) -> np.ndarray:
    return visualize.colorize(depth, vmin=vmin, vmax=vmax, cmap="gray" if options.grayscale else options.cmap)


def _device(module) -> torch.device:
    params = module.parameters() if isinstance(module, torch.nn.Module) else iter(())
    first = next(params, None)
    return torch.device("cpu") if first is None else first.device


def _write_point_cloud(path: Path, rgb: np.ndarray, depth: np.ndarray, geometry, axes: str) -> None:
    """A metric point cloud of one frame, as the image path makes it: MoGe-2's metric depth, mask and
    intrinsics of the frame, our relative depth aligned to them (:func:`pointcloud.metric_point_cloud`)."""
    image = torch.from_numpy(rgb).permute(2, 0, 1).float().div(255).to(_device(geometry))
    moge = pointcloud.moge_geometry(geometry, image)
    cloud = pointcloud.metric_point_cloud(depth, moge["depth"], moge["mask"], moge["intrinsics"], rgb)
    pointcloud.write_point_cloud_ply(path, cloud["points"], cloud["colors"], axes=axes, metric=True)


def predict_video(
    path, model, out_dir, options: VideoOptions | None = None, *, geometry=None, name: str | None = None
) -> list[Path]:
    """Depth of the video (or, with ``options.frames``, the folder of frames) at ``path`` into ``out_dir``
    as ``<name>_depths.npz``, ``<name>_depth.mp4``, ... (see the module); returns the paths written.

    ``model``: anything with ``iter_video(frames, steps=, noise=)`` yielding each frame's (H, W) depth in
    order (:class:`~ppd_lightning.video.PixelPerfectVideoDepth`). ``geometry``: with ``ply_every``, the
    MoGe-2 model (:class:`~ppd_lightning.models.moge.MoGe2`, its ``infer``). ``name``: the output base
    (default: the file's stem, or the folder's name).
    """
    options = options or VideoOptions()
    if options.ply_every and geometry is None:
        raise InputError("point clouds (ply_every) need a geometry model (MoGe-2: --geometry moge2.pt)")
    path = Path(path)
    frames = open_frames(
        path, folder=options.frames, fps=options.fps, max_frames=options.max_frames, max_res=options.max_res
    )
    info: VideoInfo = frames.info
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / (name or (path.name if options.frames else path.stem))
    paths = output_paths(stem, options)
    noise = initial_noise(model, options.seed)

    def bar(desc: str):
        return tqdm(total=info.frames, desc=f"{desc} {path.name}", unit="frame", disable=not options.progress)

    with DepthStore(out_dir) as store, contextlib.ExitStack() as outputs:
        points = outputs.enter_context(replacing_dir(paths["points"])) if options.ply_every else None
        with bar("depth") as progress:
            for i, (rgb, depth) in enumerate(_paired(frames, model, options, noise)):
                depth = np.asarray(depth, dtype=np.float32)
                if depth.shape != rgb.shape[:2]:
                    raise RuntimeError(f"frame {i}: depth {depth.shape} for a frame of {rgb.shape[:2]}")
                if not np.isfinite(depth).all():
                    raise DivergenceError(
                        f"{path}: the model predicted non-finite depth for frame {i} "
                        f"({int((~np.isfinite(depth)).sum())} pixels)"
                    )
                store.append(depth)
                if points is not None and i % options.ply_every == 0:
                    _write_point_cloud(points / f"{i:06d}.ply", rgb, depth, geometry, options.ply_axes)
                progress.update()
        if not len(store):
            raise InputError(f"{path}: no frames to predict")

        vmin, vmax = store.range()
        write_npz(paths["npz"], store, np.float16 if options.float16 else np.float32, fps=float(info.fps))
        with contextlib.ExitStack() as videos, bar("writing") as progress:
            depth_video = videos.enter_context(writing_video(paths["depth"], info.fps))
            side = (
                videos.enter_context(writing_video(paths["side_by_side"], info.fps))
                if options.side_by_side
                else None
            )
            source = iter(frames) if side is not None else None  # decoded again: nothing was kept
            for depth in store:
                colour = _colorize(depth, vmin, vmax, options)
                depth_video.write(colour)
                if side is not None:
                    rgb = next(source, None)
                    if rgb is None:
                        raise InputError(f"{path}: fewer frames on the second reading (did it change?)")
                    side.write(visualize.side_by_side([rgb, colour], ["image", "depth"]))
                progress.update()
            if source is not None:
                source.close()
        if options.png16:
            write_png16(paths["png16"], store, vmin, vmax)
    return list(paths.values())


# --- the predict command for videos ------------------------------------------------------------------


def _add(group, *names, **kw) -> None:
    with contextlib.suppress(argparse.ArgumentError):  # the image path has it too (--geometry): one flag
        group.add_argument(*names, **kw)


def add_video_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``predict`` flags for videos (inputs with a video suffix, or folders of frames with ``--frames``);
    ``--steps``, ``--seed``, ``--device``, ``--dit`` and ``--semantics`` are the image path's."""
    g = parser.add_argument_group(
        "videos (inputs with a video suffix such as .mp4, or folders with --frames)"
    )
    _add(g, "--frames", action="store_true", help="each input is a folder of frames (one video each)")
    _add(
        g, "--fps", type=float, help="resample videos to this rate (a folder of frames: its rate, default 30)"
    )
    _add(g, "--max-frames", type=int, help="only the first N frames (after --fps)")
    _add(g, "--max-res", type=int, help="downscale frames so the long side is at most this many pixels")
    _add(g, "--grayscale", action="store_true", help="a grey depth video instead of the inferno colour map")
    _add(g, "--float16", action="store_true", help="the depths in the .npz as float16 (half the size)")
    _add(g, "--png16", action="store_true", help="also the depths as 16-bit PNG frames (<name>_depth_png16/)")
    _add(g, "--no-side-by-side", action="store_true", help="skip <name>_side_by_side.mp4")
    _add(g, "--geometry", help="MoGe-2's moge2.pt: metric point clouds (videos: with --ply-every)")
    _add(
        g,
        "--ply-every",
        type=int,
        default=0,
        metavar="N",
        help="a metric .ply of every N-th frame of a video",
    )


def wants_video(args) -> bool:
    """The inputs are videos (a video suffix) or, with ``--frames``, folders of frames."""
    return bool(getattr(args, "frames", False)) or any(is_video(p) for p in args.images)


def video_options(args) -> VideoOptions:
    """``VideoOptions`` from the parsed ``predict`` flags."""
    if (args.ply_every or getattr(args, "ply", False)) and not args.geometry:
        raise InputError(
            "video point clouds need --geometry moge2.pt (MoGe-2 makes them metric) and --ply-every N"
        )
    if args.geometry and not args.ply_every:
        raise InputError("videos: --geometry needs --ply-every N (a metric .ply of every N-th frame)")
    if args.max_frames is not None and args.max_frames < 1:
        raise InputError(f"--max-frames must be >= 1, got {args.max_frames}")
    return VideoOptions(
        frames=args.frames,
        fps=args.fps,
        max_frames=args.max_frames,
        max_res=args.max_res,
        steps=args.steps,
        seed=args.seed,
        grayscale=args.grayscale,
        float16=args.float16,
        png16=args.png16,
        side_by_side=not args.no_side_by_side,
        ply_every=args.ply_every,
        ply_axes=getattr(args, "ply_axes", "opengl"),
    )


def load_video_model(dit, semantics, device: torch.device | str = "cpu"):
    """``ppvd.pth`` + Pi3's ``model.safetensors`` -> PixelPerfectVideoDepth on ``device`` (bfloat16 autocast
    on CUDA, as the release)."""
    from ppd_lightning.video import PixelPerfectVideoDepth

    device = torch.device(device)
    dtype = torch.bfloat16 if device.type == "cuda" else None
    return PixelPerfectVideoDepth.from_released(dit, semantics, dtype=dtype).to(device).eval()


def load_geometry(path, device: torch.device | str = "cpu"):
    """MoGe-2's ``moge2.pt`` (None: no point clouds)."""
    if not path:
        return None
    from ppd_lightning.weights.moge2 import load_moge2

    return load_moge2(path).to(device).eval()


def _video_inputs(args) -> list[Path]:
    inputs = [Path(p) for p in args.images]
    for p in inputs:
        if not p.exists():
            raise MissingFileError(f"{p}: no such {'folder of frames' if args.frames else 'video file'}")
        if args.frames and not p.is_dir():
            raise InputError(f"{p}: --frames takes folders of frames, one video each")
        if not args.frames and not is_video(p):
            raise InputError(
                f"{p}: not a video (suffixes {sorted(VIDEO_SUFFIXES)}); images and videos need different "
                "models: give them in separate commands"
            )
    return inputs


def predict_videos(args) -> int:
    """``python -m ppd_lightning.predict clip.mp4 --dit ppvd.pth --semantics pi3.safetensors --out out/``:
    every input video (or folder of frames) -> its outputs under ``--out`` (names as the image path's:
    relative to the folder the inputs share). A video that cannot be read is reported and skipped; the
    status is then 1 after the others are done."""
    from ppd_lightning.predict import output_names  # the image path's naming, one implementation

    inputs = _video_inputs(args)
    if getattr(args, "ckpt", None) or not (args.dit and args.semantics):
        raise InputError(
            "videos need PPVD: --model ppvd, or --dit ppvd.pth --semantics model.safetensors (Pi3)"
        )
    options = video_options(args)
    model = load_video_model(args.dit, args.semantics, args.device)
    geometry = load_geometry(args.geometry, args.device) if options.ply_every else None
    out = Path(args.out)
    written: list[Path] = []
    failed: list[tuple[Path, str]] = []
    for path, name in zip(inputs, output_names(inputs)):
        try:
            files = predict_video(path, model, out / name.parent, options, geometry=geometry, name=name.name)
        except DiskFullError:
            raise  # nothing more can be written
        except Exception as e:  # noqa: BLE001 - one bad video is reported, the others go on
            if not is_user_error(e):
                raise
            failed.append((path, one_line(e)))
            print(f"skipped {path}: {one_line(e)}", file=sys.stderr)
            continue
        written += files
        print(f"{path} -> {', '.join(str(f) for f in files)}")
    print(f"wrote {len(inputs) - len(failed)} of {len(inputs)} video(s) ({len(written)} outputs) to {out}")
    if failed:
        print(f"error: {len(failed)} video(s) failed:", file=sys.stderr)
        for path, why in failed:
            print(f"  {path}: {why}", file=sys.stderr)
        return 1
    return 0

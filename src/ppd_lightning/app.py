"""The web app: depth maps, point clouds and video depth in the browser (Gradio).

    python -m ppd_lightning.app --model ppd                 # the released model, downloaded on first use
    python -m ppd_lightning.app --model ppd-moge2           # MoGe-2 semantics, metric point clouds
    python -m ppd_lightning.app --dit ppd.pth --semantics depth_anything_v2_vitl.pth --geometry moge2.pt
    python -m ppd_lightning.app --ckpt outputs/train/<run>/checkpoints/last.ckpt
    python -m ppd_lightning.app --model ppd --video-model ppvd   # adds the video tab

It serves on http://127.0.0.1:7860 (``--host``/``--port``). The model is loaded once and shared by every
request; requests run one at a time (one accelerator). A request that fails (a file that is not an image,
an image or upload that is too large, the model running out of memory) shows one message and the app keeps
serving.

Image tab: depth as an image slider (image | colourised depth) and as a colourised map, a 3D view of the
point cloud (``.glb``), and the downloads: ``<name>_depth16.png`` (16-bit, the relative depth min-max
normalised to 0..65535, 0 = nearest), ``<name>_depth.npy`` (float32, the model's relative depth exactly as
``predict`` writes it), ``<name>.ply`` and ``<name>.glb`` (the point cloud). The depth is computed by the
same call as ``python -m ppd_lightning.predict`` with the same steps, seed and working area, so the
``.npy`` and ``.ply`` equal predict's files (with the outlier filter off: predict filters only metric
clouds). The point cloud is metric with MoGe-2 geometry (``--geometry``, or ``--model ppd-moge2``: MoGe-2 on
PPD's resized image, as ``predict --ply --geometry`` and the release; then also ``<name>_metric_depth.npy``
and ``<name>_camera.json``); otherwise its scale is the assumed 0.5-20 m range and 60 degree field of view
of ``predict --ply``, and the page says it is not metric. The 3D view shows at most a million points.

Video tab (with ``--video-model``): an mp4 in, the depth video, the side-by-side video and the depths
(``.npz``) out, frame count and time; :func:`ppd_lightning.video.run.predict_video` window by window in
bounded memory, its progress bars shown on the page.

Everything here is a thin layer over :mod:`ppd_lightning.predict`; this module adds the page, the files a
browser downloads, and the error messages.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
import shutil
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from ppd_lightning import atomic, pointcloud, visualize
from ppd_lightning.errors import InputError, exit_on_user_error, is_user_error, one_line
from ppd_lightning.models.ppd import PixelPerfectDepth
from ppd_lightning.pointcloud import ASSUMED_FOV, ASSUMED_RANGE
from ppd_lightning.video.io import VIDEO_SUFFIXES, is_video
from ppd_lightning.video.run import VideoOptions, output_paths, predict_video
from ppd_lightning.visualize import IMAGE_SUFFIXES
from ppd_lightning.weights.hub import RELEASED, WEIGHTS_DIR_ENV, resolve_model_files
from ppd_lightning.weights.moge2 import load_moge2, load_released_with_geometry

__all__ = [
    "DepthApp",
    "ImageResult",
    "build_parser",
    "depth16",
    "load_image_model",
    "main",
    "relative_depth",
    "view_glb",
]

log = logging.getLogger("ppd_lightning.app")

DEFAULT_MAX_PIXELS = 50_000_000  # an image larger than this is refused (a 48 MP phone photo passes)
DEFAULT_MAX_UPLOAD = "200mb"
DEFAULT_MAX_FRAMES = 2000  # a video's frames beyond this are not used (--max-frames)
DEFAULT_VIEW_POINTS = 1_000_000  # the 3D view's .glb is subsampled to at most this many points
KEEP_REQUESTS = 16  # the result folders of this many recent requests are kept (for the downloads)


# --- the computation: the same calls as predict ------------------------------------------------------------


def relative_depth(
    model, rgb: np.ndarray, steps: int, seed: int, area: int | None, device: torch.device
) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) float32 relative depth, exactly as ``predict`` computes it (same
    noise for the same seed; bf16 autocast on CUDA)."""
    image = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float().div(255).to(device)
    generator = torch.Generator(device=device).manual_seed(int(seed))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    with torch.no_grad(), autocast:
        rel = model.infer(image, steps=steps, generator=generator, area=area)
    rel = rel[0, 0].float().cpu().numpy()
    bad = int((~np.isfinite(rel)).sum())
    if bad:
        raise InputError(f"the model predicted non-finite depth at {bad} pixels")
    return rel


def colourised(rel: np.ndarray) -> np.ndarray:
    """The colourised depth map, as predict's ``_depth.png``."""
    return visualize.colorize_depth(rel - rel.min() + 1e-3)


def depth16(rel: np.ndarray) -> np.ndarray:
    """Relative depth -> uint16, min-max normalised to 0..65535 (0 = nearest); a flat map is all 0."""
    lo, hi = float(rel.min()), float(rel.max())
    scale = 65535.0 / (hi - lo) if hi > lo else 0.0
    return np.round((rel.astype(np.float64) - lo) * scale).astype(np.uint16)


def view_glb(ply: Path, path: Path, max_points: int) -> Path:
    """The 3D view's ``.glb``: the ``.ply``'s cloud (the release's OpenGL axes, glTF's own) evenly
    subsampled, in order, to ``max_points`` (a browser draws a megapixel cloud slowly)."""
    points, colors = visualize.read_ply(ply)
    keep = np.linspace(0, len(points) - 1, max_points).round().astype(np.int64)
    return pointcloud.write_glb(path, points[keep], colors[keep], axes="opencv")  # already in OpenGL axes


# --- one request ------------------------------------------------------------------------------------------


@dataclass
class ImageResult:
    """What one image request produced: the arrays shown and the files offered for download."""

    rgb: np.ndarray
    depth: np.ndarray  # (H, W) float32 relative depth
    colour: np.ndarray  # (H, W, 3) uint8
    files: dict[str, Path]  # depth16, npy, ply, glb
    metric: bool
    info: str
    seconds: float = 0.0
    points: int = 0
    view_points: int = 0
    working_size: tuple[int, int] = (0, 0)


@dataclass
class _Requests:
    """A new result folder per request; the oldest beyond ``KEEP_REQUESTS`` are removed."""

    root: Path
    counter: int = 0
    dirs: list[Path] = field(default_factory=list)

    def new(self) -> Path:
        self.counter += 1
        folder = self.root / f"{self.counter:06d}"
        folder.mkdir(parents=True)
        self.dirs.append(folder)
        while len(self.dirs) > KEEP_REQUESTS:
            shutil.rmtree(self.dirs.pop(0), ignore_errors=True)
        return folder


def _safe_stem(name: str | None) -> str:
    stem = Path(name or "image").stem
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "image"
    return stem[:64]


def _upload(value) -> tuple[Path, str]:
    """A file input's value (a path, or Gradio's file payload) -> (path on the server, name as uploaded)."""
    if value is None:
        raise InputError("no file: upload one first (or pick an example)")
    if isinstance(value, (str, Path)):
        return Path(value), Path(value).name
    path = value.get("path") if isinstance(value, dict) else getattr(value, "path", None)
    name = value.get("orig_name") if isinstance(value, dict) else getattr(value, "orig_name", None)
    if not path:
        raise InputError("the upload did not arrive: upload the file again")
    return Path(path), name or Path(path).name


def read_image(path: Path, name: str, max_pixels: int) -> np.ndarray:
    """An uploaded image as (H, W, 3) uint8 RGB, or one InputError naming it."""
    size = path.stat().st_size if path.is_file() else 0
    if size == 0:
        raise InputError(f"{name}: empty file (0 bytes): not an image")
    data = np.fromfile(path, dtype=np.uint8)
    rgb = cv2.imdecode(data, cv2.IMREAD_COLOR_RGB)
    if rgb is None:
        raise InputError(
            f"{name}: not a readable image ({size} bytes; truncated, or not one of "
            f"{', '.join(sorted(s.lstrip('.') for s in IMAGE_SUFFIXES))})"
        )
    h, w = rgb.shape[:2]
    if h * w > max_pixels:
        raise InputError(
            f"{name}: {w}x{h} is {h * w / 1e6:.1f} MP, more than this app's limit of {max_pixels / 1e6:.0f} MP "
            "(--max-pixels): downscale it first"
        )
    return rgb


def _message(e: BaseException, what: str) -> str:
    """The one line a failed request shows."""
    if is_user_error(e):
        return one_line(e)
    if isinstance(e, torch.OutOfMemoryError):
        return f"out of memory while {what}: lower the working area (or the number of steps) and run again"
    return (
        f"internal error while {what}: {type(e).__name__}: {one_line(e)} (the server log has the traceback)"
    )


@contextlib.contextmanager
def _step_progress(model, progress: Callable | None, steps: int, what: str) -> Iterator[None]:
    """Reports each Euler step (one DiT forward) to ``progress``."""
    if progress is None:
        yield
        return
    done = [0]

    def hook(*_):
        done[0] += 1
        progress((min(done[0], steps), steps), desc=f"{what}: Euler step {min(done[0], steps)}/{steps}")

    handle = model.dit.register_forward_hook(hook)
    try:
        progress((0, steps), desc=f"{what}: Euler step 0/{steps}")
        yield
    finally:
        handle.remove()


class DepthApp:
    """The models the app serves (each loaded once) and the work of one request, without the page: usable
    and testable without a browser.

    ``model``: the image model (:class:`~ppd_lightning.models.PixelPerfectDepth`, or None: no image tab);
    ``geometry``: MoGe-2 (:func:`ppd_lightning.weights.moge2.load_moge2`) for metric point clouds, None for
    the assumed ones; ``video``: a video model (``iter_video``: :class:`~ppd_lightning.video.
    PixelPerfectVideoDepth`) for the video tab, or None."""

    def __init__(
        self,
        model,
        device: torch.device | str = "cpu",
        *,
        geometry=None,
        video=None,
        steps: int = 4,
        area: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_frames: int | None = DEFAULT_MAX_FRAMES,
        view_points: int = DEFAULT_VIEW_POINTS,
        geometry_tokens: int | None = None,
        workdir: str | Path | None = None,
        description: str = "",
    ):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval() if model is not None else None
        self.geometry = geometry.to(self.device).eval() if geometry is not None else None
        self.video = video.to(self.device).eval() if isinstance(video, torch.nn.Module) else video
        self.steps = int(steps)
        self.area = int(area) if area else (self.model.area if self.model is not None else None)
        self.max_pixels, self.max_frames = int(max_pixels), max_frames
        self.view_points = int(view_points)
        self.geometry_tokens = geometry_tokens  # MoGe-2's num_tokens (None: its default)
        self.description = description
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="ppd-app-"))
        self._requests = _Requests(self.workdir / "requests")

    def close(self) -> None:
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    @staticmethod
    def _settings(steps, seed, area=None) -> tuple[int, int, int | None]:
        try:
            steps, seed = int(steps), int(seed)
            area = None if area is None else int(area)
        except (TypeError, ValueError) as e:
            raise InputError(f"steps, seed and working area must be whole numbers ({e})") from e
        if not 1 <= steps <= 1000:
            raise InputError(f"Euler steps must be 1..1000, got {steps}")
        if area is not None and area < 256:
            raise InputError(
                f"the working area is a pixel count (e.g. {1024 * 768} for 1024x768), got {area}"
            )
        return steps, seed, area

    # --- image -------------------------------------------------------------------------------------------

    def run_image(
        self,
        upload,
        steps: int | None = None,
        seed: int = 0,
        area: int | None = None,
        outlier_filter: bool = True,
        progress: Callable | None = None,
    ) -> ImageResult:
        """One image -> depth, colourised map, point cloud and the download files."""
        if self.model is None:
            raise InputError(
                "this app serves no image model (start it with --model ppd, or --dit/--semantics)"
            )
        steps, seed, area = self._settings(
            self.steps if steps is None else steps, seed, self.area if area is None else area
        )
        path, name = _upload(upload)
        rgb = read_image(path, name, self.max_pixels)
        h, w = rgb.shape[:2]
        working = self.model.working_size(h, w, area)
        start = time.perf_counter()
        with _step_progress(self.model, progress, steps, f"sampling at {working[1]}x{working[0]}"):
            rel = relative_depth(self.model, rgb, steps, seed, area, self.device)
        seconds = time.perf_counter() - start
        if progress is not None:
            progress(1.0, desc="point cloud and files")
        stem = _safe_stem(name)
        out = self._requests.new()
        colour = colourised(rel)
        files = {
            "depth16": atomic.write_bytes(out / f"{stem}_depth16.png", _png16(rel)),
            "npy": atomic.write_npy(out / f"{stem}_depth.npy", rel),
        }
        cloud, metric, cloud_note = self._point_cloud(rgb, rel, area, bool(outlier_filter), out / stem)
        files |= cloud
        points = _ply_points(files["ply"])
        view = min(points, self.view_points)
        files["view"] = (
            files["glb"] if view == points else view_glb(files["ply"], out / f"{stem}_view.glb", view)
        )
        dtype = "bf16" if self.device.type == "cuda" else "fp32"
        info = (
            f"**{name}**: {w}x{h}, sampled at {working[1]}x{working[0]} with {steps} Euler step(s), seed {seed}, "
            f"in {seconds:.2f} s on {self.device.type} ({dtype}). Point cloud: {points:,} points"
            + (f" (3D view: {view:,})" if view < points else "")
            + f", {cloud_note}."
        )
        return ImageResult(rgb, rel, colour, files, metric, info, seconds, points, view, working)

    def _point_cloud(
        self, rgb, rel, area, outlier_filter: bool, stem: Path
    ) -> tuple[dict[str, Path], bool, str]:
        """predict ``--ply``'s cloud files: metric with MoGe-2 (:func:`ppd_lightning.pointcloud.metric_cloud_files`:
        MoGe-2 on PPD's resized image, ``.ply``, ``.glb``, metric depth ``.npy``, camera ``.json``), else on
        the assumed range (``.ply``, ``.glb``); the statistical outlier filter on either when asked."""
        kept = "outliers filtered" if outlier_filter else "outliers kept"
        if self.geometry is not None:
            image = torch.from_numpy(rgb).permute(2, 0, 1)[None].float().div(255).to(self.device)
            written = pointcloud.metric_cloud_files(
                self.geometry, self.model, image, rgb, rel, stem, area=area, outlier_filter=outlier_filter,
                num_tokens=self.geometry_tokens,
            )  # fmt: skip
            files = dict(zip(("ply", "glb", "metric_npy", "camera"), written))
            return files, True, f"metric (aligned to MoGe-2's depth, with MoGe-2's intrinsics), {kept}"
        points, colors = pointcloud.assumed_point_cloud(rel, rgb)
        if outlier_filter:
            keep = pointcloud.statistical_outlier_mask(points)
            points, colors = points[keep], colors[keep]
        files = {
            "ply": pointcloud.write_point_cloud_ply(f"{stem}.ply", points, colors, metric=False),
            "glb": pointcloud.write_glb(f"{stem}.glb", points, colors),
        }
        note = (
            f"**assumed, not metric** ({ASSUMED_RANGE[0]:g}-{ASSUMED_RANGE[1]:g} m depth range, "
            f"{ASSUMED_FOV:g} degree field of view; start the app with --geometry moge2 for metric clouds), {kept}"
        )
        return files, False, note

    # --- video -------------------------------------------------------------------------------------------

    def run_video(self, upload, steps: int | None = None, seed: int = 0) -> VideoResult:
        """One video -> depth video, side-by-side video and the depths (``.npz``), window by window in bounded
        memory (:func:`ppd_lightning.video.run.predict_video`; its progress bars are tqdm's)."""
        if self.video is None:
            raise InputError("this app serves no video model (start it with --video-model ppvd)")
        steps, seed, _ = self._settings(self.steps if steps is None else steps, seed)
        path, name = _upload(upload)
        if not (is_video(path) or is_video(name)):
            raise InputError(
                f"{name}: not a video file (expected one of {', '.join(sorted(VIDEO_SUFFIXES))})"
            )
        stem = _safe_stem(name)
        out = self._requests.new()
        options = VideoOptions(steps=steps, seed=seed, max_frames=self.max_frames)
        start = time.perf_counter()
        predict_video(path, self.video, out, options, name=stem)
        seconds = time.perf_counter() - start
        paths = output_paths(out / stem, options)
        frames = _npz_frames(paths["npz"])
        info = (
            f"**{name}**: {frames} frame(s) in {seconds:.1f} s ({frames / max(seconds, 1e-9):.2f} frames/s), "
            f"{steps} Euler step(s) per window, seed {seed}, on {self.device.type}"
            + (f"; at most {self.max_frames} frames are used (--max-frames)" if self.max_frames else "")
            + "."
        )
        return VideoResult(paths["depth"], paths["side_by_side"], paths["npz"], frames, seconds, info)

    # --- the page ----------------------------------------------------------------------------------------

    def blocks(self, examples: list[Path] | None = None):
        """The Gradio page: an image tab (with an image model) and a video tab (with a video model)."""
        import gradio as gr

        slider_cls = getattr(gr, "ImageSlider", None)  # Gradio >= 5; before it, a two-image gallery

        def guarded(fn, what):
            def call(*args, progress=gr.Progress(track_tqdm=True)):  # noqa: B008 - Gradio's progress bar
                try:
                    return fn(*args, progress=progress)
                except gr.Error:
                    raise
                except Exception as e:  # noqa: BLE001 - every failure is one message; the app keeps serving
                    if not is_user_error(e):
                        log.exception("request failed while %s", what)
                    raise gr.Error(_message(e, what)) from e

            return call

        def image_request(upload, steps, seed, area, outlier_filter, progress):
            r = self.run_image(upload, steps, seed, area, outlier_filter, progress=progress)
            pair = (r.rgb, r.colour) if slider_cls is not None else [r.rgb, r.colour]
            offered = ("depth16", "npy", "ply", "glb", "metric_npy", "camera")
            files = [str(r.files[k]) for k in offered if k in r.files]
            return pair, r.colour, str(r.files["view"]), files, r.info

        def video_request(upload, steps, seed, progress):
            if isinstance(upload, dict) and "video" in upload:  # Gradio's video payload: {"video": file, ...}
                upload = upload["video"]
            r = self.run_video(upload, steps, seed)
            return str(r.depth_video), str(r.side_by_side), str(r.depths), r.info

        title = "Pixel-Perfect Depth"
        with gr.Blocks(title=title, analytics_enabled=False) as demo:
            gr.Markdown(f"# {title}\n{self.description}")
            if self.model is not None:
                with gr.Tab("Image"):
                    with gr.Row():
                        with gr.Column(scale=1):
                            image_in = gr.Image(
                                label="image", type="filepath", image_mode=None, sources=["upload", "clipboard"],
                                elem_id="image-input",
                            )  # fmt: skip
                            steps = gr.Slider(
                                1, 50, value=self.steps, step=1, label="Euler steps", elem_id="steps"
                            )
                            seed = gr.Number(value=0, precision=0, label="seed", elem_id="seed")
                            area = gr.Number(
                                value=self.area, precision=0, minimum=256, label="working area (pixels)",
                                info=f"the model samples at about this many pixels (trained at {self.model.area})",
                                elem_id="area",
                            )  # fmt: skip
                            outliers = gr.Checkbox(
                                value=True, label="filter outlier points (statistical: 20 neighbours, 3 std)",
                                elem_id="outlier-filter",
                            )  # fmt: skip
                            run = gr.Button("Predict depth", variant="primary", elem_id="run-image")
                        with gr.Column(scale=2):
                            if slider_cls is not None:
                                slider = slider_cls(label="image | depth", elem_id="depth-slider")
                            else:
                                slider = gr.Gallery(label="image | depth", columns=2, elem_id="depth-slider")
                            depth_map = gr.Image(
                                label="depth (colourised)", elem_id="depth-map", format="png"
                            )
                    with gr.Row():
                        scale = "metric, MoGe-2" if self.geometry is not None else "assumed scale, not metric"
                        view = gr.Model3D(
                            label=f"point cloud ({scale})", elem_id="point-cloud", height=480,
                            clear_color=(0.12, 0.12, 0.14, 1.0),
                        )  # fmt: skip
                        with gr.Column():
                            downloads = gr.File(label="downloads", file_count="multiple", elem_id="downloads")
                            info = gr.Markdown(elem_id="image-info")
                    if examples:
                        gr.Examples([[str(p)] for p in examples], inputs=[image_in], label="examples")
                    run.click(
                        guarded(image_request, "predicting depth"),
                        [image_in, steps, seed, area, outliers],
                        [slider, depth_map, view, downloads, info],
                        preprocess=False,  # run_image gets the upload's path and name: our reader, our message
                    )
            if self.video is not None:
                with gr.Tab("Video"):
                    with gr.Row():
                        with gr.Column(scale=1):
                            video_in = gr.Video(
                                label="video (mp4)", sources=["upload"], elem_id="video-input"
                            )
                            v_steps = gr.Slider(1, 50, value=self.steps, step=1, label="Euler steps")
                            v_seed = gr.Number(value=0, precision=0, label="seed")
                            v_run = gr.Button("Predict video depth", variant="primary", elem_id="run-video")
                        with gr.Column(scale=2):
                            depth_video = gr.Video(label="depth", elem_id="depth-video")
                            both = gr.Video(label="side by side", elem_id="side-by-side")
                            depths = gr.File(label="depths (.npz)", elem_id="video-depths")
                            v_info = gr.Markdown(elem_id="video-info")
                    v_run.click(
                        guarded(video_request, "predicting video depth"),
                        [video_in, v_steps, v_seed],
                        [depth_video, both, depths, v_info],
                        preprocess=False,
                    )
        demo.queue(default_concurrency_limit=1, max_size=32)
        return demo


@dataclass
class VideoResult:
    depth_video: Path
    side_by_side: Path
    depths: Path  # .npz: "depths" (T, H, W) float32, "fps"
    frames: int
    seconds: float
    info: str


def _npz_frames(path: Path) -> int:
    """The frame count of a depths ``.npz`` from its array header (the depths are not read)."""
    with zipfile.ZipFile(path) as z, z.open("depths.npy") as f:
        version = np.lib.format.read_magic(f)
        shape = np.lib.format.read_array_header_1_0(f)[0] if version == (1, 0) else None
        if shape is None:
            shape = np.lib.format.read_array_header_2_0(f)[0]
    return int(shape[0])


def _ply_points(path: Path) -> int:
    """The vertex count in a ``.ply`` header."""
    with open(path, "rb") as f:
        header = f.read(1024).split(b"end_header", 1)[0].decode("ascii", "replace")
    return int(re.search(r"element vertex (\d+)", header).group(1))


def _png16(rel: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", depth16(rel))
    if not ok:  # pragma: no cover - OpenCV always encodes a uint16 grey image
        raise RuntimeError("could not encode the 16-bit depth PNG")
    return buf.tobytes()


# --- models and the command line ------------------------------------------------------------------------


def load_image_model(args: argparse.Namespace):
    """The image model and MoGe-2 (or None) from ``--model`` / ``--dit --semantics`` / ``--ckpt`` and
    ``--geometry``: released names or paths (:func:`ppd_lightning.weights.hub.resolve_model_files`), loaded as
    predict loads them. With ``--model ppd-moge2`` the one ``moge2.pt`` is read once for both the semantics
    and the geometry."""
    if args.ckpt:
        files = resolve_model_files(
            semantics=args.semantics, geometry=args.geometry, weights_dir=args.weights_dir
        )
        model = PixelPerfectDepth.from_checkpoint(args.ckpt, encoder_weights=files.semantics)
        return model, load_moge2(files.geometry) if files.geometry is not None else None
    if not (args.model or args.dit or args.semantics):
        if args.geometry:
            raise InputError("--geometry needs an image model: --model ppd --geometry moge2")
        return None, None
    files = resolve_model_files(
        args.dit, args.semantics, args.geometry, model=args.model, weights_dir=args.weights_dir
    )
    if files.dit is None or files.semantics is None:
        raise InputError(
            "an image model needs a DiT and its semantic encoder: --model ppd, or --dit ppd.pth "
            "--semantics depth_anything_v2_vitl.pth (names or paths)"
        )
    if files.geometry is None:
        return PixelPerfectDepth.from_released(files.dit, files.semantics), None
    return load_released_with_geometry(files.dit, files.semantics, files.geometry)


def load_video_model(args: argparse.Namespace):
    """The video model from ``--video-model ppvd`` or ``--video-dit ppvd.pth --video-semantics
    model.safetensors`` (names or paths), or None; bf16 on CUDA as the release."""
    if not (args.video_model or args.video_dit or args.video_semantics):
        return None
    spec = RELEASED.get(args.video_model) if args.video_model else None
    if spec is not None and spec.kind != "video":
        raise InputError(f"--video-model {args.video_model}: a {spec.kind} model, not a video model (ppvd)")
    files = resolve_model_files(
        args.video_dit, args.video_semantics, model=args.video_model, weights_dir=args.weights_dir
    )
    if files.dit is None or files.semantics is None:
        raise InputError(
            "a video model needs its DiT and Pi3: --video-model ppvd, or --video-dit ppvd.pth "
            "--video-semantics model.safetensors"
        )
    from ppd_lightning.video import PixelPerfectVideoDepth
    from ppd_lightning.weights.ppvd import load_pi3_semantics, load_video_dit

    dtype = torch.bfloat16 if torch.device(args.device).type == "cuda" else None
    dit, semantics = load_video_dit(files.dit), load_pi3_semantics(files.semantics)
    return PixelPerfectVideoDepth(dit, semantics, steps=args.steps, dtype=dtype)


def example_images(folder: str | None, workdir: Path) -> list[Path]:
    """``--examples``' images, or three scenes of the embedded synthetic world."""
    if folder:
        found = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise InputError(f"--examples {folder}: no images there ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return found
    from ppd_lightning.data.raw.synthetic import render_scene

    paths = []
    for index in range(3):
        rgb, _, _ = render_scene(seed=7, index=index, height=384, width=512)
        paths.append(visualize.write_image(workdir / "examples" / f"synthetic_{index}.png", rgb))
    return paths


def build_parser() -> argparse.ArgumentParser:
    images = ", ".join(n for n, m in RELEASED.items() if m.kind == "image")
    ap = argparse.ArgumentParser(
        prog="python -m ppd_lightning.app",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--model", help=f"a released image model by name: {images}")
    ap.add_argument(
        "--dit", help="the DiT: a path (ppd.pth, ppd_moge.pth, an exported .safetensors) or a name"
    )
    ap.add_argument(
        "--semantics", help="its semantic encoder: a path (depth_anything_v2_vitl.pth, moge2.pt) or a name"
    )
    ap.add_argument("--ckpt", help="one of our training checkpoints instead of --dit/--semantics")
    ap.add_argument("--geometry", help="MoGe-2 for metric point clouds: moge2.pt or the name moge2")
    ap.add_argument("--geometry-tokens", type=int, help="MoGe-2's number of tokens (default: its own)")
    ap.add_argument("--video-model", help="the video tab's model by name: ppvd")
    ap.add_argument("--video-dit", help="the video DiT by path (ppvd.pth) instead of --video-model")
    ap.add_argument("--video-semantics", help="its Pi3 encoder by path (model.safetensors)")
    ap.add_argument(
        "--weights-dir",
        help=f"folder of released files, e.g. those on Google Drive only (or ${WEIGHTS_DIR_ENV})",
    )
    ap.add_argument(
        "--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1; 0.0.0.0: all)"
    )
    ap.add_argument("--port", type=int, default=7860)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=4, help="default Euler steps (default 4)")
    ap.add_argument("--area", type=int, help="default working area in pixels (default: the model's)")
    ap.add_argument(
        "--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="largest image accepted, in pixels"
    )
    ap.add_argument("--max-frames", type=int, default=DEFAULT_MAX_FRAMES, help="most frames of a video used")
    ap.add_argument(
        "--max-upload", default=DEFAULT_MAX_UPLOAD, help=f"largest upload (default {DEFAULT_MAX_UPLOAD})"
    )
    ap.add_argument("--examples", help="folder of example images (default: three synthetic scenes)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.ckpt and (args.model or args.dit):
        raise InputError("give --model, --dit/--semantics or --ckpt, not several")
    spec = RELEASED.get(args.model) if args.model else None
    if spec is not None and spec.kind != "image":
        hint = "--video-model ppvd" if spec.kind == "video" else "--geometry moge2 with an image model"
        raise InputError(f"--model {args.model}: a {spec.kind} model, not an image model: use {hint}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    model, geometry = load_image_model(args)
    video = load_video_model(args)
    if model is None and video is None:
        raise InputError(
            "no model: start with --model ppd (or --dit/--semantics, --ckpt, --video-model ppvd)"
        )
    image_source = args.model or args.ckpt or args.dit
    parts = [f"image model `{Path(image_source).name}`" if model is not None else ""]
    parts.append("MoGe-2 geometry (metric point clouds)" if geometry is not None else "")
    parts.append(
        f"video model `{Path(args.video_model or args.video_dit).name}`" if video is not None else ""
    )
    app = DepthApp(
        model, args.device, geometry=geometry, video=video, steps=args.steps, area=args.area,
        max_pixels=args.max_pixels, max_frames=args.max_frames, geometry_tokens=args.geometry_tokens,
        description=", ".join(p for p in parts if p).capitalize() + f", on {args.device}.",
    )  # fmt: skip
    try:
        demo = app.blocks(example_images(args.examples, app.workdir) if model is not None else None)
        demo.launch(
            server_name=args.host, server_port=args.port, max_file_size=args.max_upload,
            allowed_paths=[str(app.workdir)], show_error=True,
        )  # fmt: skip
    finally:
        app.close()
    return 0


if __name__ == "__main__":
    with exit_on_user_error():
        sys.exit(main())

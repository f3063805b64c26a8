"""PixelPerfectVideoDepth: relative depth for a video of any length, window by window, in bounded memory.

API (``from ppd_lightning.video import PixelPerfectVideoDepth``)::

    model = PixelPerfectVideoDepth(dit, semantics, steps=4, dtype=None)   # VideoDiT + Pi3Semantics
    model = PixelPerfectVideoDepth.from_released("ppvd.pth", "pi3.safetensors")
    for depth in model.iter_video(frames, steps=4, noise=None, generator=None, progress=None):
        ...                      # depth: np.ndarray (H, W) float32, one per input frame, in order
    depths = model.infer_video(frames, steps=4, noise=noise)   # = np.stack(list(iter_video(...)))

- ``frames``: any iterable of np.ndarray (H, W, 3) uint8 **RGB** frames, all the same size (a (T, H, W, 3)
  array works too); it is consumed lazily: at most one window (16 frames) is read ahead of what has been
  yielded, and only O(window) frames and depth maps are held, whatever the video's length.
- ``noise``: the initial latent (window, 1, S, S) with S = ``dit.input_size`` (16, 1, 512, 512 for the
  release), used for every window; ``None`` draws one (with ``generator`` if given) once per video.
- ``progress``: ``None``, ``True`` (a tqdm bar counting frames), or a callable ``progress(n)`` called with
  the number of frames finished after each window (e.g. a tqdm bar's ``update``).
- ``dtype``: e.g. ``torch.bfloat16`` runs the encoder and the DiT under CUDA autocast, as the release does
  (float32 otherwise and on the CPU).
- Errors: no frame, a frame that is not (H, W, 3) uint8, or frames of different sizes -> ``InputError``
  naming the frame; the DiT and semantics of different models (widths) -> ``InputError``.
- Videos of 1-3 frames are padded to one window like the other short ones (the release's padding
  leaves them without any window and returns nothing).

What the release's ``infer_video`` computes, reproduced here:

- Frames are swapped to B, G, R before anything else (the release converts its already-RGB frames with
  ``cv2.COLOR_BGR2RGB`` a second time, and its weights were trained that way), scaled to [0, 1] and
  resized bilinearly to S x S.
- Windows of ``window`` = 16 frames. The first is frames 0-15; every later window starts 13 frames on and
  its positions 0, 1, 2 are the previous window's (already replaced) positions ``keyframes`` = 0, 8, 15,
  so position 0 is always the video's first frame. The video is padded with copies of its last frame
  until the windows cover it exactly (stride 13).
- Each window: Pi3 semantics of its frames as one clip, Euler sampling of the DiT with image = frames,
  depth = x0 + 0.5, resized bilinearly to the frame size.
- Stitching: the first window is kept; every later window gets one scale and shift (least squares over
  every pixel of its positions 0-2 against the reference: the first window's frame 0 and the previous
  window's aligned positions 8 and 15) and contributes its positions 3-15. This is sequential, so each
  window's frames are final as soon as it is aligned: the iterator yields them right away.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ppd_lightning.errors import InputError
from ppd_lightning.flow import TARGET_SHIFT, EulerSampler, depth_from_x0
from ppd_lightning.models.pi3 import Pi3Semantics
from ppd_lightning.models.video_dit import VideoDiT

WINDOW = 16
KEYFRAMES = (0, 8, 15)


def fit_scale_shift(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One (scale, shift) minimising ||scale * pred + shift - target||^2 over every element, from the
    2 x 2 normal equations in float32 as the release; a singular system gives (1, 0)."""
    p, r = pred.float().reshape(-1), target.float().reshape(-1)
    a00, a01, a11 = (p * p).sum(), p.sum(), torch.tensor(float(p.numel()), device=p.device)
    b0, b1 = (p * r).sum(), r.sum()
    det = a00 * a11 - a01 * a01
    if det == 0:
        return torch.ones((), device=p.device), torch.zeros((), device=p.device)
    return (a11 * b0 - a01 * b1) / det, (a00 * b1 - a01 * b0) / det


class PixelPerfectVideoDepth(nn.Module):
    """Video DiT + Pi3 semantics + the image model's Euler sampler, over windows of a video (see the
    module docstring for the API and the schedule)."""

    def __init__(
        self,
        dit: VideoDiT,
        semantics: Pi3Semantics,
        steps: int = 4,
        window: int = WINDOW,
        keyframes: tuple[int, ...] = KEYFRAMES,
        dtype: torch.dtype | None = None,
        shift: float = TARGET_SHIFT,
    ):
        super().__init__()
        if semantics.dim_out != dit.semantic_dim:
            raise InputError(
                f"semantic width {semantics.dim_out} does not match the video DiT's semantic_dim "
                f"{dit.semantic_dim}: pair ppvd.pth with Pi3's model.safetensors"
            )
        keyframes = tuple(int(k) for k in keyframes)
        if (
            len(keyframes) != dit.reference_frames
            or keyframes[0] != 0
            or list(keyframes) != sorted(set(keyframes))
        ):
            raise ValueError(
                f"keyframes must be {dit.reference_frames} increasing positions starting at 0 (the DiT's "
                f"reference frames), got {keyframes}"
            )
        if not len(keyframes) < window or keyframes[-1] >= window:
            raise ValueError(
                f"keyframes {keyframes} must lie inside a window of {window} frames, and leave new ones"
            )
        self.dit, self.semantics = dit, semantics
        self.sampler = EulerSampler(steps)
        self.window, self.keyframes = int(window), keyframes
        self.dtype, self.shift = dtype, float(shift)

    @classmethod
    def from_released(
        cls,
        dit: str | os.PathLike,
        semantics: str | os.PathLike | None = None,
        steps: int = 4,
        weights_dir: str | os.PathLike | None = None,
        **kwargs,
    ) -> PixelPerfectVideoDepth:
        """The released model from its two files, ``ppvd.pth`` and Pi3's ``model.safetensors`` (sizes
        inferred from the weights), or by name (``"ppvd"``: found in a weights folder or downloaded), eval
        mode; ``kwargs`` as the constructor's (``dtype``, ...)."""
        from ppd_lightning.weights.ppvd import load_released_video_model

        return load_released_video_model(cls, dit, semantics, steps, weights_dir, **kwargs)

    @property
    def carried(self) -> int:
        """Positions of a window taken from the previous one (its keyframes)."""
        return len(self.keyframes)

    @property
    def stride(self) -> int:
        """New frames per window after the first (13 for the release)."""
        return self.window - self.carried

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        S = self.dit.input_size
        return (self.window, 1, S, S)

    @property
    def device(self) -> torch.device:
        return self.dit.pos_embed.device

    # --- one window ----------------------------------------------------------------------------------
    def prepare(self, frames: list[np.ndarray]) -> torch.Tensor:
        """uint8 RGB frames -> (n, 3, S, S) in [0, 1] with R and B swapped (the release's channel order)."""
        x = torch.from_numpy(np.stack(frames)).to(self.device)
        x = x[..., [2, 1, 0]].permute(0, 3, 1, 2).float() / 255.0
        S = self.dit.input_size
        return F.interpolate(x, size=(S, S), mode="bilinear", align_corners=False)

    def _autocast(self):
        enabled = self.dtype is not None and self.device.type == "cuda"
        return torch.autocast("cuda", dtype=self.dtype or torch.bfloat16, enabled=enabled)

    @torch.no_grad()
    def sample_window(
        self, images: torch.Tensor, noise: torch.Tensor, steps: int | None = None
    ) -> torch.Tensor:
        """images (window, 3, S, S) in [0, 1] (channel order as the weights expect) -> depth (window, 1, S, S)."""
        cond = images - 0.5
        with self._autocast():
            tokens = self.semantics(images)
            x0 = self.sampler.sample(
                lambda x, t: self.dit(torch.cat([x, cond.to(x.dtype)], dim=1), tokens, t),
                noise.float(),
                steps,
            )
        return depth_from_x0(x0.float(), self.shift)

    # --- the video -----------------------------------------------------------------------------------
    def _initial_noise(self, noise: torch.Tensor | None, generator: torch.Generator | None) -> torch.Tensor:
        shape = self.latent_shape
        if noise is None:
            device = self.device if generator is None else generator.device
            return torch.randn(shape, generator=generator, device=device).to(self.device)
        if tuple(noise.shape) != shape:
            raise InputError(f"noise must be the initial latent {shape}, got {tuple(noise.shape)}")
        return noise.to(self.device, torch.float32)

    def _frames(self, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        size = None
        for i, frame in enumerate(frames):
            if (
                not isinstance(frame, np.ndarray)
                or frame.dtype != np.uint8
                or frame.ndim != 3
                or frame.shape[2] != 3
            ):
                what = (
                    f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
                )
                raise InputError(f"frame {i}: expected an (H, W, 3) uint8 RGB array, got {what}")
            if size is None:
                size = frame.shape
            elif frame.shape != size:
                raise InputError(
                    f"frame {i}: size {frame.shape[:2]} differs from the first frame's {size[:2]}"
                )
            yield frame

    def _windows(self, frames: Iterator[np.ndarray]) -> Iterator[tuple[list[np.ndarray], int]]:
        """(the new frames of each window, padded with the last frame, and how many of them are real)."""
        need = self.window
        while True:
            chunk = []
            for frame in frames:
                chunk.append(frame)
                if len(chunk) == need:
                    break
            if not chunk:
                return
            real = len(chunk)
            chunk += [chunk[-1]] * (need - real)
            yield chunk, real
            if real < need:
                return
            need = self.stride

    @torch.no_grad()
    def iter_video(
        self,
        frames: Iterable[np.ndarray],
        steps: int | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        progress: bool | Callable[[int], object] | None = None,
    ) -> Iterator[np.ndarray]:
        """Each frame's stitched relative depth (H, W) float32, in order, window by window."""
        noise = self._initial_noise(noise, generator)
        bar = None
        if progress is True:
            from tqdm.auto import tqdm

            total = len(frames) if hasattr(frames, "__len__") else None
            bar = tqdm(total=total, unit="frame", desc="video depth")
            progress = bar.update
        try:
            carried = None  # the prepared images of the keyframe positions of the previous window
            reference = None  # their aligned depths, (carried, 1, H, W)
            first_depth = None
            count = 0
            for chunk, real in self._windows(self._frames(frames)):
                H, W = chunk[0].shape[:2]
                images = self.prepare(chunk)
                if carried is not None:
                    images = torch.cat([carried, images], dim=0)
                carried = images[list(self.keyframes)]
                depth = self.sample_window(images, noise, steps)
                depth = F.interpolate(depth, size=(H, W), mode="bilinear", align_corners=False)
                if reference is None:
                    first_depth = depth[:1]
                    new = depth[:real]
                    aligned = depth
                else:
                    scale, shift = fit_scale_shift(depth[: self.carried], reference)
                    aligned = depth * scale + shift
                    new = aligned[self.carried : self.carried + real]
                reference = torch.cat([first_depth, aligned[list(self.keyframes[1:])]], dim=0)
                for d in new.cpu().numpy():
                    yield d[0].astype(np.float32, copy=False)
                count += len(new)
                if progress:
                    progress(len(new))
            if count == 0:
                raise InputError("the video has no frames")
        finally:
            if bar is not None:
                bar.close()

    @torch.no_grad()
    def infer_video(
        self,
        frames: Iterable[np.ndarray],
        steps: int | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        progress: bool | Callable[[int], object] | None = None,
    ) -> np.ndarray:
        """(T, H, W, 3) uint8 RGB frames (or any iterable of them) -> (T, H, W) float32 relative depth."""
        return np.stack(list(self.iter_video(frames, steps, noise, generator, progress)))

"""Flow matching in small pieces: the probability path, timestep sampling, the Euler sampler, and the
depth target transform. No Lightning, no file formats.

Conventions (those of the released model): t in [0, 1], t = 0 is data and t = 1 is noise,
x_t = (1 - t) * x0 + t * eps, and the network predicts the velocity eps - x0. The official code counts
time in integer steps of T = 1000; that scale appears only in the sampler's discretisation and in the
DiT's time embedding. The depth target is shifted by ``TARGET_SHIFT`` (-0.5); the model's depth output is
x0 - TARGET_SHIFT. Both constants are defined here only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

OFFICIAL_T = 1000  # the official integer time scale (sampler grid, training grid, DiT time embedding)
TARGET_SHIFT = -0.5  # normalised log-depth in [-0.5, 1] + TARGET_SHIFT = diffusion target in [-1, 0.5]


def depth_from_x0(x0: torch.Tensor, shift: float = TARGET_SHIFT) -> torch.Tensor:
    """The model's depth (normalised log-depth) from a sampled target x0: undoes the target shift."""
    return x0 - shift


def x0_from_depth(depth: torch.Tensor, shift: float = TARGET_SHIFT) -> torch.Tensor:
    """The inverse of ``depth_from_x0``: a model depth as a diffusion target."""
    return depth + shift


class LinearPath:
    """The straight path between data x0 (t = 0) and Gaussian noise eps (t = 1)."""

    @staticmethod
    def _b(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return t.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)

    def interpolate(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = self._b(t, x0)
        return (1 - t) * x0 + t * noise

    @staticmethod
    def velocity(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return noise - x0

    def x0_from_velocity(self, x_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x_t - self._b(t, x_t) * v

    def noise_from_velocity(self, x_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x_t + (1 - self._b(t, x_t)) * v


class LogitNormalTimesteps:
    """t = sigmoid(loc + scale * n), n ~ N(0, 1): concentrates training on intermediate noise levels.

    ``grid`` rounds t to multiples of 1 / grid, as the release does (it trains on the integer timesteps
    round(1000 * t), so ``grid`` defaults to 1000); ``grid=None`` keeps t continuous.
    ``uniform_fraction`` draws that share of t from U(0, 1) instead (before rounding). The logit-normal almost
    never visits t near 1, yet the sampler's first step is at t = 1 exactly; long runs generalise there, short
    runs (the CPU demo) do not, and a uniform share fixes that.
    """

    def __init__(
        self,
        loc: float = 0.0,
        scale: float = 1.0,
        uniform_fraction: float = 0.0,
        grid: int | None = OFFICIAL_T,
    ):
        if scale <= 0:
            raise ValueError(f"logit-normal scale must be > 0, got {scale}")
        if not 0.0 <= uniform_fraction <= 1.0:
            raise ValueError(f"uniform_fraction must be in [0, 1], got {uniform_fraction}")
        if grid is not None and (isinstance(grid, bool) or int(grid) != grid or grid < 1):
            raise ValueError(f"timestep grid must be a positive integer or None, got {grid!r}")
        self.loc, self.scale, self.uniform_fraction = loc, scale, uniform_fraction
        self.grid = None if grid is None else int(grid)

    def __call__(
        self, n: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None
    ) -> torch.Tensor:
        z = torch.randn(n, device=device, generator=generator)
        t = torch.sigmoid(self.loc + self.scale * z)
        if self.uniform_fraction > 0:
            u = torch.rand(2, n, device=device, generator=generator)
            t = torch.where(u[0] < self.uniform_fraction, u[1], t)
        if self.grid is not None:
            t = torch.round(t * self.grid) / self.grid
        return t


def official_timesteps(steps: int, T: int = OFFICIAL_T) -> torch.Tensor:
    """The released sampler's integer timesteps: round(arange(T, -1, -(T + 1) / steps)).

    4 steps -> [1000, 750, 500, 249]. Computed in float32 as the official code does, since the rounding of
    its float32 arange is what defines the grid.
    """
    if steps < 1:
        raise ValueError(f"sampling steps must be >= 1, got {steps}")
    return torch.arange(T, -1, -(T + 1) / steps, dtype=torch.float32).round().long()


class EulerSampler:
    """Euler integration of the velocity ODE from t = 1 (noise) to t = 0, on the official grid.

    At each grid time t the velocity gives x0 and eps predictions, which are re-mixed on the path at the
    next grid time; after the last grid time the x0 prediction is returned.
    """

    def __init__(self, steps: int = 4, T: int = OFFICIAL_T, path: LinearPath | None = None):
        self.steps, self.T = steps, T
        self.path = path or LinearPath()

    def timesteps(self, steps: int | None = None) -> torch.Tensor:
        """Grid times as fractions in [0, 1] (float32, as the official k / T)."""
        return official_timesteps(self.steps if steps is None else steps, self.T).float() / self.T

    @torch.no_grad()
    def sample(
        self,
        velocity_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        noise: torch.Tensor,
        steps: int | None = None,
    ) -> torch.Tensor:
        """velocity_fn(x_t, t) with t of shape (B,); noise is x at t = 1. Returns the x0 estimate."""
        grid = self.timesteps(steps).to(noise.device)
        x = noise
        B = noise.shape[0]
        for i, t in enumerate(grid):
            tb = t.expand(B)
            v = velocity_fn(x, tb).to(x.dtype)
            x0 = self.path.x0_from_velocity(x, v, tb)
            if i + 1 == len(grid):
                return x0
            eps = self.path.noise_from_velocity(x, v, tb)
            x = self.path.interpolate(x0, eps, grid[i + 1].expand(B))
        return x  # unreachable: the grid is never empty


@dataclass
class DepthTargetTransform:
    """Metric depth -> diffusion target, per image: log(d + 1), normalised by the 2 % / 98 % quantiles of
    the valid pixels closer than ``max_depth``, clamped to [-0.5, 1] and shifted by ``shift`` (``TARGET_SHIFT``, -0.5), i.e. the
    target lives in [-1, 0.5] and a prediction p maps back with depth = exp((p - shift) * (hi - lo) + lo) - 1.

    ``release_depth`` turns a batch's depth / mask / sky into the depth and loss mask the release trains on
    (valid = ``min_depth`` < d < ``max_depth``; sky valid at ``max_depth + sky_margin``).
    """

    low_quantile: float = 0.02
    high_quantile: float = 0.98
    max_depth: float = 80.0
    clamp_min: float = -0.5
    clamp_max: float = 1.0
    shift: float = TARGET_SHIFT
    min_depth: float = 0.1
    sky_margin: float = 1.0

    def release_depth(
        self, depth: torch.Tensor, mask: torch.Tensor, sky: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The release's ``read_depth`` on this project's batch format -> (depth, loss mask).

        depth (B,1,H,W) metres (0 where invalid or sky), mask bool (valid, never sky), sky bool or None.
        Valid pixels are ``min_depth < d < max_depth`` inside ``mask`` (so 80-200 m is not valid); depth is
        clipped to [min_depth, max_depth] (non-finite -> min_depth) and sky is set to the clipped maximum
        plus ``sky_margin``: the sky of outdoor sets is > 200 m, which clips to ``max_depth``, so sky is
        ``max_depth + sky_margin`` (81 m). Sky is in the loss mask; it never enters the quantiles, which only
        take pixels closer than ``max_depth``.
        """
        depth = depth.float()
        finite = torch.isfinite(depth)
        valid = mask.bool() & finite & (depth > self.min_depth) & (depth < self.max_depth)
        clipped = torch.where(finite, depth, torch.full_like(depth, self.min_depth))
        clipped = clipped.clamp(self.min_depth, self.max_depth)
        if sky is None:
            return clipped, valid
        sky = sky.bool() & ~valid
        clipped = torch.where(sky, torch.full_like(clipped, self.max_depth + self.sky_margin), clipped)
        return clipped, valid | sky

    def quantiles(self, depth: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B = depth.shape[0]
        sel = mask & (depth < self.max_depth) & torch.isfinite(depth)
        logd = torch.log1p(depth.clamp_min(0)).float()
        flat = torch.where(sel, logd, torch.full_like(logd, float("nan"))).reshape(B, -1)
        q = torch.tensor([self.low_quantile, self.high_quantile], device=depth.device)
        lo, hi = torch.nanquantile(flat, q, dim=1)  # NaN for an image without valid pixels
        lo = torch.nan_to_num(lo, nan=0.0)
        hi = torch.nan_to_num(hi, nan=1.0)
        hi = torch.maximum(hi, lo + 1e-6)  # a flat image must not divide by zero
        return lo, hi

    def __call__(self, depth: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        """depth (B,1,H,W) metres, mask (B,1,H,W) bool -> target (B,1,H,W) and (lo, hi) per image."""
        lo, hi = self.quantiles(depth, mask)
        view = (-1,) + (1,) * (depth.ndim - 1)
        logd = torch.log1p(depth.clamp_min(0).nan_to_num(0.0, 0.0, 0.0)).float()
        norm = (logd - lo.view(view)) / (hi - lo).view(view)
        target = x0_from_depth(norm.clamp(self.clamp_min, self.clamp_max), self.shift)
        return target, (lo, hi)

    def inverse(self, target: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        view = (-1,) + (1,) * (target.ndim - 1)
        logd = depth_from_x0(target, self.shift) * (hi - lo).view(view) + lo.view(view)
        return torch.expm1(logd)


class FlowMatching:
    """Training-side flow matching: draws t and eps, builds x_t and the velocity target."""

    def __init__(self, timesteps: LogitNormalTimesteps | None = None, path: LinearPath | None = None):
        self.timesteps = timesteps or LogitNormalTimesteps()
        self.path = path or LinearPath()

    def prepare(
        self,
        x0: torch.Tensor,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        t: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        if t is None:
            t = self.timesteps(x0.shape[0], x0.device, generator)
        if noise is None:
            noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        return {
            "t": t,
            "noise": noise,
            "x_t": self.path.interpolate(x0, noise, t),
            "velocity": self.path.velocity(x0, noise),
        }

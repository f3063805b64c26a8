"""Flow matching in small pieces: the probability path, timestep sampling and the Euler sampler (as SiT's
``transport/``); the depth target they move is ``objective.DepthTargetTransform``. No Lightning, no file
formats.

Conventions (those of the released model): t in [0, 1], t = 0 is data and t = 1 is noise,
x_t = (1 - t) * x0 + t * eps, and the network predicts the velocity eps - x0. The official code counts
time in integer steps of T = 1000; that scale appears only in the sampler's discretisation and in the
DiT's time embedding. The depth target is shifted by ``TARGET_SHIFT`` (-0.5); the model's depth output is
x0 - TARGET_SHIFT. Both constants are defined here only.
"""

from __future__ import annotations

from collections.abc import Callable

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

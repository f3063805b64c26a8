"""DiT_Video: the video DiT of Pixel-Perfect Video Depth, built from the image DiT's pieces (``dit.py``).

The same adaLN-Zero blocks, timestep embedding, semantic fusion, coarse-to-fine unfolding and output
layer as :class:`~ppd_lightning.models.dit.CascadeSPDiT`; what differs is the position scheme and the
frames of a window seeing each other:

* positions: an absolute 2-D sin-cos embedding on the coarse grid, added after the (strict) patch
  embedding, so the input size is fixed (512 x 512 for the release); the blocks run without RoPE;
* one timestep for the whole window (the same noise level on every frame);
* from block ``reference_from`` on (the release: 18, 0-based), the fine tokens of the window's first
  ``reference_frames`` frames (the keyframes carried over from the previous window) are average-pooled
  ``reference_pool`` x ``reference_pool`` and appended to every frame's sequence for that block
  (attention only: the appended tokens are dropped after the block);
* before each of the last ``temporal_depth`` blocks, a temporal block (a DiT block with the same
  timestep) attends over the frames at every spatial position.

``forward(x, semantics, t)``: x (F, 4, H, W) = cat(noisy depth, image - 0.5) for the F frames of a
window, semantics (F, H/16 * W/16, C) raw tokens of the clip, t the window's timestep in [0, 1]
(official timestep / 1000: a scalar, or (F,) all equal). Returns the velocity (F, 1, H, W).
Parameter names follow ``ppvd.pth`` without its ``dit_video.`` prefix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ppd_lightning.models.dit import (
    DiTBlock,
    FinalLayer,
    PatchEmbed,
    TimestepEmbedder,
    fuse_semantics,
    fusion_mlp,
    unfold_coarse,
    unpatchify,
)

# The release's constants that its weights cannot tell.
REFERENCE_FROM = 18
REFERENCE_FRAMES = 3
REFERENCE_POOL = 4


def sincos_pos_embed(dim: int, grid: int) -> torch.Tensor:
    """MAE's 2-D sin-cos embedding (grid * grid, dim), row-major tokens: the first half of the channels
    encodes the column, the second the row; per coordinate [sin(pos * w_k), cos(pos * w_k)],
    w_k = 1 / 10000^(k / (dim / 4))."""
    if dim % 4:
        raise ValueError(f"a 2-D sin-cos embedding needs a width divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    pos = torch.arange(grid, dtype=torch.float64)
    rows, cols = pos.repeat_interleave(grid), pos.repeat(grid)

    def axis(p: torch.Tensor) -> torch.Tensor:
        a = p[:, None] * omega[None]
        return torch.cat([a.sin(), a.cos()], dim=1)

    return torch.cat([axis(cols), axis(rows)], dim=1).float()


class VideoDiT(nn.Module):
    """Args: the image DiT's sizes (released: hidden 1024, depth 24, 16 heads, patch 8, semantic width
    2048), ``input_size`` (the fixed square input side), ``temporal_depth`` (temporal blocks before the
    last blocks), ``reference_from`` / ``reference_frames`` / ``reference_pool`` (the reference tokens),
    ``coarse_depth`` (blocks before the fusion; default depth // 2)."""

    def __init__(
        self,
        hidden_size: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        patch_size: int = 8,
        mlp_ratio: float = 4.0,
        semantic_dim: int = 2048,
        input_size: int = 512,
        temporal_depth: int = 3,
        reference_from: int = REFERENCE_FROM,
        reference_frames: int = REFERENCE_FRAMES,
        reference_pool: int = REFERENCE_POOL,
        coarse_depth: int | None = None,
        in_channels: int = 4,
        out_channels: int = 1,
    ):
        super().__init__()
        coarse_depth = depth // 2 if coarse_depth is None else coarse_depth
        embed_patch = 2 * patch_size
        if not 0 < coarse_depth < depth:
            raise ValueError(f"coarse_depth must be in [1, {depth - 1}], got {coarse_depth}")
        if not 0 <= temporal_depth <= depth - coarse_depth:
            raise ValueError(
                f"temporal_depth must be in [0, {depth - coarse_depth}] (fine blocks), got {temporal_depth}"
            )
        if not coarse_depth <= reference_from <= depth:
            raise ValueError(
                f"reference_from must be in [{coarse_depth}, {depth}] (the reference tokens are fine tokens), "
                f"got {reference_from}"
            )
        if input_size % embed_patch or (2 * input_size // embed_patch) % reference_pool:
            raise ValueError(
                f"input_size {input_size} must be a multiple of {embed_patch} (the coarse patch) with a fine "
                f"grid divisible by reference_pool {reference_pool}"
            )
        self.hidden_size, self.depth, self.num_heads = hidden_size, depth, num_heads
        self.patch_size, self.mlp_ratio, self.semantic_dim = patch_size, mlp_ratio, semantic_dim
        self.input_size, self.coarse_depth, self.temporal_depth = input_size, coarse_depth, temporal_depth
        self.reference_from, self.reference_frames = reference_from, reference_frames
        self.reference_pool = reference_pool
        self.in_channels, self.out_channels = in_channels, out_channels
        self.grid = input_size // embed_patch  # the coarse grid = the semantic grid (stride 16 for p = 8)

        self.x_embedder = PatchEmbed(embed_patch, in_channels, hidden_size)
        self.pos_embed = nn.Parameter(sincos_pos_embed(hidden_size, self.grid)[None], requires_grad=False)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.blocks = nn.ModuleList(DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth))
        self.temporal_blocks = nn.ModuleList(
            DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(temporal_depth)
        )
        self.proj_fusion = fusion_mlp(hidden_size, semantic_dim, 4 * hidden_size)
        self.final_layer = FinalLayer(hidden_size, patch_size, out_channels)

    @property
    def temporal_from(self) -> int:
        return self.depth - self.temporal_depth

    @property
    def semantic_grid(self) -> int:
        return self.grid

    def config(self) -> dict:
        return dict(
            hidden_size=self.hidden_size,
            depth=self.depth,
            num_heads=self.num_heads,
            patch_size=self.patch_size,
            mlp_ratio=self.mlp_ratio,
            semantic_dim=self.semantic_dim,
            input_size=self.input_size,
            temporal_depth=self.temporal_depth,
            reference_from=self.reference_from,
            reference_frames=self.reference_frames,
            reference_pool=self.reference_pool,
            coarse_depth=self.coarse_depth,
            in_channels=self.in_channels,
            out_channels=self.out_channels,
        )

    def _check_inputs(self, x: torch.Tensor, semantics: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        S = self.input_size
        if x.ndim != 4 or x.shape[1:] != (self.in_channels, S, S):
            raise ValueError(f"x must be (frames, {self.in_channels}, {S}, {S}), got {tuple(x.shape)}")
        if x.shape[0] < self.reference_frames:
            raise ValueError(f"a window needs at least {self.reference_frames} frames, got {x.shape[0]}")
        n = self.grid * self.grid
        if semantics.ndim != 3 or semantics.shape != (x.shape[0], n, self.semantic_dim):
            raise ValueError(
                f"semantics must be (frames, {n}, {self.semantic_dim}) for {x.shape[0]} frames, "
                f"got {tuple(semantics.shape)}"
            )
        t = torch.as_tensor(t, device=x.device).reshape(-1)
        if t.numel() not in (1, x.shape[0]) or (t.numel() > 1 and not bool((t == t[0]).all())):
            raise ValueError(
                f"t must be one timestep for the window (a scalar or (frames,) all equal), got {t}"
            )
        return t[:1]

    def _temporal(self, block: DiTBlock, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return block(x.transpose(0, 1), c).transpose(0, 1)  # attention over the frames of each position

    def _with_reference(self, block: DiTBlock, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        Fr, N, C = x.shape
        g = 2 * self.grid
        ref = x[: self.reference_frames].transpose(1, 2).reshape(-1, C, g, g)
        ref = F.avg_pool2d(ref, self.reference_pool).flatten(2).transpose(1, 2).reshape(1, -1, C)
        return block(torch.cat([x, ref.expand(Fr, -1, -1)], dim=1), c)[:, :N]

    def forward(self, x: torch.Tensor, semantics: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = self._check_inputs(x, semantics, t)
        S = self.input_size
        h = self.x_embedder(x.to(self.x_embedder.proj.weight.dtype)) + self.pos_embed
        c = self.t_embedder(t)  # (1, hidden): every frame and every temporal sequence share it
        for i, block in enumerate(self.blocks):
            if i >= self.temporal_from:
                h = self._temporal(self.temporal_blocks[i - self.temporal_from], h, c)
            h = self._with_reference(block, h, c) if i >= self.reference_from else block(h, c)
            if i == self.coarse_depth - 1:
                h = unfold_coarse(fuse_semantics(self.proj_fusion, h, semantics), (self.grid, self.grid))
        return unpatchify(self.final_layer(h, c), S, S, self.patch_size, self.out_channels)

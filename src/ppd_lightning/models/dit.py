"""Cascade SP-DiT: the Diffusion Transformer of Pixel-Perfect Depth, in one file.

The network predicts the flow-matching velocity of a depth map directly in pixel space. Its input is the
noisy depth concatenated with the image (4 channels). Three variants come from the same code (the
paper's ablation table):

* ``cascade`` (Cas-DiT, the released model): the first ``coarse_depth`` blocks run on 2p x 2p patches;
  then the tokens are concatenated with the L2-normalised semantic tokens of a frozen ViT, and a 3-layer
  MLP fuses them and unfolds every coarse token into 2 x 2 fine tokens; the remaining blocks run on
  p x p patches.
* ``sp_dit`` (SP-DiT): every block runs on p x p patches; semantics are fused (without unfolding) after
  ``coarse_depth`` blocks, resized bilinearly to the token grid when the grids differ.
* ``vanilla`` (DiT): every block on p x p patches, no semantics.

Blocks are adaLN-Zero DiT blocks with per-head qk-LayerNorm and 2D rotary position embeddings (the video
DiT, ``video_dit.py``, runs the same blocks, fusion and output layer without RoPE); the
initialisation zeroes every modulation and the output layer, so each block starts as the identity and
the network as the zero velocity. Parameter names follow the released ``ppd.pth`` (without its ``dit.``
prefix) so the released weights load without any key mapping.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ppd_lightning.flow import OFFICIAL_T

Variant = Literal["cascade", "sp_dit", "vanilla"]
VARIANTS: tuple[str, ...] = ("cascade", "sp_dit", "vanilla")

# The official model embeds timesteps on its integer 0..T scale (flow.OFFICIAL_T); our API takes t in [0, 1].
TIME_SCALE = float(OFFICIAL_T)
# Depth Anything V2 semantic tokens live on the H/16 x W/16 grid.
SEMANTIC_STRIDE = 16


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class TimestepEmbedder(nn.Module):
    """Sinusoidal embedding of t * 1000 (256 frequencies, cos first), then a 2-layer MLP."""

    def __init__(self, hidden_size: int, frequency_size: int = 256, max_period: float = 10000.0):
        super().__init__()
        self.frequency_size = frequency_size
        self.max_period = max_period
        self.mlp = nn.Sequential(
            nn.Linear(frequency_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )

    def sinusoidal(self, t: torch.Tensor) -> torch.Tensor:
        half = self.frequency_size // 2
        freqs = torch.exp(
            -math.log(self.max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
        )
        # Scale in float64 so t = k/1000 gives exactly the official integer timestep k (MPS lacks float64).
        wide = torch.float32 if t.device.type == "mps" else torch.float64
        args = (t.to(wide) * TIME_SCALE).float()[:, None] * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        emb = self.sinusoidal(t)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class RopeTables(NamedTuple):
    """cos and sin of every token's rotation angles, (N, head_dim) each: 2D RoPE at given positions."""

    cos: torch.Tensor
    sin: torch.Tensor


class Rope2D(nn.Module):
    """2D rotary position embedding: the first half of each head's channels is rotated by the token's row,
    the second half by its column; inside each half, channel i pairs with channel i + quarter.

    Positions are a token grid (rows x cols, row-major; the DiT) or explicit per-token (row, col)
    positions given as :class:`RopeTables` from :meth:`tables_at` (Pi3's decoder, whose register tokens
    sit at (0, 0) and patches at (row + 1, col + 1)). Grid tables depend only on (grid, head_dim, device)
    and are cached, so a forward pass builds them once.
    """

    def __init__(self, base: float = 100.0):
        super().__init__()
        self.base = base
        self._cache: dict[tuple, RopeTables] = {}

    def tables_at(self, rows: torch.Tensor, cols: torch.Tensor, head_dim: int) -> RopeTables:
        """Tables for tokens at (rows[i], cols[i]) (1-D tensors of the same length)."""
        if head_dim % 4:
            raise ValueError(f"2D RoPE needs a head dimension divisible by 4, got {head_dim}")
        axis_dim = head_dim // 2
        device = rows.device
        inv_freq = 1.0 / (self.base ** (torch.arange(0, axis_dim, 2, device=device).float() / axis_dim))
        angles = []
        for pos in (rows, cols):
            a = pos.float()[:, None] * inv_freq[None]  # (N, axis_dim / 2)
            angles.append(torch.cat([a, a], dim=-1))
        angle = torch.cat(angles, dim=-1)  # (N, head_dim)
        return RopeTables(angle.cos(), angle.sin())

    def tables(self, grid_h: int, grid_w: int, head_dim: int, device: torch.device) -> RopeTables:
        key = (grid_h, grid_w, head_dim, str(device))
        if key not in self._cache:
            rows = torch.arange(grid_h, device=device, dtype=torch.float32).repeat_interleave(grid_w)
            cols = torch.arange(grid_w, device=device, dtype=torch.float32).repeat(grid_h)
            self._cache[key] = self.tables_at(rows, cols, head_dim)
        return self._cache[key]

    @staticmethod
    def rotate(x: torch.Tensor) -> torch.Tensor:
        # (x0, x1) -> (-x1, x0) inside each axis half, where x0, x1 are that half's two quarters.
        *lead, d = x.shape
        x = x.reshape(*lead, 2, 2, d // 4)
        return torch.stack([-x[..., 1, :], x[..., 0, :]], dim=-2).reshape(*lead, d)

    def forward(self, x: torch.Tensor, where: tuple[int, int] | RopeTables) -> torch.Tensor:
        """x (..., N, head_dim); ``where``: the (rows, cols) token grid or the tables of N positions."""
        cos, sin = where if isinstance(where, RopeTables) else self.tables(*where, x.shape[-1], x.device)
        return x * cos.to(x.dtype) + self.rotate(x) * sin.to(x.dtype)


class Attention(nn.Module):
    """Multi-head self-attention with qkv bias and per-head qk-LayerNorm, then 2D RoPE when ``rope`` is
    given (the image DiT, Pi3's decoder); without it, the positions are added to the tokens beforehand
    (the video DiT's absolute embedding)."""

    def __init__(self, dim: int, num_heads: int, rope: Rope2D | None = None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = nn.LayerNorm(self.head_dim)
        self.k_norm = nn.LayerNorm(self.head_dim)
        self.proj = nn.Linear(dim, dim)
        self.rope = rope

    def forward(self, x: torch.Tensor, grid: tuple[int, int] | RopeTables | None = None) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.rope is not None:
            q, k = self.rope(q, grid), self.rope(k, grid)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DiTBlock(nn.Module):
    """adaLN-Zero: the timestep embedding sets shift, scale and a gate for attention and for the MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, rope: Rope2D | None = None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads, rope)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate1.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift1, scale1), grid)
        return x + gate2.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    def __init__(self, dim: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_channels: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


def fusion_mlp(hidden_size: int, semantic_dim: int, out_dim: int) -> nn.Sequential:
    """The semantic fusion MLP (``proj_fusion``): [tokens, semantics] -> 4h -> 4h -> ``out_dim``, SiLU between."""
    return nn.Sequential(
        nn.Linear(hidden_size + semantic_dim, 4 * hidden_size),
        nn.SiLU(),
        nn.Linear(4 * hidden_size, 4 * hidden_size),
        nn.SiLU(),
        nn.Linear(4 * hidden_size, out_dim),
    )


def fuse_semantics(proj_fusion: nn.Module, x: torch.Tensor, semantics: torch.Tensor) -> torch.Tensor:
    """Tokens (B, N, D) and raw semantic tokens (B, N, C) on the same grid -> the fusion MLP's output."""
    semantics = F.normalize(semantics, dim=-1)
    return proj_fusion(torch.cat([x, semantics.to(x.dtype)], dim=-1))


def unfold_coarse(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, h*w, 4*D) fused coarse tokens -> (B, 2h*2w, D) fine tokens, row-major on the fine grid: each
    coarse token's channels are ordered (row, col, D) over its 2 x 2 fine tokens."""
    B, _, D4 = x.shape
    h, w = grid
    x = x.reshape(B, h, w, 2, 2, D4 // 4).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, 4 * h * w, D4 // 4)


def unpatchify(x: torch.Tensor, H: int, W: int, patch_size: int, channels: int) -> torch.Tensor:
    """(B, H/p * W/p, p*p*c) per-patch outputs -> (B, c, H, W)."""
    p, c = patch_size, channels
    x = x.reshape(x.shape[0], H // p, W // p, p, p, c).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(x.shape[0], c, H, W)


class CascadeSPDiT(nn.Module):
    """Pixel-space DiT for depth. ``forward(x_t, image, semantics, t) -> velocity``.

    Args:
        hidden_size, depth, num_heads, mlp_ratio: transformer sizes (released: 1024, 24, 16, 4).
        patch_size: the fine patch p (released: 8); the cascade's coarse stage uses 2p.
        semantic_dim: width of the semantic tokens (1024 for ViT-L); ignored by ``vanilla``.
        coarse_depth: number of blocks before semantic fusion (default ``depth // 2``).
        rope_base: base frequency of the 2D RoPE (released: 100).
        variant: ``cascade`` | ``sp_dit`` | ``vanilla``.
        grad_checkpointing: recompute block activations in backward (needed to train at 1024x768).
    """

    def __init__(
        self,
        hidden_size: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        patch_size: int = 8,
        mlp_ratio: float = 4.0,
        semantic_dim: int = 1024,
        coarse_depth: int | None = None,
        rope_base: float = 100.0,
        variant: Variant = "cascade",
        in_channels: int = 4,
        out_channels: int = 1,
        grad_checkpointing: bool = False,
    ):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown DiT variant {variant!r}; expected one of {VARIANTS}")
        coarse_depth = depth // 2 if coarse_depth is None else coarse_depth
        if variant != "vanilla" and not 0 < coarse_depth < depth:
            raise ValueError(f"coarse_depth must be in [1, depth - 1] = [1, {depth - 1}], got {coarse_depth}")
        self.variant = variant
        self.hidden_size, self.depth, self.num_heads = hidden_size, depth, num_heads
        self.patch_size, self.mlp_ratio, self.rope_base = patch_size, mlp_ratio, rope_base
        self.semantic_dim = semantic_dim if variant != "vanilla" else 0
        self.coarse_depth = coarse_depth if variant != "vanilla" else 0
        self.in_channels, self.out_channels = in_channels, out_channels
        self.grad_checkpointing = grad_checkpointing

        self.rope = Rope2D(rope_base)
        self.x_embedder = PatchEmbed(self.embed_patch, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.blocks = nn.ModuleList(
            DiTBlock(hidden_size, num_heads, mlp_ratio, self.rope) for _ in range(depth)
        )
        if self.uses_semantics:
            fused = hidden_size * (4 if variant == "cascade" else 1)
            self.proj_fusion = fusion_mlp(hidden_size, semantic_dim, fused)
        self.final_layer = FinalLayer(hidden_size, patch_size, out_channels)
        self.initialize_weights()

    # --- sizes -------------------------------------------------------------------------------------------
    @property
    def uses_semantics(self) -> bool:
        return self.variant != "vanilla"

    @property
    def embed_patch(self) -> int:
        return 2 * self.patch_size if self.variant == "cascade" else self.patch_size

    @property
    def size_multiple(self) -> int:
        """Input sides must be multiples of this (patching, and the H/16 semantic grid)."""
        m = self.embed_patch
        return math.lcm(m, SEMANTIC_STRIDE) if self.uses_semantics else m

    def config(self) -> dict:
        return dict(
            hidden_size=self.hidden_size,
            depth=self.depth,
            num_heads=self.num_heads,
            patch_size=self.patch_size,
            mlp_ratio=self.mlp_ratio,
            semantic_dim=self.semantic_dim,
            coarse_depth=self.coarse_depth or None,
            rope_base=self.rope_base,
            variant=self.variant,
            in_channels=self.in_channels,
            out_channels=self.out_channels,
        )

    def initialize_weights(self) -> None:
        def basic(m: nn.Module) -> None:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

        self.apply(basic)
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        for layer in (self.t_embedder.mlp[0], self.t_embedder.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
        # adaLN-Zero: every gate, shift and scale starts at zero, so every block starts as the identity.
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for layer in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    # --- forward -----------------------------------------------------------------------------------------
    def _check_inputs(self, x_t, image, semantics, t) -> None:
        if x_t.ndim != 4 or x_t.shape[1] != self.in_channels - 3:
            raise ValueError(f"x_t must be (B, {self.in_channels - 3}, H, W), got {tuple(x_t.shape)}")
        if (
            image.ndim != 4
            or image.shape[1] != 3
            or image.shape[0] != x_t.shape[0]
            or image.shape[2:] != x_t.shape[2:]
        ):
            raise ValueError(
                f"image must be (B, 3, H, W) matching x_t {tuple(x_t.shape)}, got {tuple(image.shape)}"
            )
        H, W = x_t.shape[-2:]
        m = self.size_multiple
        if H % m or W % m:
            raise ValueError(f"input height and width must be multiples of {m}, got {H}x{W}")
        if t.ndim != 1 or t.shape[0] not in (1, x_t.shape[0]):
            raise ValueError(f"t must be (B,) or (1,) with values in [0, 1], got shape {tuple(t.shape)}")
        if self.uses_semantics:
            n = (H // SEMANTIC_STRIDE) * (W // SEMANTIC_STRIDE)
            if semantics is None:
                raise ValueError(
                    f"the {self.variant} variant needs semantic tokens (B, {n}, {self.semantic_dim})"
                )
            if semantics.ndim != 3 or semantics.shape[1:] != (n, self.semantic_dim):
                raise ValueError(
                    f"semantics must be (B, H/16*W/16, C) = (B, {n}, {self.semantic_dim}) for a {H}x{W} input, "
                    f"got {tuple(semantics.shape)}"
                )

    def _run_block(
        self, block: DiTBlock, x: torch.Tensor, c: torch.Tensor, grid: tuple[int, int]
    ) -> torch.Tensor:
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, x, c, grid, use_reentrant=False)
        return block(x, c, grid)

    def _fuse(
        self, x: torch.Tensor, semantics: torch.Tensor, grid: tuple[int, int], image_hw
    ) -> torch.Tensor:
        B = x.shape[0]
        sem_grid = (image_hw[0] // SEMANTIC_STRIDE, image_hw[1] // SEMANTIC_STRIDE)
        if sem_grid != grid:
            # Bring the semantic tokens onto the DiT's token grid (SP-DiT, or a non-default patch size).
            s = semantics.transpose(1, 2).reshape(B, -1, *sem_grid)
            s = F.interpolate(s.float(), size=grid, mode="bilinear", align_corners=False).to(semantics.dtype)
            semantics = s.flatten(2).transpose(1, 2)
        x = fuse_semantics(self.proj_fusion, x, semantics)
        return unfold_coarse(x, grid) if self.variant == "cascade" else x

    def unpatchify(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        return unpatchify(x, H, W, self.patch_size, self.out_channels)

    def forward(
        self, x_t: torch.Tensor, image: torch.Tensor, semantics: torch.Tensor | None, t: torch.Tensor
    ) -> torch.Tensor:
        """x_t (B,1,H,W) noisy target; image (B,3,H,W) in [0,1]; semantics (B, H/16*W/16, C) raw tokens
        (normalised here); t (B,) in [0,1] (official timestep / 1000). Returns the velocity (B,1,H,W)."""
        t = t.reshape(1) if t.ndim == 0 else t
        self._check_inputs(x_t, image, semantics, t)
        H, W = x_t.shape[-2:]
        x = self.x_embedder(torch.cat([x_t, image - 0.5], dim=1).to(self.x_embedder.proj.weight.dtype))
        c = self.t_embedder(t)
        if c.shape[0] != x.shape[0]:
            c = c.expand(x.shape[0], -1)
        grid = (H // self.embed_patch, W // self.embed_patch)
        for i, block in enumerate(self.blocks):
            x = self._run_block(block, x, c, grid)
            if self.uses_semantics and i == self.coarse_depth - 1:
                x = self._fuse(x, semantics, grid, (H, W))
                grid = (H // self.patch_size, W // self.patch_size)
        return self.unpatchify(self.final_layer(x, c), H, W)

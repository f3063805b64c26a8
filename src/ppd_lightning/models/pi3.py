"""Pi3's semantics: the semantic encoder of Pixel-Perfect Video Depth (PPVD).

Pi3 is a feed-forward 3-D reconstruction model; PPVD uses its encoder and decoder, not its heads:

* the encoder is a DINOv2 with register tokens, i.e. :class:`SemanticEncoder` with ``kind="pi3"``
  (bilinear resize to (H/16*14, W/16*14), ImageNet normalisation, final-norm patch tokens);
* the decoder is a stack of pre-norm ViT blocks whose attention alternates between *within one frame*
  (even block index) and *across every frame of the clip* (odd index), with 2-D RoPE (base 100) and
  per-head qk-LayerNorm (:class:`~ppd_lightning.models.dit.Attention`, the image DiT's attention);
  each frame gets ``register_tokens`` learnt tokens at position (0, 0) in front of its patches, which
  sit at (row + 1, col + 1);
* the output is the last two blocks' tokens concatenated on channels (second-last, last), the register
  tokens dropped: (N, H/16*W/16, 2 * decoder width).

A clip is one call: ``Pi3Semantics(frames)`` with frames (N, 3, H, W) in [0, 1] lets every frame see the
others in the global blocks, so the tokens of a frame depend on the clip it is in.
"""

from __future__ import annotations

import torch
from timm.layers import LayerScale, Mlp
from torch import nn

from ppd_lightning.models.dit import Attention, Rope2D, RopeTables
from ppd_lightning.models.semantics import SemanticEncoder


class Pi3Block(nn.Module):
    """x + ls1 * attn(LN(x)), then x + ls2 * MLP(LN(x)); parameter names as in Pi3's ``decoder.{i}``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, rope: Rope2D):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, rope)
        self.ls1 = LayerScale(dim, init_values=1.0)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)
        self.ls2 = LayerScale(dim, init_values=1.0)

    def forward(self, x: torch.Tensor, positions: RopeTables) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), positions))
        return x + self.ls2(self.mlp(self.norm2(x)))


class Pi3Semantics(nn.Module):
    """Frozen Pi3 encoder + decoder: one clip (N, 3, H, W) in [0, 1], sides multiples of 16 ->
    (N, H/16 * W/16, ``dim_out``) tokens, ``dim_out`` = 2 * decoder width.

    ``origin`` says where the weights came from (set by the loader), ``spec()`` the sizes.
    """

    kind = "pi3"

    def __init__(
        self,
        encoder: SemanticEncoder,
        decoder_depth: int = 36,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        register_tokens: int = 5,
        rope_base: float = 100.0,
    ):
        super().__init__()
        if encoder.kind != "pi3":
            raise ValueError(f"Pi3's semantics need a kind='pi3' encoder, got kind={encoder.kind!r}")
        if decoder_depth < 2:
            raise ValueError(
                f"the decoder's output concatenates its last two blocks: need >= 2, got {decoder_depth}"
            )
        dim = encoder.dim_out  # Pi3 feeds the encoder's tokens to the decoder without a projection
        self.encoder = encoder
        self.rope = Rope2D(rope_base)
        self.decoder = nn.ModuleList(
            Pi3Block(dim, num_heads, mlp_ratio, self.rope) for _ in range(decoder_depth)
        )
        self.register_token = nn.Parameter(torch.zeros(1, 1, register_tokens, dim))
        nn.init.normal_(self.register_token, std=1e-6)
        self.dim, self.num_heads, self.registers = dim, num_heads, register_tokens
        self.dim_out = 2 * dim
        self.stride = encoder.stride
        self._arch = dict(
            kind="pi3",
            encoder={k: v for k, v in encoder.spec().items() if k != "weights"},
            decoder_depth=decoder_depth,
            decoder_heads=num_heads,
            mlp_ratio=float(mlp_ratio),
            register_tokens=register_tokens,
            rope_base=float(rope_base),
        )
        self.origin: dict = {}
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> Pi3Semantics:
        return super().train(False)  # frozen, like SemanticEncoder

    def spec(self) -> dict:
        return {**self._arch, **self.origin}

    def positions(self, grid_h: int, grid_w: int, device: torch.device) -> RopeTables:
        """RoPE tables of one frame's tokens: the registers at (0, 0), then the patches at (r + 1, c + 1)."""
        n = self.registers
        rows = torch.arange(1, grid_h + 1, device=device).repeat_interleave(grid_w)
        cols = torch.arange(1, grid_w + 1, device=device).repeat(grid_h)
        zeros = torch.zeros(n, dtype=rows.dtype, device=device)
        return self.rope.tables_at(
            torch.cat([zeros, rows]), torch.cat([zeros, cols]), self.dim // self.num_heads
        )

    @torch.no_grad()
    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise ValueError(f"frames must be one clip (N, 3, H, W) RGB in [0, 1], got {tuple(frames.shape)}")
        N, _, H, W = frames.shape
        x = self.encoder(frames)  # (N, P, C): checks the size
        gh, gw = H // self.stride, W // self.stride
        x = torch.cat([self.register_token[0].expand(N, -1, -1).to(x.dtype), x], dim=1)  # (N, R + P, C)
        S, C = x.shape[1:]
        frame = self.positions(gh, gw, x.device)
        clip = RopeTables(frame.cos.repeat(N, 1), frame.sin.repeat(N, 1))
        outputs = []
        for i, block in enumerate(self.decoder):
            if i % 2 == 0:  # within each frame
                x = block(x.reshape(N, S, C), frame)
            else:  # one sequence of every frame's tokens
                x = block(x.reshape(1, N * S, C), clip)
            if i >= len(self.decoder) - 2:
                outputs.append(x.reshape(N, S, C))
        return torch.cat(outputs, dim=-1)[:, self.registers :]

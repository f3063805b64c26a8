"""Training losses. Masks are bool (B,1,H,W); every loss is a mean over valid pixels of the batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over valid pixels (the velocity loss), as the release: sum(m * (p - t)^2) /
    (sum(m) + 1e-6). Zero, with a gradient, if none is valid."""
    m = mask.to(pred.dtype)
    return ((pred - target) ** 2 * m).sum() / (m.sum() + 1e-6)


class MultiScaleGradientLoss(torch.nn.Module):
    """MiDaS-style gradient matching on the residual r = pred - target at ``scales`` scales (stride 2^k).

    At each scale: sum over valid neighbour pairs of |dr/dx| + |dr/dy|, divided by the number of valid
    pixels; the scales are summed. It penalises edges that are blurred or misplaced while ignoring a global
    offset, which the velocity loss alone under-weights.
    """

    def __init__(self, scales: int = 4):
        super().__init__()
        if scales < 1:
            raise ValueError(f"gradient loss needs >= 1 scale, got {scales}")
        self.scales = scales

    @staticmethod
    def single_scale(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.to(pred.dtype)
        r = (pred - target) * m
        gx = (r[..., :, 1:] - r[..., :, :-1]).abs() * (m[..., :, 1:] * m[..., :, :-1])
        gy = (r[..., 1:, :] - r[..., :-1, :]).abs() * (m[..., 1:, :] * m[..., :-1, :])
        return (gx.sum() + gy.sum()) / m.sum().clamp_min(1.0)

    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        total = pred.new_zeros(())
        for k in range(self.scales):
            s = 2**k
            total = total + self.single_scale(pred[..., ::s, ::s], target[..., ::s, ::s], mask[..., ::s, ::s])
        return total


def semantic_alignment_loss(
    features: torch.Tensor,
    semantics: torch.Tensor,
    projector: torch.nn.Module,
    grid: tuple[int, int],
    semantic_grid: tuple[int, int],
) -> torch.Tensor:
    """REPA-style alignment (ablation only; the paper finds it hurts): 1 - cosine similarity between the
    projected DiT tokens (B, gh*gw, D) and the frozen semantic tokens (B, sh*sw, C), compared on the
    semantic grid (the projected tokens are resized bilinearly in 2D when the grids differ)."""
    z = projector(features)
    B, _, C = z.shape
    if tuple(grid) != tuple(semantic_grid):
        z = z.transpose(1, 2).reshape(B, C, *grid)
        z = F.interpolate(z, size=tuple(semantic_grid), mode="bilinear", align_corners=False)
        z = z.flatten(2).transpose(1, 2)
    return 1 - F.cosine_similarity(z, semantics.to(z.dtype), dim=-1).mean()

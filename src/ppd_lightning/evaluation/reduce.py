"""Accurate, fast per-row sums for the evaluation code.

``x.sum(dtype=torch.float64)`` on a float32 tensor converts every element to float64 first, which
on a CPU costs about 15x a float32 sum (30 ms against 2 ms for 11 M values). Summing blocks of
1,024 values in float32 (pairwise inside a block, error ~1e-7 of the block's sum) and the block
sums in float64 keeps the float64 accuracy that matters for million-pixel maps at the float32 price.
"""

from __future__ import annotations

import torch

__all__ = ["sum_f64"]

_BLOCK = 1024


def sum_f64(x: torch.Tensor) -> torch.Tensor:
    """Sum over every dimension but the first; returns float64 of shape (B,).

    Bool and integer inputs are counted exactly (converted to float32 blocks of at most 1,024,
    whose sums are exact integers).
    """
    if x.dim() == 0:
        raise ValueError("sum_f64 expects a batch dimension")
    flat = x.reshape(x.shape[0], -1)
    if flat.dtype == torch.float64:
        return flat.sum(1)
    if not flat.is_floating_point() or flat.dtype in (torch.float16, torch.bfloat16):
        flat = flat.to(torch.float32)
    rows, n = flat.shape
    k = n // _BLOCK
    total = flat[:, k * _BLOCK :].to(torch.float64).sum(1)
    if k:
        # a view, not a copy: each row's first k*1024 entries are contiguous
        blocks = flat[:, : k * _BLOCK].reshape(rows, k, _BLOCK).sum(2)
        total = total + blocks.to(torch.float64).sum(1)
    return total

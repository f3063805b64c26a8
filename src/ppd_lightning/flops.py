"""FLOP counting that also sees attention on the CPU, on every torch release.

``torch.utils.flop_counter.FlopCounterMode`` has formulas for the CUDA attention kernels (flash,
memory-efficient, cuDNN). Older releases have none for ``_scaled_dot_product_flash_attention_for_cpu``,
the kernel ``F.scaled_dot_product_attention`` runs on a CPU, and count attention there as 0 FLOPs, which
understates a transformer's work (by 25 % for the base Cas-DiT at 1,536 tokens) and every achieved-FLOP/s
figure derived from it; newer releases (2.15) count it themselves. :func:`count_flops` supplies the two CPU
formulas only for the ops torch has no formula for, so CPU, CUDA and meta-device counts agree whatever the
release, and attention is never counted twice (a custom formula replaces, never adds to, torch's).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode, flop_registry, sdpa_backward_flop_count, sdpa_flop_count

__all__ = ["count_flops", "flop_counter"]


def _cpu_flash_forward(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_flash_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


_CPU_KERNELS = {
    "_scaled_dot_product_flash_attention_for_cpu": _cpu_flash_forward,
    "_scaled_dot_product_flash_attention_for_cpu_backward": _cpu_flash_backward,
}


def _missing_cpu_formulas() -> dict:
    """Our formulas for the CPU attention kernels that this torch has but does not count."""
    formulas = {}
    for name, formula in _CPU_KERNELS.items():
        op = getattr(torch.ops.aten, name, None)
        if op is not None and op not in flop_registry:
            formulas[op] = formula
    return formulas


def flop_counter() -> FlopCounterMode:
    """A ``FlopCounterMode`` (no display) that also counts CPU attention."""
    return FlopCounterMode(display=False, custom_mapping=_missing_cpu_formulas())


def count_flops(fn: Callable[[], object]) -> int:
    """Total FLOPs of running ``fn()`` (forward, backward, whatever it does), attention included."""
    with flop_counter() as counter:
        fn()
    return counter.get_total_flops()

"""Distributed strategies that need Python objects a YAML config cannot spell (module classes)."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.strategies import FSDPStrategy

from ppd_lightning.models.dit import CascadeSPDiT, DiTBlock

# One FSDP unit per DiT block, plus one per whole DiT for its remaining parameters (embedders, fusion MLP,
# final layer). The training DiT and its EMA copy are then sharded identically, unit for unit, so the EMA
# update can pair their local shards; the frozen encoder stays in the root unit.
FSDP_UNITS = {DiTBlock, CascadeSPDiT}


def fsdp_strategy(activation_checkpointing: bool = False, **kwargs: Any) -> FSDPStrategy:
    """``FSDPStrategy`` with the DiT's wrap policy (and, optionally, activation checkpointing of its
    blocks); other keyword arguments (``sharding_strategy``, ``state_dict_type``, ...) pass through."""
    if "auto_wrap_policy" in kwargs:
        raise ValueError("fsdp_strategy sets auto_wrap_policy itself (one unit per DiT block and per DiT)")
    return FSDPStrategy(
        auto_wrap_policy=set(FSDP_UNITS),
        activation_checkpointing_policy={DiTBlock} if activation_checkpointing else None,
        **kwargs,
    )

"""Building the frozen semantic encoder from a config: released weights, or (tests/demo only) random."""

from __future__ import annotations

import warnings

import torch

from ppd_lightning.models.semantics import SemanticEncoder


def build_semantic_encoder(
    weights: str | None = None,
    size: str | None = "vitl",
    allow_random: bool = False,
    random_seed: int = 0,
    num_heads: int | None = None,
    **arch,
) -> SemanticEncoder:
    """``weights``: a ``depth_anything_v2_vit*.pth`` or DINOv2 state-dict file (sizes inferred).
    Without weights a randomly initialised encoder is built only if ``allow_random`` (with a warning),
    from ``size`` (vits/vitb/vitl/vitg) or explicit ``embed_dim``/``depth``/``num_heads`` in ``arch``;
    its initialisation is a function of ``random_seed`` alone, so a checkpoint can rebuild it exactly."""
    if weights:
        from ppd_lightning.official import load_semantic_encoder

        return load_semantic_encoder(weights, **({"num_heads": num_heads} if num_heads else {}))
    if not allow_random:
        raise ValueError(
            "model.encoder.weights is not set: give the Depth Anything V2 checkpoint "
            "(model.encoder.weights=depth_anything_v2_vitl.pth), or model.encoder.allow_random=true for a demo"
        )
    label = size if not arch else f"custom {arch}"
    warnings.warn(
        f"Using a RANDOMLY INITIALISED semantic encoder ({label}, seed {random_seed}): its tokens carry no "
        "semantics. Fine for tests and the CPU demo; set model.encoder.weights for real training.",
        stacklevel=2,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(random_seed)
        if arch:
            if num_heads:
                arch["num_heads"] = num_heads
            return SemanticEncoder(**arch)
        return SemanticEncoder.from_size(size, **({"num_heads": num_heads} if num_heads else {}))

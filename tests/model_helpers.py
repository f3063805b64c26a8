"""Tiny models and the reference-fixture location, shared by the model tests."""

import os
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def reference_dir() -> Path:
    return Path(os.environ.get("PPD_REFERENCE_DIR", REPO.parent / "shared" / "reference"))


def tiny_dit(variant="cascade", **kw):
    from ppd_lightning.models import CascadeSPDiT

    cfg = dict(hidden_size=32, depth=4, num_heads=2, patch_size=4, semantic_dim=24, variant=variant)
    cfg.update(kw)
    return CascadeSPDiT(**cfg)


def tiny_encoder(dim=24, depth=1, heads=2):
    from ppd_lightning.models import SemanticEncoder

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SemanticEncoder(embed_dim=dim, depth=depth, num_heads=heads, img_size=56)


def randomize(module: torch.nn.Module, std: float = 0.05, seed: int = 0) -> torch.nn.Module:
    """Random weights everywhere (the zero init would hide mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module

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


MOGE2_NON_SEMANTIC = ("neck.", "points_head.", "mask_head.", "normal_head.", "scale_head.")


def moge2_checkpoint(
    embed_dim=64, depth=3, intermediate_layers=2, dim_out=96, img_size=56, seed=0, std=0.05
) -> dict:
    """A tiny checkpoint in MoGe-2's ``moge2.pt`` format (``{"model_config", "model"}``), random weights.

    The backbone is written tensor by tensor under DINOv2's names (64-wide heads), with ``mask_token``,
    the normalisation buffers, and neck/head tensors that are not semantics."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(shape, generator=g) * std

    C, grid = embed_dim, img_size // 14
    n_layers = intermediate_layers if isinstance(intermediate_layers, int) else len(intermediate_layers)
    sd = {
        "encoder.backbone.cls_token": rnd(1, 1, C),
        "encoder.backbone.mask_token": torch.zeros(1, C),
        "encoder.backbone.pos_embed": rnd(1, grid * grid + 1, C),
        "encoder.backbone.patch_embed.proj.weight": rnd(C, 3, 14, 14),
        "encoder.backbone.patch_embed.proj.bias": rnd(C),
        "encoder.backbone.norm.weight": 1 + rnd(C),
        "encoder.backbone.norm.bias": rnd(C),
    }
    for i in range(depth):
        b = f"encoder.backbone.blocks.{i}."
        sd.update({
            b + "norm1.weight": 1 + rnd(C), b + "norm1.bias": rnd(C),
            b + "attn.qkv.weight": rnd(3 * C, C) * 2, b + "attn.qkv.bias": rnd(3 * C),  # peaked attention
            b + "attn.proj.weight": rnd(C, C), b + "attn.proj.bias": rnd(C),
            b + "ls1.gamma": 1 + rnd(C),
            b + "norm2.weight": 1 + rnd(C), b + "norm2.bias": rnd(C),
            b + "mlp.fc1.weight": rnd(4 * C, C), b + "mlp.fc1.bias": rnd(4 * C),
            b + "mlp.fc2.weight": rnd(C, 4 * C), b + "mlp.fc2.bias": rnd(C),
            b + "ls2.gamma": 1 + rnd(C),
        })  # fmt: skip
    for i in range(n_layers):
        sd[f"encoder.output_projections.{i}.weight"] = rnd(dim_out, C, 1, 1)
        sd[f"encoder.output_projections.{i}.bias"] = rnd(dim_out)
    sd["encoder.image_mean"] = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    sd["encoder.image_std"] = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    for prefix in MOGE2_NON_SEMANTIC:
        sd[prefix + "stub.weight"] = rnd(2, 2)
    config = {
        "encoder": {
            "backbone": "dinov2_vitl14",
            "intermediate_layers": intermediate_layers,
            "dim_out": dim_out,
        },
        "neck": {"dim_in": [dim_out + 2, 2], "dim_out": [8, 8]},
        "remap_output": "exp",
    }
    return {"model_config": config, "model": sd}


def save_moge2(path, **kw) -> Path:
    torch.save(moge2_checkpoint(**kw), path)
    return Path(path)

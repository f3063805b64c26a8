"""Tiny models and the reference-fixture location, shared by the model tests."""

import json
import os
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def reference_dir() -> Path:
    return Path(os.environ.get("PPD_REFERENCE_DIR", REPO.parent / "shared" / "reference"))


def reference_case(name: str) -> tuple[dict, dict]:
    """A fixture of the official code, ``<name>.safetensors`` and its ``<name>.json`` (skips when absent)."""
    import pytest
    from safetensors.torch import load_file

    path = reference_dir() / f"{name}.safetensors"
    if not path.is_file():
        pytest.skip(f"reference fixture {path} not found (set PPD_REFERENCE_DIR)")
    return load_file(str(path)), json.loads((reference_dir() / f"{name}.json").read_text())


def fixture_state_dict(tensors: dict) -> dict:
    """The ``state_dict.*`` tensors of a fixture, without the prefix."""
    return {k[len("state_dict.") :]: v for k, v in tensors.items() if k.startswith("state_dict.")}


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


def released_dit_checkpoint(prefix="dit.", seed=0, **kw) -> dict:
    """A tiny DiT state dict in the released ``ppd.pth`` layout (every key under ``prefix``); ``prefix=
    "dit_video."`` gives ``ppvd.pth``'s prefix (with the image DiT's keys below it: a stand-in for checks
    that read the layout, not for loading a video DiT)."""
    dit = randomize(tiny_dit(**kw), seed=seed)
    return {prefix + k: v for k, v in dit.state_dict().items()}


def da2_checkpoint(dim=64, depth=1, seed=0) -> dict:
    """A tiny ``depth_anything_v2_vit*.pth``: the DINOv2 under 'pretrained.', ``mask_token``, a depth-head
    tensor (not semantics)."""
    enc = randomize(tiny_encoder(dim=dim, depth=depth, heads=max(1, dim // 64)), seed=seed)
    sd = {f"pretrained.{k}": v for k, v in enc.vit.state_dict().items()}
    sd["pretrained.mask_token"] = torch.zeros(1, dim)
    sd["depth_head.projects.0.weight"] = torch.zeros(4, dim, 1, 1)
    return sd


PI3_NON_SEMANTIC = (
    "point_decoder.",
    "point_head.",
    "conf_decoder.",
    "conf_head.",
    "camera_decoder.",
    "camera_head.",
)


def pi3_checkpoint(
    embed_dim=32, depth=1, decoder_dim=32, decoder_depth=2, registers=4, img_size=56, seed=0
) -> dict:
    """A tiny state dict in Pi3's ``model.safetensors`` layout (random weights): the DINOv2 with registers
    under 'encoder.' (``encoder.register_tokens``, no ``mask_token``), the decoder blocks 'decoder.{i}.*'
    (qk-normed attention, layer scale), ``register_token`` (1, 1, 5, width), the normalisation buffers, and
    stand-ins for the point/conf/camera decoders and heads (not semantics)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(shape, generator=g) * 0.05

    def block(prefix, C, qk_norm):
        sd = {
            prefix + "norm1.weight": 1 + rnd(C), prefix + "norm1.bias": rnd(C),
            prefix + "attn.qkv.weight": rnd(3 * C, C), prefix + "attn.qkv.bias": rnd(3 * C),
            prefix + "attn.proj.weight": rnd(C, C), prefix + "attn.proj.bias": rnd(C),
            prefix + "ls1.gamma": 1 + rnd(C),
            prefix + "norm2.weight": 1 + rnd(C), prefix + "norm2.bias": rnd(C),
            prefix + "mlp.fc1.weight": rnd(4 * C, C), prefix + "mlp.fc1.bias": rnd(4 * C),
            prefix + "mlp.fc2.weight": rnd(C, 4 * C), prefix + "mlp.fc2.bias": rnd(C),
            prefix + "ls2.gamma": 1 + rnd(C),
        }  # fmt: skip
        if qk_norm:
            head = min(C, 64)
            for n in ("q_norm", "k_norm"):
                sd[f"{prefix}attn.{n}.weight"], sd[f"{prefix}attn.{n}.bias"] = 1 + rnd(head), rnd(head)
        return sd

    C, grid = embed_dim, img_size // 14
    sd = {
        "encoder.cls_token": rnd(1, 1, C),
        "encoder.register_tokens": rnd(1, registers, C),
        "encoder.pos_embed": rnd(1, grid * grid + 1, C),
        "encoder.patch_embed.proj.weight": rnd(C, 3, 14, 14),
        "encoder.patch_embed.proj.bias": rnd(C),
        "encoder.norm.weight": 1 + rnd(C),
        "encoder.norm.bias": rnd(C),
        "register_token": rnd(1, 1, 5, decoder_dim),
        "image_mean": torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1),
        "image_std": torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1),
    }
    for i in range(depth):
        sd.update(block(f"encoder.blocks.{i}.", C, qk_norm=False))
    for i in range(decoder_depth):
        sd.update(block(f"decoder.{i}.", decoder_dim, qk_norm=True))
    for prefix in PI3_NON_SEMANTIC:
        sd[prefix + "stub.weight"], sd[prefix + "stub.bias"] = rnd(8, 4), rnd(8)
    return sd


def tiny_video_dit(seed=0, **kw):
    """A tiny random VideoDiT: 32x32 input (2x2 coarse grid, the semantic grid), 4 blocks, one temporal
    block, reference tokens from block 3 on."""
    from ppd_lightning.models.video_dit import VideoDiT

    cfg = dict(
        hidden_size=32, depth=4, num_heads=2, patch_size=8, semantic_dim=64, input_size=32,
        temporal_depth=1, reference_from=3,
    )  # fmt: skip
    cfg.update(kw)
    return randomize(VideoDiT(**cfg), seed=seed)


def video_dit_checkpoint(seed=0, **kw) -> dict:
    """A tiny ``ppvd.pth``: the video DiT's state dict under 'dit_video.' (random weights, the sin-cos
    position embedding kept)."""
    dit = tiny_video_dit(seed=seed, **kw)
    with torch.no_grad():
        from ppd_lightning.models.video_dit import sincos_pos_embed

        dit.pos_embed.copy_(sincos_pos_embed(dit.hidden_size, dit.grid)[None])
    return {"dit_video." + k: v for k, v in dit.state_dict().items()}

"""Loading the released Pixel-Perfect Depth weights: ``ppd.pth`` (DiT) and ``depth_anything_v2_vit*.pth``
(its DINOv2 part is the semantic encoder). Every size is inferred from the weights; keys must match
exactly: a missing or unexpected key is an error that lists them (nothing is silently dropped).

Files are read with ``torch.load(..., weights_only=True)`` (no pickle code execution) or safetensors.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

import torch

from ppd_lightning.models.dit import CascadeSPDiT
from ppd_lightning.models.ppd import PixelPerfectDepth
from ppd_lightning.models.semantics import SemanticEncoder

StateSource = str | os.PathLike | Mapping[str, torch.Tensor]

# Keys of depth_anything_v2_*.pth / DINOv2 that the semantic encoder does not use, by design.
_UNUSED_ENCODER_KEYS = ("mask_token",)
_UNUSED_ENCODER_PREFIXES = ("depth_head.",)


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and what was expected."""


def read_state_dict(source: StateSource) -> tuple[dict[str, torch.Tensor], str]:
    """Path (.pth/.pt/.bin via weights_only torch.load, or .safetensors) or mapping -> (tensors, name)."""
    if isinstance(source, Mapping):
        return dict(source), "<state dict>"
    path = Path(source)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path), device="cpu")
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any reader failure is one clear error naming the file
        raise CheckpointError(
            f"{path}: cannot read checkpoint ({type(e).__name__}: {e})".splitlines()[0]
        ) from e
    if isinstance(sd, Mapping) and isinstance(sd.get("state_dict"), Mapping):
        sd = sd["state_dict"]  # a plain state dict saved inside a wrapper
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors, got {type(sd).__name__}")
    return dict(sd), str(path)


def take_prefix(sd: dict[str, torch.Tensor], prefix: str, name: str, ignore: tuple[str, ...] = ()) -> dict:
    """Keys under ``prefix`` (stripped) when any key has it; other keys are an error unless ignored."""
    if not any(k.startswith(prefix) for k in sd):
        return sd
    other = [k for k in sd if not k.startswith(prefix) and not k.startswith(ignore)]
    if other:
        raise CheckpointError(f"{name}: unexpected keys outside '{prefix}*': {_preview(other)}")
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def _preview(keys: list[str], n: int = 8) -> str:
    keys = sorted(keys)
    more = f" ... (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def _require(sd: Mapping, key: str, name: str) -> torch.Tensor:
    if key not in sd:
        raise CheckpointError(
            f"{name}: missing key '{key}' (is this a Pixel-Perfect Depth / DINOv2 checkpoint?)"
        )
    return sd[key]


def load_strict(module: torch.nn.Module, sd: Mapping[str, torch.Tensor], name: str) -> None:
    """load_state_dict that reports missing/unexpected keys and shape mismatches in one error line."""
    own = module.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong = [
        f"{k} {tuple(sd[k].shape)} != {tuple(own[k].shape)}"
        for k in own
        if k in sd and sd[k].shape != own[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_preview(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_preview(unexpected)}")
    if wrong:
        problems.append(f"shape mismatches: {_preview(wrong, 4)}")
    if problems:
        raise CheckpointError(f"{name}: " + "; ".join(problems))
    module.load_state_dict(sd, strict=True)


def infer_dit_config(sd: Mapping[str, torch.Tensor], name: str = "<state dict>") -> dict:
    """Every DiT size from the weights (keys without the 'dit.' prefix)."""
    embed = _require(sd, "x_embedder.proj.weight", name)  # (hidden, in_ch, P, P)
    hidden, in_channels, embed_patch = embed.shape[0], embed.shape[1], embed.shape[2]
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    if depth == 0:
        raise CheckpointError(f"{name}: no 'blocks.*' keys: not a DiT state dict")
    head_dim = _require(sd, "blocks.0.attn.q_norm.weight", name).shape[0]
    mlp_hidden = _require(sd, "blocks.0.mlp.fc1.weight", name).shape[0]
    final = _require(sd, "final_layer.linear.weight", name).shape[0]
    if "proj_fusion.0.weight" not in sd:
        variant, semantic_dim, fine_patch = "vanilla", 0, embed_patch
    else:
        semantic_dim = sd["proj_fusion.0.weight"].shape[1] - hidden
        fused = _require(sd, "proj_fusion.4.weight", name).shape[0]
        variant = "cascade" if fused == 4 * hidden else "sp_dit"
        fine_patch = embed_patch // 2 if variant == "cascade" else embed_patch
    out_channels = final // (fine_patch * fine_patch)
    if out_channels * fine_patch**2 != final or hidden % head_dim:
        raise CheckpointError(f"{name}: inconsistent DiT shapes (final layer {final}, head dim {head_dim})")
    return dict(
        hidden_size=hidden,
        depth=depth,
        num_heads=hidden // head_dim,
        patch_size=fine_patch,
        mlp_ratio=mlp_hidden / hidden,
        semantic_dim=semantic_dim or 1024,
        variant=variant,
        in_channels=in_channels,
        out_channels=out_channels,
    )


def load_dit(source: StateSource, **overrides) -> CascadeSPDiT:
    """The released ``ppd.pth`` (or a DiT state dict, with or without the 'dit.' prefix) -> CascadeSPDiT.

    ``overrides`` set what weights cannot tell (``coarse_depth``, ``rope_base``, ``grad_checkpointing``).
    """
    sd, name = read_state_dict(source)
    sd = take_prefix(sd, "dit.", name)
    cfg = infer_dit_config(sd, name) | overrides
    dit = CascadeSPDiT(**cfg)
    load_strict(dit, sd, name)
    return dit.eval()


def infer_encoder_config(sd: Mapping[str, torch.Tensor], name: str = "<state dict>") -> dict:
    patch = _require(sd, "patch_embed.proj.weight", name)  # (dim, 3, p, p)
    dim, p = patch.shape[0], patch.shape[-1]
    n = _require(sd, "pos_embed", name).shape[1] - 1
    grid = math.isqrt(n)
    if grid * grid != n:
        raise CheckpointError(f"{name}: pos_embed has {n} patch positions, expected a square grid")
    if any(k.startswith("register_tokens") for k in sd):
        raise CheckpointError(f"{name}: DINOv2 with registers is not the Depth Anything V2 encoder")
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    swiglu = "blocks.0.mlp.w12.weight" in sd
    fc1 = _require(sd, "blocks.0.mlp.w12.weight" if swiglu else "blocks.0.mlp.fc1.weight", name)
    return dict(
        embed_dim=dim,
        depth=depth,
        num_heads=max(1, dim // 64),  # every DINOv2 size has 64-dim heads; weights cannot tell
        patch_size=p,
        img_size=grid * p,
        mlp_ratio=fc1.shape[0] / dim,
        swiglu=swiglu,
        layer_scale="blocks.0.ls1.gamma" in sd,
    )


def load_semantic_encoder(source: StateSource, **overrides) -> SemanticEncoder:
    """``depth_anything_v2_vit*.pth`` (its 'pretrained.*' part; 'depth_head.*' is not used) or a plain
    DINOv2 state dict -> frozen SemanticEncoder. ``overrides`` e.g. ``num_heads`` for non-standard sizes."""
    sd, name = read_state_dict(source)
    sd = take_prefix(sd, "pretrained.", name, ignore=_UNUSED_ENCODER_PREFIXES)
    sd = {k: v for k, v in sd.items() if k not in _UNUSED_ENCODER_KEYS}
    if any(k.startswith("mlp.w12") or ".mlp.w12." in k for k in sd):  # DINOv2 SwiGLU names -> timm's
        sd = {k.replace(".mlp.w12.", ".mlp.fc1.").replace(".mlp.w3.", ".mlp.fc2."): v for k, v in sd.items()}
        overrides.setdefault("swiglu", True)
        cfg_src = {**sd, "blocks.0.mlp.w12.weight": sd["blocks.0.mlp.fc1.weight"]}
    else:
        cfg_src = sd
    cfg = infer_encoder_config(cfg_src, name) | overrides
    enc = SemanticEncoder(**cfg)
    load_strict(enc.vit, sd, name)
    return enc


def load_pixel_perfect_depth(
    dit: StateSource, semantics: StateSource, steps: int = 4, **dit_overrides
) -> PixelPerfectDepth:
    """Both released files -> a ready PixelPerfectDepth (eval mode)."""
    return PixelPerfectDepth(
        load_dit(dit, **dit_overrides), load_semantic_encoder(semantics), steps=steps
    ).eval()

"""The released Pixel-Perfect Depth weights: the DiTs (``ppd.pth``, ``ppd_moge.pth``, or a DiT exported
by :func:`ppd_lightning.weights.export_dit`) and their semantic encoders: ``depth_anything_v2_vit*.pth``
(its DINOv2 part), a plain DINOv2 state dict, or MoGe-2's ``moge2.pt`` (``{"model_config", "model"}``: its
DINOv2 backbone and output projections). Every size is inferred from the weights; keys must match exactly:
a missing or unexpected key is an error that lists them (nothing is silently dropped).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from ppd_lightning.errors import CheckpointError
from ppd_lightning.models.dit import CascadeSPDiT
from ppd_lightning.models.ppd import PixelPerfectDepth
from ppd_lightning.models.semantics import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SemanticEncoder,
    resolve_layers,
)
from ppd_lightning.weights.checkpoints import dit_state
from ppd_lightning.weights.files import (
    StateSource,
    as_state_dict,
    load_strict,
    preview,
    read_object,
    require,
    take_prefix,
)

__all__ = [
    "infer_dit_config",
    "infer_encoder_config",
    "is_moge2_checkpoint",
    "load_dit",
    "load_pixel_perfect_depth",
    "load_semantic_encoder",
]

# Keys of depth_anything_v2_*.pth / DINOv2 that the semantic encoder does not use, by design.
_UNUSED_ENCODER_KEYS = ("mask_token",)
_UNUSED_ENCODER_PREFIXES = ("depth_head.",)
# MoGe-2 (moge2.pt 'model'): the semantics are encoder.backbone.* + encoder.output_projections.*; the
# neck and the heads are not semantics. Anything else is an error.
MOGE2_BACKBONE, MOGE2_PROJECTIONS = "encoder.backbone.", "encoder.output_projections."
MOGE2_NORMALISATION_KEYS = ("encoder.image_mean", "encoder.image_std")
MOGE2_IGNORED_PREFIXES = ("neck.", "points_head.", "mask_head.", "normal_head.", "scale_head.")


def infer_dit_config(sd: Mapping[str, torch.Tensor], name: str = "<state dict>") -> dict:
    """Every DiT size from the weights (keys without the 'dit.' prefix)."""
    embed = require(sd, "x_embedder.proj.weight", name)  # (hidden, in_ch, P, P)
    hidden, in_channels, embed_patch = embed.shape[0], embed.shape[1], embed.shape[2]
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    if depth == 0:
        raise CheckpointError(f"{name}: no 'blocks.*' keys: not a DiT state dict")
    head_dim = require(sd, "blocks.0.attn.q_norm.weight", name).shape[0]
    mlp_hidden = require(sd, "blocks.0.mlp.fc1.weight", name).shape[0]
    final = require(sd, "final_layer.linear.weight", name).shape[0]
    if "proj_fusion.0.weight" not in sd:
        variant, semantic_dim, fine_patch = "vanilla", 0, embed_patch
    else:
        semantic_dim = sd["proj_fusion.0.weight"].shape[1] - hidden
        fused = require(sd, "proj_fusion.4.weight", name).shape[0]
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

    One of our training checkpoints works too (its EMA DiT when it has one, see :func:`dit_state`).
    ``overrides`` set what weights cannot tell (``coarse_depth``, ``rope_base``, ``grad_checkpointing``).
    """
    sd, name = dit_state(source)
    cfg = infer_dit_config(sd, name) | overrides
    dit = CascadeSPDiT(**cfg)
    load_strict(dit, sd, name)
    return dit.eval()


def infer_encoder_config(sd: Mapping[str, torch.Tensor], name: str = "<state dict>") -> dict:
    patch = require(sd, "patch_embed.proj.weight", name)  # (dim, 3, p, p)
    dim, p = patch.shape[0], patch.shape[-1]
    n = require(sd, "pos_embed", name).shape[1] - 1
    grid = math.isqrt(n)
    if grid * grid != n:
        raise CheckpointError(f"{name}: pos_embed has {n} patch positions, expected a square grid")
    if any(k.startswith("register_tokens") for k in sd):
        raise CheckpointError(
            f"{name}: a DINOv2 with registers ('register_tokens'): not supported (the released PPD "
            "models' encoders, Depth Anything V2's and MoGe-2's dinov2_vit*14, have none)"
        )
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    swiglu = "blocks.0.mlp.w12.weight" in sd
    fc1 = require(sd, "blocks.0.mlp.w12.weight" if swiglu else "blocks.0.mlp.fc1.weight", name)
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


def _timm_names(sd: dict, overrides: dict) -> tuple[dict, dict]:
    """DINOv2's SwiGLU names (mlp.w12/w3, ViT-g) -> timm's; returns (state dict, dict for size inference)."""
    if any(k.startswith("mlp.w12") or ".mlp.w12." in k for k in sd):
        sd = {k.replace(".mlp.w12.", ".mlp.fc1.").replace(".mlp.w3.", ".mlp.fc2."): v for k, v in sd.items()}
        overrides.setdefault("swiglu", True)
        return sd, {**sd, "blocks.0.mlp.w12.weight": sd["blocks.0.mlp.fc1.weight"]}
    return sd, sd


def is_moge2_checkpoint(obj: object) -> bool:
    return isinstance(obj, Mapping) and "model_config" in obj and "model" in obj


def load_semantic_encoder(source: StateSource | Mapping, **overrides) -> SemanticEncoder:
    """A semantic-encoder file (path) or its loaded content -> frozen SemanticEncoder, format by content:

    - ``depth_anything_v2_vit*.pth`` (its 'pretrained.*' part; 'depth_head.*' is not used) or a plain
      DINOv2 state dict -> ``kind="da2"`` (last-block tokens, width = the ViT's);
    - MoGe-2's ``moge2.pt`` (``{"model_config": {"encoder": {"intermediate_layers", "dim_out", ...}},
      "model": state_dict}``) -> ``kind="moge2"`` (projected intermediate layers, width ``dim_out``).

    Sizes come from the weights; ``overrides`` e.g. ``num_heads`` for non-64-wide heads."""
    if isinstance(source, Mapping):
        obj, name = source, "<state dict>"
    else:
        obj, name = read_object(source)
    if is_moge2_checkpoint(obj):
        enc = _load_moge2(obj, name, dict(overrides))
    else:
        if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
            raise CheckpointError(
                f"{name}: has 'model' but no 'model_config': a MoGe-2 checkpoint needs both "
                "({'model_config': {'encoder': {...}}, 'model': state_dict})"
            )
        sd, _ = as_state_dict(obj, name) if not isinstance(source, Mapping) else (dict(obj), name)
        sd = take_prefix(sd, "pretrained.", name, ignore=_UNUSED_ENCODER_PREFIXES)
        sd = {k: v for k, v in sd.items() if k not in _UNUSED_ENCODER_KEYS}
        overrides = dict(overrides)
        sd, cfg_src = _timm_names(sd, overrides)
        cfg = infer_encoder_config(cfg_src, name) | overrides
        enc = SemanticEncoder(**cfg)
        load_strict(enc.vit, sd, name)
    if not isinstance(source, Mapping):
        enc.origin = {"weights": name}
    return enc


def _load_moge2(obj: Mapping, name: str, overrides: dict) -> SemanticEncoder:
    config = obj["model_config"]
    enc_cfg = config.get("encoder") if isinstance(config, Mapping) else None
    if not isinstance(enc_cfg, Mapping) or any(k not in enc_cfg for k in ("intermediate_layers", "dim_out")):
        raise CheckpointError(
            f"{name}: model_config['encoder'] must hold 'backbone', 'intermediate_layers' (int or list of "
            f"block indices) and 'dim_out', got {dict(enc_cfg) if isinstance(enc_cfg, Mapping) else enc_cfg!r}"
        )
    backbone_name = str(enc_cfg.get("backbone", ""))
    if "_reg" in backbone_name:
        raise CheckpointError(
            f"{name}: model_config['encoder']['backbone'] = {backbone_name!r} is a DINOv2 with registers: "
            "not supported (the released PPD-MoGe2 uses dinov2_vitl14)"
        )
    sd = obj["model"]
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{name}: 'model' must be a state dict of tensors, got {type(sd).__name__}")
    vit_sd, proj_sd, other = {}, {}, []
    for k, v in sd.items():
        if k.startswith(MOGE2_BACKBONE):
            vit_sd[k[len(MOGE2_BACKBONE) :]] = v
        elif k.startswith(MOGE2_PROJECTIONS):
            proj_sd[k[len(MOGE2_PROJECTIONS) :]] = v
        elif k in MOGE2_NORMALISATION_KEYS:
            expected = torch.tensor(IMAGENET_MEAN if k.endswith("mean") else IMAGENET_STD)
            if v.numel() != 3 or not torch.allclose(v.float().flatten(), expected, atol=1e-6):
                raise CheckpointError(
                    f"{name}: '{k}' = {v.flatten().tolist()}, expected the ImageNet {expected.tolist()}"
                )
        elif not k.startswith(MOGE2_IGNORED_PREFIXES):
            other.append(k)
    if other:
        raise CheckpointError(f"{name}: unexpected keys in 'model': {preview(other)}")
    if not vit_sd:
        raise CheckpointError(f"{name}: no '{MOGE2_BACKBONE}*' keys in 'model': not a MoGe-2 checkpoint")
    vit_sd = {k: v for k, v in vit_sd.items() if k not in _UNUSED_ENCODER_KEYS}
    vit_sd, cfg_src = _timm_names(vit_sd, overrides)
    vit_name = f"{name} ('{MOGE2_BACKBONE}*')"
    cfg = infer_encoder_config(cfg_src, vit_name)
    layers, dim_out = enc_cfg["intermediate_layers"], enc_cfg["dim_out"]
    if isinstance(layers, (list, tuple)):
        layers = list(layers)
    try:
        chosen = resolve_layers(layers, cfg["depth"])
    except ValueError as e:
        raise CheckpointError(f"{name}: model_config['encoder']: {e}") from e
    n_proj = len({k.split(".")[0] for k in proj_sd})
    if n_proj != len(chosen):
        raise CheckpointError(
            f"{name}: model_config['encoder']['intermediate_layers'] = {layers!r} selects {len(chosen)} "
            f"blocks but 'model' has {n_proj} '{MOGE2_PROJECTIONS}*' convolutions"
        )
    w = proj_sd.get("0.weight")
    if w is not None and w.shape[0] != dim_out:
        raise CheckpointError(
            f"{name}: model_config['encoder']['dim_out'] = {dim_out} but "
            f"'{MOGE2_PROJECTIONS}0.weight' has {w.shape[0]} output channels"
        )
    cfg = cfg | dict(kind="moge2", intermediate_layers=layers, dim_out=int(dim_out)) | overrides
    enc = SemanticEncoder(**cfg)
    load_strict(enc.vit, vit_sd, vit_name)
    load_strict(enc.projections, proj_sd, f"{name} ('{MOGE2_PROJECTIONS}*')")
    return enc


def load_pixel_perfect_depth(
    dit: StateSource, semantics: StateSource, steps: int = 4, **dit_overrides
) -> PixelPerfectDepth:
    """Both files of a released model -> a ready PixelPerfectDepth (eval mode): ``ppd.pth`` with
    ``depth_anything_v2_vitl.pth``, or ``ppd_moge.pth`` with ``moge2.pt``."""
    return PixelPerfectDepth(
        load_dit(dit, **dit_overrides), load_semantic_encoder(semantics), steps=steps
    ).eval()

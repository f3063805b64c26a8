"""The released Pixel-Perfect Depth DiTs (``ppd.pth``, ``ppd_moge.pth``, or a DiT exported by
:func:`~ppd_lightning.weights.checkpoints.export_dit`) and a released model from its two files (the semantic
encoders are read in :mod:`.encoders`). Every size is inferred from the weights; keys must match exactly: a
missing or unexpected key is an error that lists them (nothing is silently dropped).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ppd_lightning.errors import CheckpointError, InputError
from ppd_lightning.models.dit import CascadeSPDiT
from ppd_lightning.models.ppd import PixelPerfectDepth
from ppd_lightning.weights.checkpoints import dit_state
from ppd_lightning.weights.encoders import load_semantic_encoder
from ppd_lightning.weights.files import WeightsLike, require
from ppd_lightning.weights.hub import RELEASED, is_released_name, resolve_model_files

__all__ = ["infer_dit_config", "load_dit", "load_pixel_perfect_depth"]


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


def load_dit(source: WeightsLike, **overrides) -> CascadeSPDiT:
    """The released ``ppd.pth`` (or a DiT state dict, with or without the 'dit.' prefix) -> CascadeSPDiT.

    One of our training checkpoints works too (its EMA DiT when it has one, see :func:`dit_state`).
    ``overrides`` set what weights cannot tell (``coarse_depth``, ``rope_base``, ``grad_checkpointing``).
    """
    sd = dit_state(source)
    return sd.load_into(CascadeSPDiT(**(infer_dit_config(*sd) | overrides))).eval()


def load_pixel_perfect_depth(
    dit: WeightsLike,
    semantics: WeightsLike | None = None,
    steps: int = 4,
    *,
    weights_dir=None,
    **dit_overrides,
) -> PixelPerfectDepth:
    """Both files of a released model -> a ready PixelPerfectDepth (eval mode): ``ppd.pth`` with
    ``depth_anything_v2_vitl.pth``, or ``ppd_moge.pth`` with ``moge2.pt`` (``semantics=None`` only for a
    DiT that uses none, e.g. an exported vanilla DiT). Either may be a released name instead of a file:
    ``load_pixel_perfect_depth("ppd")``, ``("ppd-moge2", weights_dir=...)``: the files are found in a weights
    folder or downloaded (:func:`ppd_lightning.weights.hub.resolve_model_files`)."""
    if is_released_name(dit) or is_released_name(semantics):
        if is_released_name(dit) and RELEASED[dit].kind != "image":
            raise InputError(f"{dit!r} is a {RELEASED[dit].kind} model, not an image model (ppd, ppd-moge2)")
        files = resolve_model_files(dit, semantics, weights_dir=weights_dir)
        dit, semantics = files.dit, files.semantics
    encoder = None if semantics is None else load_semantic_encoder(semantics)
    return PixelPerfectDepth(load_dit(dit, **dit_overrides), encoder, steps=steps).eval()

"""The released Pixel-Perfect Video Depth weights: ``ppvd.pth`` (the video DiT under ``dit_video.*``) and
Pi3's ``model.safetensors`` (its semantic encoder: ``encoder.*`` DINOv2 with registers, ``decoder.{i}.*``,
``register_token``; the point/conf/camera decoders and heads are not semantics and are ignored).

Files are recognised by their content and every size comes from the weights. What the weights cannot
tell (the video DiT's ``reference_from``, ``coarse_depth``) takes the release's value unless overridden.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from ppd_lightning.errors import CheckpointError, InputError
from ppd_lightning.models.pi3 import Pi3Semantics
from ppd_lightning.models.semantics import IMAGENET_MEAN, IMAGENET_STD, SemanticEncoder
from ppd_lightning.models.video_dit import VideoDiT
from ppd_lightning.weights.encoders import infer_encoder_config
from ppd_lightning.weights.files import WeightsLike, load_strict, preview, read_state_dict, require

__all__ = [
    "PI3_IGNORED_PREFIXES",
    "VIDEO_DIT_PREFIX",
    "infer_video_dit_config",
    "is_pi3_checkpoint",
    "is_video_dit_checkpoint",
    "load_pi3_semantics",
    "load_video_dit",
]

VIDEO_DIT_PREFIX = "dit_video."
PI3_IGNORED_PREFIXES = (
    "point_decoder.",
    "point_head.",
    "conf_decoder.",
    "conf_head.",
    "camera_decoder.",
    "camera_head.",
)
PI3_NORMALISATION_KEYS = ("image_mean", "image_std")


# --- the video DiT (ppvd.pth) ------------------------------------------------------------------------


def is_video_dit_checkpoint(sd: Mapping) -> bool:
    return any(k.startswith(("temporal_blocks.", VIDEO_DIT_PREFIX + "temporal_blocks.")) for k in sd)


def _count(sd: Mapping, prefix: str) -> int:
    return len({k[len(prefix) :].split(".")[0] for k in sd if k.startswith(prefix)})


def infer_video_dit_config(sd: Mapping[str, torch.Tensor], name: str = "<state dict>") -> dict:
    """Every video-DiT size from the weights (keys without the 'dit_video.' prefix)."""
    embed = require(sd, "x_embedder.proj.weight", name)  # (hidden, in_ch, 2p, 2p)
    hidden, in_channels, embed_patch = embed.shape[0], embed.shape[1], embed.shape[2]
    pos = require(sd, "pos_embed", name)  # (1, G*G, hidden)
    grid = math.isqrt(pos.shape[1])
    head_dim = require(sd, "blocks.0.attn.q_norm.weight", name).shape[0]
    mlp_hidden = require(sd, "blocks.0.mlp.fc1.weight", name).shape[0]
    final = require(sd, "final_layer.linear.weight", name).shape[0]
    fusion_in = require(sd, "proj_fusion.0.weight", name).shape[1]
    patch = embed_patch // 2
    out_channels = final // (patch * patch)
    if (
        embed_patch % 2
        or grid * grid != pos.shape[1]
        or pos.shape[-1] != hidden
        or hidden % head_dim
        or out_channels * patch * patch != final
        or fusion_in <= hidden
    ):
        raise CheckpointError(
            f"{name}: inconsistent video DiT shapes (patch embedding {tuple(embed.shape)}, pos_embed "
            f"{tuple(pos.shape)}, head width {head_dim}, final layer {final}, fusion input {fusion_in})"
        )
    return dict(
        hidden_size=hidden,
        depth=_count(sd, "blocks."),
        temporal_depth=_count(sd, "temporal_blocks."),
        num_heads=hidden // head_dim,
        patch_size=patch,
        mlp_ratio=mlp_hidden / hidden,
        semantic_dim=fusion_in - hidden,
        input_size=grid * embed_patch,
        in_channels=in_channels,
        out_channels=out_channels,
    )


def load_video_dit(source: WeightsLike, **overrides) -> VideoDiT:
    """``ppvd.pth`` (or its state dict, with or without the 'dit_video.' prefix) -> VideoDiT (eval mode).

    ``overrides`` set what the weights cannot tell (``reference_from``, ``coarse_depth``)."""
    sd, name = read_state_dict(source)
    if any(k.startswith(VIDEO_DIT_PREFIX) for k in sd):
        other = [k for k in sd if not k.startswith(VIDEO_DIT_PREFIX)]
        if other:
            raise CheckpointError(f"{name}: unexpected keys outside '{VIDEO_DIT_PREFIX}*': {preview(other)}")
        sd = {k[len(VIDEO_DIT_PREFIX) :]: v for k, v in sd.items()}
    if not is_video_dit_checkpoint(sd):
        hint = (
            " (an image DiT such as ppd.pth: load it with load_dit)"
            if any(k.startswith(("dit.", "blocks.")) for k in sd)
            else ""
        )
        raise CheckpointError(
            f"{name}: not a Pixel-Perfect Video Depth DiT: no '{VIDEO_DIT_PREFIX}temporal_blocks.*' keys{hint}"
        )
    cfg = infer_video_dit_config(sd, name) | overrides
    try:
        dit = VideoDiT(**cfg)
    except ValueError as e:
        raise CheckpointError(f"{name}: {e}") from e
    load_strict(dit, sd, name)
    return dit.eval()


# --- Pi3's semantics (model.safetensors) --------------------------------------------------------------


def is_pi3_checkpoint(sd: object) -> bool:
    """Pi3's state dict: 'encoder.register_tokens', 'register_token' and the decoder's blocks."""
    return (
        isinstance(sd, Mapping)
        and "register_token" in sd
        and "encoder.register_tokens" in sd
        and any(k.startswith("decoder.") for k in sd)
    )


def load_pi3_semantics(source: WeightsLike | Mapping, name: str | None = None, **overrides) -> Pi3Semantics:
    """Pi3's ``model.safetensors`` (a path, or its state dict with the file's ``name`` for messages) ->
    frozen :class:`Pi3Semantics`, ``origin`` = the file.

    The point/conf/camera decoders and heads are ignored; any other unknown key is an error.
    ``overrides`` go to the encoder (e.g. ``num_heads`` for a ViT whose heads are not 64 wide)."""
    sd, read_name = read_state_dict(source)
    name = name or read_name
    if not is_pi3_checkpoint(sd):
        raise CheckpointError(
            f"{name}: not Pi3's model.safetensors: expected 'encoder.register_tokens', 'register_token' "
            "and 'decoder.{i}.*' keys"
        )
    vit_sd, decoder_sd, other = {}, {}, []
    for k, v in sd.items():
        if k.startswith("encoder."):
            k = k[len("encoder.") :]
            vit_sd["reg_token" if k == "register_tokens" else k] = v  # timm's name for DINOv2's registers
        elif k.startswith("decoder."):
            decoder_sd[k[len("decoder.") :]] = v
        elif k in PI3_NORMALISATION_KEYS:
            expected = torch.tensor(IMAGENET_MEAN if k.endswith("mean") else IMAGENET_STD)
            if v.numel() != 3 or not torch.allclose(v.float().flatten(), expected, atol=1e-6):
                raise CheckpointError(
                    f"{name}: '{k}' = {v.flatten().tolist()}, expected the ImageNet {expected.tolist()}"
                )
        elif k != "register_token" and not k.startswith(PI3_IGNORED_PREFIXES):
            other.append(k)
    if other:
        raise CheckpointError(f"{name}: unexpected keys in a Pi3 checkpoint: {preview(other)}")

    vit_name = f"{name} ('encoder.*')"
    registers = vit_sd["reg_token"].shape[1]
    cfg = infer_encoder_config(vit_sd, vit_name)
    cfg |= dict(kind="pi3", registers=registers, interpolate_offset=0.0, pos_antialias=True) | overrides
    encoder = SemanticEncoder(**cfg)
    load_strict(encoder.vit, vit_sd, vit_name)

    register_token = sd["register_token"]
    width = require(decoder_sd, "0.norm1.weight", f"{name} ('decoder.*')").shape[0]
    if register_token.ndim != 4 or register_token.shape[-1] != width or width != encoder.dim_out:
        raise CheckpointError(
            f"{name}: 'register_token' {tuple(register_token.shape)}, decoder width {width} and encoder "
            f"width {encoder.dim_out} must agree (register_token (1, 1, R, width), no projection between them)"
        )
    head_dim = require(decoder_sd, "0.attn.q_norm.weight", f"{name} ('decoder.*')").shape[0]
    mlp_hidden = require(decoder_sd, "0.mlp.fc1.weight", f"{name} ('decoder.*')").shape[0]
    if width % head_dim:
        raise CheckpointError(f"{name}: decoder width {width} is not a multiple of its head width {head_dim}")
    model = Pi3Semantics(
        encoder,
        decoder_depth=_count(decoder_sd, ""),
        num_heads=width // head_dim,
        mlp_ratio=mlp_hidden / width,
        register_tokens=register_token.shape[2],
    )
    load_strict(model.decoder, decoder_sd, f"{name} ('decoder.*')")
    model.register_token.data.copy_(register_token)
    if name != "<state dict>":
        model.origin = {"weights": name}
        encoder.origin = {"weights": name}
    return model


def load_released_video_model(cls, dit, semantics=None, steps: int = 4, weights_dir=None, **kwargs):
    """What ``PixelPerfectVideoDepth.from_released`` returns: ``cls`` built from ``ppvd.pth`` + Pi3's
    semantics, given as files or as the released name ``"ppvd"`` (either role)."""
    from ppd_lightning.weights.hub import RELEASED, is_released_name, resolve_model_files

    if is_released_name(dit) or is_released_name(semantics):
        if is_released_name(dit) and RELEASED[str(dit)].kind != "video":
            raise InputError(f"{dit!r} is a {RELEASED[str(dit)].kind} model, not the video model (ppvd)")
        files = resolve_model_files(dit, semantics, weights_dir=weights_dir)
        dit, semantics = files.dit, files.semantics
    if semantics is None:
        raise InputError("the video model needs Pi3's semantics: give ppvd.pth with pi3.safetensors, or 'ppvd'")
    return cls(load_video_dit(dit), load_pi3_semantics(semantics), steps=steps, **kwargs).eval()

"""MoGe-2's ``moge2.pt`` as the whole geometry model (:class:`~ppd_lightning.models.moge.MoGe2`).

``moge2.pt`` is ``{"model_config": {...}, "model": state_dict}``, read with ``torch.load(weights_only=True)``.
The encoder (``encoder.backbone.*``, ``encoder.output_projections.*``) is read by the same code as the
PPD-MoGe2 semantics (:mod:`ppd_lightning.weights.encoders`); the neck, the points/mask/normal heads and the
scale head are built from ``model_config`` and their tensors must fit them exactly (names and shapes). With
PPD-MoGe2 the file is read once: :func:`semantic_encoder_from` hands the geometry model's encoder (the same
module, not a copy) to :class:`~ppd_lightning.models.PixelPerfectDepth`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from torch import nn

from ppd_lightning.errors import CheckpointError
from ppd_lightning.models.moge import REMAPS, ConvStack, MoGe2, mlp
from ppd_lightning.models.ppd import PixelPerfectDepth
from ppd_lightning.models.semantics import SemanticEncoder
from ppd_lightning.weights.encoders import _load_moge2, is_moge2_checkpoint, load_semantic_encoder
from ppd_lightning.weights.files import load_strict, read_object
from ppd_lightning.weights.released import load_dit

__all__ = ["has_geometry", "load_moge2", "load_released_with_geometry", "read_moge2", "semantic_encoder_from"]

# The geometry parts of moge2.pt: model_config key = state-dict prefix. The neck and the points head are
# needed for geometry; the others are optional in MoGe-2 (a model without a normal head has none).
REQUIRED_PARTS = ("neck", "points_head")
OPTIONAL_PARTS = ("mask_head", "normal_head", "scale_head")
# MoGe-2's ConvStack arguments and their defaults where the config may omit them (its own defaults:
# layer/group norms, which the released configs replace by 'none' and this project does not implement).
STACK_DEFAULTS = dict(
    dim_out=None,
    resamplers="bilinear",
    num_res_blocks=1,
    dim_times_res_block_hidden=1,
    res_block_in_norm="layer_norm",
    res_block_hidden_norm="group_norm",
    activation="relu",
)
STACK_KEYS = ("dim_in", "dim_res_blocks", *STACK_DEFAULTS)


def read_moge2(source: str | os.PathLike | Mapping) -> tuple[Mapping, str]:
    """A ``moge2.pt`` path (weights_only ``torch.load``) or its loaded content -> (content, name for
    messages); anything else is one :class:`CheckpointError` naming the file."""
    if isinstance(source, Mapping):
        obj, name = source, "<moge2 checkpoint>"
    else:
        obj, name = read_object(source)
    if not is_moge2_checkpoint(obj):
        what = sorted(map(str, obj))[:6] if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(
            f"{name}: not a MoGe-2 checkpoint: expected {{'model_config': {{...}}, 'model': state_dict}} "
            f"(moge2.pt), got {what}"
        )
    if not isinstance(obj["model_config"], Mapping):
        raise CheckpointError(
            f"{name}: 'model_config' must be a dict, got {type(obj['model_config']).__name__}"
        )
    return obj, name


def _stack(config: Mapping, part: str, name: str) -> ConvStack:
    cfg = config[part]
    if not isinstance(cfg, Mapping) or any(k not in cfg for k in ("dim_in", "dim_res_blocks")):
        raise CheckpointError(
            f"{name}: model_config['{part}'] must hold 'dim_in' and 'dim_res_blocks', got {cfg!r}"
        )
    unknown = sorted(set(cfg) - set(STACK_KEYS))
    if unknown:
        raise CheckpointError(f"{name}: model_config['{part}'] has unknown settings {unknown}")
    try:
        return ConvStack(**(STACK_DEFAULTS | dict(cfg)))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{name}: model_config['{part}']: {e}") from e


def _scale_head(config: Mapping, name: str) -> nn.Sequential:
    cfg = config["scale_head"]
    dims = cfg.get("dims") if isinstance(cfg, Mapping) else None
    if (
        not isinstance(dims, (list, tuple))
        or len(dims) < 2
        or not all(isinstance(d, int) and d > 0 for d in dims)
    ):
        raise CheckpointError(
            f"{name}: model_config['scale_head'] must hold 'dims' (>= 2 widths), got {cfg!r}"
        )
    return mlp(dims)


def load_moge2(source: str | os.PathLike | Mapping, name: str | None = None) -> MoGe2:
    """``moge2.pt`` (a path, or its loaded ``{"model_config", "model"}``) -> the frozen MoGe-2 geometry
    model. Every size comes from the file; the config's parts must match the tensors exactly (missing,
    unexpected or misshapen weights: one :class:`CheckpointError` naming the file and the part).
    ``name``: what messages call an in-memory checkpoint."""
    obj, read_name = read_moge2(source)
    name = name or read_name
    config, sd = obj["model_config"], obj["model"]
    encoder = _load_moge2(obj, name, {})  # checks 'model' (tensors only, no foreign keys) and the encoder
    parts: dict[str, nn.Module] = {}
    for part in REQUIRED_PARTS + OPTIONAL_PARTS:
        prefix = part + "."
        tensors = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
        if config.get(part) is None:
            if part in REQUIRED_PARTS:
                raise CheckpointError(
                    f"{name}: model_config has no '{part}': MoGe-2's geometry needs the neck and the points head"
                )
            if tensors:
                raise CheckpointError(
                    f"{name}: 'model' has '{prefix}*' weights but model_config has no '{part}'"
                )
            continue
        parts[part] = _scale_head(config, name) if part == "scale_head" else _stack(config, part, name)
        load_strict(parts[part], tensors, f"{name} ('{prefix}*')")
    remap = config.get("remap_output", "linear")
    if remap not in REMAPS:
        raise CheckpointError(f"{name}: model_config['remap_output'] = {remap!r}, expected one of {REMAPS}")
    tokens = config.get("num_tokens_range", (1200, 3600))
    if not (isinstance(tokens, (list, tuple)) and len(tokens) == 2 and 1 <= tokens[0] <= tokens[1]):
        raise CheckpointError(f"{name}: model_config['num_tokens_range'] = {tokens!r}, expected [min, max]")
    neck_in = parts["neck"].input_blocks[0]
    if isinstance(neck_in, nn.Conv2d) and neck_in.in_channels != encoder.dim_out + 2:
        raise CheckpointError(
            f"{name}: model_config['neck']['dim_in'][0] = {neck_in.in_channels}, expected the encoder's "
            f"dim_out + 2 (u, v) = {encoder.dim_out + 2}"
        )
    model = MoGe2(encoder, **parts, remap_output=remap, num_tokens_range=tuple(tokens))
    if not isinstance(source, Mapping) or name != read_name:  # a file (or a loaded one, named)
        model.origin, encoder.origin = {"weights": name}, {"weights": name}
    return model


def has_geometry(content: object) -> bool:
    """Whether a loaded file is a whole MoGe-2 model (its config has the neck and the points head), not
    only the semantics' part of one."""
    config = content.get("model_config") if is_moge2_checkpoint(content) else None
    return isinstance(config, Mapping) and all(config.get(part) is not None for part in REQUIRED_PARTS)


def load_released_with_geometry(
    dit: str | os.PathLike,
    semantics: str | os.PathLike,
    geometry: str | os.PathLike | None = None,
    steps: int = 4,
) -> tuple[PixelPerfectDepth, MoGe2 | None]:
    """A released PPD model and MoGe-2's geometry (or None), each file read once.

    ``geometry`` (a ``moge2.pt``) when given; otherwise ``semantics`` itself when it is a whole MoGe-2 file
    (PPD-MoGe2: ``ppd_moge.pth`` + ``moge2.pt``, the one file giving both, the encoder shared). A ``semantics``
    that is another encoder (``depth_anything_v2_vitl.pth``) or only MoGe-2's semantic part gives None."""
    content, name = read_object(semantics)
    same = geometry is not None and os.path.exists(geometry) and os.path.samefile(geometry, semantics)
    moge = None
    if (geometry is None or same) and has_geometry(content):
        moge = load_moge2(content, name=name)
        encoder = semantic_encoder_from(moge)
    else:
        try:
            encoder = load_semantic_encoder(content)
        except CheckpointError as e:  # read from memory: give the message its file's name
            raise CheckpointError(str(e).replace("<state dict>", name, 1)) from e
        encoder.origin = {"weights": name}
        if geometry is not None:
            moge = load_moge2(geometry)
    return PixelPerfectDepth(load_dit(dit), encoder, steps=steps).eval(), moge


def semantic_encoder_from(moge: MoGe2) -> SemanticEncoder:
    """The PPD-MoGe2 semantic encoder of a loaded ``moge2.pt``: the geometry model's own encoder (shared,
    so one file is read and held once); it reads the ViT exactly as ``load_semantic_encoder("moge2.pt")``."""
    if not isinstance(moge, MoGe2):
        raise TypeError(f"expected a MoGe2 model (from load_moge2), got {type(moge).__name__}")
    return moge.encoder

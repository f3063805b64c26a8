"""The frozen semantic encoder, every way it is made: from a released file recognised by its content
(``depth_anything_v2_vit*.pth``, a plain DINOv2 state dict, MoGe-2's ``moge2.pt``), from a config, or from
the spec a checkpoint recorded (released weights, or for tests and the demo a seeded random
initialisation). Sizes are inferred from the weights; a config value must agree with the file."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping

import torch

from ppd_lightning.errors import CheckpointError, ConfigError
from ppd_lightning.models.semantics import (
    ENCODER_KINDS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    SemanticEncoder,
    resolve_layers,
)
from ppd_lightning.weights.files import WeightsLike, as_state_dict, load_strict, preview, read_object, require

__all__ = [
    "build_from_spec",
    "build_semantic_encoder",
    "infer_encoder_config",
    "is_moge2_checkpoint",
    "load_semantic_encoder",
]

# Sizes a weights file determines: a config value for one of them must agree with the file.
_FILE_SIZES = ("embed_dim", "depth", "patch_size", "mlp_ratio", "intermediate_layers", "dim_out")

# Keys of depth_anything_v2_*.pth / DINOv2 that the semantic encoder does not use, by design.
_UNUSED_ENCODER_KEYS = ("mask_token",)
_UNUSED_ENCODER_PREFIXES = ("depth_head.",)
# MoGe-2 (moge2.pt 'model'): the semantics are encoder.backbone.* + encoder.output_projections.*; the
# neck and the heads are not semantics. Anything else is an error.
MOGE2_BACKBONE, MOGE2_PROJECTIONS = "encoder.backbone.", "encoder.output_projections."
MOGE2_NORMALISATION_KEYS = ("encoder.image_mean", "encoder.image_std")
MOGE2_IGNORED_PREFIXES = ("neck.", "points_head.", "mask_head.", "normal_head.", "scale_head.")


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


def load_semantic_encoder(source: WeightsLike | Mapping, **overrides) -> SemanticEncoder:
    """A semantic-encoder file (path) or its loaded content -> frozen SemanticEncoder, format by content:

    - ``depth_anything_v2_vit*.pth`` (its 'pretrained.*' part; 'depth_head.*' is not used) or a plain
      DINOv2 state dict -> ``kind="da2"`` (last-block tokens, width = the ViT's);
    - MoGe-2's ``moge2.pt`` (``{"model_config": {"encoder": {"intermediate_layers", "dim_out", ...}},
      "model": state_dict}``) -> ``kind="moge2"`` (projected intermediate layers, width ``dim_out``);
    - Pi3's ``model.safetensors`` (PPVD's semantics) -> :class:`~ppd_lightning.models.pi3.Pi3Semantics`
      (``kind="pi3"``: its DINOv2 with registers and its decoder; one clip per call, see
      :func:`ppd_lightning.weights.ppvd.load_pi3_semantics`).

    Sizes come from the weights; ``overrides`` e.g. ``num_heads`` for non-64-wide heads."""
    obj, name = read_object(source)
    from ppd_lightning.weights.ppvd import is_pi3_checkpoint, load_pi3_semantics  # ppvd imports this module

    if is_moge2_checkpoint(obj):
        enc = _load_moge2(obj, name, dict(overrides))
    elif is_pi3_checkpoint(obj):
        enc = load_pi3_semantics(obj, name, **overrides)
    else:
        if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
            raise CheckpointError(
                f"{name}: has 'model' but no 'model_config': a MoGe-2 checkpoint needs both "
                "({'model_config': {'encoder': {...}}, 'model': state_dict})"
            )
        sd = as_state_dict(obj, name).under("pretrained.", ignore=_UNUSED_ENCODER_PREFIXES).tensors
        sd = {k: v for k, v in sd.items() if k not in _UNUSED_ENCODER_KEYS}
        overrides = dict(overrides)
        sd, cfg_src = _timm_names(sd, overrides)
        enc = SemanticEncoder(**(infer_encoder_config(cfg_src, name) | overrides))
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


def build_semantic_encoder(
    weights: str | None = None,
    size: str | None = "vitl",
    allow_random: bool = False,
    random_seed: int = 0,
    num_heads: int | None = None,
    kind: str | None = None,
    **arch,
) -> SemanticEncoder:
    """``weights``: a ``depth_anything_v2_vit*.pth`` / DINOv2 state-dict file (``kind="da2"``) or MoGe-2's
    ``moge2.pt`` (``kind="moge2"``); the format is recognised from the content and sizes are inferred.
    ``kind``, when given, must be the file's; sizes given in ``arch`` must agree with the file.
    Without weights a randomly initialised encoder is built only if ``allow_random`` (with a warning),
    from ``size`` (vits/vitb/vitl/vitg) or explicit ``embed_dim``/``depth``/``num_heads`` in ``arch``
    (``kind="moge2"`` also needs ``intermediate_layers`` and ``dim_out``); its initialisation is a
    function of ``random_seed`` alone, so a checkpoint can rebuild it exactly. ``encoder.spec()`` records
    the kind, the sizes and the origin (weights path or seed)."""
    if kind is not None and kind not in ENCODER_KINDS:
        raise ConfigError(f"model.encoder.kind={kind!r}: expected one of {ENCODER_KINDS}")
    if weights:
        enc = load_semantic_encoder(weights, **({"num_heads": num_heads} if num_heads else {}))
        if kind is not None and enc.kind != kind:
            raise ConfigError(
                f"model.encoder.kind={kind} but {weights} holds a {enc.kind} encoder "
                "(da2: depth_anything_v2_vit*.pth or DINOv2; moge2: MoGe-2's moge2.pt)"
            )
        spec = enc.spec()
        wrong = [
            f"model.encoder.{k}={arch[k]!r} (the file has {spec.get(k)!r})"
            for k in _FILE_SIZES
            if arch.get(k) is not None and _differs(arch[k], spec.get(k))
        ]
        if wrong:
            raise ConfigError(f"{weights}: the config disagrees with the weights: {'; '.join(wrong)}")
        return enc
    if not allow_random:
        example = "moge2.pt" if kind == "moge2" else "depth_anything_v2_vitl.pth"
        raise ConfigError(
            f"model.encoder.weights is not set: give the semantic encoder's weights "
            f"(model.encoder.weights={example}), or model.encoder.allow_random=true for a demo"
        )
    label = size if not arch else f"custom {arch}"
    warnings.warn(
        f"Using a RANDOMLY INITIALISED semantic encoder ({kind or 'da2'} {label}, seed {random_seed}): its "
        "tokens carry no semantics. Fine for tests and the CPU demo; set model.encoder.weights for real training.",
        stacklevel=2,
    )
    if kind is not None:
        arch["kind"] = kind
    if num_heads:
        arch["num_heads"] = num_heads
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(random_seed)
        if "embed_dim" in arch:
            enc = SemanticEncoder(**arch)
        else:
            enc = SemanticEncoder.from_size(size, **arch)
    enc.origin = {"random_seed": int(random_seed)}
    return enc


def _differs(given, found) -> bool:
    if isinstance(given, (list, tuple)) or isinstance(found, (list, tuple)):
        return (
            not isinstance(given, (list, tuple))
            or not isinstance(found, (list, tuple))
            or ([int(i) for i in given] != [int(i) for i in found])
        )
    if isinstance(given, float) or isinstance(found, float):
        return abs(float(given) - float(found)) > 1e-6
    return given != found


def build_from_spec(spec: dict, weights: str | None = None) -> SemanticEncoder:
    """Rebuild the encoder a checkpoint recorded (``SemanticEncoder.spec()``): from its weights file (or
    ``weights``, e.g. the file at its new location), or from its seed; the result must have the
    recorded kind and sizes."""
    spec = dict(spec)
    path = weights or spec.pop("weights", None)
    spec.pop("weights", None)
    seed = spec.pop("random_seed", None)
    if path:
        enc = load_semantic_encoder(path, num_heads=spec["num_heads"])
    elif seed is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            enc = build_semantic_encoder(allow_random=True, random_seed=seed, **spec)
    else:
        raise CheckpointError(
            "the checkpoint's semantic encoder was built from in-memory weights (no file recorded): "
            "give its weights file (encoder_weights=..., predict --semantics ...)"
        )
    found = enc.spec()
    wrong = [
        f"{k}: recorded {spec[k]!r}, file {found.get(k)!r}" for k in spec if _differs(spec[k], found.get(k))
    ]
    if wrong:
        raise CheckpointError(
            f"{path or 'seeded encoder'} is not the semantic encoder this checkpoint was trained with: "
            + "; ".join(wrong)
        )
    return enc

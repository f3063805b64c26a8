"""Building the frozen semantic encoder from a config or from the spec a checkpoint recorded: released
weights, or (tests/demo only) a seeded random initialisation."""

from __future__ import annotations

import warnings

import torch

from ppd_lightning.models.semantics import ENCODER_KINDS, SemanticEncoder
from ppd_lightning.weights.released import load_semantic_encoder

__all__ = ["build_from_spec", "build_semantic_encoder"]

# Sizes a weights file determines: a config value for one of them must agree with the file.
_FILE_SIZES = ("embed_dim", "depth", "patch_size", "mlp_ratio", "intermediate_layers", "dim_out")


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
        raise ValueError(f"model.encoder.kind={kind!r}: expected one of {ENCODER_KINDS}")
    if weights:
        enc = load_semantic_encoder(weights, **({"num_heads": num_heads} if num_heads else {}))
        if kind is not None and enc.kind != kind:
            raise ValueError(
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
            raise ValueError(f"{weights}: the config disagrees with the weights: {'; '.join(wrong)}")
        return enc
    if not allow_random:
        example = "moge2.pt" if kind == "moge2" else "depth_anything_v2_vitl.pth"
        raise ValueError(
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
        raise ValueError(
            "the checkpoint's semantic encoder was built from in-memory weights (no file recorded): "
            "give its weights file (encoder_weights=..., predict --semantics ...)"
        )
    found = enc.spec()
    wrong = [
        f"{k}: recorded {spec[k]!r}, file {found.get(k)!r}" for k in spec if _differs(spec[k], found.get(k))
    ]
    if wrong:
        raise ValueError(
            f"{path or 'seeded encoder'} is not the semantic encoder this checkpoint was trained with: "
            + "; ".join(wrong)
        )
    return enc

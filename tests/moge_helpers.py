"""Tiny whole-model ``moge2.pt`` files (encoder, neck, heads, scale head) with random weights, and the
fixture location of the MoGe-2 geometry and point-cloud cases."""

from __future__ import annotations

from pathlib import Path

import torch
from model_helpers import MOGE2_NON_SEMANTIC, moge2_checkpoint, randomize, reference_dir

RESAMPLERS = ["conv_transpose", "conv_transpose", "conv_transpose", "bilinear"]


def _stack_config(dim_in, widths, dim_out, blocks) -> dict:
    return {
        "dim_in": list(dim_in),
        "dim_out": dim_out,
        "dim_res_blocks": list(widths),
        "num_res_blocks": list(blocks),
        "res_block_in_norm": "none",
        "res_block_hidden_norm": "none",
        "resamplers": RESAMPLERS[: len(widths) - 1],
    }


def moge2_geometry_checkpoint(
    embed_dim=64,
    depth=2,
    intermediate_layers=(0, 1),
    dim_out=16,
    widths=(16, 8, 8, 8, 8),
    neck_blocks=(0, 1, 1, 1, 0),
    head_blocks=(0, 1, 0, 1, 0),
    scale_hidden=16,
    normal=True,
    remap_output="exp",
    seed=0,
) -> dict:
    """A whole MoGe-2 checkpoint in ``moge2.pt``'s format ({"model_config", "model"}), released layout
    (norms 'none', 3 transposed-conv resamplers then bilinear, UV at every level), tiny sizes."""
    from ppd_lightning.models.moge import ConvStack, mlp

    layers = list(intermediate_layers) if not isinstance(intermediate_layers, int) else intermediate_layers
    ckpt = moge2_checkpoint(
        embed_dim=embed_dim, depth=depth, intermediate_layers=layers, dim_out=dim_out, seed=seed
    )
    sd = {k: v for k, v in ckpt["model"].items() if not k.startswith(MOGE2_NON_SEMANTIC)}
    n = len(widths)
    config = {"encoder": ckpt["model_config"]["encoder"]}
    config["neck"] = _stack_config([dim_out + 2] + [2] * (n - 1), widths, None, neck_blocks)
    heads = {"points_head": 3, "mask_head": 1} | ({"normal_head": 3} if normal else {})
    for head, channels in heads.items():
        config[head] = _stack_config(widths, widths, [None] * (n - 1) + [channels], head_blocks)
    config["scale_head"] = {"dims": [embed_dim, scale_hidden, scale_hidden, 1]}
    config["remap_output"] = remap_output
    config["num_tokens_range"] = [1200, 3600]
    for i, part in enumerate(["neck", *heads, "scale_head"]):
        cfg = config[part]
        module = mlp(cfg["dims"]) if part == "scale_head" else ConvStack(**cfg)
        randomize(module, std=0.2, seed=seed + 10 + i)
        sd.update({f"{part}.{k}": v for k, v in module.state_dict().items()})
    return {"model_config": config, "model": sd}


def save_moge2_geometry(path, **kw) -> Path:
    torch.save(moge2_geometry_checkpoint(**kw), path)
    return Path(path)


def fixture(name: str):
    """(json meta, tensors) of a reference case, or None when the directory is missing."""
    import json

    from safetensors.torch import load_file

    base = reference_dir()
    if not (base / f"{name}.json").is_file():
        return None
    return json.loads((base / f"{name}.json").read_text()), load_file(str(base / f"{name}.safetensors"))


def ply_comments(path) -> list[str]:
    """The ``comment`` lines of a .ply header."""
    raw = Path(path).read_bytes()
    header = raw[: raw.index(b"end_header\n")].decode("ascii").splitlines()
    return [line[len("comment ") :] for line in header if line.startswith("comment ")]

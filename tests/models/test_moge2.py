"""MoGe-2 semantics (the PPD-MoGe2 model): moge2.pt format handling, against a plain-torch reference.

The reference below is written from the facts in ``$PPD_REFERENCE_DIR/README.md`` (antialiased bilinear
resize, then ImageNet normalisation; DINOv2 with the (grid + 0.1)/grid0 position-embedding resize;
chosen blocks' outputs through the final LayerNorm, each through its 1x1 projection, summed), directly
on the file's tensors: it shares no code with the encoder under test.
"""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from model_helpers import MOGE2_NON_SEMANTIC, moge2_checkpoint, randomize, save_moge2, tiny_dit

from ppd_lightning.models import PixelPerfectDepth, SemanticEncoder
from ppd_lightning.official import CheckpointError, load_dit, load_pixel_perfect_depth, load_semantic_encoder
from ppd_lightning.weights.encoders import build_from_spec, build_semantic_encoder

TOL = 1e-5


def reference_moge2_semantics(ckpt: dict, image: torch.Tensor, dtype=torch.float64) -> torch.Tensor:
    sd = {k: v.to(dtype) for k, v in ckpt["model"].items()}
    cfg = ckpt["model_config"]["encoder"]
    bb = "encoder.backbone."
    C = sd[bb + "cls_token"].shape[-1]
    heads = C // 64
    depth = 1 + max(int(k.split(".")[3]) for k in sd if k.startswith(bb + "blocks."))
    layers = cfg["intermediate_layers"]
    layers = list(range(depth - layers, depth)) if isinstance(layers, int) else sorted(layers)
    B, _, H, W = image.shape
    gh, gw = H // 16, W // 16
    x = F.interpolate(
        image.to(dtype), (gh * 14, gw * 14), mode="bilinear", align_corners=False, antialias=True
    )
    mean = torch.tensor([0.485, 0.456, 0.406], dtype=dtype).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], dtype=dtype).view(1, 3, 1, 1)
    x = (x - mean) / std
    x = F.conv2d(x, sd[bb + "patch_embed.proj.weight"], sd[bb + "patch_embed.proj.bias"], stride=14)
    x = x.flatten(2).transpose(1, 2)
    pos = sd[bb + "pos_embed"]
    g0 = math.isqrt(pos.shape[1] - 1)
    grid = pos[:, 1:].reshape(1, g0, g0, C).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=((gh + 0.1) / g0, (gw + 0.1) / g0), mode="bicubic")
    pos = torch.cat([pos[:, :1], grid.flatten(2).transpose(1, 2)], 1)
    x = torch.cat([sd[bb + "cls_token"].expand(B, -1, -1), x], 1) + pos

    def ln(t, name):
        return F.layer_norm(t, (C,), sd[name + ".weight"], sd[name + ".bias"], eps=1e-6)

    out = 0
    for i in range(depth):
        b = f"{bb}blocks.{i}."
        h = ln(x, b + "norm1")
        q, k, v = F.linear(h, sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"]).chunk(3, -1)
        q, k, v = (t.unflatten(-1, (heads, C // heads)).transpose(1, 2) for t in (q, k, v))
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(C // heads), -1) @ v
        a = F.linear(a.transpose(1, 2).flatten(2), sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"])
        x = x + sd[b + "ls1.gamma"] * a
        h = F.gelu(F.linear(ln(x, b + "norm2"), sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"]))
        x = x + sd[b + "ls2.gamma"] * F.linear(h, sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"])
        if i in layers:  # DINOv2 returns the chosen blocks in block order; projection j takes the j-th
            j = layers.index(i)
            feat = ln(x, bb + "norm")[:, 1:].transpose(1, 2).reshape(B, C, gh, gw)
            p = "encoder.output_projections"
            out = out + F.conv2d(feat, sd[f"{p}.{j}.weight"], sd[f"{p}.{j}.bias"])
    return out.flatten(2).transpose(1, 2)


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


CASES = [  # (embed_dim, depth, intermediate_layers, dim_out, image (H, W), batch)
    (64, 3, 2, 96, (64, 96), 2),  # int n: the last n blocks
    (128, 4, [0, 2], 40, (48, 32), 1),  # explicit list, 2 heads, an unused last block
    (64, 5, [3, 1, 4], 24, (32, 80), 2),  # unsorted list: projections follow block order
    (64, 2, 1, 64, (16, 16), 1),  # one layer, one token
]


@pytest.mark.parametrize("dim, depth, layers, dim_out, hw, batch", CASES)
def test_moge2_files_match_the_plain_torch_reference(tmp_path, dim, depth, layers, dim_out, hw, batch):
    ckpt = moge2_checkpoint(
        embed_dim=dim, depth=depth, intermediate_layers=layers, dim_out=dim_out, seed=depth
    )
    path = tmp_path / "moge2.pt"
    torch.save(ckpt, path)
    image = torch.rand(batch, 3, *hw, generator=torch.Generator().manual_seed(1))
    ref = reference_moge2_semantics(ckpt, image)
    for source in (path, ckpt):  # a path, or the loaded dict
        enc = load_semantic_encoder(source)
        assert enc.kind == "moge2" and enc.dim_out == dim_out and enc.embed_dim == dim
        assert len(enc.vit.blocks) == depth and enc.vit.blocks[0].attn.num_heads == dim // 64
        out = enc(image)
        assert out.shape == (batch, hw[0] // 16 * hw[1] // 16, dim_out)
        assert _rel(out, ref) < TOL
    assert load_semantic_encoder(path).origin == {"weights": str(path)}


def test_reference_catches_a_wrong_resize_order():
    """The checks above are sensitive: the DA2 pre-processing (normalise, then bicubic) differs."""
    ckpt = moge2_checkpoint()
    enc = load_semantic_encoder(ckpt)
    image = torch.rand(1, 3, 64, 96)
    da2_style = SemanticEncoder(**{**enc.spec(), "kind": "da2", "intermediate_layers": None, "dim_out": None})
    da2_style.vit.load_state_dict(enc.vit.state_dict())
    assert _rel(enc(image), reference_moge2_semantics(ckpt, image)) < TOL
    x = enc.vit.norm(enc.vit.blocks(torch.zeros(1, 2, 64)))  # the ViT alone is shared
    assert torch.equal(x, da2_style.vit.norm(da2_style.vit.blocks(torch.zeros(1, 2, 64))))


def test_encoder_is_frozen_eval_and_bf16_safe():
    enc = load_semantic_encoder(moge2_checkpoint(depth=2, intermediate_layers=[0, 1], dim_out=32))
    assert not any(p.requires_grad for p in enc.parameters())
    torch.nn.Sequential(enc).train()
    assert not enc.training and not enc.projections.training
    image = torch.rand(1, 3, 32, 48)
    ref = enc(image)
    out = enc.to(torch.bfloat16)(image)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    assert _rel(out.float(), ref) < 0.05


def _broken(mutate):
    ckpt = moge2_checkpoint(depth=2)
    mutate(ckpt)
    return ckpt


@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            lambda c: c["model"].pop("encoder.backbone.blocks.1.mlp.fc2.bias"),
            "missing keys: blocks.1.mlp.fc2.bias",
        ),
        (
            lambda c: c["model"].update({"encoder.extra.weight": torch.zeros(1)}),
            "unexpected keys.*encoder.extra.weight",
        ),
        (lambda c: c["model"].update({"depth_head.x": torch.zeros(1)}), "unexpected keys.*depth_head.x"),
        (
            lambda c: c["model"].pop("encoder.output_projections.1.weight"),
            "output_projections.*missing keys: 1.weight",
        ),
        (
            lambda c: c["model_config"]["encoder"].update(intermediate_layers=3),
            "intermediate_layers=3: expected 1..2",
        ),
        (lambda c: c["model_config"]["encoder"].update(intermediate_layers=1), "selects 1 blocks but .* 2 "),
        (lambda c: c["model_config"]["encoder"].update(intermediate_layers=[1, 1]), "distinct block indices"),
        (lambda c: c["model_config"]["encoder"].update(dim_out=7), "dim_out'\\] = 7 but"),
        (
            lambda c: c["model_config"]["encoder"].pop("dim_out"),
            "must hold 'backbone', 'intermediate_layers'",
        ),
        (lambda c: c["model_config"].pop("encoder"), "must hold"),
        (lambda c: c["model_config"]["encoder"].update(backbone="dinov2_vitl14_reg"), "with registers"),
        (
            lambda c: c["model"].update({"encoder.backbone.register_tokens": torch.zeros(1, 4, 64)}),
            "registers",
        ),
        (
            lambda c: c["model"].update({"encoder.image_mean": torch.zeros(1, 3, 1, 1)}),
            "image_mean.*ImageNet",
        ),
        (lambda c: c.update(model={"encoder.backbone.x": "not a tensor"}), "'model' must be a state dict"),
    ],
)
def test_bad_moge2_files_fail_with_one_clear_error(tmp_path, mutate, message):
    path = tmp_path / "moge2.pt"
    torch.save(_broken(mutate), path)
    with pytest.raises(CheckpointError, match=message) as e:
        load_semantic_encoder(path)
    assert str(path) in str(e.value)


def test_non_semantic_parts_are_ignored_exactly():
    ckpt = moge2_checkpoint()
    assert all(any(k.startswith(p) for k in ckpt["model"]) for p in MOGE2_NON_SEMANTIC)
    load_semantic_encoder(ckpt)  # neck and heads present: fine
    ckpt["model"]["necklace.weight"] = torch.zeros(1)  # not the neck
    with pytest.raises(CheckpointError, match="necklace.weight"):
        load_semantic_encoder(ckpt)


def test_model_without_config_is_named():
    ckpt = moge2_checkpoint()
    with pytest.raises(CheckpointError, match="no 'model_config'"):
        load_semantic_encoder({"model": ckpt["model"]})


def test_released_pair_loads_and_widths_must_match(tmp_path):
    enc_path = save_moge2(tmp_path / "moge2.pt", dim_out=40)
    dit = randomize(tiny_dit(semantic_dim=40))
    torch.save({f"dit.{k}": v for k, v in dit.state_dict().items()}, tmp_path / "ppd_moge.pth")
    model = load_pixel_perfect_depth(tmp_path / "ppd_moge.pth", enc_path)
    assert model.encoder.kind == "moge2"
    noise = torch.randn(1, 1, 32, 48)
    depth = model.sample(torch.rand(1, 3, 32, 48), steps=2, noise=noise)
    assert depth.shape == (1, 1, 32, 48) and torch.isfinite(depth).all()
    with pytest.raises(ValueError, match="width 40 .* semantic_dim 24.*moge2.pt"):
        PixelPerfectDepth(load_dit(randomize(tiny_dit()).state_dict()), model.encoder)


def test_build_kind_and_sizes_are_checked_against_the_file(tmp_path):
    path = save_moge2(tmp_path / "moge2.pt", embed_dim=64, depth=2, intermediate_layers=1, dim_out=24)
    enc = build_semantic_encoder(weights=str(path), kind="moge2", depth=2, dim_out=24)
    assert enc.spec()["weights"] == str(path)
    with pytest.raises(ValueError, match="kind=da2 but .* holds a moge2 encoder"):
        build_semantic_encoder(weights=str(path), kind="da2")
    with pytest.raises(ValueError, match=r"model.encoder.depth=1 \(the file has 2\)"):
        build_semantic_encoder(weights=str(path), kind="moge2", depth=1)
    with pytest.raises(ValueError, match="moge2.pt"):
        build_semantic_encoder(kind="moge2")


def test_spec_rebuilds_the_encoder_from_its_file_or_seed(tmp_path):
    path = save_moge2(tmp_path / "moge2.pt", depth=2, intermediate_layers=[1], dim_out=16)
    enc = load_semantic_encoder(path)
    again = build_from_spec(enc.spec())
    image = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(again(image), enc(image))
    other = save_moge2(tmp_path / "other.pt", depth=2, intermediate_layers=[1], dim_out=8)
    with pytest.raises(
        ValueError, match="not the semantic encoder this checkpoint was trained with: dim_out"
    ):
        build_from_spec(enc.spec(), weights=str(other))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rnd = build_semantic_encoder(
            allow_random=True, random_seed=3, kind="moge2", embed_dim=32, depth=2, num_heads=2,
            img_size=56, intermediate_layers=2, dim_out=8,
        )  # fmt: skip
    torch.testing.assert_close(build_from_spec(rnd.spec())(image), rnd(image))
    with pytest.raises(ValueError, match="in-memory weights"):
        build_from_spec(load_semantic_encoder(moge2_checkpoint()).spec())

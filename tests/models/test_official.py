"""Released-weight loaders: real file formats, inferred sizes, and every failure path."""

import pickle

import pytest
import torch
from model_helpers import randomize, tiny_dit, tiny_encoder
from safetensors.torch import save_file

from ppd_lightning.models import PixelPerfectDepth
from ppd_lightning.official import (
    CheckpointError,
    load_dit,
    load_pixel_perfect_depth,
    load_semantic_encoder,
)


def _released_dit_file(tmp_path, variant="cascade", fmt="pth", **kw):
    dit = randomize(tiny_dit(variant, **kw))
    sd = {f"dit.{k}": v for k, v in dit.state_dict().items()}
    path = tmp_path / f"ppd.{fmt}"
    torch.save(sd, path) if fmt == "pth" else save_file(sd, str(path))
    return dit, path


def _released_encoder_file(tmp_path, with_head=True):
    enc = randomize(tiny_encoder(dim=64, heads=1))
    sd = {f"pretrained.{k}": v for k, v in enc.vit.state_dict().items()}
    sd["pretrained.mask_token"] = torch.zeros(1, 64)
    if with_head:
        sd["depth_head.projects.0.weight"] = torch.zeros(4, 64, 1, 1)
    path = tmp_path / "depth_anything_v2_vits.pth"
    torch.save(sd, path)
    return enc, path


@pytest.mark.parametrize("variant", ["cascade", "sp_dit", "vanilla"])
@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_dit_roundtrip_infers_every_size(tmp_path, variant, fmt):
    ref, path = _released_dit_file(tmp_path, variant, fmt, mlp_ratio=2.0)
    dit = load_dit(path)
    cfg = ref.config()
    assert dit.config() == cfg
    x, img = torch.randn(1, 1, 32, 32), torch.rand(1, 3, 32, 32)
    sem = torch.randn(1, 4, 24) if variant != "vanilla" else None
    t = torch.tensor([0.5])
    torch.testing.assert_close(dit(x, img, sem, t), ref(x, img, sem, t))


def test_dit_accepts_state_dict_without_prefix():
    ref = randomize(tiny_dit())
    assert load_dit(ref.state_dict()).config() == ref.config()


def test_encoder_from_depth_anything_file_and_plain_dinov2(tmp_path):
    ref, path = _released_encoder_file(tmp_path)
    enc = load_semantic_encoder(path)  # 64-dim heads: the DINOv2 rule infers 1 head
    img = torch.rand(1, 3, 32, 48)
    torch.testing.assert_close(enc(img), ref(img))
    plain = load_semantic_encoder(ref.vit.state_dict())
    torch.testing.assert_close(plain(img), ref(img))


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    _, path = _released_dit_file(tmp_path)
    sd = torch.load(path, weights_only=True)
    del sd["dit.blocks.1.mlp.fc2.bias"]
    sd["dit.blocks.0.extra.weight"] = torch.zeros(1)
    with pytest.raises(
        CheckpointError, match=r"missing keys: blocks.1.mlp.fc2.bias.*unexpected keys: blocks.0.extra"
    ):
        load_dit(sd)


def test_keys_outside_the_dit_prefix_are_an_error(tmp_path):
    _, path = _released_dit_file(tmp_path)
    sd = torch.load(path, weights_only=True)
    sd["ema.something"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="unexpected keys outside 'dit.\\*': ema.something"):
        load_dit(sd)


def test_wrong_checkpoint_kind_and_shape_mismatch(tmp_path):
    _, enc_path = _released_encoder_file(tmp_path)
    with pytest.raises(CheckpointError, match="missing key 'x_embedder.proj.weight'"):
        load_dit(enc_path)
    ref = randomize(tiny_dit())
    sd = ref.state_dict()
    sd["blocks.2.attn.qkv.weight"] = torch.zeros(3, 3)
    with pytest.raises(CheckpointError, match="shape mismatches: blocks.2.attn.qkv.weight"):
        load_dit(sd)


def test_unreadable_and_missing_files(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_dit(tmp_path / "nope.pth")
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(b"PK\x03\x04 not really a checkpoint")
    with pytest.raises(CheckpointError, match="truncated.pth: cannot read checkpoint"):
        load_dit(bad)
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match="bad.safetensors: cannot read"):
        load_semantic_encoder(bad_st)


class _Evil:
    def __reduce__(self):
        return (print, ("pickle code ran",))


def test_pickled_code_is_refused(tmp_path):
    """weights_only=True: a checkpoint carrying arbitrary objects is rejected, not executed."""
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        torch.save({"dit.x": _Evil()}, f, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="evil.pth: cannot read checkpoint"):
        load_dit(path)


def test_load_pixel_perfect_depth_end_to_end(tmp_path):
    _, dit_path = _released_dit_file(tmp_path, semantic_dim=64)
    _, enc_path = _released_encoder_file(tmp_path)
    model = load_pixel_perfect_depth(dit_path, enc_path, steps=2)
    assert isinstance(model, PixelPerfectDepth)
    assert model.infer(torch.rand(1, 3, 40, 50), area=32 * 48).shape == (1, 1, 40, 50)

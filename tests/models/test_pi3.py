"""Pi3's semantics (PPVD's encoder): parity with the official code, the loader on tiny files in Pi3's
safetensors format, and its failure paths."""

import pytest
import torch
from model_helpers import PI3_NON_SEMANTIC, fixture_state_dict, pi3_checkpoint, reference_case
from safetensors.torch import save_file

from ppd_lightning.errors import CheckpointError
from ppd_lightning.models.pi3 import Pi3Semantics
from ppd_lightning.weights.ppvd import is_pi3_checkpoint, load_pi3_semantics

pytestmark = pytest.mark.usefixtures("one_thread")


def test_pi3_semantics_match_the_official_code():
    tensors, meta = reference_case("pi3_semantics")
    sd = fixture_state_dict(tensors)
    assert all(any(k.startswith(p) for k in sd) for p in meta["non_semantic_prefixes"])
    model = load_pi3_semantics(sd)
    assert model.registers == meta["decoder"]["register_tokens"]
    assert len(model.decoder) == meta["decoder"]["depth"]
    assert model.encoder.registers == meta["encoder"]["registers"]
    frames = tensors["input.frames"]
    assert list(frames.shape) == meta["input_shape"]
    out = model(frames)
    ref = tensors["output.semantics"]
    assert out.shape == ref.shape
    assert ((out - ref).norm() / ref.norm()).item() < 1e-5
    assert (out - ref).abs().max().item() < 1e-5


def _saved(tmp_path, sd, name="model.safetensors"):
    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


def test_tiny_pi3_file_loads_with_sizes_inferred(tmp_path):
    sd = pi3_checkpoint(embed_dim=32, depth=2, decoder_dim=32, decoder_depth=3, registers=4)
    path = _saved(tmp_path, sd)
    model = load_pi3_semantics(path)
    assert isinstance(model, Pi3Semantics) and model.kind == "pi3"
    assert (model.dim, model.dim_out, len(model.decoder), model.registers) == (32, 64, 3, 5)
    assert len(model.encoder.vit.blocks) == 2 and model.encoder.registers == 4
    assert torch.equal(model.encoder.vit.reg_token, sd["encoder.register_tokens"])
    assert torch.equal(model.register_token, sd["register_token"])
    assert model.origin == {"weights": str(path)} and model.spec()["weights"] == str(path)
    assert not any(p.requires_grad for p in model.parameters())
    frames = torch.rand(3, 3, 32, 48)
    out = model(frames)
    assert out.shape == (3, 2 * 3, 64) and torch.isfinite(out).all()
    # one clip: the odd blocks attend across frames, so a frame's tokens depend on its clip
    alone = model(frames[:1])
    assert not torch.allclose(alone, out[:1], atol=1e-5)
    # ... and the even ones within a frame only: a one-block decoder would not mix frames (checked on
    # the second-last block, the first half of the output channels, for a 2-block decoder)
    two = load_pi3_semantics(pi3_checkpoint(decoder_depth=2))
    a, b = two(frames), two(frames[:1])
    torch.testing.assert_close(a[:1, :, :32], b[:, :, :32], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(a[:1, :, 32:], b[:, :, 32:], atol=1e-5)


def test_pi3_needs_sides_multiple_of_16():
    model = load_pi3_semantics(pi3_checkpoint())
    with pytest.raises(ValueError, match="multiples of 16"):
        model(torch.rand(2, 3, 40, 48))
    with pytest.raises(ValueError, match="one clip"):
        model(torch.rand(2, 2, 3, 32, 32))


def test_non_semantic_parts_are_ignored_but_unknown_keys_are_errors(tmp_path):
    sd = pi3_checkpoint()
    assert all(any(k.startswith(p) for k in sd) for p in PI3_NON_SEMANTIC)
    assert is_pi3_checkpoint(sd)
    sd["something_else.weight"] = torch.zeros(2)
    path = _saved(tmp_path, sd, "odd.safetensors")
    with pytest.raises(CheckpointError, match=r"odd\.safetensors.*something_else\.weight"):
        load_pi3_semantics(path)


def test_foreign_file_is_one_clear_error(tmp_path):
    from model_helpers import da2_checkpoint

    path = _saved(tmp_path, da2_checkpoint(), "depth_anything.safetensors")
    with pytest.raises(CheckpointError, match=r"depth_anything\.safetensors: not Pi3's model\.safetensors"):
        load_pi3_semantics(path)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointError, match="garbage.safetensors"):
        load_pi3_semantics(garbage)


@pytest.mark.parametrize(
    "key, shape, match",
    [
        ("decoder.1.attn.qkv.weight", (96, 16), r"decoder\.\*.*shape mismatches.*1\.attn\.qkv\.weight"),
        ("encoder.blocks.0.mlp.fc2.weight", (32, 64), r"encoder\.\*.*shape mismatches"),
        ("register_token", (1, 1, 5, 16), "register_token"),
    ],
)
def test_wrong_shapes_are_one_clear_error(tmp_path, key, shape, match):
    sd = pi3_checkpoint()
    sd[key] = torch.zeros(shape)
    path = _saved(tmp_path, sd, "pi3.safetensors")
    with pytest.raises(CheckpointError, match=r"pi3\.safetensors.*" + match):
        load_pi3_semantics(path)


def test_non_imagenet_normalisation_is_refused(tmp_path):
    sd = pi3_checkpoint()
    sd["image_mean"] = torch.zeros(1, 3, 1, 1)
    with pytest.raises(CheckpointError, match=r"pi3\.safetensors: 'image_mean'"):
        load_pi3_semantics(_saved(tmp_path, sd, "pi3.safetensors"))


def test_load_semantic_encoder_recognises_pi3_by_content(tmp_path):
    from ppd_lightning.official import load_semantic_encoder

    path = _saved(tmp_path, pi3_checkpoint(), "pi3.safetensors")
    model = load_semantic_encoder(path)
    assert isinstance(model, Pi3Semantics) and model.origin == {"weights": str(path)}
    direct = load_pi3_semantics(path)
    frames = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(model(frames), direct(frames), rtol=0, atol=0)

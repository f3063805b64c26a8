import warnings

import pytest
import torch
from model_helpers import randomize, tiny_dit, tiny_encoder

from ppd_lightning.models import PixelPerfectDepth, SemanticEncoder
from ppd_lightning.models.ppd import fit_to_area


def test_encoder_is_frozen_and_stays_in_eval():
    enc = tiny_encoder()
    assert not any(p.requires_grad for p in enc.parameters())
    parent = torch.nn.Sequential(enc)
    parent.train()
    assert not enc.training and not enc.vit.training


def test_encoder_token_grid_and_errors():
    enc = randomize(tiny_encoder())
    out = enc(torch.rand(2, 3, 48, 80))
    assert out.shape == (2, 3 * 5, 24)
    with pytest.raises(ValueError, match="multiples of 16"):
        enc(torch.rand(1, 3, 40, 48))
    with pytest.raises(ValueError, match="RGB"):
        enc(torch.rand(1, 1, 32, 32))


def test_native_grid_skips_position_interpolation():
    # DINOv2 uses its position embedding as is at the pretraining grid (here 4x4 = 56/14).
    enc = randomize(tiny_encoder())
    assert enc._pos_embed(4, 4) is enc.vit.pos_embed
    assert enc._pos_embed(3, 5).shape == (1, 16, 24)


def test_random_encoder_warns():
    with pytest.warns(UserWarning, match="RANDOMLY INITIALISED"):
        SemanticEncoder.random("vits", depth=1)


def test_from_size_rejects_unknown():
    with pytest.raises(ValueError, match="unknown DINOv2 size"):
        SemanticEncoder.from_size("vith")


def _ppd(variant="cascade"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return PixelPerfectDepth(randomize(tiny_dit(variant)), randomize(tiny_encoder()))


def test_sample_is_deterministic_given_noise_or_generator():
    m = _ppd()
    img = torch.rand(2, 3, 32, 48)
    noise = torch.randn(2, 1, 32, 48)
    a = m.sample(img, steps=3, noise=noise)
    torch.testing.assert_close(a, m.sample(img, steps=3, noise=noise))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    torch.testing.assert_close(m.sample(img, 2, generator=g1), m.sample(img, 2, generator=g2))
    assert not torch.allclose(a, m.sample(img, steps=1, noise=noise))
    with pytest.raises(ValueError, match="noise must be"):
        m.sample(img, noise=torch.randn(2, 1, 16, 16))


def test_vanilla_model_needs_no_encoder():
    m = PixelPerfectDepth(randomize(tiny_dit("vanilla")), None)
    assert m.encoder is None
    assert m.sample(torch.rand(1, 3, 8, 12), steps=2).shape == (1, 1, 8, 12)


def test_encoder_width_must_match():
    with pytest.raises(ValueError, match="semantic_dim"):
        PixelPerfectDepth(tiny_dit("cascade", semantic_dim=16), tiny_encoder(dim=24))
    with pytest.raises(ValueError, match="needs a semantic encoder"):
        PixelPerfectDepth(tiny_dit("cascade"), None)


@pytest.mark.parametrize("hw", [(37, 53), (100, 30), (64, 64)])
def test_infer_any_size_returns_input_size(hw):
    m = _ppd()
    depth = m.infer(torch.rand(1, 3, *hw), steps=1, area=32 * 48)
    assert depth.shape == (1, 1, *hw) and torch.isfinite(depth).all()


def test_working_area_defaults_to_the_released_training_area_and_is_validated():
    m = _ppd()
    assert m.area == 1024 * 768 and m.working_size(480, 640) == (768, 1024)
    with pytest.raises(ValueError, match="working area must be a positive number of pixels"):
        PixelPerfectDepth(m.dit, m.encoder, area=0)


def test_fit_to_area_keeps_aspect_and_multiples():
    assert fit_to_area(480, 640, 1024 * 768, 16) == (768, 1024)
    h, w = fit_to_area(375, 1242, 1024 * 768, 16)
    assert h % 16 == 0 and w % 16 == 0 and abs((w / h) / (1242 / 375) - 1) < 0.03
    assert abs(h * w - 1024 * 768) / (1024 * 768) < 0.05
    with pytest.raises(ValueError):
        fit_to_area(0, 10, 100, 16)

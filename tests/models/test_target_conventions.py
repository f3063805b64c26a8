"""Conventions written once: the depth target's shift and the time scale are read from flow.py by both the
training target and the sampler's output."""

import math

import pytest
import torch
from model_helpers import tiny_dit

from ppd_lightning import flow
from ppd_lightning.flow import EulerSampler
from ppd_lightning.models import PixelPerfectDepth
from ppd_lightning.models import dit as dit_module
from ppd_lightning.objective import DepthTargetTransform


def _depth_and_mask(B=2, H=16, W=24):
    g = torch.Generator().manual_seed(0)
    depth = 1 + 30 * torch.rand(B, 1, H, W, generator=g)
    return depth, torch.ones_like(depth, dtype=torch.bool)


@pytest.mark.parametrize("shift", [flow.TARGET_SHIFT, -0.3, 0.25])
def test_target_shift_round_trips_through_the_sampler(shift):
    """A DiT predicting zero velocity returns its starting noise as x0: starting from the training target,
    the sampled depth must be the unshifted normalised log-depth, whatever the shift, and map back to the
    metric depth with the transform's inverse."""
    depth, mask = _depth_and_mask()
    transform = DepthTargetTransform(shift=shift)
    target, (lo, hi) = transform(depth, mask)
    assert float(target.min()) >= transform.clamp_min + shift - 1e-6
    assert float(target.max()) <= transform.clamp_max + shift + 1e-6
    model = PixelPerfectDepth(tiny_dit("vanilla"), None, shift=shift)  # zero init: zero velocity
    image = torch.rand(depth.shape[0], 3, *depth.shape[-2:])
    pred = model.sample(image, noise=target)
    norm = (torch.log1p(depth) - lo.view(-1, 1, 1, 1)) / (hi - lo).view(-1, 1, 1, 1)
    torch.testing.assert_close(pred, norm.clamp(transform.clamp_min, transform.clamp_max), atol=1e-5, rtol=0)
    back = transform.inverse(flow.x0_from_depth(pred, shift), lo, hi)
    inside = (norm > transform.clamp_min) & (norm < transform.clamp_max)
    torch.testing.assert_close(back[inside], depth[inside], rtol=1e-4, atol=1e-4)


def test_the_default_shift_is_the_released_one():
    assert flow.TARGET_SHIFT == -0.5
    assert DepthTargetTransform().shift == flow.TARGET_SHIFT
    assert PixelPerfectDepth(tiny_dit("vanilla"), None).shift == flow.TARGET_SHIFT
    x0 = torch.tensor([-1.0, 0.0, 0.5])
    torch.testing.assert_close(flow.depth_from_x0(x0), x0 + 0.5)  # the release returns x0 + 0.5


def test_time_scale_is_the_flow_time_scale():
    """The DiT embeds t on the sampler's integer scale: grid time k / T embeds as the integer k."""
    assert dit_module.TIME_SCALE == flow.OFFICIAL_T
    emb = dit_module.TimestepEmbedder(8)
    t = EulerSampler(4).timesteps()
    k = flow.official_timesteps(4).float()
    torch.testing.assert_close(emb.sinusoidal(t), _sin(emb, k))


def _sin(emb, k):
    """The official embedding of integer timesteps k: cos and sin of k times the frequencies."""
    half = emb.frequency_size // 2
    freqs = torch.exp(-math.log(emb.max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = k[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

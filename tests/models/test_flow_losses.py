import math

import pytest
import torch

from ppd_lightning.flow import (
    EulerSampler,
    LinearPath,
    LogitNormalTimesteps,
    official_timesteps,
)
from ppd_lightning.losses import MultiScaleGradientLoss, masked_mse
from ppd_lightning.objective import DepthTargetTransform


def test_linear_path_endpoints_and_inversions():
    path = LinearPath()
    x0, eps = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    t = torch.tensor([0.0, 0.3, 1.0])
    xt = path.interpolate(x0, eps, t)
    torch.testing.assert_close(xt[0], x0[0])
    torch.testing.assert_close(xt[2], eps[2])
    v = path.velocity(x0, eps)
    torch.testing.assert_close(v, eps - x0)
    torch.testing.assert_close(path.x0_from_velocity(xt, v, t), x0)
    torch.testing.assert_close(path.noise_from_velocity(xt, v, t), eps)


def test_official_timesteps():
    assert official_timesteps(4).tolist() == [1000, 750, 500, 249]
    assert official_timesteps(1).tolist() == [1000]
    for steps in (2, 3, 5, 10, 50):
        ts = official_timesteps(steps)
        assert len(ts) == steps and ts[0] == 1000 and (ts.diff() < 0).all() and ts[-1] >= 0
    with pytest.raises(ValueError):
        official_timesteps(0)


def test_euler_sampler_is_exact_for_the_true_velocity():
    """With the exact velocity of a straight path, any number of Euler steps lands on x0."""
    x0 = torch.randn(2, 1, 8, 8)
    noise = torch.randn_like(x0)
    for steps in (1, 4, 7):
        calls = []

        def velocity(x, t, calls=calls):
            calls.append(t.clone())
            return noise - x0

        out = EulerSampler(steps).sample(velocity, noise)
        torch.testing.assert_close(out, x0, rtol=1e-5, atol=1e-5)
        assert len(calls) == steps and calls[0].shape == (2,)
        torch.testing.assert_close(
            torch.stack([c[0] for c in calls]), official_timesteps(steps).float() / 1000
        )


def test_logit_normal_timesteps():
    g = torch.Generator().manual_seed(0)
    t = LogitNormalTimesteps(loc=0.0, scale=1.0)(20000, generator=g)
    assert ((t > 0) & (t < 1)).all()
    logit = torch.log(t / (1 - t))
    assert abs(logit.mean()) < 0.03 and abs(logit.std() - 1) < 0.03
    shifted = LogitNormalTimesteps(loc=1.0, scale=0.5)(20000, generator=g)
    assert shifted.median() > 0.7
    with pytest.raises(ValueError):
        LogitNormalTimesteps(scale=0)


def test_uniform_share_of_timesteps_reaches_the_ends():
    g = torch.Generator().manual_seed(0)
    plain = LogitNormalTimesteps()(20000, generator=g)
    mixed = LogitNormalTimesteps(uniform_fraction=0.3)(20000, generator=g)
    uniform = LogitNormalTimesteps(uniform_fraction=1.0)(20000, generator=g)
    assert (plain > 0.95).float().mean() < 0.005  # the logit-normal hardly ever trains near t = 1
    assert abs((mixed > 0.95).float().mean() - 0.3 * 0.05) < 0.006
    assert abs(uniform.mean() - 0.5) < 0.01 and abs((uniform > 0.95).float().mean() - 0.05) < 0.006
    with pytest.raises(ValueError, match="uniform_fraction"):
        LogitNormalTimesteps(uniform_fraction=1.5)


def test_depth_target_transform_range_quantiles_and_inverse():
    tf = DepthTargetTransform()
    g = torch.Generator().manual_seed(0)
    depth = torch.rand(2, 1, 32, 32, generator=g) * 20 + 1
    mask = torch.ones_like(depth, dtype=torch.bool)
    mask[0, :, :4] = False
    depth[0, :, :4] = 1e4  # invalid pixels must not move the quantiles
    depth[1, :, 0, :3] = 500.0  # valid but beyond 80 m: excluded from the quantiles
    target, (lo, hi) = tf(depth, mask)
    assert target.min() >= -1.0 and target.max() <= 0.5
    for b in range(2):
        sel = mask[b] & (depth[b] < 80)
        v = torch.log1p(depth[b][sel])
        assert math.isclose(lo[b].item(), torch.quantile(v, 0.02).item(), rel_tol=1e-5)
        assert math.isclose(hi[b].item(), torch.quantile(v, 0.98).item(), rel_tol=1e-5)
    inside = mask & (target > -1.0) & (target < 0.5)
    back = tf.inverse(target, lo, hi)
    torch.testing.assert_close(back[inside], depth[inside], rtol=1e-4, atol=1e-4)
    # far pixels clamp to the top of the range
    assert (target[1, :, 0, :3] == 0.5).all()


def test_depth_target_transform_handles_empty_and_flat_images():
    tf = DepthTargetTransform()
    depth = torch.full((2, 1, 4, 4), 5.0)
    mask = torch.zeros_like(depth, dtype=torch.bool)
    mask[1] = True
    target, (lo, hi) = tf(depth, mask)
    assert torch.isfinite(target).all() and (hi > lo).all()


def test_masked_mse_ignores_invalid_pixels():
    pred, target = torch.zeros(1, 1, 2, 2), torch.tensor([[[[1.0, 2.0], [100.0, 3.0]]]])
    mask = torch.tensor([[[[True, True], [False, True]]]])
    assert math.isclose(masked_mse(pred, target, mask).item(), (1 + 4 + 9) / 3, rel_tol=1e-6)
    assert masked_mse(pred, target, torch.zeros_like(mask)).item() == 0


def test_gradient_loss_ignores_offset_and_penalises_blur():
    loss = MultiScaleGradientLoss(scales=4)
    gt = torch.zeros(1, 1, 32, 32)
    gt[..., 16:] = 1.0  # a sharp step edge
    mask = torch.ones_like(gt, dtype=torch.bool)
    assert loss(gt + 0.7, gt, mask).item() < 1e-6
    blurred = torch.nn.functional.avg_pool2d(gt, 5, stride=1, padding=2, count_include_pad=False)
    ramp = gt + torch.linspace(0, 0.3, 32).view(1, 1, 1, 32)  # a smooth, larger error than the blur's
    assert (ramp - gt).abs().mean() > (blurred - gt).abs().mean()
    assert loss(blurred, gt, mask) > 2 * loss(ramp, gt, mask) > 0
    # invalid pixels do not contribute
    m2 = mask.clone()
    m2[..., 12:20] = False
    assert loss(blurred, gt, m2).item() < 1e-6
    with pytest.raises(ValueError):
        MultiScaleGradientLoss(scales=0)


def test_training_timesteps_are_the_release_integers_unless_asked_otherwise():
    g = torch.Generator().manual_seed(0)
    t = LogitNormalTimesteps()(5000, generator=g)
    k = t * 1000
    assert (k - k.round()).abs().max() < 1e-3 and k.min() >= 0 and k.max() <= 1000
    assert len(k.unique()) > 200  # still spread over the grid
    mixed = LogitNormalTimesteps(uniform_fraction=0.5)(5000, generator=g) * 1000
    assert (mixed - mixed.round()).abs().max() < 1e-3
    coarse = LogitNormalTimesteps(grid=10)(1000, generator=g) * 10
    assert (coarse - coarse.round()).abs().max() < 1e-5
    free = LogitNormalTimesteps(grid=None)(1000, generator=g) * 1000
    assert (free - free.round()).abs().max() > 0.1
    for bad in (0, -5, 2.5, True):
        with pytest.raises(ValueError, match="timestep grid"):
            LogitNormalTimesteps(grid=bad)


def test_release_depth_valid_range_clipping_and_sky():
    tf = DepthTargetTransform()
    depth = torch.tensor([[[[0.0, 0.05, 0.1, 0.5, 79.9, 80.0, 150.0, float("nan")]]]])
    mask = torch.tensor([[[[False, True, True, True, True, True, True, True]]]])
    sky = torch.tensor([[[[True, False, False, False, False, False, False, False]]]])
    d, loss_mask = tf.release_depth(depth, mask, sky)
    assert loss_mask.tolist() == [[[[True, False, False, True, True, False, False, False]]]]
    torch.testing.assert_close(d, torch.tensor([[[[81.0, 0.1, 0.1, 0.5, 79.9, 80.0, 80.0, 0.1]]]]))
    d2, m2 = tf.release_depth(depth, mask, None)  # no sky key: the sky pixel is just invalid
    assert not m2[0, 0, 0, 0] and d2[0, 0, 0, 0] == 0.1
    # other ranges are configurable
    depth[0, 0, 0, 3] = 30.0
    narrow = DepthTargetTransform(min_depth=1.0, max_depth=60.0, sky_margin=5.0)
    d3, m3 = narrow.release_depth(depth, mask, sky)
    assert d3[0, 0, 0, 0] == 65.0 and d3[0, 0, 0, 4] == 60.0 and d3[0, 0, 0, 2] == 1.0
    assert m3.flatten().nonzero().flatten().tolist() == [0, 3]

"""Edge-aware depth upsampling (``ppd_lightning.upsampling``) and ``PixelPerfectDepth.infer``'s output modes."""

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from model_helpers import randomize, tiny_dit, tiny_encoder

from ppd_lightning.errors import InputError
from ppd_lightning.models import PixelPerfectDepth
from ppd_lightning.models.ppd import EDGE_ATOL
from ppd_lightning.upsampling import edge_aware_upsample, resize_depth

NEAR, FAR = 2.0, 9.0
COLOURS = {True: (0.8, 0.3, 0.2), False: (0.2, 0.4, 0.7)}


def on_a_surface(depth: np.ndarray) -> np.ndarray:
    return np.minimum(np.abs(depth - NEAR), np.abs(depth - FAR)) < 1e-5


def centres(n_out: int, n_full: int) -> np.ndarray:
    """Pixel centres of an ``n_out``-pixel axis in the coordinates of an ``n_full``-pixel one."""
    return (np.arange(n_out) + 0.5) * n_full / n_out - 0.5


def step_scene(H, W, h, w, slope=0.37, offset=11.3):
    """A slanted step edge x > slope * y + offset (full-size pixel coordinates): near on the right.

    Returns the full-size depth, the full-size RGB guide (float, point-sampled: sharp), and the depth
    point-sampled at the centres of an h x w grid (a perfect prediction at the working size)."""

    def near(ys, xs):
        return xs[None, :] > slope * ys[:, None] + offset

    full = near(np.arange(H, dtype=float), np.arange(W, dtype=float))
    low = near(centres(h, H), centres(w, W))
    depth = np.where(full, NEAR, FAR).astype(np.float32)
    guide = np.where(full[..., None], COLOURS[True], COLOURS[False]).astype(np.float32)
    return depth, guide, np.where(low, NEAR, FAR).astype(np.float32)


@pytest.mark.parametrize("full, low", [((64, 64), (32, 32)), ((61, 47), (20, 14)), ((48, 64), (16, 24))])
def test_a_step_edge_has_no_intermediate_values_and_no_staircase(full, low):
    (H, W), (h, w) = full, low
    gt, guide, pred = step_scene(H, W, h, w)
    out = edge_aware_upsample(pred, guide)
    assert out.shape == (H, W) and out.dtype == np.float32
    assert on_a_surface(out).all()  # only the two surfaces' depths: no flying pixel
    wrong = int((np.abs(out - gt) > 1e-4).sum())
    # the edge follows the guide's edge at full size; nearest and bilinear do not
    nearest = resize_depth(pred, (H, W), "nearest")
    bilinear = resize_depth(pred, (H, W), "bilinear")
    assert wrong <= 0.002 * H * W, wrong
    assert int((np.abs(nearest - gt) > 1e-4).sum()) >= 10 * max(wrong, 1)
    assert (~on_a_surface(bilinear)).sum() > H // 2  # what the method avoids: values in between


def test_the_edge_moves_with_the_guide_not_the_low_resolution_grid():
    # the same low-resolution depth, two guides whose edges differ by one full-size pixel
    H, W, h, w = 32, 64, 16, 32
    pred = np.where(np.arange(w) >= 16, NEAR, FAR).astype(np.float32)[None].repeat(h, 0)
    outs = []
    for edge_col in (31, 32):
        guide = np.where(np.arange(W) >= edge_col, 0.9, 0.1).astype(np.float32)[None].repeat(H, 0)
        outs.append(edge_aware_upsample(pred, guide))
        np.testing.assert_allclose(
            outs[-1], np.where(np.arange(W) >= edge_col, NEAR, FAR)[None].repeat(H, 0), rtol=1e-6
        )
    assert not np.array_equal(outs[0], outs[1])


def test_smooth_ramps_are_bilinear():
    H, W, h, w = 50, 70, 20, 28
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    ramp = (3.0 + 0.02 * xx + 0.01 * yy).astype(np.float32)  # neighbours within 1 %: one surface
    guide = np.random.default_rng(0).random((H, W, 3)).astype(np.float32)  # texture must not matter
    out = edge_aware_upsample(ramp, guide)
    bilinear = F.interpolate(torch.from_numpy(ramp)[None, None], (H, W), mode="bilinear")[0, 0].numpy()
    np.testing.assert_allclose(out, bilinear, rtol=0, atol=1e-6)
    # a ramp in log-like units with an absolute tolerance, as infer calls it
    log_ramp = (0.2 + 0.004 * xx).astype(np.float32)
    out = edge_aware_upsample(log_ramp, guide, rtol=0.0, atol=EDGE_ATOL)
    ref = F.interpolate(torch.from_numpy(log_ramp)[None, None], (H, W), mode="bilinear")[0, 0].numpy()
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-6)


def test_both_sides_of_an_edge_stay_smooth():
    # two slanted surfaces meeting at a step: each side is interpolated within itself
    H, W, h, w = 40, 80, 20, 40
    gt, guide, _ = step_scene(H, W, h, w, slope=0.0, offset=39.5)
    xs_low, xs = centres(w, W), np.arange(W, dtype=float)
    surface = lambda x, near: np.where(near, 2.0 + 0.01 * x, 9.0 + 0.02 * x)  # noqa: E731
    pred = surface(xs_low, xs_low > 39.5)[None].repeat(h, 0).astype(np.float32)
    want = surface(xs, xs > 39.5)[None].repeat(H, 0)
    out = edge_aware_upsample(pred, guide)
    interior = (xs > 1) & (xs < W - 2)  # the border clamps, as bilinear does
    far_from_edge = interior & (np.abs(xs - 39.5) > 2)
    np.testing.assert_allclose(out[:, far_from_edge], want[:, far_from_edge], rtol=1e-5)
    # next to the edge each side holds its own nearest sample (no extrapolation): off by half a step
    np.testing.assert_allclose(out[:, interior], want[:, interior], rtol=3e-3)


def test_layouts_dtypes_and_libraries():
    gt, guide, pred = step_scene(24, 32, 12, 16)
    ref = edge_aware_upsample(pred, guide)
    t = torch.from_numpy(pred)
    g = torch.from_numpy(guide).permute(2, 0, 1)  # (3, H, W)
    assert torch.equal(edge_aware_upsample(t, g), torch.from_numpy(ref))
    batch = edge_aware_upsample(t[None, None].repeat(2, 1, 1, 1), g[None])  # guide batch 1 broadcasts
    assert batch.shape == (2, 1, 24, 32) and torch.equal(batch[1, 0], torch.from_numpy(ref))
    assert edge_aware_upsample(t[None], g).shape == (1, 24, 32)
    assert edge_aware_upsample(t.half(), g).dtype == torch.float16
    assert edge_aware_upsample(t.double(), g).dtype == torch.float64
    assert edge_aware_upsample(pred.astype(np.uint16), guide).dtype == np.float32
    assert np.array_equal(edge_aware_upsample(pred, (guide * 255).round().astype(np.uint8)), ref)
    assert np.array_equal(edge_aware_upsample(pred, guide[..., 0]), ref)  # one grey channel
    channels_last = g[None].contiguous(memory_format=torch.channels_last)
    assert torch.equal(edge_aware_upsample(t, channels_last), torch.from_numpy(ref))
    crop = F.pad(g, (3, 1, 2, 5))[:, 2:-5, 3:-1]  # a view with a storage offset
    assert torch.equal(edge_aware_upsample(t, crop), torch.from_numpy(ref))


def test_odd_sizes_one_pixel_axes_and_shrinking():
    rng = np.random.default_rng(1)
    for (h, w), (H, W) in [((7, 5), (23, 17)), ((1, 9), (3, 31)), ((9, 1), (20, 2)), ((30, 40), (13, 17))]:
        depth = rng.uniform(1, 10, (h, w)).astype(np.float32)
        out = edge_aware_upsample(depth, rng.random((H, W, 3)))
        assert out.shape == (H, W) and np.isfinite(out).all()
        assert out.min() >= depth.min() - 1e-5 and out.max() <= depth.max() + 1e-5


def test_identity_when_the_sizes_are_equal():
    depth = torch.rand(1, 1, 9, 11) + 1
    out = edge_aware_upsample(depth, torch.rand(1, 3, 9, 11))
    assert torch.equal(out, depth) and out is not depth
    assert torch.equal(resize_depth(depth, (9, 11), "bilinear"), depth)


def test_non_finite_depth_is_never_blended():
    depth = np.full((8, 8), 3.0, np.float32)
    depth[:, 4:] = np.inf  # e.g. off a mask
    depth[0, 0] = np.nan
    guide = np.zeros((16, 16, 3), np.float32)
    guide[:, 8:] = 1.0
    out = edge_aware_upsample(depth, guide)
    np.testing.assert_allclose(out[np.isfinite(out)], 3.0, rtol=1e-6)
    assert np.isinf(out[:, 8:]).all() and np.isfinite(out[2:, :8]).all()


def test_resize_depth_modes_match_torch():
    depth = torch.rand(2, 1, 6, 8) + 1
    for mode, torch_mode in (("bilinear", "bilinear"), ("nearest", "nearest-exact")):
        assert torch.equal(
            resize_depth(depth, (13, 15), mode), F.interpolate(depth, (13, 15), mode=torch_mode)
        )
    guide = torch.rand(2, 3, 13, 15)
    assert torch.equal(resize_depth(depth, (13, 15), "edge", guide), edge_aware_upsample(depth, guide))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: edge_aware_upsample(np.ones(5), np.ones((4, 4, 3))), "depth must be"),
        (lambda: edge_aware_upsample(torch.ones(1, 2, 4, 4), torch.ones(3, 8, 8)), "depth must be"),
        (lambda: edge_aware_upsample(np.ones((0, 4)), np.ones((4, 4, 3))), "empty"),
        (lambda: edge_aware_upsample(np.array([["a"]]), np.ones((4, 4, 3))), "numeric"),
        (lambda: edge_aware_upsample(torch.ones(2, 4, 4), torch.ones(3, 3, 8, 8)), "batch 3"),
        (lambda: edge_aware_upsample(torch.ones(4, 4), torch.ones(8, 8)), "guide tensor must be"),
        (lambda: edge_aware_upsample(np.ones((4, 4)), np.ones((2, 8, 8, 3))), "guide array must be"),
        (
            lambda: edge_aware_upsample(np.ones((4, 4)), np.ones((8, 8, 3)), guide_low=np.ones((5, 4, 3))),
            "guide_low",
        ),
        (lambda: edge_aware_upsample(np.ones((4, 4)), np.ones((8, 8, 3)), sigma=0), "sigma"),
        (lambda: edge_aware_upsample(np.ones((4, 4)), np.ones((8, 8, 3)), rtol=-1), "rtol"),
        (lambda: resize_depth(np.ones((4, 4)), (8, 8), "bicubic"), "one of edge, bilinear, nearest"),
        (lambda: resize_depth(np.ones((4, 4)), (8, 8), "edge"), "needs the full-size image"),
        (lambda: resize_depth(np.ones((4, 4)), (8, 8), "edge", np.ones((8, 9, 3))), "8x9"),
        (lambda: resize_depth(np.ones((4, 4)), (8, 8), "bilinear", sigma=0.1), "apply to mode 'edge'"),
        (lambda: resize_depth(np.ones((4, 4)), (0, 8), "bilinear"), "positive"),
    ],
)
def test_bad_inputs_are_input_errors(call, match):
    with pytest.raises(InputError, match=match):
        call()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    gt, guide, pred = step_scene(61, 47, 20, 14)
    d, g = torch.from_numpy(pred)[None, None], torch.from_numpy(guide).permute(2, 0, 1)[None]
    cpu = edge_aware_upsample(d, g)
    cuda = edge_aware_upsample(d.cuda(), g.cuda())
    assert cuda.device.type == "cuda" and torch.equal(cuda.cpu(), cpu)
    u8 = (g * 255).round().to(torch.uint8)
    assert torch.allclose(edge_aware_upsample(d.cuda(), u8.cuda()).cpu(), edge_aware_upsample(d, u8))


# -- PixelPerfectDepth.infer(output_mode=...) -------------------------------------------------------


def _ppd():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return PixelPerfectDepth(randomize(tiny_dit()), randomize(tiny_encoder()))


def test_infer_output_modes():
    m = _ppd()
    image = torch.rand(2, 3, 64, 96)
    h, w = m.working_size(64, 96, area=32 * 48)
    assert (h, w) == (32, 48)
    noise = torch.randn(2, 1, h, w)
    x = F.interpolate(image, (h, w), mode="bilinear", antialias=True).clamp(0, 1)
    low = m.sample(x, steps=1, noise=noise)
    run = lambda **kw: m.infer(image, steps=1, noise=noise, area=32 * 48, **kw)  # noqa: E731
    assert torch.allclose(run(output_mode="bilinear"), F.interpolate(low, (64, 96), mode="bilinear"))
    assert torch.allclose(run(output_mode="nearest"), F.interpolate(low, (64, 96), mode="nearest-exact"))
    edge = edge_aware_upsample(low, image, guide_low=x, rtol=0.0, atol=EDGE_ATOL)
    assert torch.allclose(run(output_mode="edge"), edge) and torch.allclose(run(), edge)  # the default
    assert not torch.allclose(edge, F.interpolate(low, (64, 96), mode="bilinear"))
    assert m.infer(image[:, :, :32, :48], steps=1, area=32 * 48).shape == (2, 1, 32, 48)  # no resize
    with pytest.raises(InputError, match="output_mode must be one of"):
        m.infer(image, steps=1, area=32 * 48, output_mode="nearest-exact")

import cv2
import numpy as np
import pytest
import torch

from ppd_lightning.geometry import depth_to_points, intrinsics_matrix
from ppd_lightning.visualize import (
    colorize,
    colorize_depth,
    depth_panel,
    read_ply,
    side_by_side,
    write_image,
    write_ply,
)


def test_colorize_depth_range_and_invalid():
    d = np.tile(np.linspace(1.0, 10.0, 50, dtype=np.float32), (8, 1))
    d[0, 0] = 0.0  # invalid (non-positive)
    d[0, 1] = np.nan
    mask = np.ones_like(d, bool)
    mask[1, 1] = False
    out = colorize_depth(d, mask, vmin=1.0, vmax=10.0)
    assert out.shape == (8, 50, 3) and out.dtype == np.uint8
    for r, c in [(0, 0), (0, 1), (1, 1)]:
        assert out[r, c].tolist() == [0, 0, 0]
    # spectral: near = red end, far = violet end
    assert out[2, 2][0] > out[2, 2][2]
    assert out[2, -1][2] > out[2, -1][0]
    grey = colorize_depth(d, mask, invalid_color=(128, 128, 128), cmap="turbo")
    assert grey[1, 1].tolist() == [128, 128, 128]


def test_colorize_robust_percentiles_ignore_outliers():
    v = np.linspace(0, 1, 1000).reshape(20, 50)
    v[0, 0] = 1e6
    a = colorize(v, cmap="gray")
    # the bulk spans almost the whole grey ramp despite the outlier
    assert a[..., 0].max() == 255 and a[10, 25, 0] > 100
    with pytest.raises(ValueError, match="unknown colormap"):
        colorize(v, cmap="nope")


def test_panel_and_write_image(tmp_path):
    img = np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    gt = np.full((30, 40), 2.0, np.float32)
    pred = torch.full((1, 30, 40), 2.2)
    panel = depth_panel(img, pred, gt, gt > 0)
    assert panel.dtype == np.uint8 and panel.shape[1] == 4 * 40 + 3 * 4 and panel.shape[0] > 30
    path = write_image(tmp_path / "sub" / "panel.png", panel)
    back = cv2.imread(str(path))[..., ::-1]
    np.testing.assert_array_equal(back, panel)
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["panel.png"]  # no temp file left
    sbs = side_by_side([img, np.zeros((15, 20), np.float32)])
    assert sbs.shape == (30, 40 + 4 + 40, 3)


def test_depth_to_points_hand_computed():
    d = np.array([[2.0, 0.0], [4.0, 1.0]], np.float32)
    k = intrinsics_matrix(2.0, 4.0, cx=0.5, cy=0.5)
    pts = depth_to_points(d, k)
    assert pts.dtype == np.float32
    expect = np.array(
        [
            [(0 - 0.5) * 2 / 2, (0 - 0.5) * 2 / 4, 2.0],
            [(0 - 0.5) * 4 / 2, (1 - 0.5) * 4 / 4, 4.0],
            [(1 - 0.5) * 1 / 2, (1 - 0.5) * 1 / 4, 1.0],
        ]
    )
    np.testing.assert_allclose(pts, expect, rtol=1e-6)
    t = depth_to_points(
        torch.from_numpy(d), (2.0, 4.0, 0.5, 0.5), mask=np.array([[True, False], [False, False]])
    )
    assert isinstance(t, torch.Tensor) and t.shape == (1, 3)


def test_ply_roundtrip(tmp_path):
    pts = np.random.default_rng(1).normal(size=(17, 3)).astype(np.float32)
    cols = np.random.default_rng(2).integers(0, 255, (17, 3), dtype=np.uint8)
    path = write_ply(tmp_path / "c.ply", pts, cols)
    raw = path.read_bytes()
    assert raw.startswith(b"ply\nformat binary_little_endian 1.0\nelement vertex 17\n")
    assert len(raw) == raw.index(b"end_header\n") + 11 + 17 * 15
    p2, c2 = read_ply(path)
    np.testing.assert_array_equal(p2, pts)
    np.testing.assert_array_equal(c2, cols)
    p3, c3 = read_ply(write_ply(tmp_path / "n.ply", torch.from_numpy(pts)))
    np.testing.assert_array_equal(p3, pts)
    assert c3 is None
    _, cf = read_ply(write_ply(tmp_path / "f.ply", pts, np.ones((17, 3)) * 0.5))
    assert (cf == 128).all()
    with pytest.raises(ValueError, match="colours"):
        write_ply(tmp_path / "bad.ply", pts, cols[:3])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.ply", "f.ply", "n.ply"]


def test_readable_panel_upscales_keys_and_marks_sky_and_holes():
    from ppd_lightning.visualize import INVALID_COLOR, SKY_COLOR, colorbar

    H, W = 24, 32
    gt = np.tile(np.linspace(2.0, 20.0, H, dtype=np.float32)[:, None], (1, W))
    sky = np.zeros((H, W), bool)
    sky[:4] = True
    gt[sky] = 0.0
    mask = gt > 0
    mask[12, 5] = False  # a hole
    pred = gt.copy()
    pred[sky] = 25.0
    img = np.zeros((H, W, 3), np.uint8)
    plain = depth_panel(img, pred, gt, mask, sky=sky)
    panel = depth_panel(img, pred, gt, mask, sky=sky, min_height=192, colorbars=True)
    factor = 8  # ceil(192 / 24)
    assert panel.shape[0] >= 192 and panel.shape[1] > plain.shape[1] * 7
    # tiles: image, prediction, ground truth, each W * factor wide with 4-px gaps, above an 18-px legend
    tile_w = W * factor + 4
    body = panel[panel.shape[0] - 18 - H * factor : panel.shape[0] - 18]  # the tiles, above the legend
    pred_tile = body[:, tile_w : tile_w + W * factor]
    gt_tile = body[:, 2 * tile_w : 2 * tile_w + W * factor]
    # nearest upscaling: every source pixel is a factor x factor block
    assert (
        gt_tile[::factor, ::factor].reshape(H, W, 3) == gt_tile[factor - 1 :: factor, factor - 1 :: factor]
    ).all()
    g = gt_tile[::factor, ::factor]
    p = pred_tile[::factor, ::factor]
    assert (g[sky] == SKY_COLOR).all()
    assert tuple(g[12, 5]) == INVALID_COLOR
    # prediction and ground truth share one colour range: equal depths, equal colours
    both = mask & ~sky
    assert (g[both] == p[both]).all()
    # the key: vmax at the top, vmin at the bottom, in the colours of the depth tiles
    key = colorbar(2.0, 20.0, 100)
    lut = colorize(np.array([[0.0, 1.0]]), vmin=0.0, vmax=1.0)
    strip = key[:, 5]
    painted = strip[(strip != 255).any(1)]
    assert (painted[0] == lut[0, 1]).all() and (painted[-1] == lut[0, 0]).all()

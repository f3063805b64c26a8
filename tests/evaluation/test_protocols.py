import math

import numpy as np
import pytest
import torch
from fake_benchmarks import build

from ppd_lightning.evaluation.datasets import Sample, build_benchmark
from ppd_lightning.evaluation.metrics import depth_metrics_per_image
from ppd_lightning.evaluation.protocols import PROTOCOLS, get_protocol


def _sample(depth, name="x.png"):
    h, w = depth.shape
    valid = np.isfinite(depth) & (depth > 0)
    return Sample(name, np.zeros((h, w, 3), np.uint8), depth.astype(np.float32), valid)


def test_nyu_eigen_crop_and_ranges(tmp_path):
    build("nyuv2", tmp_path / "nyu")
    s = build_benchmark("nyuv2", tmp_path / "nyu")[0]
    s.depth[100, 100] = 12.0  # beyond 10 m
    m = get_protocol("marigold").prepare(s, "nyuv2").mask
    expect = np.zeros((480, 640), bool)
    expect[45:471, 41:601] = True
    expect[100, 100] = False
    np.testing.assert_array_equal(m, expect)
    p = get_protocol("ppd").prepare(s, "nyuv2")  # no crop, (0.1, 10)
    assert p.mask.sum() == 480 * 640 - 2  # pixel (0,0) has no depth, (100,100) is 12 m


def test_kitti_kb_crop_and_eigen_mask(tmp_path):
    build("kitti", tmp_path / "kitti")
    s = build_benchmark("kitti", tmp_path / "kitti")[0]
    for name in ("marigold", "ppd"):
        p = get_protocol(name).prepare(s, "kitti")
        assert p.image.shape == (352, 1216, 3) and p.depth.shape == (352, 1216)
        top, left = 375 - 352, (1242 - 1216) // 2
        np.testing.assert_array_equal(p.depth, s.depth[top:, left : left + 1216])
        np.testing.assert_array_equal(p.image, s.image[top:, left : left + 1216])
        rows = np.nonzero(p.mask.any(1))[0]
        cols = np.nonzero(p.mask.any(0))[0]
        # lidar-less rows end at original row 100 -> cropped row 77; the Eigen mask starts at row 117
        assert rows[0] == int(0.3324324 * 352) and rows[-1] == int(0.91351351 * 352) - 1
        assert cols[0] == int(0.0359477 * 1216) and cols[-1] == int(0.96405229 * 1216) - 1


def test_eth3d_ppd_resize_and_threshold():
    assert PROTOCOLS["ppd"].spec("eth3d").resize == (2048, 1360)
    d = np.full((12, 16), 5.0, np.float32)
    d[:, :8] = 0.005  # below the ppd threshold 0.01 but above marigold's 1e-5
    d[0, 0] = np.inf
    s = _sample(d)
    proto = get_protocol("ppd", overrides={"eth3d": {"resize": [8, 6]}})
    p = proto.prepare(s, "eth3d")
    assert p.image.shape == (6, 8, 3) and p.depth.shape == (6, 8)
    assert p.mask[:, 4:].all() and not p.mask[:, :4].any()
    m = get_protocol("marigold").prepare(s, "eth3d")
    assert m.mask.sum() == 12 * 16 - 1


def test_diode_ppd_gradient_and_range_mask():
    d = np.full((10, 12), 2.0, np.float32)
    d[:, 6:] = 8.0
    d[0, 0] = 0.5  # below 0.6 m
    s = _sample(d)
    p = get_protocol("ppd").prepare(s, "diode")
    # Sobel |dx| + |dy| of a 6 m step: 4 * 6 = 24 > 0.3 at the columns next to the step
    assert not p.mask[:, 5:7].any()
    assert p.mask[5, 2] and p.mask[5, 9] and not p.mask[0, 0]
    m = get_protocol("marigold").prepare(s, "diode")
    # marigold: no gradient mask, but Marigold's DIODE range (0.6, 350) drops the 0.5 m pixel too
    assert m.mask[:, 5:7].all() and not m.mask[0, 0] and m.mask[1, 0]


def test_marigold_alignment_clips_to_range():
    proto = get_protocol("marigold")
    gt = torch.tensor([[[1.0, 2.0, 9.0]]])
    mask = torch.tensor([[[True, True, False]]])
    pred = torch.tensor([[[0.0, 1.0, 100.0]]])  # aligned: d = p + 1 -> 101 at the masked pixel
    out = proto.align(pred, gt, mask, "nyuv2")
    torch.testing.assert_close(out, torch.tensor([[[1.0, 2.0, 10.0]]]))
    out = proto.align(torch.tensor([[[0.0, 1.0, -100.0]]]), gt, mask, "eth3d")
    assert out[0, 0, 2].item() == pytest.approx(1e-5)  # eth3d min_depth 1e-5 (max is inf)


def test_map_prediction_original_prepared_and_other_sizes(tmp_path):
    build("kitti", tmp_path / "kitti")
    s = build_benchmark("kitti", tmp_path / "kitti")[0]
    proto = get_protocol("ppd")
    p = proto.prepare(s, "kitti")
    full = np.arange(375 * 1242, dtype=np.float32).reshape(375, 1242)
    np.testing.assert_array_equal(proto.map_prediction(full, p, "kitti"), full[23:, 13 : 13 + 1216])
    same = np.ones((352, 1216), np.float32)
    assert proto.map_prediction(same[None], p, "kitti").shape == (352, 1216)
    with pytest.warns(UserWarning, match="resized"):
        assert proto.map_prediction(np.ones((10, 20), np.float32), p, "kitti").shape == (352, 1216)


def test_unknown_names():
    with pytest.raises(ValueError, match="unknown protocol"):
        get_protocol("nope")
    assert math.isinf(PROTOCOLS["marigold"].spec("eth3d").max_depth)


def _marigold_metrics(pred, gt, valid):
    """Marigold's ``abs_relative_difference`` and ``delta1_acc`` (src/util/metric.py), torch float32."""
    rel = torch.abs(pred - gt) / gt
    rel[~valid] = 0
    n = valid.sum((-1, -2))
    abs_rel = (torch.sum(rel, (-1, -2)) / n).mean()
    hit = torch.where(torch.max(pred / gt, gt / pred) < 1.25, 1.0, 0.0)
    hit[~valid] = 0
    return float(abs_rel), float((torch.sum(hit, (-1, -2)) / n).mean())


def _marigold_eth3d(gt, pred, valid, max_resolution=1024):
    """Marigold's ETH3D scoring as its code does it: ``align_depth_least_square`` (each map as a
    (1, H, W) tensor through ``torch.nn.Upsample(scale_factor=s, mode="nearest")``, ``np.linalg.lstsq``
    on the masked pixels), clip to (1e-5, inf) and >= 1e-6, then its metrics."""
    s = np.min(max_resolution / np.array(pred.shape[-2:]))
    gt_s, pred_s, valid_s = gt, pred, valid
    if s < 1:
        down = torch.nn.Upsample(scale_factor=s, mode="nearest")
        gt_s = down(torch.as_tensor(gt).unsqueeze(0)).numpy()
        pred_s = down(torch.as_tensor(pred).unsqueeze(0)).numpy()
        valid_s = down(torch.as_tensor(valid).unsqueeze(0).float()).bool().numpy()
    p = pred_s[valid_s].reshape((-1, 1))
    (scale, shift), *_ = np.linalg.lstsq(
        np.concatenate([p, np.ones_like(p)], -1), gt_s[valid_s].reshape((-1, 1)), rcond=None
    )
    aligned = np.clip(np.clip(pred * scale + shift, 1e-5, np.inf), 1e-6, None)
    return _marigold_metrics(torch.from_numpy(aligned), torch.from_numpy(gt), torch.from_numpy(valid))


@pytest.mark.parametrize("h, w", [(1100, 1650), (1650, 1100)])
def test_marigold_eth3d_scores_are_marigolds_own(h, w):
    """Landscape and portrait maps above 1024 px (fitted at h x 1024 and h x 682 by Marigold: its
    Upsample narrows only the width), depth with holes and inf, a noisy prediction with gross
    outliers: AbsRel and delta1 equal Marigold's code's to 1e-6."""
    assert PROTOCOLS["marigold"].spec("eth3d").alignment_max_res == 1024
    assert PROTOCOLS["marigold"].spec("nyuv2").alignment_max_res is None
    g = torch.Generator().manual_seed(h)
    gt = 0.5 + 30 * torch.rand(h, w, generator=g) ** 2
    gt[torch.rand(h, w, generator=g) < 0.3] = 0.0
    gt[torch.rand(h, w, generator=g) < 0.05] = math.inf
    # the prediction's error grows with the column, so which columns are fitted matters
    cols = torch.linspace(0, 1, w)[None]
    pred = torch.where(gt.isfinite(), gt, 10.0) * (0.4 + 0.2 * cols) + 0.3 * torch.randn(h, w, generator=g)
    pred = torch.where(torch.rand(h, w, generator=g) < 0.02, 40 * torch.rand(h, w, generator=g), pred)
    valid = (gt > 1e-5) & (gt < math.inf)
    expect = _marigold_eth3d(gt.numpy(), pred.numpy(), valid.numpy())
    aligned = get_protocol("marigold").align(pred[None], gt[None], valid[None], "eth3d")
    metrics, _ = depth_metrics_per_image(aligned, gt[None], valid[None])
    got = (float(metrics["abs_rel"][0]), float(metrics["delta1"][0]))
    assert got == pytest.approx(expect, abs=1e-6), (got, expect)
    full = _marigold_eth3d(gt.numpy(), pred.numpy(), valid.numpy(), max_resolution=10**6)
    assert max(abs(f - e) for f, e in zip(full, expect)) > 1e-4  # the downscale matters on this data

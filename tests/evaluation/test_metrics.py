import math

import pytest
import torch

from ppd_lightning.evaluation.metrics import METRIC_NAMES, DepthMetrics, depth_metrics_per_image


def test_hand_computed_values():
    gt = torch.tensor([[[1.0, 2.0], [4.0, 5.0]]])
    pred = torch.tensor([[[1.1, 2.0], [3.0, 99.0]]])
    mask = torch.tensor([[[True, True], [True, False]]])
    m, n = depth_metrics_per_image(pred, gt, mask)
    assert n.tolist() == [3]
    p, d = (
        torch.tensor([1.1, 2.0, 3.0], dtype=torch.float64),
        torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64),
    )
    e = p.log() - d.log()
    expect = {
        "abs_rel": (0.1 / 1 + 0 + 1 / 4) / 3,
        "sq_rel": (0.01 / 1 + 0 + 1 / 4) / 3,
        "rmse": math.sqrt((0.01 + 0 + 1) / 3),
        "rmse_log": math.sqrt((e**2).mean().item()),
        "log10": (p.log10() - d.log10()).abs().mean().item(),
        "silog": 100 * math.sqrt((e**2).mean().item() - e.mean().item() ** 2),
        # ratios: 1.1, 1.0, 1.333
        "delta05": 2 / 3,  # 1.25**0.5 = 1.118
        "delta1": 2 / 3,
        "delta2": 1.0,
        "delta3": 1.0,
    }
    assert set(m) == set(METRIC_NAMES)
    for k, v in expect.items():
        assert m[k].item() == pytest.approx(v, rel=1e-6), k


def test_delta05_threshold():
    gt = torch.ones(1, 1, 4)
    pred = torch.tensor([[[1.05, 1.15, 0.9, 1 / 1.2]]])  # ratios 1.05, 1.15, 1.11, 1.2
    m, _ = depth_metrics_per_image(pred, gt, torch.ones(1, 1, 4, dtype=torch.bool))
    assert m["delta05"].item() == pytest.approx(0.5)
    assert m["delta1"].item() == pytest.approx(1.0)


def test_metric_class_mean_over_images_skips_empty_and_accepts_4d():
    gt = torch.full((3, 1, 2, 2), 2.0)
    pred = torch.stack([torch.full((1, 2, 2), 2.0), torch.full((1, 2, 2), 3.0), torch.full((1, 2, 2), 9.0)])
    mask = torch.ones(3, 1, 2, 2, dtype=torch.bool)
    mask[2] = False  # skipped
    metric = DepthMetrics()
    metric.update(pred[:2], gt[:2], mask[:2])
    metric.update(pred[2:], gt[2:], mask[2:])
    out = metric.compute()
    assert int(metric.count) == 2
    assert out["abs_rel"].item() == pytest.approx((0.0 + 0.5) / 2)
    assert out["delta1"].item() == pytest.approx(0.5)
    metric.reset()
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert math.isnan(metric.compute()["abs_rel"].item())


def test_per_image_mean_not_pixel_mean():
    gt = torch.ones(2, 2, 2)
    pred = torch.ones(2, 2, 2)
    pred[1, 0, 0] = 2.0
    mask = torch.ones(2, 2, 2, dtype=torch.bool)
    mask[1] = False
    mask[1, 0, 0] = True  # image 1 has one pixel with abs_rel 1
    metric = DepthMetrics()
    metric.update(pred, gt, mask)
    assert metric.compute()["abs_rel"].item() == pytest.approx(0.5)


def test_sum_states_merge_like_single_process():
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(6, 5, 5, generator=g) + 0.5
    pred = gt * (1 + 0.2 * torch.randn(6, 5, 5, generator=g)).abs()
    mask = torch.rand(6, 5, 5, generator=g) > 0.3
    full = DepthMetrics()
    full.update(pred, gt, mask)
    a, b = DepthMetrics(), DepthMetrics()
    a.update(pred[:4], gt[:4], mask[:4])
    b.update(pred[4:], gt[4:], mask[4:])
    for name in [*METRIC_NAMES, "count"]:  # what a "sum" all-reduce does
        setattr(a, name, getattr(a, name) + getattr(b, name))
    fa, fb = full.compute(), a.compute()
    for k in METRIC_NAMES:
        assert fa[k].item() == pytest.approx(fb[k].item(), rel=1e-12)
    assert all(full._reductions[k] is not None for k in [*METRIC_NAMES, "count"])

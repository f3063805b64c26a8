import math

import cv2
import numpy as np
import torch

from ppd_lightning.evaluation.edges import EdgeChamfer, chamfer_distance, edge_chamfer, edge_region
from ppd_lightning.geometry import intrinsics_matrix


def _scene(h=96, w=128):
    """A box at 2 m in front of a slanted wall at 5-6 m."""
    xs = np.linspace(0, 1, w, dtype=np.float32)
    d = np.tile(5.0 + xs, (h, 1))
    d[30:70, 40:90] = 2.0
    return d


K = intrinsics_matrix(100.0, 100.0, 63.5, 47.5)


def test_edge_region_finds_occlusion_boundary_not_slant():
    d = _scene()
    region = edge_region(d, d > 0, dilation=0)
    assert region[30:70, 39:41].any() and region[29:31, 40:90].any()
    assert not region[5:25, 5:120].any()  # the smooth slanted wall has no edge
    dil = edge_region(d, d > 0, dilation=3)
    assert dil.sum() > region.sum()


def test_chamfer_zero_for_gt_and_hand_value():
    d = _scene()
    assert edge_chamfer(d, d, d > 0, K) == 0.0
    a = torch.tensor([[0.0, 0, 0], [1, 0, 0]])
    b = torch.tensor([[0.0, 0, 1]])
    # a->b: (1 + sqrt 2) / 2; b->a: 1
    assert chamfer_distance(a, b).item() == np.float32(0.5 * ((1 + math.sqrt(2)) / 2 + 1))


def test_smeared_edges_score_far_worse_than_smooth_noise():
    d = _scene()
    valid = d > 0
    blurred = cv2.GaussianBlur(d, (0, 0), 2.0)  # flying pixels across the box boundary
    rng = np.random.default_rng(0)
    smooth = cv2.GaussianBlur(rng.normal(size=d.shape).astype(np.float32), (0, 0), 8.0)
    noisy = d * (1 + 0.01 * smooth / np.abs(smooth).max())  # <= 1 % smooth multiplicative noise
    cd_blur = edge_chamfer(blurred, d, valid, K)
    cd_noise = edge_chamfer(noisy, d, valid, K)
    assert cd_blur > 5 * cd_noise > 0


def test_metric_class_skips_images_without_edges():
    m = EdgeChamfer(max_points=2000)
    d = _scene()
    m.update(d, d, d > 0, K)
    flat = np.full((20, 20), 3.0, np.float32)
    m.update(flat, flat, flat > 0, K)
    assert math.isnan(m.last_value)
    assert int(m.count) == 1 and m.compute().item() == 0.0


def test_subsampled_edge_score_is_the_same_in_every_run():
    gt = _scene()
    valid = np.ones_like(gt, bool)
    noisy = gt + np.random.default_rng(1).normal(0, 0.05, gt.shape).astype(np.float32)
    full = edge_chamfer(noisy, gt, valid, K, max_points=None)
    runs = {edge_chamfer(noisy, gt, valid, K, max_points=50) for _ in range(3)}
    assert len(runs) == 1 and abs(runs.pop() - full) < 0.5 * full


def test_centred_camera_puts_the_principal_point_at_the_pixel_centre_of_the_image():
    from ppd_lightning.geometry import centred_camera, focal_from_hfov

    assert centred_camera(3, 5, 10) == {"fx": 10.0, "fy": 10.0, "cx": 2.0, "cy": 1.0}
    # a 90 degree field of view: the focal length is half the width
    cam = centred_camera(480, 640, focal_from_hfov(640, 90.0))
    assert abs(cam["fx"] - 320.0) < 1e-9 and (cam["cx"], cam["cy"]) == (319.5, 239.5)

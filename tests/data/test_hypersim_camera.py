"""Hypersim's camera is written once (data.raw.hypersim): the shard converter and the benchmark use it."""

import numpy as np
import pytest

from ppd_lightning.data.raw import hypersim
from ppd_lightning.evaluation.datasets import BENCHMARKS


def test_camera_scales_the_focal_with_the_width():
    cam = hypersim.camera(768, 1024)
    assert cam == {"fx": 886.81, "fy": 886.81, "cx": 511.5, "cy": 383.5}
    half = hypersim.camera(384, 512)
    assert half["fx"] == pytest.approx(886.81 / 2) and (half["cx"], half["cy"]) == (255.5, 191.5)


def test_benchmark_intrinsics_follow_the_one_focal_constant(monkeypatch):
    monkeypatch.setattr(hypersim, "FOCAL_1024", 500.0)
    k = BENCHMARKS["hypersim"].default_intrinsics(None, 48, 64)
    np.testing.assert_allclose(k, [[500.0 * 64 / 1024, 0, 31.5], [0, 500.0 * 64 / 1024, 23.5], [0, 0, 1]])
    dist = np.full((48, 64), 2.0, np.float32)
    planar = hypersim.distance_to_planar(dist, hypersim.camera(48, 64)["fx"])
    # the corner ray of the narrower focal is more oblique: its planar depth is smaller than 2 m
    edge = np.hypot(31.5, 23.5) / (500.0 * 64 / 1024)
    assert planar[0, 0] == pytest.approx(2.0 / np.sqrt(1 + edge**2), rel=1e-5)

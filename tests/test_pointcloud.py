"""The release's metric point cloud: parity on every ``point_cloud`` fixture, the outlier rule against a
brute-force reading of it, a synthetic scene whose true depth and camera come back, and the files."""

import json
import math

import numpy as np
import pytest
import torch
from model_helpers import reference_dir
from moge_helpers import ply_comments
from safetensors.torch import load_file

from ppd_lightning.errors import InputError
from ppd_lightning.pointcloud import (
    camera_info,
    metric_point_cloud,
    moge_geometry,
    ply_axes,
    statistical_outlier_mask,
    write_glb,
    write_metric_outputs,
    write_point_cloud_ply,
)
from ppd_lightning.visualize import read_ply


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _cases():
    root = reference_dir()
    found = []
    if root.is_dir():
        for p in sorted(root.glob("*.json")):
            if json.loads(p.read_text()).get("case") == "point_cloud":
                found.append(pytest.param(p, id=p.stem))
    return found or [pytest.param(None, marks=pytest.mark.skip(reason=f"no point_cloud fixture in {root}"))]


def _close(a, b, rtol=1e-5):
    """max |a - b| <= rtol * max |b|."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape
    assert np.abs(a - b).max() <= rtol * np.abs(b).max()


@pytest.mark.parametrize("meta_path", _cases())
def test_cloud_matches_the_release(meta_path):
    meta = json.loads(meta_path.read_text())
    t = {k: v.numpy() for k, v in load_file(str(meta_path.with_suffix(".safetensors"))).items()}
    args = [t[f"input.{k}"] for k in ("depth_rel", "moge_depth", "moge_mask", "intrinsics", "image")]
    pc = metric_point_cloud(*args)
    keep = t["output.keep"]
    assert keep.shape == (meta["n_points"],) and keep.sum() == meta["n_kept"]
    assert np.array_equal(pc["keep"], keep)
    _close(pc["metric_depth"], t["output.metric_depth"])
    assert pc["points"].dtype == np.float32 and pc["colors"].dtype == np.uint8
    _close(pc["points"], t["output.points"][keep])
    assert np.abs(pc["colors"] / 255.0 - t["output.colors"][keep]).max() < 1e-6
    _close(ply_axes(pc["points"], "opengl"), t["output.points_ply"])
    assert np.array_equal(statistical_outlier_mask(t["output.points"]), keep)  # the filter alone
    # torch inputs and a float image give the same cloud
    as_torch = [torch.from_numpy(a) for a in args[:4]] + [torch.from_numpy(args[4]).float() / 255]
    again = metric_point_cloud(*as_torch)
    assert np.array_equal(again["points"], pc["points"]) and np.array_equal(again["colors"], pc["colors"])
    unfiltered = metric_point_cloud(*args, outlier_filter=False)
    assert len(unfiltered["points"]) == meta["n_points"] and unfiltered["keep"].all()


def _brute_force_keep(points, k=20, ratio=3.0):
    """open3d's rule read literally: all pairwise distances, each point's k smallest (itself included)."""
    p = points.astype(np.float64)
    d = np.sqrt(((p[:, None] - p[None]) ** 2).sum(-1))
    mean = np.sort(d, axis=1)[:, :k].mean(1)
    pos = mean > 0
    m = mean[pos].sum() / len(p)
    s = math.sqrt(((mean[pos] - m) ** 2).sum() / (len(p) - 1))
    return pos & (mean < m + ratio * s)


def test_outlier_rule_is_open3ds():
    rng = np.random.default_rng(0)
    pts = rng.standard_t(2.5, size=(400, 3)).astype(np.float32)  # heavy tails: some far points
    pts[:25] = pts[0]  # 25 coincident points: mean neighbour distance 0 for them -> dropped
    keep = statistical_outlier_mask(pts)
    assert np.array_equal(keep, _brute_force_keep(pts))
    assert not keep[:25].any() and 0 < (~keep[25:]).sum() < 40
    lone = np.concatenate([rng.normal(size=(100, 3)), [[50.0, 50.0, 50.0]]])
    assert not statistical_outlier_mask(lone)[-1] and statistical_outlier_mask(lone)[:-1].sum() > 90
    assert statistical_outlier_mask(np.zeros((1, 3))).tolist() == [False]
    few = rng.normal(size=(5, 3))  # fewer points than neighbours: all of them are the neighbours
    assert np.array_equal(statistical_outlier_mask(few), _brute_force_keep(few, k=5))


def _scene(h=48, w=64):
    """A box in front of a slanted wall, seen by a pinhole camera: true depth (metres), the normalised
    intrinsics, a mask (the wall's top rows are 'sky'), an image."""
    fx, fy, cx, cy = 0.9, 1.2, 0.5, 0.5
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    depth = 6.0 + 3.0 * u / w  # the wall recedes to the right
    box = (abs(u - w / 2) < w / 6) & (abs(v - h / 2) < h / 5)
    depth[box] = 2.5
    mask = np.ones((h, w), bool)
    mask[:4] = False
    k = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])
    rgb = np.stack([u * 4 % 256, v * 5 % 256, np.full_like(u, 128)], -1).astype(np.uint8)
    return depth.astype(np.float32), k, mask, rgb


class FakeMoGe:
    """A 'MoGe-2' that returns the scene's true depth (inf off the mask) and intrinsics."""

    def __init__(self, depth, k, mask):
        self.depth, self.k, self.mask = depth, k, mask

    def infer(self, image, num_tokens=None, fov_x=None):
        assert image.shape[-2:] == self.depth.shape
        depth = torch.from_numpy(np.where(self.mask, self.depth, np.inf).astype(np.float32))[None]
        return {
            "depth": depth,
            "mask": torch.from_numpy(self.mask)[None],
            "intrinsics": torch.from_numpy(self.k).float()[None],
        }


def test_synthetic_scene_comes_back_at_its_scale_and_shape():
    depth, k, mask, rgb = _scene()
    h, w = depth.shape
    lo, hi = np.log1p(depth[mask]).min(), np.log1p(depth[mask]).max()
    rel = ((np.log1p(depth) - lo) / (hi - lo)).astype(np.float32)  # PPD's relative depth: affine in log(d+1)
    image = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    geo = moge_geometry(FakeMoGe(depth, k, mask), image)
    assert geo["mask"].dtype == bool and np.isinf(geo["depth"][~mask]).all()
    pc = metric_point_cloud(rel, geo["depth"], geo["mask"], geo["intrinsics"], rgb, outlier_filter=False)
    np.testing.assert_allclose(pc["metric_depth"][mask], depth[mask], rtol=1e-4)
    v, u = np.nonzero(mask)
    z = depth[mask].astype(np.float64)
    truth = np.stack([(u - k[0, 2] * w) / (k[0, 0] * w) * z, (v - k[1, 2] * h) / (k[1, 1] * h) * z, z], 1)
    np.testing.assert_allclose(pc["points"], truth, rtol=1e-4, atol=1e-4)
    assert np.array_equal(pc["colors"], rgb[mask])
    extent = pc["points"].max(0) - pc["points"].min(0)
    np.testing.assert_allclose(extent, truth.max(0) - truth.min(0), rtol=1e-4)
    np.testing.assert_allclose(pc["intrinsics"], k * [[w], [h], [1]])
    filtered = metric_point_cloud(rel, geo["depth"], geo["mask"], geo["intrinsics"], rgb)
    assert 0.9 * mask.sum() < len(filtered["points"]) <= mask.sum()  # a clean scene keeps nearly all


def test_bad_inputs_are_one_clear_error():
    depth, k, mask, rgb = _scene(16, 16)
    with pytest.raises(InputError, match="one shape"):
        metric_point_cloud(depth[:8], depth, mask, k, rgb)
    with pytest.raises(InputError, match="mask is empty"):
        metric_point_cloud(depth, depth, np.zeros_like(mask), k, rgb)
    with pytest.raises(InputError, match="must be bool"):
        metric_point_cloud(depth, depth, mask.astype(np.uint8), k, rgb)
    with pytest.raises(InputError, match="intrinsics must be"):
        metric_point_cloud(depth, depth, mask, k[:2], rgb)
    with pytest.raises(InputError, match="image must be"):
        metric_point_cloud(depth, depth, mask, k, rgb[:8])
    with pytest.raises(InputError, match="axes must be one of"):
        ply_axes(np.zeros((1, 3)), "directx")


def test_files_read_back(tmp_path):
    import trimesh

    depth, k, mask, rgb = _scene(24, 32)
    pts = np.array([[1.0, 2.0, 3.0], [-1.0, -0.5, 4.0]], np.float32)
    col = np.array([[255, 0, 0], [0, 128, 255]], np.uint8)
    gl = write_point_cloud_ply(tmp_path / "gl.ply", pts, col)  # default: the release's OpenGL axes
    cv = write_point_cloud_ply(tmp_path / "cv.ply", pts, col, axes="opencv", metric=False)
    p, c = read_ply(gl)
    assert np.array_equal(p, pts * [1, -1, -1]) and np.array_equal(c, col)
    assert any("opengl" in line for line in ply_comments(gl)) and "metric: metres" in ply_comments(gl)
    p, _ = read_ply(cv)
    assert np.array_equal(p, pts)
    assert any("opencv" in line for line in ply_comments(cv))
    assert any(line.startswith("not metric") for line in ply_comments(cv))
    glb = write_glb(tmp_path / "cloud.glb", pts, col)
    scene = trimesh.load(glb)
    (cloud,) = scene.geometry.values()
    assert np.allclose(cloud.vertices, pts * [1, -1, -1])
    assert np.array_equal(np.asarray(cloud.colors)[:, :3], col)
    rel = np.log1p(depth).astype(np.float32)
    pc = metric_point_cloud(rel, np.where(mask, depth, np.inf), mask, k, rgb)
    files = write_metric_outputs(tmp_path / "photo", pc, k, axes="opencv")
    assert [f.name for f in files] == [
        "photo.ply",
        "photo.glb",
        "photo_metric_depth.npy",
        "photo_camera.json",
    ]
    assert np.array_equal(np.load(files[2]), pc["metric_depth"])
    assert np.array_equal(read_ply(files[0])[0], pc["points"])
    cam = json.loads(files[3].read_text())
    assert cam["metric"] is True and cam["ply_axes"] == "opencv" and (cam["width"], cam["height"]) == (32, 24)
    assert cam["fx"] == pytest.approx(k[0, 0] * 32) and cam["cy"] == pytest.approx(k[1, 2] * 24)
    assert cam["fov_x_deg"] == pytest.approx(2 * math.degrees(math.atan(0.5 / k[0, 0])))
    assert not [f for f in tmp_path.iterdir() if f.name.endswith(".tmp")]  # atomic: no temporaries left


def test_camera_info_fields_of_view():
    k = np.array(
        [[0.5 / math.tan(math.radians(30)), 0, 0.5], [0, 0.5 / math.tan(math.radians(20)), 0.5], [0, 0, 1]]
    )
    info = camera_info(k, 300, 400)
    assert info["fov_x_deg"] == pytest.approx(60) and info["fov_y_deg"] == pytest.approx(40)
    assert info["K"][0][2] == 200 and info["K"][1][2] == 150

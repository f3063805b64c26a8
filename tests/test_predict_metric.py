"""`predict --ply` with MoGe-2's geometry: a tiny ``moge2.pt`` + tiny PPD-MoGe2 write the metric cloud that
``metric_point_cloud`` gives (MoGe-2 on PPD's resized image), the one file read once; without geometry the
cloud and the log say "not metric"."""

import json
import warnings

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from model_helpers import da2_checkpoint, randomize, tiny_dit
from moge_helpers import ply_comments, save_moge2_geometry

import ppd_lightning.weights.files as weight_files
from ppd_lightning.errors import CheckpointError
from ppd_lightning.pointcloud import metric_point_cloud, ply_axes
from ppd_lightning.predict import main
from ppd_lightning.visualize import read_ply
from ppd_lightning.weights.moge2 import load_released_with_geometry

H, W, AREA = 30, 41, 1024


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def files(tmp_path):
    moge2 = save_moge2_geometry(tmp_path / "moge2.pt", dim_out=16, seed=1)
    torch.save({f"dit.{k}": v for k, v in randomize(tiny_dit(semantic_dim=16)).state_dict().items()},
               tmp_path / "ppd_moge.pth")  # fmt: skip
    torch.save({f"dit.{k}": v for k, v in randomize(tiny_dit(semantic_dim=64)).state_dict().items()},
               tmp_path / "ppd.pth")  # fmt: skip
    torch.save(da2_checkpoint(dim=64), tmp_path / "da2.pth")
    rgb = np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), rgb[..., ::-1])
    return tmp_path, moge2


def _predict(tmp_path, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        common = ["--out", str(tmp_path / "out"), "--steps", "1", "--area", str(AREA), "--device", "cpu"]
        return main([str(tmp_path / "a.png"), *map(str, args), *common])


def _expected_cloud(tmp_path, moge2):
    """What the release computes: PPD's depth, MoGe-2 on PPD's resized image, metric_point_cloud."""
    model, moge = load_released_with_geometry(tmp_path / "ppd_moge.pth", moge2)
    rgb = cv2.imread(str(tmp_path / "a.png"), cv2.IMREAD_COLOR_RGB)
    image = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    rel = model.infer(image, steps=1, generator=torch.Generator().manual_seed(0), area=AREA)[0, 0].numpy()
    x = F.interpolate(image, model.working_size(H, W, AREA), mode="bilinear", antialias=True).clamp(0, 1)
    geo = moge.infer(x)
    depth = F.interpolate(geo["depth"][:, None], (H, W), mode="nearest")[0, 0]
    mask = F.interpolate(geo["mask"][:, None].float(), (H, W), mode="nearest")[0, 0] > 0.5
    return rel, metric_point_cloud(rel, depth, mask, geo["intrinsics"][0], rgb), geo["intrinsics"][0]


def test_moge2_semantics_make_the_cloud_metric_reading_the_file_once(files, capsys, monkeypatch):
    tmp_path, moge2 = files
    reads = []
    real = weight_files.load_torch_file
    monkeypatch.setattr(
        weight_files, "load_torch_file", lambda p, *a, **k: reads.append(str(p)) or real(p, *a, **k)
    )
    assert _predict(tmp_path, "--dit", tmp_path / "ppd_moge.pth", "--semantics", moge2, "--ply") == 0
    assert reads.count(str(moge2)) == 1
    log = capsys.readouterr().out
    assert "point clouds: metric (MoGe-2 geometry of" in log and "not metric" not in log
    out = tmp_path / "out"
    monkeypatch.undo()
    rel, cloud, k = _expected_cloud(tmp_path, moge2)
    assert np.array_equal(np.load(out / "a_depth.npy"), rel)
    points, colors = read_ply(out / "a.ply")
    assert len(points) >= 20  # random weights: a part of the image on the mask
    np.testing.assert_allclose(points, ply_axes(cloud["points"], "opengl"), rtol=1e-6, atol=1e-6)
    assert np.array_equal(colors, cloud["colors"])
    assert "metric: metres" in ply_comments(out / "a.ply")
    np.testing.assert_allclose(np.load(out / "a_metric_depth.npy"), cloud["metric_depth"], rtol=1e-6)
    cam = json.loads((out / "a_camera.json").read_text())
    assert cam["metric"] and (cam["width"], cam["height"]) == (W, H)
    assert cam["fx"] == pytest.approx(float(k[0, 0]) * W, rel=1e-6)
    assert (out / "a.glb").stat().st_size > 0


def test_geometry_flag_with_another_encoder_and_opencv_axes(files, capsys):
    tmp_path, moge2 = files
    args = ["--dit", tmp_path / "ppd.pth", "--semantics", tmp_path / "da2.pth", "--geometry", moge2]
    assert _predict(tmp_path, *args, "--ply-axes", "opencv") == 0  # --geometry implies --ply
    out = tmp_path / "out"
    assert "point clouds: metric" in capsys.readouterr().out
    points, _ = read_ply(out / "a.ply")
    assert (points[:, 2] > 0).all()  # camera frame: z forward
    assert any("opencv" in c for c in ply_comments(out / "a.ply"))
    assert json.loads((out / "a_camera.json").read_text())["ply_axes"] == "opencv"


def test_without_geometry_the_cloud_says_not_metric(files, capsys):
    tmp_path, _ = files
    assert (
        _predict(tmp_path, "--dit", tmp_path / "ppd.pth", "--semantics", tmp_path / "da2.pth", "--ply") == 0
    )
    out = tmp_path / "out"
    assert "point clouds: not metric" in capsys.readouterr().out
    assert any(c.startswith("not metric") for c in ply_comments(out / "a.ply"))
    assert not (out / "a.glb").exists() and not (out / "a_metric_depth.npy").exists()


def test_a_geometry_file_without_geometry_is_one_clear_error(files):
    tmp_path, _ = files
    with pytest.raises(CheckpointError, match="not a MoGe-2 checkpoint") as e:
        _predict(tmp_path, "--dit", tmp_path / "ppd.pth", "--semantics", tmp_path / "da2.pth",
                 "--geometry", tmp_path / "da2.pth")  # fmt: skip
    assert "da2.pth" in str(e.value)

"""The app's work without a browser: one request gives predict's depth and point cloud, and every failure
is one message (tests/test_app_browser.py drives the page itself)."""

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import trimesh
from app_helpers import AREA, STEPS, camera_frame_ply, scene_png, tiny_ppd_files, truncated_png

from ppd_lightning import app as app_module
from ppd_lightning import predict
from ppd_lightning.app import DepthApp, build_parser, depth16, load_image_model, main
from ppd_lightning.errors import InputError, PPDError
from ppd_lightning.pointcloud import statistical_outlier_mask
from ppd_lightning.visualize import read_ply
from ppd_lightning.weights.hub import UnknownModelError
from ppd_lightning.weights.released import load_pixel_perfect_depth

sys.path.insert(0, str(Path(__file__).parent / "video"))  # video_fakes: the synthetic mp4 and the fake model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("app")
    dit, semantics = tiny_ppd_files(root / "weights")
    return {"dit": dit, "semantics": semantics, "image": scene_png(root / "scene.png"), "root": root}


@pytest.fixture
def app(files, tmp_path):
    model = load_pixel_perfect_depth(files["dit"], files["semantics"])
    served = DepthApp(model, "cpu", steps=STEPS, area=AREA, workdir=tmp_path / "work")
    yield served
    served.close()


def test_image_request_gives_predicts_files(app, files, tmp_path):
    steps = []
    upload = {"path": str(files["image"]), "orig_name": "my photo.png"}  # Gradio's payload
    r = app.run_image(upload, steps=STEPS, seed=3, area=AREA, progress=lambda p, desc=None: steps.append(p))
    out = tmp_path / "predict"
    args = ["--out", str(out), "--dit", str(files["dit"]), "--semantics", str(files["semantics"])]
    args += ["--steps", str(STEPS), "--seed", "3", "--area", str(AREA), "--ply", "--device", "cpu"]
    assert predict.main([str(files["image"]), *args]) == 0

    assert {k: p.name for k, p in r.files.items()} == {
        "depth16": "my_photo_depth16.png",
        "npy": "my_photo_depth.npy",
        "ply": "my_photo.ply",
        "glb": "my_photo.glb",
        "view": "my_photo.glb",  # the cloud is small enough for the 3D view as it is
    }
    want = np.load(out / "scene_depth.npy")
    np.testing.assert_array_equal(np.load(r.files["npy"]), want)  # the same call, bit for bit
    assert np.load(r.files["npy"]).dtype == np.float32 and want.shape == (48, 64)
    png16 = cv2.imread(str(r.files["depth16"]), cv2.IMREAD_UNCHANGED)
    assert png16.dtype == np.uint16 and (png16.min(), png16.max()) == (0, 65535)
    np.testing.assert_array_equal(png16, depth16(want))
    assert np.argmin(png16) == np.argmin(want) and np.argmax(png16) == np.argmax(want)  # 0 = nearest
    shown = cv2.imread(str(out / "scene_depth.png"), cv2.IMREAD_COLOR_RGB)
    np.testing.assert_array_equal(r.colour, shown)

    # the point cloud: predict's, less the outliers (the filter is on by default), in the .ply's axes
    want_points, want_colours = camera_frame_ply(out / "scene.ply")
    keep = statistical_outlier_mask(want_points)
    assert 0 < keep.sum() < len(keep)
    points, colours = camera_frame_ply(r.files["ply"])
    np.testing.assert_array_equal(points, want_points[keep])
    np.testing.assert_array_equal(colours, want_colours[keep])
    (cloud,) = trimesh.load(r.files["glb"], file_type="glb").geometry.values()
    np.testing.assert_allclose(cloud.vertices, points * [1, -1, -1], rtol=0, atol=1e-6)  # glTF: y up, z back
    np.testing.assert_array_equal(np.asarray(cloud.colors)[:, :3], colours)
    unfiltered = app.run_image(upload, steps=STEPS, seed=3, area=AREA, outlier_filter=False)
    np.testing.assert_array_equal(camera_frame_ply(unfiltered.files["ply"])[0], want_points)
    assert "outliers kept" in unfiltered.info and "outliers filtered" in r.info

    assert not r.metric and "assumed, not metric" in r.info and "64x48" in r.info
    assert r.working_size == (48, 64) and r.points == keep.sum()
    assert steps[0] == (0, STEPS) and steps[1 : STEPS + 1] == [(i, STEPS) for i in range(1, STEPS + 1)]


def test_each_failure_is_one_message_naming_the_upload(app, files, tmp_path):
    bad = truncated_png(tmp_path / "cut.png", files["image"])
    with pytest.raises(InputError, match=r"^cut\.png: not a readable image \(80 bytes; truncated"):
        app.run_image({"path": str(bad), "orig_name": "cut.png"})
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(InputError, match=r"^empty\.jpg: empty file \(0 bytes\)"):
        app.run_image(str(tmp_path / "empty.jpg"))
    with pytest.raises(InputError, match="no file: upload one first"):
        app.run_image(None)
    with pytest.raises(InputError, match="Euler steps must be 1..1000, got 0"):
        app.run_image(str(files["image"]), steps=0)
    with pytest.raises(InputError, match="the working area is a pixel count"):
        app.run_image(str(files["image"]), area=100)
    app.max_pixels = 1000
    with pytest.raises(InputError, match=r"64x48 is 0\.0 MP, more than this app's limit .*--max-pixels"):
        app.run_image(str(files["image"]))

    assert app_module._message(InputError("x.png: bad"), "predicting depth") == "x.png: bad"
    oom = app_module._message(torch.OutOfMemoryError("CUDA out of memory"), "predicting depth")
    assert oom.startswith("out of memory while predicting depth: lower the working area")
    bug = app_module._message(IndexError("index 3 is out of bounds"), "predicting depth")
    assert bug == (
        "internal error while predicting depth: IndexError: index 3 is out of bounds "
        "(the server log has the traceback)"
    )


def test_a_large_cloud_is_subsampled_for_the_3d_view(app, files, tmp_path):
    app.view_points = 1000
    r = app.run_image(str(files["image"]), outlier_filter=False)
    assert (r.points, r.view_points, r.files["view"].name) == (48 * 64, 1000, "scene_view.glb")
    assert "3,072 points (3D view: 1,000)" in r.info
    points, colours = read_ply(r.files["ply"])
    (cloud,) = trimesh.load(r.files["view"], file_type="glb").geometry.values()
    keep = np.linspace(0, len(points) - 1, 1000).round().astype(int)
    np.testing.assert_allclose(cloud.vertices, points[keep], atol=1e-6)  # the .ply's OpenGL axes = glTF's
    np.testing.assert_array_equal(np.asarray(cloud.colors)[:, :3], colours[keep])
    (full,) = trimesh.load(r.files["glb"], file_type="glb").geometry.values()
    assert len(full.vertices) == 48 * 64  # the download keeps every point


def test_old_request_folders_are_removed(app, files, monkeypatch):
    monkeypatch.setattr(app_module, "KEEP_REQUESTS", 2)
    folders = [app.run_image(str(files["image"]), outlier_filter=False).files["npy"].parent for _ in range(3)]
    assert [f.is_dir() for f in folders] == [False, True, True]


def test_models_by_name_and_path_and_command_line_errors(files, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # names resolve from the weights folder, never the network
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    args = build_parser().parse_args(["--model", "ppd", "--weights-dir", str(files["dit"].parent)])
    model, geometry = load_image_model(args)
    assert geometry is None and model.dit.config()["hidden_size"] == 32
    by_path = build_parser().parse_args(["--dit", str(files["dit"]), "--semantics", str(files["semantics"])])
    assert load_image_model(by_path)[0].dit.config() == model.dit.config()

    with pytest.raises(
        InputError, match="--model ppvd: a video model, not an image model: use --video-model"
    ):
        main(["--model", "ppvd"])
    with pytest.raises(InputError, match="--model moge2: a geometry model.*--geometry moge2"):
        main(["--model", "moge2"])
    with pytest.raises(UnknownModelError, match="unknown model 'pdd'"):
        main(["--model", "pdd"])
    with pytest.raises(InputError, match="no model: start with --model ppd"):
        main([])
    with pytest.raises(InputError, match="an image model needs a DiT and its semantic encoder"):
        main(["--dit", str(files["dit"])])
    with pytest.raises(PPDError, match="not several"):
        main(["--model", "ppd", "--ckpt", "x.ckpt"])


def test_metric_point_cloud_with_moge2_geometry(files, tmp_path):
    from moge_helpers import save_moge2_geometry

    from ppd_lightning import pointcloud
    from ppd_lightning.weights.moge2 import load_moge2

    model = load_pixel_perfect_depth(files["dit"], files["semantics"])
    moge = load_moge2(save_moge2_geometry(tmp_path / "moge2.pt"))
    app = DepthApp(
        model, "cpu", geometry=moge, steps=STEPS, area=AREA, geometry_tokens=64, workdir=tmp_path / "w"
    )
    r = app.run_image(str(files["image"]), seed=1)
    assert r.metric and "metric (aligned to MoGe-2's depth" in r.info and "not metric" not in r.info
    assert sorted(r.files) == ["camera", "depth16", "glb", "metric_npy", "npy", "ply", "view"]
    image = torch.from_numpy(r.rgb).permute(2, 0, 1)[None].float() / 255
    stem = tmp_path / "direct" / "scene"
    want = pointcloud.metric_cloud_files(moge, model, image, r.rgb, r.depth, stem, area=AREA, num_tokens=64)
    for got, expected in zip([r.files[k] for k in ("ply", "glb", "metric_npy", "camera")], want):
        assert got.read_bytes() == expected.read_bytes(), (got, expected)  # predict --ply --geometry's files
    assert b"metric: metres" in r.files["ply"].read_bytes()[:400]


def test_video_request_writes_predict_videos_files(tmp_path):
    from video_fakes import FakeVideoModel, write_synthetic_video

    from ppd_lightning.video.run import VideoOptions, predict_video

    clip = write_synthetic_video(tmp_path / "clip.mp4", frames=20)
    app = DepthApp(None, "cpu", video=FakeVideoModel(), steps=STEPS, workdir=tmp_path / "work")
    r = app.run_video({"path": str(clip), "orig_name": "my clip.mp4"}, seed=2)
    assert (r.frames, r.depth_video.name, r.side_by_side.name) == (
        20,
        "my_clip_depth.mp4",
        "my_clip_side_by_side.mp4",
    )
    assert "20 frame(s)" in r.info
    predict_video(
        clip, FakeVideoModel(), tmp_path / "direct", VideoOptions(steps=STEPS, seed=2, progress=False)
    )
    got, want = np.load(r.depths), np.load(tmp_path / "direct" / "clip_depths.npz")
    np.testing.assert_array_equal(got["depths"], want["depths"])
    assert r.depth_video.stat().st_size > 0 and r.side_by_side.stat().st_size > 0

    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match=r"^notes\.txt: not a video file \(expected one of .*mp4"):
        app.run_video(str(tmp_path / "notes.txt"))
    (tmp_path / "broken.mp4").write_bytes(b"\0" * 1000)
    with pytest.raises(PPDError, match="broken.mp4"):
        app.run_video(str(tmp_path / "broken.mp4"))
    with pytest.raises(InputError, match="this app serves no image model"):
        app.run_image(str(clip))


def test_the_app_imports_no_lightning_and_nothing_of_training():
    import subprocess

    code = (
        "import sys, ppd_lightning.app\n"
        "bad = [m for m in sys.modules if m.startswith(('lightning', 'pytorch_lightning', 'ppd_lightning.training'))]\n"
        "assert not bad, bad[:5]"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]

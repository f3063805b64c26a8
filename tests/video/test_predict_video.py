"""predict_video: every output of a 40-frame mp4 (equal to the model's own depths), one colour range per
video, the options, bounded read-ahead, point clouds, interruptions and errors; the tiny real PPVD from
its file formats gives exactly ``infer_video``."""

import json
import re
from fractions import Fraction

import cv2
import numpy as np
import pytest
import torch
from video_fakes import FakeVideoModel, decode_all, packets, synthetic_frame, write_synthetic_video

from ppd_lightning import visualize
from ppd_lightning.errors import DivergenceError, InputError
from ppd_lightning.video import io, run
from ppd_lightning.video.run import VideoOptions, predict_video

QUIET = dict(progress=False)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_synthetic_video(tmp_path_factory.mktemp("clip") / "clip.mp4", frames=40, fps=24)


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_every_output_of_a_video(clip, tmp_path):
    model = FakeVideoModel()
    files = predict_video(clip, model, tmp_path, VideoOptions(png16=True, **QUIET))
    assert [f.name for f in files] == [
        "clip_depths.npz", "clip_depth.mp4", "clip_side_by_side.mp4", "clip_depth_png16"
    ]  # fmt: skip
    assert _names(tmp_path) == sorted(f.name for f in files)  # and nothing else (no temporaries)
    assert model.max_ahead <= 16

    expected = FakeVideoModel().infer_video(io.VideoFrames(clip))
    with np.load(files[0]) as z:
        np.testing.assert_array_equal(z["depths"], expected)
        assert z["depths"].dtype == np.float32 and float(z["fps"]) == 24.0

    depth_video, rate = decode_all(files[1])
    assert depth_video.shape == (40, 48, 64, 3) and rate == Fraction(24)
    lo, hi = float(expected.min()), float(expected.max())
    for i in (0, 20, 39):  # one colour range for the whole video, not each frame's own
        one_range = visualize.colorize(expected[i], vmin=lo, vmax=hi, cmap="inferno").astype(int)
        own_range = visualize.colorize(expected[i], cmap="inferno").astype(int)
        err = np.abs(depth_video[i].astype(int) - one_range).mean()
        assert err < 4 < np.abs(depth_video[i].astype(int) - own_range).mean()

    side, rate = decode_all(files[2])
    panel = visualize.side_by_side([synthetic_frame(0), depth_video[0]], ["image", "depth"])
    assert side.shape == (40, *panel.shape) and rate == Fraction(24)

    png = files[3]
    assert _names(png) == [f"{i:06d}.png" for i in range(40)] + ["range.json"]
    meta = json.loads((png / "range.json").read_text())
    assert (meta["min"], meta["max"]) == (lo, hi)
    q = cv2.imread(str(png / "000017.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_allclose(lo + q / 65535 * (hi - lo), expected[17], atol=(hi - lo) / 65535)


def test_options_grayscale_float16_fps_size(clip, tmp_path):
    options = VideoOptions(
        grayscale=True, float16=True, fps=12, max_frames=10, max_res=32, side_by_side=False, **QUIET
    )
    files = predict_video(clip, FakeVideoModel(), tmp_path, options, name="short")
    assert [f.name for f in files] == ["short_depths.npz", "short_depth.mp4"]
    assert _names(tmp_path) == ["short_depth.mp4", "short_depths.npz"]
    frames = np.stack(list(io.VideoFrames(clip, fps=12, max_frames=10, max_res=32)))
    with np.load(files[0]) as z:
        assert z["depths"].dtype == np.float16 and z["depths"].shape == (10, 24, 32) and float(z["fps"]) == 12
        np.testing.assert_array_equal(z["depths"], FakeVideoModel().infer_video(frames).astype(np.float16))
    video, rate = decode_all(files[1])
    assert rate == Fraction(12) and video.shape == (10, 24, 32, 3)
    spread = video.astype(int).max(-1) - video.astype(int).min(-1)
    assert spread.max() <= 6  # grey: R = G = B up to the codec's chroma rounding


def test_frames_folder(tmp_path):
    folder = tmp_path / "walk"
    folder.mkdir()
    for i in range(20):
        cv2.imwrite(str(folder / f"{i:04d}.png"), synthetic_frame(i)[..., ::-1])
    files = predict_video(folder, FakeVideoModel(), tmp_path / "out", VideoOptions(frames=True, **QUIET))
    assert files[0].name == "walk_depths.npz"
    with np.load(files[0]) as z:
        np.testing.assert_array_equal(
            z["depths"], np.stack([FakeVideoModel.depth_of(synthetic_frame(i)) for i in range(20)])
        )
        assert float(z["fps"]) == 30.0
    assert decode_all(files[1])[1] == Fraction(30)


def test_frames_wait_for_their_depth_at_most_a_window():
    consumed = []

    def frames():
        for i in range(300):
            consumed.append(i)
            yield np.full((4, 4, 3), i % 256, np.uint8)

    model = FakeVideoModel()
    n = 0
    for i, (rgb, depth) in enumerate(run._paired(frames(), model, VideoOptions(), None)):
        assert rgb[0, 0, 0] == i % 256  # each depth with its own frame
        np.testing.assert_array_equal(depth, FakeVideoModel.depth_of(rgb))
        assert len(consumed) - i <= 16  # held: at most one window ahead
        n += 1
    assert n == 300


class _Geometry:
    """A stand-in for MoGe-2's ``infer``: a fronto-parallel wall 2 m away, the border off the mask."""

    def infer(self, image, num_tokens=None, fov_x=None):
        _, _, h, w = image.shape
        mask = torch.zeros(1, h, w, dtype=torch.bool)
        mask[:, 2:-2, 2:-2] = True
        k = torch.tensor([[[0.8, 0.0, 0.5], [0.0, 0.8 * w / h, 0.5], [0.0, 0.0, 1.0]]])
        return {"depth": torch.full((1, h, w), 2.0), "mask": mask, "intrinsics": k}


def test_point_clouds_every_n_frames(clip, tmp_path):
    options = VideoOptions(ply_every=13, side_by_side=False, **QUIET)
    files = predict_video(clip, FakeVideoModel(), tmp_path, options, geometry=_Geometry())
    points = files[-1]
    assert points.name == "clip_points" and _names(points) == [f"{i:06d}.ply" for i in (0, 13, 26, 39)]
    pts, colors = visualize.read_ply(points / "000013.ply")
    assert 0 < len(pts) <= 44 * 60 and colors is not None
    header = (points / "000013.ply").read_bytes().split(b"end_header")[0].decode()
    assert "opengl" in header and "metric" in header
    assert (pts[:, 2] < 0).all()  # OpenGL axes as the image path: the camera looks down -z
    np.testing.assert_allclose(np.median(-pts[:, 2]), 2.0, rtol=0.05)  # aligned to MoGe-2's metres
    with pytest.raises(InputError, match="geometry"):
        predict_video(clip, FakeVideoModel(), tmp_path, VideoOptions(ply_every=5, **QUIET))


def test_interrupted_run_leaves_no_final_file(clip, tmp_path, monkeypatch):
    (tmp_path / "clip_depth.mp4").write_bytes(b"previous run")
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C while inferring
        predict_video(
            clip, FakeVideoModel(fail_after=20), tmp_path, VideoOptions(png16=True, ply_every=0, **QUIET)
        )
    assert (
        _names(tmp_path) == ["clip_depth.mp4"]
        and (tmp_path / "clip_depth.mp4").read_bytes() == b"previous run"
    )

    calls = []

    def interrupted(images, labels=None, gap=4):
        calls.append(1)
        if len(calls) == 10:
            raise KeyboardInterrupt
        return real(images, labels, gap)

    real = visualize.side_by_side
    monkeypatch.setattr(visualize, "side_by_side", interrupted)
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C while writing the videos
        predict_video(clip, FakeVideoModel(), tmp_path, VideoOptions(png16=True, **QUIET))
    assert _names(tmp_path) == ["clip_depth.mp4", "clip_depths.npz"]  # the npz was complete before
    assert (tmp_path / "clip_depth.mp4").read_bytes() == b"previous run"
    with np.load(tmp_path / "clip_depths.npz") as z:
        assert z["depths"].shape == (40, 48, 64)


def test_bad_inputs_are_one_error_and_write_nothing(clip, tmp_path):
    data = bytearray(clip.read_bytes())
    pos = next(p[0] for p in packets(clip) if p[2] == 30)
    data[pos : pos + 4] = b"\xff\xff\xff\xff"
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(bytes(data))
    out = tmp_path / "out"
    with pytest.raises(InputError, match=rf"{re.escape(str(bad))}: frame 30 cannot be decoded"):
        predict_video(bad, FakeVideoModel(), out, VideoOptions(**QUIET))
    assert _names(out) == []

    class NaNModel(FakeVideoModel):
        @staticmethod
        def depth_of(frame):
            d = FakeVideoModel.depth_of(frame)
            d[0, 0] = np.nan if frame[0, 0, 2] > 100 else d[0, 0]
            return d

    with pytest.raises(DivergenceError, match=r"non-finite depth for frame \d+ \(1 pixels\)"):
        predict_video(clip, NaNModel(), out, VideoOptions(**QUIET))
    assert _names(out) == []
    with pytest.raises(InputError, match="steps"):
        VideoOptions(steps=0)


# --- the real model, tiny, from its file formats ---------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """Tiny random PPVD weights in the released formats: ``ppvd.pth`` (the DiT under 'dit_video.') and
    Pi3's ``model.safetensors``."""
    from model_helpers import pi3_checkpoint, randomize
    from safetensors.torch import save_file

    from ppd_lightning.models.video_dit import VideoDiT

    folder = tmp_path_factory.mktemp("weights")
    side = 32  # the window's square input; Pi3's encoder sees side / 16 * 14
    pi3 = pi3_checkpoint(embed_dim=16, decoder_dim=16, img_size=side // 16 * 14)
    save_file(pi3, folder / "pi3.safetensors")
    dit = randomize(VideoDiT(hidden_size=16, depth=24, num_heads=1, semantic_dim=32, input_size=side), seed=1)
    torch.save({"dit_video." + k: v for k, v in dit.state_dict().items()}, folder / "ppvd.pth")
    return folder / "ppvd.pth", folder / "pi3.safetensors"


def _expected(model, clip, seed, steps=2, max_frames=None):
    noise = torch.randn(model.latent_shape, generator=torch.Generator().manual_seed(seed))
    frames = np.stack(list(io.VideoFrames(clip, max_frames=max_frames)))
    return model.infer_video(frames, steps=steps, noise=noise)


def test_real_model_outputs_equal_infer_video(clip, tmp_path):
    """The real PPVD pipeline (Pi3 semantics, video DiT with reference and temporal blocks, windows and
    stitching) at a few blocks, on 40 frames: three windows."""
    from model_helpers import pi3_checkpoint, randomize

    from ppd_lightning.models.video_dit import VideoDiT
    from ppd_lightning.video import PixelPerfectVideoDepth
    from ppd_lightning.weights.ppvd import load_pi3_semantics

    semantics = load_pi3_semantics(pi3_checkpoint(embed_dim=16, decoder_dim=16, img_size=28))
    dit = VideoDiT(
        16, depth=4, num_heads=1, semantic_dim=32, input_size=32, temporal_depth=1, reference_from=2
    )
    model = PixelPerfectVideoDepth(randomize(dit, seed=1), semantics).eval()
    files = predict_video(clip, model, tmp_path, VideoOptions(steps=2, seed=3, **QUIET))
    expected = _expected(model, clip, seed=3)
    with np.load(files[0]) as z:
        assert z["depths"].shape == (40, 48, 64)
        np.testing.assert_allclose(z["depths"], expected, rtol=1e-6, atol=1e-6)
    assert (
        expected.std(axis=(1, 2)).min() > 0 and np.abs(np.diff(expected, axis=0)).max() > 1e-3
    )  # not constant
    assert decode_all(files[1])[0].shape == (40, 48, 64, 3) and decode_all(files[2])[0].shape[0] == 40


def _predict(argv) -> int:
    from ppd_lightning import predict

    return predict.main([str(a) for a in argv])


def test_predict_command_on_videos(clip, tmp_path, tiny_weights, capsys):
    dit, semantics = tiny_weights
    (tmp_path / "in").mkdir()
    good, bad = tmp_path / "in" / "clip.mp4", tmp_path / "in" / "broken.mp4"
    good.write_bytes(clip.read_bytes())
    bad.write_bytes(clip.read_bytes()[:2000])
    weights = ["--dit", dit, "--semantics", semantics, "--steps", 1, "--seed", 5]
    argv = [good, bad, "--out", tmp_path / "out", *weights, "--float16", "--png16", "--max-frames", 14]
    assert _predict([*argv, "--device", "cpu"]) == 1  # the broken video is reported, the good one written
    err = capsys.readouterr().err
    assert re.search(rf"{re.escape(str(bad))}: .*frame \d+", err), err
    out = tmp_path / "out"
    names = ["clip_depth.mp4", "clip_depth_png16", "clip_depths.npz", "clip_side_by_side.mp4"]
    assert _names(out) == names
    expected = _expected(run.load_video_model(dit, semantics), clip, seed=5, steps=1, max_frames=14)
    with np.load(out / "clip_depths.npz") as z:
        assert z["depths"].dtype == np.float16
        np.testing.assert_array_equal(z["depths"], expected.astype(np.float16))

    with pytest.raises(InputError, match="separate commands"):
        _predict([clip, out / "clip_depth_png16" / "000000.png", "--out", out])
    with pytest.raises(InputError, match="--geometry"):
        _predict([clip, "--out", out, *weights, "--ply-every", 5])
    with pytest.raises(InputError, match="--ply-every"):
        _predict([clip, "--out", out, *weights, "--geometry", dit])
    with pytest.raises(InputError, match="videos need PPVD: --model ppvd, or --dit ppvd.pth"):
        _predict([clip, "--out", out])
    with pytest.raises(InputError, match="--frames takes folders"):
        _predict([clip, "--out", out, *weights, "--frames"])

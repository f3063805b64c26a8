"""evaluate.py on video benchmarks: the metrics.json contract, video models (a stand-in and a tiny
PPVD), and the errors."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_video_benchmarks import build, disparity_predictions
from hydra import compose, initialize_config_dir
from test_video_protocols import bench_cfg, proto_cfg
from vda_reference import vda_eval, vda_tae

from ppd_lightning.errors import CheckpointError, ConfigError, DivergenceError, InputError, MissingFileError
from ppd_lightning.evaluation import run as image_run
from ppd_lightning.evaluation.video_run import (
    VideoModelPredictor,
    evaluate_video,
    evaluate_video_benchmark,
    is_video_config,
)

REPO = Path(__file__).resolve().parents[2]


def _cfg(*overrides):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("evaluate", overrides=["num_workers=0", "progress=false", *overrides])


def test_evaluate_video_writes_metrics_json(tmp_path):
    fake = build(tmp_path / "root", image_crop=None)
    disparity_predictions(tmp_path / "pred", fake["frames"])
    cfg = _cfg("protocol=vda", "benchmark=scannet_video", f"benchmark.root={tmp_path / 'root'}",
               f"predictions={tmp_path / 'pred'}", f"output_dir={tmp_path / 'out'}")  # fmt: skip
    results = image_run.evaluate(cfg)  # what evaluate.py runs: dispatched to evaluate_video
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert list(metrics) == ["scannet_video"] and metrics == json.loads(json.dumps(results))
    row = metrics["scannet_video"]
    assert {"abs_rel", "rmse", "delta1", "n_sequences", "n_frames"} <= set(row)
    expected = vda_eval(
        tmp_path / "root", "scannet_video.json", "scannet", tmp_path / "pred", (8, -8, 11, -11), 10.0, 90
    )
    for k in ("abs_rel", "rmse", "delta1"):
        assert abs(row[k] - expected[k]) < 1e-4
    assert row["n_sequences"] == 3 and row["json"]["name"] == "scannet_video.json"
    assert (tmp_path / "out" / "scannet_video_per_sequence.csv").is_file()


def _tae_fake(tmp_path):
    fake = build(
        tmp_path / "root",
        json_name="scannet_video_tae.json",
        n_frames=13,
        image_dir="color_origin",
        image_crop=None,
    )
    disparity_predictions(tmp_path / "pred", fake["frames"])
    return vda_tae(
        tmp_path / "root",
        "scannet_video_tae.json",
        "scannet",
        tmp_path / "pred",
        (8, -8, 11, -11),
        10.0,
        10,
        180,
        20,
    )


@pytest.mark.slow  # a fresh interpreter: ~30 s on a loaded CPU; the same path in-process above
def test_contract_command(tmp_path):
    """The command of the contract, as a user runs it."""
    fake = build(tmp_path / "root")
    disparity_predictions(tmp_path / "pred", fake["frames"])
    out = tmp_path / "out"
    cmd = [sys.executable, str(REPO / "evaluate.py"), "protocol=vda", "benchmark=scannet_video",
           f"benchmark.root={tmp_path / 'root'}", f"predictions={tmp_path / 'pred'}", f"hydra.run.dir={out}"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    row = json.loads((out / "metrics.json").read_text())["scannet_video"]
    expected = vda_eval(
        tmp_path / "root", "scannet_video.json", "scannet", tmp_path / "pred", (8, -8, 11, -11), 10.0, 90
    )
    assert all(abs(row[k] - expected[k]) < 1e-4 for k in ("abs_rel", "rmse", "delta1"))
    assert row["n_sequences"] == 3
    assert "scannet_video" in res.stdout and "abs_rel" in res.stdout  # the table


def test_evaluate_dispatches_tae(tmp_path):
    """evaluation.run.evaluate (what evaluate.py calls) sends a video benchmark to the video runner."""
    expected = _tae_fake(tmp_path)
    cfg = _cfg("protocol=vda", "benchmark=scannet_tae", f"benchmark.root={tmp_path / 'root'}",
               f"predictions={tmp_path / 'pred'}", f"output_dir={tmp_path / 'out'}")  # fmt: skip
    image_run.evaluate(cfg)
    row = json.loads((tmp_path / "out" / "metrics.json").read_text())["scannet_tae"]
    assert abs(row["tae"] - expected["tae"]) < 1e-4 and row["n_sequences"] == 3 and row["n_pairs"] == 3 * 2
    with pytest.raises(ConfigError, match="protocol=vda is for video benchmarks.*not benchmark=nyuv2"):
        image_run.evaluate(_cfg("protocol=vda", f"output_dir={tmp_path / 'out2'}"))


class StandIn:
    """A video model stand-in with PPVD's streaming ``iter_video``: a disparity-like map of each
    frame's red channel (the fake frames encode the depth there), consumed lazily."""

    latent_shape = (4, 1, 8, 8)

    def __init__(self):
        self.noises = []

    def iter_video(self, frames, steps=4, noise=None):
        self.noises.append(noise)
        for frame in frames:
            yield 1.0 / (frame[..., 0].astype(np.float32) / 25.0 + 0.5)


def test_video_model_predictor_equals_its_saved_predictions(tmp_path):
    build(tmp_path / "root", image_crop=None)
    model = StandIn()
    predictor = VideoModelPredictor(model, steps=2, seed=3)
    args = dict(root=tmp_path / "root", progress=False)
    live = evaluate_video_benchmark(
        bench_cfg("scannet_video"),
        proto_cfg("vda"),
        predictor,
        output_dir=tmp_path / "out",
        save_predictions=True,
        **args,
    )
    assert len(model.noises) == 3 and all(torch.equal(n, model.noises[0]) for n in model.noises)  # one latent
    assert torch.equal(model.noises[0], torch.randn((4, 1, 8, 8), generator=torch.Generator().manual_seed(3)))
    saved = evaluate_video_benchmark(
        bench_cfg("scannet_video"),
        proto_cfg("vda"),
        tmp_path / "out" / "scannet_video" / "predictions",
        **args,
    )
    for k in ("abs_rel", "rmse", "delta1", "n_frames", "n_sequences"):
        assert live[k] == saved[k]
    assert live["abs_rel"] < 0.2  # the red channel does carry the depth


def test_tiny_ppvd_end_to_end(tmp_path):
    """The real PixelPerfectVideoDepth (tiny random weights), run on every sequence and scored with
    ppd_video: a sequence longer than one window (16 frames), so the stitching runs too."""
    from model_helpers import pi3_checkpoint, tiny_video_dit

    from ppd_lightning.video import PixelPerfectVideoDepth
    from ppd_lightning.weights.ppvd import load_pi3_semantics

    torch.manual_seed(0)
    model = PixelPerfectVideoDepth(
        tiny_video_dit().eval(), load_pi3_semantics(pi3_checkpoint(decoder_dim=32)), steps=2
    )
    build(tmp_path / "root", n_seq=1, n_frames=17, h=32, w=40, image_crop=None)
    result = evaluate_video_benchmark(
        bench_cfg("scannet_video"), proto_cfg("ppd_video"), VideoModelPredictor(model, steps=2),
        root=tmp_path / "root", output_dir=tmp_path / "out", save_predictions=True, progress=False,
    )  # fmt: skip
    assert result["n_sequences"] == 1 and result["n_frames"] == 17 - 1
    assert all(np.isfinite(result[k]) for k in ("abs_rel", "rmse", "delta1"))
    pred = np.load(tmp_path / "out" / "scannet_video" / "predictions" / "scene0000_00" / "color" / "48.npy")
    assert pred.shape == (32, 40) and pred.dtype == np.float32


def test_errors(tmp_path):
    fake = build(tmp_path / "root", n_seq=1, n_frames=3, image_crop=None)
    disparity_predictions(tmp_path / "pred", fake["frames"])
    base = [
        f"benchmark.root={tmp_path / 'root'}",
        f"predictions={tmp_path / 'pred'}",
        f"output_dir={tmp_path / 'out'}",
    ]
    with pytest.raises(ConfigError, match="protocol=vda is for video benchmarks.*not benchmark=nyuv2"):
        is_video_config(_cfg("protocol=vda"))
    assert is_video_config(_cfg("benchmark=scannet_tae", "protocol=vda")) and not is_video_config(_cfg())
    with pytest.raises(ConfigError, match="protocol=marigold is for image benchmarks.*protocol=vda"):
        evaluate_video(_cfg("benchmark=scannet_video", *base))
    with pytest.raises(ConfigError, match="needs exactly one prediction source: predictions=<DIR>"):
        evaluate_video(_cfg("benchmark=scannet_video", "protocol=vda", f"output_dir={tmp_path / 'out'}"))
    with pytest.raises(
        ConfigError, match=r"exactly one prediction source.*\(got predictions, official.dit\)"
    ):
        evaluate_video(_cfg("benchmark=scannet_video", "protocol=vda", "official.dit=x.pth", *base))
    no_pred = [f"benchmark.root={tmp_path / 'root'}", f"output_dir={tmp_path / 'out'}", "protocol=ppd_video"]
    with pytest.raises(InputError, match="needs Pi3's semantics"):
        evaluate_video(_cfg("benchmark=scannet_video", "official.dit=x.pth", *no_pred))
    from model_helpers import released_dit_checkpoint

    torch.save(released_dit_checkpoint(), tmp_path / "ppd.pth")
    with pytest.raises(CheckpointError, match=r"ppd\.pth: not a Pixel-Perfect Video Depth DiT"):
        evaluate_video(
            _cfg(
                "benchmark=scannet_video",
                f"official.dit={tmp_path / 'ppd.pth'}",
                "official.semantics=pi3.safetensors",
                *no_pred,
            )
        )
    with pytest.raises(MissingFileError, match="no root given for scannet_video"):
        evaluate_video(
            _cfg(
                "benchmark=scannet_video",
                "protocol=vda",
                f"predictions={tmp_path / 'pred'}",
                f"output_dir={tmp_path / 'out'}",
            )
        )
    with pytest.raises(ConfigError, match="benchmark.crop: expected"):
        evaluate_video(_cfg("benchmark=scannet_video", "protocol=vda", "benchmark.crop=[1,2]", *base))
    with pytest.raises(ConfigError, match="protocol.space: expected disparity or log1p"):
        evaluate_video(_cfg("benchmark=scannet_video", "protocol=vda", "protocol.space=depth", *base))
    bad = tmp_path / "pred" / "scene0000_00" / "color" / "3.npy"
    pred = np.load(bad)
    pred[20, 30] = np.nan  # inside the crop, on a valid pixel
    np.save(bad, pred)
    with pytest.raises(
        InputError, match=r"prediction .*color/3\.npy: 1 non-finite value\(s\) on valid pixels"
    ):
        evaluate_video(_cfg("benchmark=scannet_video", "protocol=vda", *base))

    class Diverged(StandIn):
        def iter_video(self, frames, steps=4, noise=None):
            for frame in frames:
                yield np.full(frame.shape[:2], np.inf, np.float32)

    with pytest.raises(DivergenceError, match="the model's prediction for scene0000_00/color/0.jpg"):
        evaluate_video_benchmark(
            bench_cfg("scannet_video"),
            proto_cfg("vda"),
            VideoModelPredictor(Diverged()),
            root=tmp_path / "root",
            progress=False,
        )

    class Short(StandIn):
        def iter_video(self, frames, steps=4, noise=None):
            yield from list(super().iter_video(frames))[:-1]

    with pytest.raises(RuntimeError, match="gave 2 depths for the 3 frames"):
        evaluate_video_benchmark(
            bench_cfg("scannet_video"),
            proto_cfg("vda"),
            VideoModelPredictor(Short()),
            root=tmp_path / "root",
            progress=False,
        )
    with pytest.raises(InputError, match="has no K and pose|missing K, pose"):
        build(tmp_path / "nocam", json_name="scannet_video_tae.json", n_seq=1, n_frames=12, camera=False)
        evaluate_video_benchmark(
            bench_cfg("scannet_tae"),
            proto_cfg("vda"),
            tmp_path / "pred",
            root=tmp_path / "nocam",
            progress=False,
        )

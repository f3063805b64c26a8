"""The vda and ppd_video protocols against VDA's own evaluation steps (vda_reference.py), on fake
moving-camera sequences with holes, far outliers, wild predictions and flicker."""

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from fake_video_benchmarks import build, disparity_predictions
from omegaconf import OmegaConf
from vda_reference import vda_eval, vda_tae

from ppd_lightning.evaluation.video_protocols import (
    LeastSquares,
    VideoBenchmarkSpec,
    VideoProtocol,
    reprojection_abs_rel,
)
from ppd_lightning.evaluation.video_run import evaluate_video_benchmark

CONF = Path(__file__).resolve().parents[2] / "conf"

# VDA's benchmark/eval/eval.py argument blocks (and eval_500.sh / eval_tae.sh), written out here:
# json, dataset key, (a, b, c, d), max_depth_eval, max_eval_len
VDA_EVAL = {
    "sintel_video": ("sintel_video.json", "sintel", (0, 436, 0, 1024), 70.0, 100),
    "scannet_video": ("scannet_video.json", "scannet", (8, -8, 11, -11), 10.0, 90),
    "scannet_video_500": ("scannet_video_500.json", "scannet", (8, -8, 11, -11), 10.0, 500),
    "kitti_video": ("kitti_video.json", "kitti", (0, 374, 0, 1242), 80.0, 110),
    "kitti_video_500": ("kitti_video_500.json", "kitti", (0, 374, 0, 1242), 80.0, 500),
    "bonn_video": ("bonn_video.json", "bonn", (0, 480, 0, 640), 10.0, 110),
    "bonn_video_500": ("bonn_video_500.json", "bonn", (0, 480, 0, 640), 10.0, 500),
    "nyuv2_video_500": ("nyuv2_video_500.json", "nyuv2", (45, 471, 41, 601), 10.0, 500),
}
# dataset_extract's factors (eval_utils.gen_json)
FACTORS = {"sintel": 65535 / 650, "scannet": 1000.0, "kitti": 256.0, "bonn": 5000.0, "nyuv2": 6000.0}


def bench_cfg(name, **overrides):
    cfg = OmegaConf.to_container(OmegaConf.load(CONF / "benchmark" / f"{name}.yaml"))
    cfg.update(overrides)
    return cfg


def proto_cfg(name, **overrides):
    cfg = OmegaConf.to_container(OmegaConf.load(CONF / "protocol" / f"{name}.yaml"))
    cfg.update(overrides)
    return cfg


def close(ours: dict, expected: dict, keys=("abs_rel", "rmse", "delta1")):
    for k in keys:
        assert abs(ours[k] - expected[k]) < 1e-4, (k, ours[k], expected[k])
        assert ours[k] == pytest.approx(expected[k], rel=1e-7, abs=1e-9), (k, ours[k], expected[k])
    assert ours["n_sequences"] == expected["n_sequences"]


@pytest.mark.parametrize("name", sorted(VDA_EVAL))
def test_benchmark_settings_are_vdas(name):
    json_name, dataset, crop, max_depth, frames = VDA_EVAL[name]
    spec = VideoBenchmarkSpec.from_config(bench_cfg(name))
    assert (spec.json, spec.dataset, spec.crop, spec.max_depth) == (json_name, dataset, crop, max_depth)
    assert spec.frames == (0, frames) and spec.sequences is None
    assert spec.crop_prediction is False and spec.metric == "depth"
    tae = VideoBenchmarkSpec.from_config(bench_cfg("scannet_tae"))
    assert (tae.json, tae.crop, tae.max_depth, tae.frames, tae.sequences) == (
        "scannet_video_tae.json",
        (8, -8, 11, -11),
        10.0,
        (10, 180),
        20,
    )
    assert tae.crop_prediction is True and tae.metric == "tae"


@pytest.mark.parametrize("name", sorted(VDA_EVAL))
def test_vda_protocol_equals_vda_eval(tmp_path, name):
    json_name, dataset, crop, max_depth, max_len = VDA_EVAL[name]
    big = crop[1] > 0 and crop[1] > 300  # a positive crop needs frames that large
    h, w = (480, 640) if dataset == "nyuv2" else (40, 56)
    n_seq, n_frames = (1, 3) if dataset == "nyuv2" else (3, 7)
    fake = build(
        tmp_path / "root", dataset, json_name, n_seq=n_seq, n_frames=n_frames, h=h, w=w,
        factor=FACTORS[dataset], image_crop=None, camera=False, npy_gt=dataset == "sintel",
    )  # fmt: skip
    # predictions at the full frame size: eval.py resizes them to the crop without cropping
    disparity_predictions(tmp_path / "pred", fake["frames"])
    # a shorter frame range exercises the truncation (the real one is longer than the fake videos)
    frames = [0, 5]
    ours = evaluate_video_benchmark(
        bench_cfg(name, frames=frames),
        proto_cfg("vda"),
        tmp_path / "pred",
        root=tmp_path / "root",
        progress=False,
    )
    expected = vda_eval(tmp_path / "root", json_name, dataset, tmp_path / "pred", crop, max_depth, 5)
    assert not big or ours["n_frames"] > 0
    close(ours, expected)
    assert ours["n_frames"] == n_seq * min(n_frames, 5) - 1  # frame 2 of sequence 0 has no valid pixel


def test_vda_predictions_at_the_crop_size(tmp_path):
    """ScanNet as extracted: the images (``color``) are cropped 8:-8, 11:-11 already, the predictions
    are at the cropped size, no resize; with the benchmark's own frame range."""
    fake = build(tmp_path / "root", image_crop=(8, -8, 11, -11))
    disparity_predictions(tmp_path / "pred", fake["frames"], flicker=0.3)
    ours = evaluate_video_benchmark(
        bench_cfg("scannet_video"), proto_cfg("vda"), tmp_path / "pred", root=tmp_path / "root",
        output_dir=tmp_path / "out", progress=False,
    )  # fmt: skip
    expected = vda_eval(
        tmp_path / "root", "scannet_video.json", "scannet", tmp_path / "pred", (8, -8, 11, -11), 10.0, 90
    )
    close(ours, expected)
    assert ours["n_frames"] == 3 * 7 - 1
    rows = (tmp_path / "out" / "scannet_video_per_sequence.csv").read_text().splitlines()
    assert rows[0].startswith("sequence,n_frames,scale,shift,n_scored,abs_rel") and len(rows) == 4


@pytest.mark.parametrize("scenes", [20, 2])
def test_tae_equals_vda_eval_tae(tmp_path, scenes):
    fake = build(
        tmp_path / "root",
        json_name="scannet_video_tae.json",
        n_seq=3,
        n_frames=15,
        image_dir="color_origin",
        image_crop=None,
    )
    disparity_predictions(tmp_path / "pred", fake["frames"], flicker=0.3)
    ours = evaluate_video_benchmark(
        bench_cfg("scannet_tae", sequences=scenes), proto_cfg("vda"), tmp_path / "pred", root=tmp_path / "root",
        progress=False,
    )  # fmt: skip
    expected = vda_tae(
        tmp_path / "root",
        "scannet_video_tae.json",
        "scannet",
        tmp_path / "pred",
        (8, -8, 11, -11),
        10.0,
        10,
        180,
        scenes,
    )
    assert ours["n_sequences"] == expected["n_sequences"] == min(scenes, 3)
    assert abs(ours["tae"] - expected["tae"]) < 1e-4
    assert ours["tae"] == pytest.approx(expected["tae"], rel=1e-9)
    assert ours["n_pairs"] == ours["n_sequences"] * 4  # frames 10..14
    assert 0.1 < ours["tae"] < 50  # flicker and noise: clearly non-zero


def test_tae_of_a_consistent_prediction_is_small(tmp_path):
    """Predictions that are the true disparity up to one scale/shift per sequence reproject onto each
    other (up to rounding to pixels and occlusions); flicker makes the TAE much larger."""
    fake = build(
        tmp_path / "root",
        json_name="scannet_video_tae.json",
        n_seq=2,
        n_frames=14,
        image_dir="color_origin",
        image_crop=None,
    )
    disparity_predictions(tmp_path / "steady", fake["frames"], flicker=0.0, noise=0.0, wild=0.0)
    disparity_predictions(tmp_path / "flicker", fake["frames"], flicker=0.3, noise=0.0, wild=0.0)
    args = dict(root=tmp_path / "root", progress=False)
    steady = evaluate_video_benchmark(bench_cfg("scannet_tae"), proto_cfg("vda"), tmp_path / "steady", **args)
    flicker = evaluate_video_benchmark(
        bench_cfg("scannet_tae"), proto_cfg("vda"), tmp_path / "flicker", **args
    )
    assert steady["tae"] < 0.5 * flicker["tae"]


def _ppd_video_expected(root, pred_dir, listing, crop, max_depth, frames, per_frame):
    """ppd_video as specified: log(gt + 1) ~ a * pred + b by least squares (float64, all valid
    pixels of the sequence or of each frame), expm1, clipped to [1e-3, max_depth]; per-frame metrics
    averaged over frames with a valid pixel, then over sequences."""
    a, b, c, d = crop
    per_seq = []
    for entry in listing["scannet"]:
        for _, items in entry.items():
            items = items[frames[0] : frames[1]]
            gts = [cv2.imread(str(root / f["gt_depth"]), -1) / f["factor"] for f in items]
            gts = np.stack([g[a:b, c:d] for g in gts])
            preds = np.stack(
                [np.load(pred_dir / Path(f["image"]).with_suffix(".npy")) for f in items]
            ).astype(np.float32)
            preds = np.stack(
                [
                    cv2.resize(p, (gts.shape[2], gts.shape[1])) if p.shape != gts.shape[1:] else p
                    for p in preds
                ]
            )
            valid = (gts > 1e-3) & (gts < max_depth)
            groups = [[i] for i in range(len(items))] if per_frame else [list(range(len(items)))]
            aligned = np.zeros(gts.shape)
            for g in groups:
                x, y = preds[g][valid[g]].astype(np.float64), np.log(gts[g][valid[g]] + 1)
                A = np.stack([x, np.ones_like(x)], 1)
                s, t = np.linalg.lstsq(A, y, rcond=None)[0] if len(x) else (0.0, 0.0)
                aligned[g] = np.clip(np.expm1(s * preds[g].astype(np.float64) + t), 1e-3, max_depth)
            vals = []
            for i in range(len(items)):
                m = valid[i]
                if not m.any():
                    continue
                p, q = aligned[i][m], gts[i][m]
                vals.append(
                    [
                        np.mean(np.abs(p - q) / q),
                        np.sqrt(np.mean((p - q) ** 2)),
                        np.mean(np.maximum(p / q, q / p) < 1.25),
                    ]
                )
            per_seq.append(np.mean(vals, 0))
    mean = np.mean(per_seq, 0)
    return {"abs_rel": mean[0], "rmse": mean[1], "delta1": mean[2], "n_sequences": len(per_seq)}


@pytest.mark.parametrize("per_frame", [False, True])
def test_ppd_video_protocol(tmp_path, per_frame):
    fake = build(tmp_path / "root", image_crop=None)
    disparity_predictions(tmp_path / "pred", fake["frames"], space="log1p", flicker=0.2)
    ours = evaluate_video_benchmark(
        bench_cfg("scannet_video"), proto_cfg("ppd_video", per_frame=per_frame), tmp_path / "pred",
        root=tmp_path / "root", progress=False,
    )  # fmt: skip
    expected = _ppd_video_expected(
        tmp_path / "root", tmp_path / "pred", fake["listing"], (8, -8, 11, -11), 10.0, (0, 90), per_frame
    )
    close(ours, expected)
    assert ours["per_frame_alignment"] is per_frame and ours["protocol"] == "ppd_video"


def test_per_frame_alignment_hides_flicker(tmp_path):
    """The flicker baseline: aligning each frame by itself removes the per-frame wobble that one
    alignment per sequence is scored on."""
    fake = build(tmp_path / "root", image_crop=None)
    disparity_predictions(tmp_path / "pred", fake["frames"], flicker=0.4)
    args = dict(root=tmp_path / "root", progress=False)
    seq = evaluate_video_benchmark(bench_cfg("scannet_video"), proto_cfg("vda"), tmp_path / "pred", **args)
    frame = evaluate_video_benchmark(
        bench_cfg("scannet_video"), proto_cfg("vda", per_frame=True), tmp_path / "pred", **args
    )
    assert frame["abs_rel"] < 0.5 * seq["abs_rel"]


def test_least_squares_is_lstsq():
    rng = np.random.default_rng(0)
    fit = LeastSquares()
    xs, ys = [], []
    for n in (0, 5, 1000, 1, 37):
        x = rng.uniform(0.001, 3.0, n) + 1e3  # a large offset: naive sums would cancel
        y = 0.7 * x - 2.0 + 0.01 * rng.standard_normal(n)
        fit.add(x, y)
        xs.append(x)
        ys.append(y)
    x, y = np.concatenate(xs), np.concatenate(ys)
    expected = np.linalg.lstsq(np.stack([x, np.ones_like(x)], 1), y, rcond=None)[0]
    assert np.allclose(fit.solve(), expected, rtol=1e-9, atol=1e-9)
    const = LeastSquares()
    const.add(np.full(10, 2.0), np.arange(10.0))
    assert np.allclose(
        const.solve(),
        np.linalg.lstsq(np.stack([np.full(10, 2.0), np.ones(10)], 1), np.arange(10.0), rcond=None)[0],
    )
    assert LeastSquares().solve() == (0.0, 0.0)


def test_reprojection_later_point_overwrites():
    """Two source pixels land on one target pixel: VDA keeps the later one (pixel 1, depth 2), not
    the nearer one a z-buffer would keep; only pixels where both maps are > 0 count."""
    k = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    move = np.eye(4)
    move[0, 3] = 2.0  # x + 2 m: pixel u at depth z lands on u + 2 / z
    depth1 = np.array([[1.0, 2.0, 0.5, 0.5]])
    assert reprojection_abs_rel(depth1, np.ones((1, 4)), k, move) == pytest.approx(1.0)
    assert reprojection_abs_rel(depth1, depth1, k, np.eye(4)) == 0.0
    away = np.eye(4)
    away[0, 3] = 100.0  # nothing lands: 0, as VDA returns
    assert reprojection_abs_rel(depth1, np.ones((1, 4)), k, away) == 0.0


def test_prediction_mapping_quirk():
    """vda (eval.py): an uncropped prediction is resized to the crop size, not cropped; scannet_tae
    (--hard_crop): cropped first."""
    proto = VideoProtocol.from_config(proto_cfg("vda"))
    pred = np.arange(40 * 56, dtype=np.float32).reshape(40, 56)
    squeezed = proto.map_prediction(
        VideoBenchmarkSpec.from_config(bench_cfg("scannet_video")), pred, (24, 34)
    )
    assert np.array_equal(squeezed, cv2.resize(pred, (34, 24), interpolation=cv2.INTER_LINEAR))
    cropped = proto.map_prediction(VideoBenchmarkSpec.from_config(bench_cfg("scannet_tae")), pred, (24, 34))
    assert np.array_equal(cropped, pred[8:-8, 11:-11])
    assert not math.isclose(float(squeezed[0, 0]), float(cropped[0, 0]))

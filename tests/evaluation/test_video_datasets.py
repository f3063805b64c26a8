"""Reading VDA's extracted layouts, and one clear error per way the input can be wrong."""

import json
import tarfile

import cv2
import numpy as np
import pytest
from fake_video_benchmarks import build, disparity_predictions
from test_video_protocols import bench_cfg, proto_cfg
from vda_reference import vda_eval

from ppd_lightning.errors import InputError, MissingFileError
from ppd_lightning.evaluation.files import UnsafeNameError
from ppd_lightning.evaluation.video_datasets import SavedVideoPredictions, VideoBenchmark
from ppd_lightning.evaluation.video_run import evaluate_video_benchmark


def test_reads_sequences_frames_and_ground_truth(tmp_path):
    fake = build(tmp_path, n_seq=2, n_frames=6, camera=True)
    bench = VideoBenchmark(tmp_path, "scannet_video.json", "scannet", frames=(1, 4), sequences=1)
    assert bench.dataset == "scannet" and bench.n_listed == 2 and len(bench) == 1
    seq = bench.sequences[0]
    assert seq.name == "scene0000_00" and [f.index for f in seq.frames] == [1, 2, 3]
    frame = seq.frames[0]
    assert frame.K.shape == (4, 4) and frame.pose.shape == (4, 4)
    gt = bench.depth(frame)
    raw = cv2.imread(str(tmp_path / frame.gt_depth), -1)
    assert gt.dtype == np.float64 and np.array_equal(gt, raw / 1000.0)
    assert bench.image(frame).shape == (24, 34, 3)  # the extracted color frames are cropped 8:-8, 11:-11
    assert len(bench.json_sha256) == 64
    # dataset=None: the only key; a tar of the folder reads the same
    assert VideoBenchmark(tmp_path, "scannet_video.json").dataset == "scannet"
    with tarfile.open(tmp_path.parent / "bench.tar", "w") as tf:
        tf.add(tmp_path, arcname=".")
    tar = VideoBenchmark(tmp_path.parent / "bench.tar", "scannet_video.json", "scannet")
    assert np.array_equal(tar.depth(tar.sequences[0].frames[1]), gt)
    assert fake["listing"]["scannet"][0]["scene0000_00"][1]["image"] == frame.image


def test_npy_ground_truth_is_divided_as_vda_does(tmp_path):
    build(tmp_path, n_seq=1, n_frames=2, npy_gt=True, factor=256.0)
    bench = VideoBenchmark(tmp_path, "scannet_video.json")
    frame = bench.sequences[0].frames[0]
    raw = np.load(tmp_path / frame.gt_depth)
    assert raw.dtype == np.float32
    assert np.array_equal(bench.depth(frame), (raw / 256.0).astype(np.float64))  # divided in float32


def test_vda_prediction_layout_and_allow_missing(tmp_path):
    """VDA's infer.py writes <infer_path>/<dataset>/<image>.npy: found from predictions=<infer_path>.
    A missing frame is an error naming it; allow_missing skips it, as VDA's eval.py does."""
    fake = build(tmp_path / "root", image_crop=None)
    disparity_predictions(tmp_path / "infer" / "scannet", fake["frames"])
    args = dict(root=tmp_path / "root", progress=False)
    full = evaluate_video_benchmark(bench_cfg("scannet_video"), proto_cfg("vda"), tmp_path / "infer", **args)
    missing = tmp_path / "infer" / "scannet" / "scene0001_00" / "color" / "6.npy"
    missing.unlink()
    with pytest.raises(MissingFileError, match=r"scene0001_00/color/6\.npy.*allow_missing"):
        evaluate_video_benchmark(bench_cfg("scannet_video"), proto_cfg("vda"), tmp_path / "infer", **args)
    partial = evaluate_video_benchmark(
        bench_cfg("scannet_video"), proto_cfg("vda"), tmp_path / "infer", allow_missing=True, **args
    )
    expected = vda_eval(
        tmp_path / "root",
        "scannet_video.json",
        "scannet",
        tmp_path / "infer" / "scannet",
        (8, -8, 11, -11),
        10.0,
        90,
    )
    assert partial["missing_frames"] == 1 and partial["n_frames"] == full["n_frames"] - 1
    assert partial["abs_rel"] == pytest.approx(expected["abs_rel"], rel=1e-9)


def _write(tmp_path, listing, name="scannet_video.json"):
    (tmp_path / name).write_text(json.dumps(listing))


def test_layout_errors_name_the_file(tmp_path):
    with pytest.raises(MissingFileError, match="does not exist.*scannet_video.json"):
        VideoBenchmark(tmp_path / "nowhere", "scannet_video.json")
    fake = build(tmp_path, n_seq=1, n_frames=3, camera=False)
    with pytest.raises(
        MissingFileError, match=r"kitti_video\.json: no such file.*it holds scannet_video\.json"
    ):
        VideoBenchmark(tmp_path, "kitti_video.json")
    with pytest.raises(InputError, match="no key 'kitti'.*holds scannet"):
        VideoBenchmark(tmp_path, "scannet_video.json", "kitti")
    with pytest.raises(InputError, match="frame 0: missing K, pose"):
        VideoBenchmark(tmp_path, "scannet_video.json", need_camera=True)
    listing = fake["listing"]
    frames = listing["scannet"][0]["scene0000_00"]
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match=r"bad\.json: not valid JSON"):
        VideoBenchmark(tmp_path, "bad.json")
    cases = [
        ({"scannet": [{"s": [{**frames[0], "factor": 0}]}]}, "factor must be a positive number"),
        ({"scannet": [{"s": [{"image": "a.jpg", "factor": 1}]}]}, "frame 0: missing gt_depth"),
        ({"scannet": [{"s": [{**frames[0], "K": [[1, 2]]}]}]}, "K: expected a finite 3x3 or 3x4 or 4x4"),
        ({"scannet": {"s": []}}, "must be a list"),
        ({"scannet": [{"s": frames[:1]}]}, None),
    ]
    for i, (bad, msg) in enumerate(cases):
        _write(tmp_path, bad, f"case{i}.json")
        if msg is None:
            VideoBenchmark(tmp_path, f"case{i}.json")
            continue
        with pytest.raises(InputError, match=msg):
            VideoBenchmark(tmp_path, f"case{i}.json")
    _write(tmp_path, {"scannet": [{"s": [{**frames[0], "image": "../../etc/passwd"}]}]}, "escape.json")
    with pytest.raises(UnsafeNameError, match="climbs out"):
        VideoBenchmark(tmp_path, "escape.json")
    with pytest.raises(InputError, match=r"no sequence with frames in \[50:60\]"):
        VideoBenchmark(tmp_path, "scannet_video.json", frames=(50, 60))


def test_file_errors_name_the_file(tmp_path):
    fake = build(tmp_path / "root", n_seq=1, n_frames=3, image_crop=None)
    disparity_predictions(tmp_path / "pred", fake["frames"])
    bench = VideoBenchmark(tmp_path / "root", "scannet_video.json")
    first = bench.sequences[0].frames[0]
    (tmp_path / "root" / first.gt_depth).unlink()
    with pytest.raises(MissingFileError, match=r"scene0000_00/depth/0\.png: no such file"):
        bench.depth(first)
    cv2.imwrite(str(tmp_path / "root" / first.gt_depth), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(InputError, match=r"depth/0\.png: expected an HxW .*got shape \(4, 4, 3\)"):
        bench.depth(first)
    (tmp_path / "root" / first.gt_depth).write_bytes(b"garbage")
    with pytest.raises(InputError, match=r"depth/0\.png: expected a single-channel integer"):
        bench.depth(first)
    with pytest.raises(MissingFileError, match="predictions directory .* does not exist"):
        SavedVideoPredictions(tmp_path / "no_preds")
    saved = SavedVideoPredictions(tmp_path / "pred")
    saved.path(first).write_bytes(b"\x93NUMPY broken")
    with pytest.raises(InputError, match=r"color/0\.npy: not a readable \.npy"):
        saved.load(first)
    np.save(saved.path(first), np.zeros((2, 3, 4), np.float32))
    with pytest.raises(InputError, match=r"color/0\.npy: expected an HxW .*got shape \(2, 3, 4\)"):
        saved.load(first)
    np.save(saved.path(first), np.ones((1, 40, 56), np.float64))
    assert saved.load(first).shape == (40, 56) and saved.load(first).dtype == np.float32

"""Evaluation fidelity and safety: ETH3D raw maps, lazy rgb, KITTI crops, pinned splits, non-finite
predictions, crafted archives and garbage prediction files (issues 12 and 15)."""

import hashlib
import json
import logging
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from fake_benchmarks import _png16, _rgb
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from test_evaluate import REPO, _cfg

from ppd_lightning.evaluation import datasets as ds_mod
from ppd_lightning.evaluation.datasets import (
    PINNED_SPLITS,
    BenchmarkLayoutError,
    build_benchmark,
    resolve_split,
)
from ppd_lightning.evaluation.files import BenchmarkFiles, UnsafeNameError, confine_name
from ppd_lightning.evaluation.metrics import METRIC_NAMES, depth_metrics_per_image
from ppd_lightning.evaluation.predictors import Prediction, SavedPredictions, prediction_path
from ppd_lightning.evaluation.protocols import get_protocol
from ppd_lightning.evaluation.run import evaluate, evaluate_benchmark, resolve_benchmarks

PINNED_COUNTS = {"nyuv2": 654, "kitti": 652, "eth3d": 454, "scannet": 800, "diode": 771}


def _split_lines(name: str) -> list[list[str]]:
    path = resolve_split(PINNED_SPLITS[name])
    return [line.split() for line in path.read_text().splitlines() if line.strip()]


def _scene_depth(h: int, w: int, seed: int, lo: float = 0.5, hi: float = 9.5) -> np.ndarray:
    """A smooth depth ramp with holes (0), a few far outliers and, at the top, "sky" (0)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    d = lo + (hi - lo) * (0.6 * xx / max(w - 1, 1) + 0.4 * yy / max(h - 1, 1))
    d *= 1 + 0.05 * rng.standard_normal((h, w)).astype(np.float32)
    d[rng.random((h, w)) < 0.1] = 0  # holes
    d[rng.random((h, w)) < 0.01] = hi * 3  # far outliers (beyond some ranges)
    d[: max(1, h // 10)] = 0  # sky / no return
    return d.astype(np.float32)


def _save(pred_dir: Path, name: str, arr: np.ndarray) -> Path:
    p = pred_dir / Path(name).with_suffix(".npy")
    p.parent.mkdir(parents=True, exist_ok=True)
    np.save(p, arr)
    return p


class _FakeModel:
    """A model source (the Predictor interface): records the images it sees, answers with ``fn(image)``."""

    needs_image, in_workers = True, False

    def __init__(self, fn):
        self.fn, self.seen = fn, []

    def for_benchmark(self, name, protocol, several=False):
        return self

    def predict_many(self, samples):
        self.seen.extend(p.image.shape for p in samples)
        return [Prediction(self.fn(p.image)) for p in samples]


def _nyu_with_real_paths(
    root: Path, entries: list[list[str]], seed: int = 0, hw=(480, 640)
) -> dict[str, np.ndarray]:
    gts = {}
    for i, (rgb, depth, *_) in enumerate(entries):
        d = _scene_depth(*hw, seed + i)
        _rgb(root / rgb, *hw, seed + i)
        _png16(root / depth, np.clip(d, 0, 65.0), 1000)
        gts[rgb] = np.round(np.clip(d, 0, 65.0) * 1000) / 1000
    return gts


# -- issue 12 part 3: ETH3D raw maps, no rgb decoding for saved predictions ----------------------
def _eth3d(root: Path, depth_hw, rgb_hw, n: int = 2) -> dict[str, np.ndarray]:
    gts = {}
    for i in range(n):
        scene = f"scene{i}"
        rgb = f"rgb/{scene}/images/dslr_images/DSC_{i:04d}.JPG"
        _rgb(root / rgb, *rgb_hw, i)
        d = _scene_depth(*depth_hw, i, 1.0, 30.0)
        d[d == 0] = np.inf  # ETH3D marks missing depth with inf
        p = root / f"depth/{scene}_dslr_depth/{scene}/ground_truth_depth/dslr_images/DSC_{i:04d}.JPG"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(d.astype("<f4").tobytes())
        gts[rgb] = d
    return gts


def test_eth3d_native_size_read_whatever_the_rgb_size(tmp_path, monkeypatch):
    # the released maps are 4032x6048 (tested for real in the slow test below); the rule is the same
    # for a small stand-in size: the byte count decides, not the image
    monkeypatch.setattr(ds_mod.ETH3D, "native_shape", (24, 36), raising=False)
    gts = _eth3d(tmp_path / "eth3d", depth_hw=(24, 36), rgb_hw=(12, 18))
    ds = build_benchmark("eth3d", tmp_path / "eth3d")
    for i, (name, _) in enumerate(ds.pairs):
        s = ds[i]
        assert s.depth.shape == (24, 36)
        np.testing.assert_array_equal(s.depth, gts[name])
        assert s.image.shape == (24, 36, 3)  # resized for inference, not an error
        assert s.meta["rgb_shape"] == (12, 18)
        assert not s.valid[0].any()  # inf: invalid
    # the override still wins, and a size that fits neither is an error naming the file
    bad = build_benchmark("eth3d", tmp_path / "eth3d", depth_shape=[12, 18])
    with pytest.raises(ValueError, match=r"DSC_0000.JPG has 3456 bytes, expected 12x18"):
        bad.get(0, with_image=False)


@pytest.mark.slow
def test_eth3d_released_size_with_a_small_rgb(tmp_path):
    root = tmp_path / "eth3d"
    _rgb(root / "rgb/a/images/dslr_images/DSC_0001.JPG", 8, 12, 0)
    d = np.full((4032, 6048), 5.0, "<f4")
    d[:10] = np.inf
    p = root / "depth/a_dslr_depth/a/ground_truth_depth/dslr_images/DSC_0001.JPG"
    p.parent.mkdir(parents=True)
    p.write_bytes(d.tobytes())
    s = build_benchmark("eth3d", root).get(0, with_image=False)
    assert s.depth.shape == (4032, 6048) and s.image is None and not s.valid[:10].any()


def test_saved_predictions_do_not_decode_the_rgb(tmp_path, monkeypatch):
    monkeypatch.setattr(ds_mod.ETH3D, "native_shape", (30, 40), raising=False)  # stand-in size
    gts = _eth3d(tmp_path / "eth3d", depth_hw=(30, 40), rgb_hw=(30, 40))
    for name in gts:  # undecodable images: scoring saved predictions must not need them
        (tmp_path / "eth3d" / name).write_bytes(b"not a jpeg")
    for proto in ("marigold", "ppd"):
        for name in gts:  # affine in depth (marigold) / in log(d + 1) (ppd): exact after alignment
            d = np.nan_to_num(gts[name], posinf=0)
            _save(tmp_path / "pred", name, 2 * d + 1 if proto == "marigold" else 0.5 * np.log1p(d) + 0.1)
        protocol = get_protocol(proto, {"eth3d": {"resize": [20, 15]}} if proto == "ppd" else None)
        res = evaluate_benchmark(
            "eth3d", tmp_path / "eth3d", protocol, SavedPredictions(tmp_path / "pred"), tmp_path / proto
        )
        assert res["n_images"] == 2 and res["abs_rel"] < 1e-3, proto
    # a panel does need the image: then it is decoded, and a bad one is named
    with pytest.raises(ValueError, match=r"cannot decode image rgb/scene0/images/dslr_images/DSC_0000.JPG"):
        evaluate_benchmark(
            "eth3d",
            tmp_path / "eth3d",
            get_protocol("marigold"),
            SavedPredictions(tmp_path / "pred"),
            tmp_path / "o",
            panels=1,
        )


def test_model_sees_the_rgb_resized_to_the_depth(tmp_path, monkeypatch):
    monkeypatch.setattr(ds_mod.ETH3D, "native_shape", (30, 40), raising=False)  # stand-in size
    _eth3d(tmp_path / "eth3d", depth_hw=(30, 40), rgb_hw=(15, 20))
    model = _FakeModel(lambda im: im.mean(-1).astype(np.float32) + 1)
    res = evaluate_benchmark(
        "eth3d", tmp_path / "eth3d", get_protocol("marigold"), model, tmp_path / "o", split=None
    )
    assert model.seen == [(30, 40, 3)] * 2 and res["n_images"] == 2 and np.isfinite(res["abs_rel"])


@pytest.mark.parametrize("proto", ["marigold", "ppd"])
def test_kitti_predictions_on_the_benchmark_crop_score_like_full_size(tmp_path, proto):
    root = tmp_path / "kitti"
    rng = np.random.default_rng(0)
    full, crop = tmp_path / "full", tmp_path / "crop"
    # odd and even widths: the crop's left edge (w - 1216) // 2 rounds
    for i, (h, w) in enumerate([(375, 1241), (370, 1224), (376, 1242)]):
        frame = f"{i:010d}"
        rgb = f"2011_09_26/2011_09_26_drive_0002_sync/image_02/data/{frame}.png"
        _rgb(root / rgb, h, w, i)
        d = _scene_depth(h, w, i, 3.0, 70.0)
        d[rng.random((h, w)) < 0.9] = 0  # sparse lidar
        d[: h // 3] = 0  # nothing above the horizon
        _png16(root / f"2011_09_26_drive_0002_sync/proj_depth/groundtruth/image_02/{frame}.png", d, 256)
        pred = (1.0 / np.maximum(_scene_depth(h, w, 100 + i, 3.0, 70.0), 1.0)).astype(np.float32)
        pred[rng.random((h, w)) < 0.01] = 50.0  # outliers in the prediction too
        _save(full, rgb, pred)
        _save(crop, rgb, pred[h - 352 :, (w - 1216) // 2 : (w - 1216) // 2 + 1216])
    protocol = get_protocol(proto)
    a = evaluate_benchmark("kitti", root, protocol, SavedPredictions(full), tmp_path / "o1")
    b = evaluate_benchmark("kitti", root, protocol, SavedPredictions(crop), tmp_path / "o2")
    assert a["n_images"] == b["n_images"] == 3
    for k in METRIC_NAMES:
        assert a[k] == b[k], k
    rows1 = (tmp_path / "o1" / "kitti_per_image.csv").read_text()
    assert rows1 == (tmp_path / "o2" / "kitti_per_image.csv").read_text()


# -- issue 12 part 4: pinned split lists -------------------------------------------------------
@pytest.mark.parametrize("name", sorted(PINNED_COUNTS))
def test_default_split_of_each_benchmark_is_the_pinned_list(name):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("evaluate", overrides=[f"benchmark={name}"])
    assert cfg.benchmark.split == "pinned"  # the YAML says "the pinned list", the code names it once
    (run,) = resolve_benchmarks(OmegaConf.to_container(cfg))
    path = resolve_split(run["split"])
    assert path.parent == ds_mod.SPLITS_DIR and path.is_file()  # inside the package, not ../shared
    entries = [t for t in _split_lines(name) if not (len(t) > 1 and t[1] == "None")]
    assert len(entries) == PINNED_COUNTS[name]
    shared = Path(os.environ.get("PPD_SPLITS_DIR", REPO.parent / "shared" / "splits")) / path.name
    if shared.is_file():  # the shipped copy is byte-identical to the published list
        assert hashlib.sha256(shared.read_bytes()).digest() == hashlib.sha256(path.read_bytes()).digest()
    # several benchmarks in one go: each gets its own pinned list unless splits.<name> says otherwise
    runs = resolve_benchmarks({"benchmarks": [name, "hypersim"], "benchmark": {"name": "hypersim"}})
    assert resolve_split(runs[0]["split"]) == path and runs[1]["split"] is None
    runs = resolve_benchmarks({"benchmarks": [name], "splits": {name: None}})
    assert runs[0]["split"] is None


def test_diode_subsets_and_unknown_split_names():
    assert len(resolve_split("diode_val_indoor").read_text().splitlines()) == 325
    assert len(resolve_split("diode_val_outdoor").read_text().splitlines()) == 446
    with pytest.raises(BenchmarkLayoutError, match=r"split file nyu_tset does not exist.*nyuv2_test"):
        resolve_split("nyu_tset")


def test_pinned_split_missing_file_is_an_error_naming_it(tmp_path):
    entries = _split_lines("nyuv2")
    gts = _nyu_with_real_paths(tmp_path / "nyu", entries[:3])
    for name, gt in gts.items():
        _save(tmp_path / "pred", name, 0.5 * gt + 0.2)
    common = [
        "benchmark=nyuv2",
        f"benchmark.root={tmp_path / 'nyu'}",
        f"predictions={tmp_path / 'pred'}",
        f"output_dir={tmp_path / 'out'}",
    ]
    cfg = _cfg(*common, f"benchmark.split={PINNED_SPLITS['nyuv2']}")  # the default, set back
    with pytest.raises(BenchmarkLayoutError) as e:
        evaluate(cfg)
    msg = str(e.value)
    assert "651 of 654 listed files are missing" in msg
    assert f"{entries[3][0]} (line 4)" in msg and "allow_missing=true" in msg
    # a small list with the real relative paths of a few entries plus a missing one
    split = tmp_path / "few.txt"
    split.write_text("\n".join(" ".join(t) for t in entries[:4]))
    with pytest.raises(BenchmarkLayoutError, match=rf"1 of 4 listed files .*\n  {entries[3][0]} \(line 4\)"):
        evaluate(_cfg(*common, f"benchmark.split={split}"))
    res = evaluate(_cfg(*common, f"benchmark.split={split}", "allow_missing=true"))["nyuv2"]
    assert res["n_images"] == 3 and res["abs_rel"] < 1e-6
    assert res["split"]["missing"] == 1 and res["split"]["entries"] == 4
    assert res["split"]["missing_files"] == [f"{entries[3][0]} (line 4)"]
    # the complete list of 3 evaluates exactly those, recorded by name and hash
    split.write_text("\n".join(" ".join(t) for t in entries[:3]))
    res = evaluate(_cfg(*common, f"benchmark.split={split}"))["nyuv2"]
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())["nyuv2"]["split"]
    assert saved == {
        "name": str(split),
        "sha256": hashlib.sha256(split.read_bytes()).hexdigest(),
        "entries": 3,
        "missing": 0,
    }


def test_partial_run_of_the_pinned_list_is_loud(tmp_path, caplog, capsys):
    entries = _split_lines("kitti")
    with_gt = [t for t in entries if t[1] != "None"][:2]
    root = tmp_path / "kitti"
    for i, (rgb, depth, _) in enumerate(with_gt):
        _rgb(root / rgb, 375, 1242, i)
        _png16(root / depth, _scene_depth(375, 1242, i, 3.0, 70.0), 256)
        _save(tmp_path / "pred", rgb, np.ones((375, 1242), np.float32))
    cfg = _cfg(
        "benchmark=kitti",
        f"benchmark.split={PINNED_SPLITS['kitti']}",
        f"benchmark.root={root}",
        f"predictions={tmp_path / 'pred'}",
        f"output_dir={tmp_path / 'out'}",
        "allow_missing=true",
    )
    with caplog.at_level(logging.WARNING):
        res = evaluate(cfg)["kitti"]
    assert res["n_images"] == 2
    info = json.loads((tmp_path / "out" / "metrics.json").read_text())["kitti"]["split"]
    assert info["name"] == "kitti_eigen_test" and info["entries"] == 652 and info["missing"] == 650
    assert info["sha256"] == hashlib.sha256(resolve_split("kitti_eigen_test").read_bytes()).hexdigest()
    assert any("PARTIAL RUN" in r.getMessage() and "650 of 652" in r.getMessage() for r in caplog.records)
    assert "kitti: PARTIAL RUN, 650 of 652 files of split kitti_eigen_test missing" in capsys.readouterr().out


# -- issue 15 item 1: non-finite predictions ----------------------------------------------------
def _nyu4(tmp_path):
    entries = _split_lines("nyuv2")[:4]
    gts = _nyu_with_real_paths(tmp_path / "nyu", entries, hw=(120, 160))  # small: fast RANSAC
    rng = np.random.default_rng(1)
    for i, (name, gt) in enumerate(gts.items()):
        pred = 0.3 * gt + 0.1 if i < 2 else rng.random(gt.shape) * 5  # two random predictions
        _save(tmp_path / "pred", name, pred.astype(np.float32))
    return sorted(gts), gts


@pytest.mark.parametrize("proto", ["marigold", "ppd"])
def test_nan_on_a_scored_pixel_is_an_error_naming_the_file(tmp_path, proto):
    names, gts = _nyu4(tmp_path)
    common = [f"protocol={proto}", f"benchmark.root={tmp_path / 'nyu'}", f"predictions={tmp_path / 'pred'}"]
    base = evaluate(_cfg(*common, f"output_dir={tmp_path / 'a'}"))["nyuv2"]
    assert base["n_images"] == 4 and base["delta1"] < 0.9
    path = prediction_path(tmp_path / "pred", names[2])
    pred = np.load(path)
    pred[100, 100] = np.nan  # a valid, scored pixel (inside the Eigen crop, not a hole)
    assert 0.1 < gts[names[2]][100, 100] < 10
    np.save(path, pred)
    with pytest.raises(ValueError, match=rf"prediction {path}: 1 non-finite value\(s\) on scored pixels"):
        evaluate(_cfg(*common, f"output_dir={tmp_path / 'b'}"))
    np.save(path, np.full_like(pred, np.nan))  # all-NaN: named, not an IndexError
    with pytest.raises(ValueError, match=rf"prediction {path}: \d+ non-finite"):
        evaluate(_cfg(*common, f"output_dir={tmp_path / 'c'}"))


@pytest.mark.parametrize("proto", ["marigold", "ppd"])
def test_non_finite_off_the_scored_pixels_changes_nothing(tmp_path, proto):
    names, gts = _nyu4(tmp_path)
    common = [f"protocol={proto}", f"benchmark.root={tmp_path / 'nyu'}", f"predictions={tmp_path / 'pred'}"]
    base = evaluate(_cfg(*common, f"output_dir={tmp_path / 'a'}"))["nyuv2"]
    for name in names:  # NaN / inf in holes and sky, beyond the range, outside the Eigen crop
        path = prediction_path(tmp_path / "pred", name)
        pred = np.load(path)
        gt = gts[name]
        assert (gt == 0).any() and (gt > 10).any()
        pred[gt == 0] = np.nan
        pred[gt > 10] = np.inf
        if proto == "marigold":
            pred[:45, :] = -np.inf
            pred[:, :41] = np.nan
        np.save(path, pred)
    res = evaluate(_cfg(*common, f"output_dir={tmp_path / 'b'}", "panels=1"))["nyuv2"]
    assert res["n_images"] == 4
    for k in METRIC_NAMES:
        assert res[k] == pytest.approx(base[k], rel=1e-6, abs=1e-9), k


def test_a_model_producing_nan_is_an_error_naming_the_image(tmp_path):
    names, _ = _nyu4(tmp_path)

    def fn(im):
        out = im.mean(-1).astype(np.float32) + 1
        out[0, 0] = np.nan  # even outside the scored pixels
        return out

    with pytest.raises(ValueError, match=rf"the model's prediction for image {names[0]}: 1 non-finite"):
        evaluate_benchmark(
            "nyuv2", tmp_path / "nyu", get_protocol("ppd"), _FakeModel(fn), tmp_path / "o", split=None
        )


def test_metric_never_improves_with_a_nan_pixel():
    g = np.random.default_rng(0)
    import torch

    gt = torch.from_numpy(g.random((2, 8, 8)).astype(np.float32) + 0.5)
    pred = gt * torch.from_numpy((1 + 0.3 * g.standard_normal((2, 8, 8))).astype(np.float32)).abs()
    mask = torch.ones_like(gt, dtype=torch.bool)
    clean, n0 = depth_metrics_per_image(pred, gt, mask)
    worst = pred.clone()
    worst[1, 3, 3] = float("nan")
    bad, n1 = depth_metrics_per_image(worst, gt, mask)
    assert n1.tolist() == n0.tolist() == [64, 64]  # the pixel still counts
    for k in METRIC_NAMES:
        assert bad[k][0] == clean[k][0], k
        if k.startswith("delta"):
            assert bad[k][1] <= clean[k][1] and bad[k][1] < 1, k
        else:
            assert bad[k][1] == float("inf"), k


# -- issue 15 item 2: crafted archives, confined outputs ----------------------------------------
def _tar_with(tmp_path: Path, names: list[str]) -> Path:
    src = tmp_path / "member"
    _rgb(src / "rgb.png", 480, 640, 0)
    _png16(src / "depth.png", _scene_depth(480, 640, 0), 1000)
    tar = tmp_path / "crafted.tar"
    with tarfile.open(tar, "w") as tf:
        for n in names:
            info = tf.gettarinfo(src / ("depth.png" if "depth_" in n else "rgb.png"), arcname="x")
            info.name = n
            with open(src / ("depth.png" if "depth_" in n else "rgb.png"), "rb") as fh:
                tf.addfile(info, fh)
    return tar


@pytest.mark.parametrize(
    "member",
    ["../escape/test/s/rgb_0000.png", "a/../../escape/test/s/rgb_0000.png", "/abs/test/s/rgb_0000.png"],
)
def test_crafted_tar_members_are_refused_by_name(tmp_path, member):
    depth = member.replace("rgb_", "depth_")
    tar = _tar_with(tmp_path, [member, depth])
    with pytest.raises(UnsafeNameError, match=rf"member of {tar} '{member}'"):
        BenchmarkFiles(tar)
    out = tmp_path / "deep" / "out"
    with pytest.raises(UnsafeNameError, match="climbs out|absolute"):
        evaluate(_cfg(f"benchmark.root={tar}", f"predictions={tmp_path}", f"output_dir={out}", "panels=1"))
    assert not (tmp_path / "deep" / "escape").exists() and not (tmp_path / "escape").exists()


def test_member_names_are_normalised(tmp_path):
    assert confine_name("./a//b/./c.png") == "a/b/c.png" and confine_name("a/x/../b.png") == "a/b.png"
    for bad in ["..", "../a", "a/../..", "/a", "C:/a", ".", ""]:
        with pytest.raises(UnsafeNameError):
            confine_name(bad)
    tar = _tar_with(tmp_path, ["./top/test/s/./rgb_0000.png", "top//test/s/depth_0000.png"])
    ds = build_benchmark("nyuv2", tar)
    assert ds.pairs == [("top/test/s/rgb_0000.png", "top/test/s/depth_0000.png")]
    assert ds.get(0).image.shape == (480, 640, 3)
    with pytest.raises(UnsafeNameError, match=r"image name '../x.png'"):
        prediction_path(tmp_path, "../x.png")


def test_outputs_through_a_symlink_out_of_the_output_dir_are_refused(tmp_path):
    gts = _nyu_with_real_paths(tmp_path / "nyu", _split_lines("nyuv2")[:1])
    for name, gt in gts.items():
        _save(tmp_path / "pred", name, gt + 1)
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    (out / "nyuv2").mkdir(parents=True)
    elsewhere.mkdir()
    (out / "nyuv2" / "panels").symlink_to(elsewhere, target_is_directory=True)
    cfg = _cfg(
        f"benchmark.root={tmp_path / 'nyu'}",
        f"predictions={tmp_path / 'pred'}",
        f"output_dir={out}",
        "panels=1",
    )
    with pytest.raises(UnsafeNameError, match=r"outside .*out; refused"):
        evaluate(cfg)
    assert not any(elsewhere.rglob("*"))


# -- issue 15 item 9: garbage prediction files --------------------------------------------------
@pytest.mark.parametrize("kind", ["text", "pickle", "npz", "strings", "stack", "empty", "truncated"])
def test_garbage_npy_prediction_is_an_error_naming_the_file(tmp_path, kind):
    gts = _nyu_with_real_paths(tmp_path / "nyu", _split_lines("nyuv2")[:1])
    name = next(iter(gts))
    path = prediction_path(tmp_path / "pred", name)
    path.parent.mkdir(parents=True)
    good = gts[name].astype(np.float32)
    if kind == "text":
        path.write_text("0.1 0.2\n0.3 0.4\n")
    elif kind == "pickle":
        path.write_bytes(pickle.dumps({"depth": good}))
    elif kind == "npz":
        with open(path, "wb") as fh:
            np.savez(fh, depth=good)
    elif kind == "strings":
        np.save(path, np.array([["a", "b"], ["c", "d"]]))
    elif kind == "stack":
        np.save(path, np.stack([good, good]))
    elif kind == "empty":
        np.save(path, np.zeros((0, 5), np.float32))
    else:
        np.save(path, good)
        path.write_bytes(path.read_bytes()[:1000])
    cfg = _cfg(
        f"benchmark.root={tmp_path / 'nyu'}", f"predictions={tmp_path / 'pred'}", f"output_dir={tmp_path}/o"
    )
    with pytest.raises(ValueError, match=rf"prediction {path}"):
        evaluate(cfg)


def test_garbage_diode_depth_is_named(tmp_path):
    rgb, depth, mask = _split_lines("diode")[0]
    root = tmp_path / "diode"
    _rgb(root / rgb, 24, 32, 0)
    (root / depth).write_bytes(b"garbage")
    np.save(root / mask, np.ones((24, 32), np.float32))
    split = tmp_path / "s.txt"
    split.write_text(f"{rgb} {depth} {mask}")
    with pytest.raises(ValueError, match=rf"{depth}: not a readable .npy"):
        build_benchmark("diode", root, split=split).get(0, with_image=False)

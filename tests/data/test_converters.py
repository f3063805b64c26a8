"""Each converter against a tiny fake raw dataset in the real on-disk layout, through
write -> verify -> DataModule batch, with value checks."""

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from helpers import convert_and_verify, val_batches  # noqa: E402

H, W = 24, 32
RNG = np.random.default_rng(0)


def _rgb():
    return RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)


def _write_img(path: Path, rgb, ext=".png"):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), rgb[..., ::-1])


def _by_key(batches):
    out = {}
    for b in batches:
        for i, k in enumerate(b["key"]):
            out[k.rsplit("/", 1)[1]] = {f: b[f][i] for f in ("image", "depth", "mask", "sky")}
    return out


def test_hypersim_distance_to_planar(tmp_path):
    h5py = pytest.importorskip("h5py")
    root = tmp_path / "raw"
    focal = 886.81 * W / 1024
    u = np.arange(W) + 0.5 - W / 2
    v = np.arange(H) + 0.5 - H / 2
    ray = np.sqrt((u[None] / focal) ** 2 + (v[:, None] / focal) ** 2 + 1)
    truth = {}
    for frame in range(3):
        z = np.full((H, W), 2.0 + frame, np.float32)
        z[:, : W // 2] = 5.0
        dist = (z * ray).astype(np.float32)
        dist[0, 0] = np.nan
        cam = "ai_001_002/images/scene_cam_00"
        _write_img(root / f"{cam}_final_preview/frame.{frame:04d}.tonemap.jpg", _rgb())
        (root / f"{cam}_geometry_hdf5").mkdir(parents=True, exist_ok=True)
        with h5py.File(root / f"{cam}_geometry_hdf5/frame.{frame:04d}.depth_meters.hdf5", "w") as f:
            f["dataset"] = dist.astype(np.float16)  # the release stores float16
        truth[f"ai_001_002-cam_00-{frame:04d}"] = z
    manifest, report = convert_and_verify("hypersim", root, tmp_path / "shards", depth_dtype="float32")
    assert report["samples"] == 3 and report["datasets"] == {"hypersim": 3}
    with open(manifest["paths"][0], "rb") as fh:
        assert b"rgb.jpg" in fh.read()  # the tonemapped JPEG is passed through
    _, batches = val_batches(manifest["pattern"], (H, W))
    got = _by_key(batches)
    assert set(got) == set(truth)
    for key, z in truth.items():
        s = got[key]
        assert not s["mask"][0, 0, 0]  # NaN distance -> invalid
        m = s["mask"][0].numpy()
        np.testing.assert_allclose(s["depth"][0].numpy()[m], z[m], rtol=2e-3)  # float16 source
        assert not s["sky"].any()


def test_vkitti2_centimetres_sky_and_intrinsics(tmp_path):
    root = tmp_path / "raw"
    base = root / "Scene01" / "clone"
    cm = np.full((H, W), 1234, np.uint16)
    cm[:5] = 65535  # sky rows
    cm[10, 10] = 250
    for cam in (0, 1):
        for frame in range(2):
            _write_img(base / f"frames/rgb/Camera_{cam}/rgb_{frame:05d}.jpg", _rgb())
            d = base / f"frames/depth/Camera_{cam}/depth_{frame:05d}.png"
            d.parent.mkdir(parents=True, exist_ok=True)
            assert cv2.imwrite(str(d), cm)
    rows = [f"{f} {c} 725.0087 725.5 620.5 187.0" for f in range(2) for c in (0, 1)]
    (base / "intrinsic.txt").write_text(
        "frame cameraID K[0,0] K[1,1] K[0,2] K[1,2]\n" + "\n".join(rows) + "\n"
    )
    manifest, report = convert_and_verify("vkitti2", root, tmp_path / "shards")
    assert report["samples"] == 4 and report["depth_max"] == pytest.approx(12.34, rel=1e-3)
    assert report["sky_fraction"] == pytest.approx(5 / H)
    _, batches = val_batches(manifest["pattern"], (H, W))
    s = _by_key(batches)["Scene01-clone-cam1-00001"]
    assert s["sky"][0, :5].all() and not s["sky"][0, 5:].any()
    assert not s["mask"][0, :5].any() and (s["depth"][0, :5] == 0).all()
    assert s["depth"][0, 10, 10].item() == pytest.approx(2.5, rel=1e-3)
    assert s["depth"][0, 20, 3].item() == pytest.approx(12.34, rel=1e-3)


def test_tartanair_npy_metres_and_sky(tmp_path):
    root = tmp_path / "raw"
    seq = root / "abandonedfactory" / "Easy" / "P001"
    depth = np.linspace(1, 50, H * W, dtype=np.float32).reshape(H, W)
    depth[0] = 10000.0  # TartanAir sky is a huge depth
    for i in range(3):
        _write_img(seq / f"image_left/{i:06d}_left.png", _rgb())
        (seq / "depth_left").mkdir(exist_ok=True)
        np.save(seq / f"depth_left/{i:06d}_left_depth.npy", depth)
    manifest, report = convert_and_verify("tartanair", root, tmp_path / "shards", depth_dtype="float32")
    assert report["samples"] == 3
    _, batches = val_batches(manifest["pattern"], (H, W))
    s = _by_key(batches)["abandonedfactory-Easy-P001-000002"]
    assert s["sky"][0, 0].all() and not s["mask"][0, 0].any()
    np.testing.assert_allclose(s["depth"][0, 1:].numpy(), depth[1:], rtol=1e-6)


def test_urbansyn_exr_scale(tmp_path):
    openexr = pytest.importorskip("OpenEXR")
    root = tmp_path / "raw"
    y = np.full((H, W), 3e-4, np.float32)  # 30 m
    y[:4] = 1.0  # 100 km: sky
    for i in range(2):
        _write_img(root / f"rgb/rgb_{i:04d}.png", _rgb())
        (root / "depth").mkdir(exist_ok=True)
        header = {"compression": openexr.ZIP_COMPRESSION, "type": openexr.scanlineimage}
        openexr.File(header, {"Y": y}).write(str(root / f"depth/depth_{i:04d}.exr"))
    manifest, report = convert_and_verify("urbansyn", root, tmp_path / "shards")
    assert report["samples"] == 2 and report["depth_max"] == pytest.approx(30.0, rel=1e-3)
    _, batches = val_batches(manifest["pattern"], (H, W))
    s = _by_key(batches)["rgb_0001"]
    assert s["sky"][0, :4].all() and s["mask"][0, 4:].all()
    assert torch.allclose(s["depth"][0, 4:], torch.tensor(30.0), rtol=1e-3)


def test_unrealstereo4k_disparity_to_depth_and_bad_file_skipped(tmp_path):
    root = tmp_path / "raw"
    seq = root / "00000"
    fx, fy, baseline = 100.0, 102.0, 0.5
    disp = np.full((H, W), 10.0, np.float32)
    disp[0, :] = 0.0  # invalid
    disp[1, :] = 0.1  # 510 m: sky
    k = f"{fx} 0 16 0 {fy} 12 0 0 1"
    e0 = np.eye(4)[:3]
    e0[:, 3] = (1.0, 2.0, 3.0)
    e1 = e0.copy()
    e1[0, 3] += baseline
    for i in range(3):
        _write_img(seq / f"Image0/{i:05d}.png", _rgb())
        (seq / "Disp0").mkdir(exist_ok=True)
        np.save(seq / f"Disp0/{i:05d}.npy", disp)
        for c, e in ((0, e0), (1, e1)):
            (seq / f"Extrinsics{c}").mkdir(exist_ok=True)
            (seq / f"Extrinsics{c}/{i:05d}.txt").write_text(k + "\n" + " ".join(map(str, e.ravel())) + "\n")
    (seq / "Disp0/00001.npy").write_bytes(b"garbage")  # a bad source file: reported and skipped
    manifest, report = convert_and_verify("unrealstereo4k", root, tmp_path / "shards", depth_dtype="float32")
    assert report["samples"] == 2
    skipped = [s for info in manifest["shards"].values() for s in info["skipped"]]
    assert len(skipped) == 1 and "Disp0/00001.npy" in skipped[0]["error"]
    _, batches = val_batches(manifest["pattern"], (H, W))
    s = _by_key(batches)["00000-00002"]
    expect = 0.5 * (fx + fy) * baseline / 10.0
    assert not s["mask"][0, 0].any() and s["sky"][0, 1].all()
    np.testing.assert_allclose(s["depth"][0, 2:].numpy(), expect, rtol=1e-6)


def test_missing_root_and_empty_layout_are_clear_errors(tmp_path):
    from ppd_lightning.data.writer import write_shards
    from ppd_lightning.data.raw import RawDataError

    with pytest.raises(FileNotFoundError, match="not a directory"):
        write_shards("vkitti2", tmp_path / "out", root=tmp_path / "nope", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(RawDataError, match=r"no samples found under .*empty; expected .*image_left/") as err:
        write_shards("tartanair", tmp_path / "out", root=tmp_path / "empty", progress=False)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").glob("*.tar"))

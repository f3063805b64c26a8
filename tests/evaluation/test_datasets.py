import numpy as np
import pytest
from fake_benchmarks import build, to_tar

from ppd_lightning.evaluation.datasets import BENCHMARKS, BenchmarkLayoutError, build_benchmark

ALL = ["nyuv2", "kitti", "eth3d", "scannet", "diode", "hypersim"]


@pytest.mark.parametrize("as_tar", [False, True], ids=["folder", "tar"])
@pytest.mark.parametrize("name", ALL)
def test_loaders_read_pairs_depth_and_validity(fake_benchmark, name, as_tar):
    root, gts = fake_benchmark(name, as_tar=as_tar, prefix="archive/" if as_tar else "")
    ds = build_benchmark(name, root)
    names = [s.removeprefix("archive/") for s, _ in ds.pairs]
    assert names == sorted(gts)  # kitti: the frame without ground truth is skipped
    for i in range(len(ds)):
        s = ds[i]
        gt = gts[s.name.removeprefix("archive/")]
        assert s.image.dtype == np.uint8 and s.image.shape == (*gt.shape, 3)
        expect_valid = np.isfinite(gt) & (gt > 0)
        if name == "diode":
            expect_valid[:, -2:] = False
        np.testing.assert_array_equal(s.valid, expect_valid)
        np.testing.assert_allclose(s.depth[expect_valid], gt[expect_valid], atol=1e-3)
        assert (s.intrinsics is not None) == (name == "hypersim")


def test_compressed_tar_with_dot_slash_members_reads_like_the_folder(tmp_path):
    # `tar czf nyu.tar.gz .` stores "./test/..." names; they are addressed without the "./"
    src = tmp_path / "src"
    gts = build("nyuv2", src)
    tgz = to_tar(src, tmp_path / "nyu.tar.gz", prefix="./", mode="w:gz")
    ds, ref = build_benchmark("nyuv2", tgz), build_benchmark("nyuv2", src)
    assert ds.pairs == ref.pairs and [p[0] for p in ds.pairs] == sorted(gts)
    for i in range(len(ds)):
        np.testing.assert_array_equal(ds[i].image, ref[i].image)
        np.testing.assert_array_equal(ds[i].depth, ref[i].depth)


def test_nyu_ignores_filled_and_kitti_skips_missing_gt(fake_benchmark):
    root, _ = fake_benchmark("nyuv2")
    ds = build_benchmark("nyuv2", root)
    assert all("filled_" not in d and "depth_" in d for _, d in ds.pairs)
    root, _ = fake_benchmark("kitti")
    ds = build_benchmark("kitti", root)
    assert len(ds) == 1 and ds.pairs[0][1].startswith("2011_09_26_drive_0002_sync/proj_depth/groundtruth/")


def test_uint16_scales(fake_benchmark):
    root, _ = fake_benchmark("kitti")
    s = build_benchmark("kitti", root)[0]
    assert s.depth[200, 10] == pytest.approx(10.0) and s.depth[200, -10] == pytest.approx(20.0)
    assert not s.valid[:100].any()


def test_eth3d_raw_float_size_is_validated(tmp_path):
    root = tmp_path / "eth3d"
    build("eth3d", root)
    ds = build_benchmark("eth3d", root, depth_shape=[12, 16])
    assert ds[0].depth.shape == (12, 16) and not ds[0].valid[1, 1]  # inf is invalid
    bad = build_benchmark("eth3d", root, depth_shape=[4032, 6048])
    with pytest.raises(ValueError, match=r"expected 4032x6048 float32"):
        bad[0]


def test_split_file_restricts_orders_and_skips_none(tmp_path):
    root = tmp_path / "scannet"
    gts = build("scannet", root)
    names = sorted(gts)
    split = tmp_path / "split.txt"
    split.write_text(f"# comment\n{names[1]} scene0002_00/depth/100.png\n\n")
    ds = build_benchmark("scannet", root, split=split)
    assert ds.pairs == [(names[1], "scene0002_00/depth/100.png")]
    split.write_text(f"{names[0]}\n{names[1]} None\n")  # rgb only: depth derived; None: skipped
    assert [p[0] for p in build_benchmark("scannet", root, split=split).pairs] == [names[0]]
    split.write_text("scene9/color/1.jpg\n")
    with pytest.raises(
        BenchmarkLayoutError,
        match=r"1 of 1 listed files are missing from .*\n  scene9/color/1.jpg \(line 1\)",
    ):
        build_benchmark("scannet", root, split=split)


def test_split_paths_resolve_inside_a_prefixed_tar(tmp_path):
    src = tmp_path / "src"
    gts = build("diode", src)
    tar = to_tar(src, tmp_path / "diode_val.tar", prefix="val/")
    split = tmp_path / "split.txt"
    split.write_text("\n".join(sorted(gts)) + "\n")
    ds = build_benchmark("diode", tar, split=split)
    assert len(ds) == 2 and ds.pairs[0][0].startswith("val/")
    assert ds[1].depth.shape == (24, 32)


@pytest.mark.parametrize("name", ALL)
def test_missing_root_and_empty_root_errors_name_path_and_layout(tmp_path, name):
    missing = tmp_path / "nope"
    with pytest.raises(BenchmarkLayoutError) as e:
        build_benchmark(name, missing)
    assert str(missing) in str(e.value) and BENCHMARKS[name].layout in str(e.value)
    empty = tmp_path / "empty"
    empty.mkdir(exist_ok=True)
    (empty / "readme.txt").write_text("x")
    with pytest.raises(BenchmarkLayoutError) as e:
        build_benchmark(name, empty)
    assert f"found no {name} pairs in {empty}" in str(e.value) and BENCHMARKS[name].layout in str(e.value)
    with pytest.raises(BenchmarkLayoutError, match="no root given"):
        build_benchmark(name, None)


def test_uint16_png_readers_share_one_load_depth_scaled_by_depth_scale(tmp_path):
    import re

    import cv2

    from ppd_lightning.evaluation.datasets import BenchmarkDataset

    png_readers = {n: c for n, c in BENCHMARKS.items() if c.depth_scale is not None}
    assert {n: c.depth_scale for n, c in png_readers.items()} == {
        "nyuv2": 0.001,
        "kitti": 1 / 256,
        "scannet": 0.001,
        "hypersim": 0.001,
    }
    assert all(c.load_depth is BenchmarkDataset.load_depth for c in png_readers.values())
    assert all(BENCHMARKS[n].load_depth is not BenchmarkDataset.load_depth for n in ("eth3d", "diode"))

    class Decimetres(BenchmarkDataset):  # a new uint16-PNG benchmark needs no load_depth of its own
        name = "dm"
        layout = "<n>.jpg + <n>.png (uint16, dm)"
        rgb_pattern = re.compile(r"^(?P<prefix>)(?P<id>[^/]+)\.jpg$")
        depth_scale = 0.1

        def depth_candidates(self, m):
            return [f"{m['id']}.png"]

    stored = np.arange(12, dtype=np.uint16).reshape(3, 4) * 7
    assert cv2.imwrite(str(tmp_path / "a.png"), stored)
    assert cv2.imwrite(str(tmp_path / "a.jpg"), np.zeros((3, 4, 3), np.uint8))
    s = Decimetres(tmp_path)[0]
    assert np.array_equal(s.depth, stored.astype(np.float32) / np.float32(10.0))  # exact, not * 0.1
    assert np.array_equal(s.valid, stored > 0) and s.image.shape == (3, 4, 3)

    class NoDepth(Decimetres):
        depth_scale = None

    with pytest.raises(NotImplementedError, match="NoDepth sets no depth_scale"):
        NoDepth(tmp_path)[0]


def test_millimetre_pngs_keep_exact_float32_division(tmp_path):
    import cv2

    stored = np.arange(0, 65536, 97, dtype=np.uint16)[None, :]
    (tmp_path / "test" / "s").mkdir(parents=True)
    assert cv2.imwrite(str(tmp_path / "test/s/depth_0.png"), stored)
    assert cv2.imwrite(str(tmp_path / "test/s/rgb_0.png"), np.zeros((*stored.shape, 3), np.uint8))
    d = build_benchmark("nyuv2", tmp_path)[0].depth
    assert np.array_equal(d, stored.astype(np.float32) / np.float32(1000.0))  # as before the refactor

"""`make_shards folder`: own RGB-D data in every supported layout and depth format, the held-out split,
intrinsics, and the failure paths (each bad input is one clear error, or a named skip)."""

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from helpers import val_batches  # noqa: E402

from ppd_lightning.data.codec import decode_sample  # noqa: E402
from ppd_lightning.data.make_shards import main  # noqa: E402
from ppd_lightning.data.verify import verify_shards  # noqa: E402
from ppd_lightning.data.shards import iter_tar_samples  # noqa: E402
from ppd_lightning.data.raw import RawDataError  # noqa: E402
from ppd_lightning.errors import InputError  # noqa: E402
from ppd_lightning.data.raw.folder import list_items, read_pfm  # noqa: E402

H, W = 12, 16
RNG = np.random.default_rng(0)


def write_rgb(path: Path, ext=".png"):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), RNG.integers(0, 256, (H, W, 3), dtype=np.uint8))


def write_u16(path: Path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), arr.astype(np.uint16))


def write_pfm(path: Path, arr: np.ndarray, little: bool = True, scale: float = 1.0):
    """An independent PFM writer: header, signed scale (negative = little-endian), rows bottom to top."""
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = arr.shape
    data = np.ascontiguousarray(arr[::-1]).astype("<f4" if little else ">f4").tobytes()
    path.write_bytes(f"Pf\n{w} {h}\n{-scale if little else scale}\n".encode() + data)


def samples(out_dir: Path) -> dict:
    """{key: DepthSample} of every shard in a directory."""
    got = {}
    for tar in sorted(out_dir.glob("*.tar")):
        with open(tar, "rb") as fh:
            for members in iter_tar_samples(fh, str(tar)):
                s = decode_sample(members)
                got[s.key] = s
    return got


def ramp(i: int) -> np.ndarray:
    """A depth map whose rows differ (catches flipped rows) and whose value identifies the image."""
    return (1.0 + i + 0.25 * np.arange(H, dtype=np.float32)[:, None]) * np.ones((1, W), np.float32)


def test_png_depth_by_stem_with_scale_intrinsics_and_deterministic_split(tmp_path, capsys):
    root = tmp_path / "own"
    for i in range(10):
        write_rgb(root / f"rgb/{i:03d}.png")
        write_u16(root / f"depth/{i:03d}.png", ramp(i) * 1000)  # millimetres
    args = ["folder", str(root), "--depth-scale", "0.001", "--val-fraction", "0.3", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "a"), "--intrinsics", "20,21,7.5,5.5"]) == 0
    out = capsys.readouterr().out
    assert "train: 1 shards, 7 samples" in out and "val: 1 shards, 3 samples" in out
    train, val = samples(tmp_path / "a/train"), samples(tmp_path / "a/val")
    assert len(train) == 7 and len(val) == 3 and not set(train) & set(val)
    for key, s in {**train, **val}.items():
        i = int(key.split("_")[1])
        np.testing.assert_allclose(s.depth, ramp(i), rtol=1e-3)
        assert s.mask.all() and s.meta["dataset"] == "own" and s.meta["intrinsics"] == "given"
        assert (s.meta["fx"], s.meta["fy"], s.meta["cx"], s.meta["cy"]) == (20, 21, 7.5, 5.5)
    # the split is a function of the file names only: another run (other flags) holds out the same images
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    assert set(samples(tmp_path / "b/val")) == set(val)
    assert samples(tmp_path / "b/val")[next(iter(val))].meta["intrinsics"] == "assumed"
    assert main(["verify", str(tmp_path / "a/train"), str(tmp_path / "a/val")]) == 0
    # the DataModule reads them (the folder's name is the validation set's name)
    _, batches = val_batches(str(tmp_path / "a/val"), (H, W), name="own")
    assert sum(len(b["dataset"]) for b in batches) == 3 and set(batches[0]["dataset"]) == {"own"}


def test_template_npy_masks_and_per_image_intrinsics(tmp_path):
    root = tmp_path / "own"
    for i in range(3):
        write_rgb(root / f"scenes/a/frame{i}_color.jpg", ext=".jpg")
        np.save(root / f"scenes/a/frame{i}_color_depth.npy", ramp(i)[None])  # (1, H, W) is accepted
        m = np.full((H, W), 255, np.uint8)
        m[:, :3] = 0
        cv2.imwrite(str(root / f"scenes/a/frame{i}_color_mask.png"), m)
        k = f"{30 + i} 0 8\n0 {31 + i} 6\n0 0 1\n"
        (root / f"scenes/a/frame{i}_color.txt").write_text(k)
    argv = ["folder", str(root), "--out", str(tmp_path / "s"), "--rgb-glob", "scenes/**/*_color.jpg"]
    argv += ["--depth-glob", "{dir}/{stem}_depth.npy", "--mask-glob", "{dir}/{stem}_mask.png"]
    argv += ["--intrinsics-glob", "{dir}/{stem}.txt", "--val-fraction", "0", "--no-progress"]
    assert main(argv) == 0
    assert not (tmp_path / "s/val").exists()
    got = samples(tmp_path / "s/train")
    assert sorted(got) == [f"scenes_a_frame{i}_color" for i in range(3)]
    for i in range(3):
        s = got[f"scenes_a_frame{i}_color"]
        assert not s.mask[:, :3].any() and s.mask[:, 3:].all()  # the mask restricts the valid pixels
        np.testing.assert_allclose(s.depth[:, 3:], ramp(i)[:, 3:], rtol=1e-3)
        assert (s.meta["fx"], s.meta["fy"], s.meta["cx"], s.meta["cy"]) == (30 + i, 31 + i, 8, 6)
    with open(next((tmp_path / "s/train").glob("*.tar")), "rb") as fh:
        assert b"rgb.jpg" in fh.read()  # source JPEGs pass through unchanged


def test_list_file_pfm_exr_and_val_list(tmp_path):
    openexr = pytest.importorskip("OpenEXR")
    root = tmp_path / "own"
    lines = ["# rgb depth [mask]", ""]
    for i in range(4):
        write_rgb(root / f"img/{i}.png")
        if i < 2:
            write_pfm(root / f"d/{i}.pfm", ramp(i), little=(i == 0))
            lines.append(f"img/{i}.png d/{i}.pfm")
        else:
            header = {"compression": openexr.ZIP_COMPRESSION, "type": openexr.scanlineimage}
            (root / "d").mkdir(exist_ok=True)
            openexr.File(header, {"Z": ramp(i)}).write(str(root / f"d/{i}.exr"))
            lines.append(f"img/{i}.png   d/{i}.exr  # trailing comment")
    (root / "pairs.txt").write_text("\n".join(lines) + "\n")
    (root / "val.txt").write_text("img/3.png\n")
    argv = ["folder", str(root), "--out", str(tmp_path / "s"), "--list", "pairs.txt", "--val-list", "val.txt"]
    assert main([*argv, "--depth-dtype", "float32", "--no-progress"]) == 0
    train, val = samples(tmp_path / "s/train"), samples(tmp_path / "s/val")
    assert sorted(train) == ["img_0", "img_1", "img_2"] and sorted(val) == ["img_3"]
    for key, s in {**train, **val}.items():
        np.testing.assert_allclose(s.depth, ramp(int(key[-1])), rtol=1e-6)  # rows in image order


def test_pfm_reader_endianness_scale_and_errors(tmp_path):
    d = ramp(3)
    write_pfm(tmp_path / "le.pfm", d, little=True, scale=2.0)
    write_pfm(tmp_path / "be.pfm", d, little=False)
    np.testing.assert_array_equal(read_pfm(tmp_path / "le.pfm"), d)
    np.testing.assert_array_equal(read_pfm(tmp_path / "be.pfm"), d)
    (tmp_path / "cut.pfm").write_bytes((tmp_path / "le.pfm").read_bytes()[:-10])
    with pytest.raises(RawDataError, match=r"cut\.pfm: not a readable PFM file"):
        read_pfm(tmp_path / "cut.pfm")
    (tmp_path / "rgb.pfm").write_bytes(b"PF\n1 1\n-1\n" + b"\0" * 12)
    with pytest.raises(RawDataError, match=r"rgb\.pfm: a 3-channel PFM"):
        read_pfm(tmp_path / "rgb.pfm")
    (tmp_path / "x.pfm").write_bytes(b"P6\n1 1\n255\n\0\0\0")
    with pytest.raises(RawDataError, match=r"x\.pfm: not a readable PFM file"):
        read_pfm(tmp_path / "x.pfm")
    (tmp_path / "h.pfm").write_bytes(b"Pf\n0 4\n-1\n")
    with pytest.raises(RawDataError, match=r"h\.pfm: not a readable PFM file"):
        read_pfm(tmp_path / "h.pfm")


def test_bad_files_are_named_and_skipped(tmp_path):
    root = tmp_path / "own"
    for i in range(5):
        write_rgb(root / f"rgb/{i}.png")
    write_u16(root / "depth/0.png", ramp(0) * 1000)
    # 1: no depth file at all; 2: a corrupt PNG; 3: wrong size; 4: 8-bit PNG
    (root / "depth/2.png").write_bytes(b"not a png")
    write_u16(root / "depth/3.png", np.ones((H + 1, W)))
    cv2.imwrite(str(root / "depth/4.png"), np.ones((H, W), np.uint8))
    out = tmp_path / "s"
    argv = ["folder", str(root), "--out", str(out), "--depth-scale", "0.001", "--val-fraction", "0"]
    assert main([*argv, "--no-progress"]) == 0
    assert list(samples(out / "train")) == ["rgb_0"]
    manifest = json.loads((out / "train/manifest.json").read_text())
    skipped = {s["item"]: s["error"] for sh in manifest["shards"].values() for s in sh["skipped"]}
    assert len(skipped) == 4
    errors = " | ".join(skipped.values())
    assert "1.png: no depth file pairs with it" in errors
    assert "depth/2.png: not a decodable PNG" in errors
    assert "depth/3.png: depth is (13, 16)" in errors
    assert "depth/4.png: expected a single-channel uint16 PNG" in errors


def test_clear_errors_for_bad_options_and_layouts(tmp_path):
    root = tmp_path / "own"
    write_rgb(root / "rgb/0.png")
    write_u16(root / "depth/0.png", ramp(0))
    base = ["folder", str(root), "--out", str(tmp_path / "s"), "--no-progress"]
    with pytest.raises(RawDataError, match="16-bit PNGs: give --depth-scale"):
        main(base)
    with pytest.raises(RawDataError, match=r"no images .* match .*/nothing/\* \(--rgb-glob\)"):
        main([*base, "--rgb-glob", "nothing/*", "--depth-scale", "1"])
    with pytest.raises(InputError, match=r"--intrinsics: expected 4 intrinsics"):
        main([*base, "--depth-scale", "1", "--intrinsics", "1,2,3"])
    with pytest.raises(InputError, match=r"fx, fy > 0"):
        main([*base, "--depth-scale", "1", "--intrinsics", "0,2,3,4"])
    with pytest.raises(ValueError, match="--depth-scale must be a positive"):
        main([*base, "--depth-scale", "-1"])
    with pytest.raises(FileNotFoundError, match="--list missing.txt: no such file"):
        main([*base, "--list", "missing.txt"])
    (root / "bad.txt").write_text("rgb/0.png\n")
    with pytest.raises(RawDataError, match=r"bad\.txt:1: expected 'rgb depth \[mask\]'"):
        main([*base, "--list", str(root / "bad.txt")])
    (root / "val.txt").write_text("rgb/9.png\n")
    with pytest.raises(RawDataError, match=r"val\.txt: 1 entries are not among the images.*rgb/9\.png"):
        main([*base, "--depth-scale", "1", "--val-list", "val.txt"])
    with pytest.raises(ValueError, match="--val-fraction or --val-list, not both"):
        main([*base, "--depth-scale", "1", "--val-list", "val.txt", "--val-fraction", "0.2"])
    (root / "depth2").mkdir()
    write_u16(root / "depth2/0.png", ramp(0))
    (root / "depth2/sub").mkdir()
    write_u16(root / "depth2/sub/0.png", ramp(0))
    with pytest.raises(RawDataError, match="two files with the stem '0'"):
        list_items(str(root), depth_glob="depth2/**/*.png", depth_scale=1.0)
    assert not (tmp_path / "s/train").exists() or not list((tmp_path / "s/train").glob("*.tar"))


def test_rerun_resumes_and_refuses_other_options(tmp_path):
    root = tmp_path / "own"
    (root / "depth").mkdir(parents=True)
    for i in range(4):
        write_rgb(root / f"rgb/{i}.png")
        np.save(root / f"depth/{i}.npy", ramp(i))
    argv = ["folder", str(root), "--out", str(tmp_path / "s"), "--samples-per-shard", "1", "--no-progress"]
    assert main([*argv, "--val-fraction", "0.25"]) == 0
    tars = sorted((tmp_path / "s/train").glob("*.tar"))
    mtimes = [p.stat().st_mtime_ns for p in tars]
    assert main([*argv, "--val-fraction", "0.25"]) == 0  # nothing to do: nothing rewritten
    assert [p.stat().st_mtime_ns for p in tars] == mtimes
    with pytest.raises(ValueError, match="already holds shards written with other parameters"):
        main([*argv, "--val-fraction", "0.25", "--depth-scale", "2"])
    report = verify_shards([str(tmp_path / "s/train"), str(tmp_path / "s/val")], progress=False)
    assert report["samples"] == 4 and report["bad"] == [] and report["flagged"] == []

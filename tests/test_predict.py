"""`python -m ppd_lightning.predict`: depth, pictures and point clouds for a user's own images."""

import warnings

import cv2
import numpy as np
import pytest
import torch
from model_helpers import randomize, tiny_dit, tiny_encoder

from ppd_lightning.errors import InputError
from ppd_lightning.pointcloud import relative_to_metric
from ppd_lightning.predict import main
from ppd_lightning.visualize import read_ply


@pytest.fixture
def released_files(tmp_path):
    dit = randomize(tiny_dit(semantic_dim=64))
    enc = randomize(tiny_encoder(dim=64, heads=1))
    torch.save({f"dit.{k}": v for k, v in dit.state_dict().items()}, tmp_path / "ppd.pth")
    torch.save({f"pretrained.{k}": v for k, v in enc.vit.state_dict().items()}, tmp_path / "da2.pth")
    return tmp_path / "ppd.pth", tmp_path / "da2.pth"


def test_predict_writes_depth_pictures_and_point_clouds(tmp_path, released_files):
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for name, (h, w) in {"a.png": (30, 41), "b.jpg": (50, 20)}.items():
        cv2.imwrite(str(photos / name), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    dit, sem = released_files
    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert (
            main(
                [
                    str(photos),
                    "--dit",
                    str(dit),
                    "--semantics",
                    str(sem),
                    "--out",
                    str(out),
                    "--steps",
                    "2",
                    "--area",
                    "1024",
                    "--ply",
                    "--device",
                    "cpu",
                ]
            )
            == 0
        )
    for stem, (h, w) in {"a": (30, 41), "b": (50, 20)}.items():
        depth = np.load(out / f"{stem}_depth.npy")
        assert depth.shape == (h, w) and np.isfinite(depth).all()
        assert cv2.imread(str(out / f"{stem}_depth.png")).shape[:2] == (h, w)
        assert (out / f"{stem}_panel.png").is_file()
        points, colors = read_ply(out / f"{stem}.ply")
        assert points.shape == (h * w, 3) and colors.shape == (h * w, 3)
        assert (-points[:, 2] >= 0.5 - 1e-4).all()  # within the assumed depth range (OpenGL axes: -z forward)


def test_relative_to_metric_spans_the_range():
    d = relative_to_metric(np.array([0.0, 1.0]), 0.5, 20.0)
    np.testing.assert_allclose(d, [0.5, 20.0], rtol=1e-5)


def test_predict_errors(tmp_path, released_files):
    with pytest.raises(FileNotFoundError, match="no such image file or directory"):
        main([str(tmp_path / "missing.png"), "--out", str(tmp_path / "o"), "--dit", "x", "--semantics", "y"])
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    dit, sem = released_files
    assert main([str(bad), "--out", str(tmp_path / "o"), "--dit", str(dit), "--semantics", str(sem)]) == 1
    with pytest.raises(InputError, match="give --"):
        main([str(bad), "--out", str(tmp_path / "o")])  # neither --ckpt nor --dit/--semantics
    with pytest.raises(SystemExit):
        main([str(bad), "--out", str(tmp_path / "o"), "--area", "64"])  # a side length, not an area


def _photo(path, h=20, w=28, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    assert cv2.imwrite(str(path), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    return path


def _run(args, released_files, capsys):
    dit, sem = released_files
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(
            [*map(str, args), "--dit", str(dit), "--semantics", str(sem), "--steps", "1", "--area", "1024"]
        )
    return code, capsys.readouterr()


def test_same_stem_in_different_folders_and_suffixes_never_overwrite(tmp_path, released_files, capsys):
    # issue 15.5: d1/photo.png d1/photo.jpg d2/photo.png all became out/photo_* ("wrote 3")
    a = _photo(tmp_path / "d1" / "photo.png", 20, 28, seed=1)
    b = _photo(tmp_path / "d1" / "photo.jpg", 24, 16, seed=2)
    c = _photo(tmp_path / "d2" / "photo.png", 12, 36, seed=3)
    out = tmp_path / "out"
    code, io = _run([a, b, c, "--out", out], released_files, capsys)
    assert code == 0
    expected = {"d1/photo_png": (20, 28), "d1/photo_jpg": (24, 16), "d2/photo": (12, 36)}
    for base, shape in expected.items():
        assert np.load(out / f"{base}_depth.npy").shape == shape
        assert (out / f"{base}_depth.png").is_file() and (out / f"{base}_panel.png").is_file()
    assert len(list(out.rglob("*_depth.npy"))) == 3
    assert "wrote 3 of 3 prediction(s) (9 files)" in io.out
    for img, base in zip((a, b, c), expected):
        assert f"{img} -> {out / base}_depth.npy" in io.out  # exactly what was written, per image


def test_a_directory_and_a_file_in_it_are_predicted_once(tmp_path, released_files, capsys):
    a = _photo(tmp_path / "photos" / "a.png")
    code, io = _run([tmp_path / "photos", a, "--out", tmp_path / "o"], released_files, capsys)
    assert code == 0 and "wrote 1 of 1" in io.out
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["a_depth.npy", "a_depth.png", "a_panel.png"]


def test_an_unreadable_image_is_reported_and_skipped_then_exit_1(tmp_path, released_files, capsys):
    _photo(tmp_path / "in" / "good.png")
    bad = tmp_path / "in" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 truncated jpeg")
    last = _photo(tmp_path / "in" / "z_last.png", seed=5)
    out = tmp_path / "out"
    code, io = _run([tmp_path / "in", "--out", out], released_files, capsys)
    assert code == 1
    assert (out / "good_depth.npy").is_file() and (out / "z_last_depth.npy").is_file()  # the batch went on
    assert not list(out.glob("broken*"))
    assert f"skipped {bad}: {bad}: not a readable image" in io.err
    assert "1 image(s) failed" in io.err and "wrote 2 of 3 prediction(s)" in io.out
    assert str(last) in io.out


def test_cli_errors_are_one_line(tmp_path, released_files):
    import subprocess
    import sys

    photo = _photo(tmp_path / "p.png")
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    dit, sem = released_files
    cmd = [sys.executable, "-m", "ppd_lightning.predict", str(photo), "--out", str(tmp_path / "o")]
    for args, message in (
        (
            ["--dit", str(empty), "--semantics", str(sem)],
            f"error: {empty}: cannot read checkpoint: the file is empty",
        ),
        (["--ckpt", str(dit)], f"error: {dit}: not a ppd-lightning training checkpoint"),
    ):
        proc = subprocess.run(cmd + args, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1, proc.stderr
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert lines == [lines[0]] and lines[0].startswith(message), proc.stderr
        assert "Traceback" not in proc.stderr

"""`python -m ppd_lightning.predict`: depth, pictures and point clouds for a user's own images."""

import warnings

import cv2
import numpy as np
import pytest
import torch
from model_helpers import randomize, tiny_dit, tiny_encoder

from ppd_lightning.predict import main, relative_to_metric
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
        assert (points[:, 2] >= 0.5 - 1e-4).all()  # within the assumed depth range


def test_relative_to_metric_spans_the_range():
    d = relative_to_metric(np.array([0.0, 1.0]), 0.5, 20.0)
    np.testing.assert_allclose(d, [0.5, 20.0], rtol=1e-5)


def test_predict_errors(tmp_path, released_files):
    with pytest.raises(FileNotFoundError, match="no such image file or directory"):
        main([str(tmp_path / "missing.png"), "--out", str(tmp_path / "o"), "--dit", "x", "--semantics", "y"])
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    dit, sem = released_files
    with pytest.raises(ValueError, match="bad.png: not a readable image"):
        main(
            [
                str(bad),
                "--out",
                str(tmp_path / "o"),
                "--dit",
                str(dit),
                "--semantics",
                str(sem),
                "--device",
                "cpu",
            ]
        )
    with pytest.raises(SystemExit):
        main([str(bad), "--out", str(tmp_path / "o")])  # neither --ckpt nor --dit/--semantics
    with pytest.raises(SystemExit):
        main([str(bad), "--out", str(tmp_path / "o"), "--area", "64"])  # a side length, not an area

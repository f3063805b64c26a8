"""What a newcomer sees from `python train.py`: readable validation panels, a final demo.png whose path is
printed, and no warnings about things the project does on purpose."""

import json
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch

from ppd_lightning import visualize
from ppd_lightning.training.callbacks import ValidationPanels
from ppd_lightning.training.run import quiet_intentional_warnings, write_demo_image

REPO = Path(__file__).resolve().parents[2]


def fake_outputs(B=3, H=12, W=16, sky_rows=3):
    g = torch.Generator().manual_seed(0)
    depth = 1.0 + 20.0 * torch.rand(B, 1, H, W, generator=g)
    sky = torch.zeros(B, 1, H, W, dtype=torch.bool)
    sky[:, :, :sky_rows] = True
    mask = ~sky
    mask[:, :, -1, -1] = False  # one hole without ground truth
    depth[sky] = 0.0
    return {
        "image": torch.rand(B, 3, H, W, generator=g),
        "pred": depth.clamp_min(1.0) * 1.1,
        "depth": depth,
        "mask": mask,
        "sky": sky,
    }


def fake_trainer(step=7):
    return SimpleNamespace(is_global_zero=True, sanity_checking=False, global_step=step, loggers=[])


def run_panels(tmp_path, outputs, **kwargs):
    cb = ValidationPanels(str(tmp_path / "panels"), num_images=2, **kwargs)
    cb.on_validation_batch_end(fake_trainer(), None, outputs, None, batch_idx=0)
    return cb


def test_panels_are_readable_size_with_sky_in_grey(tmp_path):
    outputs = fake_outputs(H=12, W=16)
    cb = run_panels(tmp_path, outputs)
    panel = cb.last_panel
    written = tmp_path / "panels" / "val_step0000007.png"
    assert written.is_file()
    # two rows, each upscaled from 12 px to >= 192 px (plus labels and the legend line)
    assert panel.shape[0] >= 2 * 192
    on_disk = cv2.imread(str(written))
    assert on_disk.shape[:2] == panel.shape[:2]
    # the sky is drawn in the fixed sky colour (ground truth and error tiles), the hole in the invalid one
    sky_px = np.all(panel == np.array(visualize.SKY_COLOR, np.uint8), axis=-1)
    hole_px = np.all(panel == np.array(visualize.INVALID_COLOR, np.uint8), axis=-1)
    factor = 192 // 12
    assert sky_px.sum() >= 2 * 2 * (3 * 16) * factor**2  # 2 rows x 2 tiles x sky pixels, upscaled
    assert hole_px.sum() >= 2 * 2 * factor**2


def test_panels_without_sky_key_and_min_height_zero_keep_native_size(tmp_path):
    outputs = fake_outputs(H=12, W=16)
    del outputs["sky"]
    cb = run_panels(tmp_path, outputs, min_height=0)
    assert cb.last_panel.shape[0] < 2 * 192
    # without a sky mask the sky rows have no ground truth: black in the ground truth and error tiles
    hole_px = np.all(cb.last_panel == np.array(visualize.INVALID_COLOR, np.uint8), axis=-1)
    sky_px = np.all(cb.last_panel == np.array(visualize.SKY_COLOR, np.uint8), axis=-1)
    assert hole_px.sum() >= 2 * 2 * (3 * 16 + 1)
    assert sky_px.sum() < 3 * 16  # at most the legend's swatch, no sky tile area


def test_panels_reject_negative_min_height(tmp_path):
    with pytest.raises(ValueError, match="min_height"):
        ValidationPanels(str(tmp_path), min_height=-1)


def test_write_demo_image_uses_the_last_panel(tmp_path):
    assert write_demo_image([], tmp_path / "none.png") is None
    empty = ValidationPanels(str(tmp_path / "p"))
    assert write_demo_image([object(), empty], tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
    cb = run_panels(tmp_path, fake_outputs())
    path = write_demo_image([object(), cb], tmp_path / "demo.png")
    assert path == tmp_path / "demo.png"
    assert cv2.imread(str(path)).shape[:2] == cb.last_panel.shape[:2]


def test_only_the_intentional_warnings_are_silenced():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_intentional_warnings()
        for message, category in (
            ("Found 57 module(s) in eval mode at the start of training. This may ...", UserWarning),
            ("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning),
            ("Found 3 NaN values in the depth", UserWarning),
            ("some module(s) in eval mode", UserWarning),
        ):
            warnings.warn(message, category, stacklevel=1)
    assert [str(w.message) for w in caught] == [
        "Found 3 NaN values in the depth",
        "some module(s) in eval mode",
    ]


def test_demo_config_turns_off_the_flops_summary():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="train")
    assert cfg.trainer.enable_model_summary is False  # "Total FLOPs: 0" is only noise on the demo


def test_smoke_run_prints_the_demo_image_and_no_warning_noise(tmp_path):
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        str(REPO / "train.py"),
        "experiment=smoke",
        f"paths.data_dir={tmp_path / 'data'}",
        f"hydra.run.dir={run}",
        "trainer.max_epochs=1",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    demo = run / "demo.png"
    assert f"demo:    {demo}" in proc.stdout
    img = cv2.imread(str(demo))
    assert img is not None and img.shape[0] >= 192
    results = json.loads((run / "results.json").read_text())
    assert "model" in results
    text = proc.stdout + proc.stderr
    assert "in eval mode at the start of training" not in text
    assert "LeafSpec" not in text
    assert "Tip:" not in text  # Lightning's product suggestion
    assert "Traceback" not in text

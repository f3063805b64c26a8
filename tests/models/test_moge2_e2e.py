"""PPD-MoGe2 end to end, as users run it: a tiny MoGe-2-format file trains (`experiment=smoke
encoder=moge2`), the checkpoint records and rebuilds its encoder, and both our checkpoint and a released
(ppd_moge.pth, moge2.pt) pair evaluate through `evaluate.py` and `predict`."""

import json
import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from model_helpers import randomize, save_moge2, tiny_dit

from ppd_lightning.official import CheckpointError
from ppd_lightning.weights.checkpoints import load_model_from_checkpoint

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "evaluation"))
from fake_benchmarks import build  # noqa: E402


def _run(script, args, cwd):
    proc = subprocess.run(
        [sys.executable, str(REPO / script), *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("moge2_run")
    # smoke's encoder is 32 wide with one block; the file is MoGe-2's format with a 24-wide read-out
    weights = save_moge2(tmp / "moge2.pt", embed_dim=32, depth=1, intermediate_layers=1, dim_out=24)
    run = tmp / "run"
    args = [
        "experiment=smoke",
        "encoder=moge2",
        f"model.encoder.weights={weights}",
        f"paths.data_dir={tmp / 'data'}",
        f"hydra.run.dir={run}",
        "trainer.max_steps=1",
        "trainer.max_epochs=1",
        "callbacks=none",
        "validate_after_fit=false",
    ]
    _run("train.py", args, tmp)
    return tmp, weights, run / "checkpoints" / "last.ckpt"


def test_moge2_training_records_and_rebuilds_its_encoder(trained, tmp_path):
    tmp, weights, ckpt_path = trained
    ckpt = torch.load(ckpt_path, weights_only=True)
    assert ckpt["global_step"] == 1
    spec = ckpt["semantic_encoder"]
    assert spec["kind"] == "moge2" and spec["weights"] == str(weights)
    assert spec["dim_out"] == 24 and spec["intermediate_layers"] == 1 and spec["embed_dim"] == 32
    assert ckpt["hyper_parameters"]["dit"]["semantic_dim"] == 24  # followed the encoder's width
    assert not any(k.startswith("encoder.") for k in ckpt["state_dict"])
    model = load_model_from_checkpoint(ckpt_path)
    assert model.encoder.kind == "moge2" and model.encoder.dim_out == 24
    # a different MoGe-2 file is refused, naming what differs
    other = save_moge2(tmp_path / "other.pt", embed_dim=32, depth=1, intermediate_layers=1, dim_out=16)
    with pytest.raises(CheckpointError, match="not the semantic encoder this checkpoint was trained with"):
        load_model_from_checkpoint(ckpt_path, encoder_weights=str(other))


def test_moge2_checkpoint_and_released_pair_evaluate(trained, tmp_path):
    tmp, weights, ckpt_path = trained
    build("hypersim", tmp_path / "hypersim")
    dit = randomize(tiny_dit(semantic_dim=24))
    torch.save({f"dit.{k}": v for k, v in dit.state_dict().items()}, tmp_path / "ppd_moge.pth")
    common = [
        "protocol=ppd",
        "benchmark=hypersim",
        f"benchmark.root={tmp_path / 'hypersim'}",
        "steps=2",
        "device=cpu",
        "num_workers=0",
        "progress=false",
    ]
    sources = {
        "ckpt": [f"ckpt={ckpt_path}"],
        "official": [
            f"official.dit={tmp_path / 'ppd_moge.pth'}",
            f"official.semantics={weights}",
            "infer_area=1536",
        ],
    }
    for name, source in sources.items():
        out = tmp_path / name
        _run("evaluate.py", [*common, *source, f"hydra.run.dir={out}"], tmp_path)
        res = json.loads((out / "metrics.json").read_text())["hypersim"]
        assert res["n_images"] == 2 and np.isfinite(res["abs_rel"]), name


def test_predict_with_the_released_moge2_pair(trained, tmp_path):
    from ppd_lightning.predict import main

    _, weights, ckpt_path = trained
    dit = randomize(tiny_dit(semantic_dim=24))
    torch.save({f"dit.{k}": v for k, v in dit.state_dict().items()}, tmp_path / "ppd_moge.pth")
    cv2.imwrite(
        str(tmp_path / "a.png"), np.random.default_rng(0).integers(0, 255, (30, 41, 3), dtype=np.uint8)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for source in (
            ["--dit", str(tmp_path / "ppd_moge.pth"), "--semantics", str(weights)],
            ["--ckpt", str(ckpt_path)],
        ):
            out = tmp_path / source[0].strip("-")
            args = [
                str(tmp_path / "a.png"),
                *source,
                "--out",
                str(out),
                "--steps",
                "1",
                "--area",
                "1024",
                "--device",
                "cpu",
            ]
            assert main(args) == 0
            assert np.load(out / "a_depth.npy").shape == (30, 41)

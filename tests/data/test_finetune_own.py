"""README "Fine-tune on your own data", end to end as written (subprocesses), at tiny sizes: a folder of
RGB-D pairs -> make_shards folder -> verify -> train.py experiment=finetune_own init_dit=<weights>."""

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
# what the test shrinks (the README's commands otherwise run as written); the sizes of experiment=smoke
TINY = [
    "model_size=tiny",
    "encoder=random_tiny",
    "trainer=cpu",
    "callbacks=none",
    "model.dit.hidden_size=32",
    "model.dit.depth=2",
    "model.dit.num_heads=2",
    "model.dit.patch_size=4",
    "model.dit.grad_checkpointing=false",
    "model.encoder.embed_dim=32",
    "model.encoder.depth=1",
    "model.encoder.num_heads=2",
    "model.val_steps=1",
    "model.scheduler.warmup_steps=1",
    "trainer.max_steps=2",
    "data.batch_size=2",
    "data.num_workers=0",
    "data.train_size=[32,48]",
    "data.val_size=[32,48]",
    "data.epoch_batches=2",
    "data.shuffle_buffer=4",
]


def run(args, cwd, timeout=300, check=True):
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{args[:4]} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc


def make_folder(root: Path, n: int = 8) -> None:
    """my_rgbd/rgb/<name>.jpg + my_rgbd/depth/<name>.png (uint16 millimetres): a slanted floor."""
    rng = np.random.default_rng(0)
    (root / "rgb").mkdir(parents=True)
    (root / "depth").mkdir()
    for i in range(n):
        rows = np.linspace(1.0, 4.0, 40, dtype=np.float32)[:, None] * np.ones((1, 60), np.float32)
        depth = rows * (1 + 0.1 * i)
        rgb = np.clip(depth[..., None] * 50 + rng.integers(0, 30, (40, 60, 3)), 0, 255).astype(np.uint8)
        assert cv2.imwrite(str(root / f"rgb/img{i:02d}.jpg"), rgb)
        assert cv2.imwrite(str(root / f"depth/img{i:02d}.png"), (depth * 1000).astype(np.uint16))


def tiny_release_weights(path: Path) -> dict:
    """A ppd.pth-style file ('dit.*' keys) for the tiny model the overrides build."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = compose(
            "train", overrides=["experiment=finetune_own", "data.root=unused", "init_dit=unused", *TINY]
        )
    torch.manual_seed(123)
    model = instantiate(cfg.model)
    sd = {f"dit.{k}": v.clone() for k, v in model.dit.state_dict().items()}
    torch.save(sd, path)
    return sd


def test_readme_finetune_on_own_data_runs_as_written(tmp_path):
    make_folder(tmp_path / "my_rgbd")
    shards = [sys.executable, "-m", "ppd_lightning.data.make_shards"]
    proc = run([*shards, "folder", "my_rgbd", "--out", "data/own", "--depth-scale", "0.001"], tmp_path)
    assert "train: 1 shards, 7 samples" in proc.stdout and "val: 1 shards, 1 samples" in proc.stdout
    proc = run([*shards, "verify", "data/own/train", "data/own/val"], tmp_path)
    assert "8 good samples, 0 bad, 0 flagged" in proc.stdout

    (tmp_path / "ckpts").mkdir()
    init = tiny_release_weights(tmp_path / "ckpts/ppd.pth")
    train = [sys.executable, str(REPO / "train.py"), "experiment=finetune_own", "data.root=data/own"]
    train += ["init_dit=ckpts/ppd.pth", "hydra.run.dir=outputs/own", *TINY]
    run(train, tmp_path)
    run_dir = tmp_path / "outputs/own"
    results = json.loads((run_dir / "results.json").read_text())
    assert results["run"]["global_step"] == 2
    assert 0 < results["model"]["abs_rel"] < 100  # validated on the held-out image, named "own"
    config = (run_dir / "config.yaml").read_text()
    assert "lr: 1.0e-05" in config and "name: own" in config  # the validation set, named in data only
    ckpt = torch.load(run_dir / "checkpoints/last.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["val_sets"] == ["own"]
    # started from the given weights: two steps at lr 1e-5 stay next to them (a fresh init would not)
    for key, value in init.items():
        trained = ckpt["state_dict"][key]
        assert torch.allclose(trained, value, atol=1e-3), key
    assert any(not torch.equal(ckpt["state_dict"][k], v) for k, v in init.items())  # and it trained


def test_finetune_own_errors_name_what_is_missing(tmp_path):
    import pytest
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from ppd_lightning.data.datamodule import OwnShardDataModule
    from ppd_lightning.errors import CheckpointError
    from ppd_lightning.weights.files import read_state_dict

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = compose("train", overrides=["experiment=finetune_own", *TINY])
        # the weights to start from are required: the placeholder is an error that names the key
        with pytest.raises(CheckpointError, match=r"init_dit=REQUIRED .*: no such checkpoint file"):
            read_state_dict(cfg.init_dit)
        cfg = compose("train", overrides=["experiment=finetune_own", f"data.root={tmp_path}/nowhere", *TINY])
    data = OmegaConf.to_container(cfg.data, resolve=True)
    assert data.pop("_target_") == "ppd_lightning.data.datamodule.OwnShardDataModule"
    dm = OwnShardDataModule(**data)  # builds without data (configs compose and instantiate anywhere)
    with pytest.raises(
        FileNotFoundError, match=r"no train shards in .*nowhere/train; make them with .*make_shards folder"
    ):
        dm.setup("fit")
    (tmp_path / "nowhere/train").mkdir(parents=True)
    (tmp_path / "nowhere/train/folder-000000.tar").write_bytes(b"")
    with pytest.raises(
        FileNotFoundError, match=r"no val shards in .*nowhere/val; \(write it with --val-fraction"
    ):
        dm.setup("fit")

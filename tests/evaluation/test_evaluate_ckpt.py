"""evaluate.py with one of our training checkpoints (ckpt=), EMA and raw weights."""

import warnings

import lightning as L
import numpy as np
import torch
from fake_benchmarks import build
from hydra import compose, initialize_config_dir
from test_evaluate import REPO
from torch.utils.data import DataLoader, IterableDataset

from ppd_lightning.evaluation.run import evaluate


class _Batches(IterableDataset):
    def __iter__(self):
        g = torch.Generator().manual_seed(0)
        for _ in range(3):
            image = torch.rand(2, 3, 32, 48, generator=g)
            depth = 1 + 5 * torch.rand(2, 1, 32, 48, generator=g)
            yield {
                "image": image,
                "depth": depth,
                "mask": torch.ones_like(depth, dtype=torch.bool),
                "dataset": ["t"] * 2,
            }


def _checkpoint(tmp_path):
    from ppd_lightning.training.module import PPDLightningModule

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = PPDLightningModule(
            dit=dict(hidden_size=32, depth=2, num_heads=2, patch_size=4, semantic_dim=32),
            encoder=dict(allow_random=True, embed_dim=32, depth=1, num_heads=2, img_size=56),
            ema_decay=0.5,
            val_sets=["t"],
        )
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, DataLoader(_Batches(), batch_size=None))
    path = tmp_path / "run.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_evaluate_our_checkpoint_with_and_without_ema(tmp_path):
    build("hypersim", tmp_path / "hypersim")
    ckpt = _checkpoint(tmp_path)
    results = {}
    for use_ema in (True, False):
        out = tmp_path / f"out_{use_ema}"
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            cfg = compose(
                "evaluate",
                overrides=[
                    "protocol=ppd",
                    "benchmark=hypersim",
                    f"benchmark.root={tmp_path / 'hypersim'}",
                    f"ckpt={ckpt}",
                    f"use_ema={str(use_ema).lower()}",
                    "steps=2",
                    "infer_area=1536",
                    "device=cpu",
                    "num_workers=0",
                    "progress=false",
                    "save_predictions=true",
                    f"output_dir={out}",
                ],
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            results[use_ema] = evaluate(cfg)["hypersim"]
        assert results[use_ema]["n_images"] == 2 and np.isfinite(results[use_ema]["abs_rel"])
    preds = [
        sorted((tmp_path / f"out_{e}" / "hypersim" / "predictions").rglob("*.npy")) for e in (True, False)
    ]
    assert len(preds[0]) == 2
    assert not np.allclose(np.load(preds[0][0]), np.load(preds[1][0]))  # EMA and raw weights differ

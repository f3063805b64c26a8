"""Conventions written once on the training side: the module's target shift (sampling and the baseline) and
its validation names (the datamodule's val_sources names)."""

import warnings

import lightning as L
import pytest
import torch

from ppd_lightning.data.datamodule import DepthShardDataModule
from ppd_lightning.data.writer import ensure_synthetic_shards
from ppd_lightning.flow import TARGET_SHIFT

ENC = dict(allow_random=True, random_seed=0, embed_dim=32, depth=1, num_heads=2, img_size=56)
DIT = dict(hidden_size=32, depth=2, num_heads=2, patch_size=4, semantic_dim=32, variant="cascade")


def make_module(**kw):
    from ppd_lightning.training.module import PPDLightningModule

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return PPDLightningModule(dit=dict(DIT), encoder=dict(ENC), ema_decay=None, val_steps=2, **kw)


@pytest.mark.parametrize("shift", [TARGET_SHIFT, -0.2])
def test_module_samples_and_baselines_with_its_target_shift(shift):
    module = make_module(target={"shift": shift})
    assert module.target.shift == shift
    assert module.inference_model().shift == shift
    from ppd_lightning.training.callbacks import MeanDepthBaseline

    mean = torch.linspace(-1.0, 0.5, 12).view(1, 3, 4)  # a mean training target map
    callback = MeanDepthBaseline()
    callback.load_state_dict({"sum": mean * 4, "count": 4})
    baseline = callback.prediction(torch.zeros(2, 1, 3, 4), module.target.shift)
    torch.testing.assert_close(baseline, (mean - shift).expand(2, 1, 3, 4))


def test_validation_names_come_from_the_datamodule(tmp_path):
    """The metric names are data.val_sources[].name (a source's name is its shards' dataset name):
    a module built with other names (or none) validates under the datamodule's."""
    out = tmp_path / "val"
    ensure_synthetic_shards(
        out, num_samples=4, height=32, width=48, seed=1, samples_per_shard=4, progress=False
    )
    dm = DepthShardDataModule(
        train_sources=[],
        val_sources=[{"urls": str(out), "name": "synthetic"}],
        batch_size=2,
        num_workers=0,
        train_size=[32, 48],
        val_size=[32, 48],
        epoch_batches=1,
    )
    module = make_module(val_sets=["stale"])
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    metrics = trainer.validate(module, datamodule=dm, verbose=False)[0]
    assert dm.val_names == ["synthetic"] and module.val_sets == ["synthetic"]
    assert module.hparams["val_sets"] == ["synthetic"]  # what checkpoints record
    assert set(module.val_metrics) == {"synthetic"} and 0.0 <= metrics["val/synthetic/delta1"] <= 1.0
    assert make_module().val_sets == ["synthetic"]  # none given and no datamodule: the default


def test_explicit_val_sets_still_reject_unknown_sources():
    module = make_module(val_sets=["toy"])
    assert module.val_sets == ["toy"] and set(module.val_metrics) == {"toy"}
    batch = {
        "image": torch.rand(1, 3, 32, 48),
        "depth": torch.ones(1, 1, 32, 48) * 3,
        "mask": torch.ones(1, 1, 32, 48, dtype=torch.bool),
        "dataset": ["other"],
    }
    module._val_model = module.inference_model()
    with pytest.raises(KeyError, match="'other' is not in model.val_sets"):
        module.validation_step(batch, 0)

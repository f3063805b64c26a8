"""Issue 15.8 and 15.10: what a diverging run logs and says, and the corrupt-sample counter."""

import math
import warnings

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from test_module import Batches, fit, make_module, toy_batch
from torch.utils.data import DataLoader

from ppd_lightning.errors import PPDError


def _logged_losses(log_dir):
    import csv

    with open(next(log_dir.rglob("metrics.csv"))) as f:
        rows = list(csv.DictReader(f))
    return [float(r["train/loss"]) for r in rows if r.get("train/loss")]


def test_a_skipped_step_logs_the_real_non_finite_loss_not_zero(tmp_path):
    m = make_module()
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=CSVLogger(tmp_path, name="run"),
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(m, DataLoader(Batches([toy_batch(seed=0), toy_batch(seed=1, nan=True)]), batch_size=None))
    assert m.skipped_steps == 1
    losses = _logged_losses(tmp_path)
    assert len(losses) == 2
    assert math.isfinite(losses[0]) and losses[0] > 0
    assert math.isnan(losses[1])  # was logged as -0.0, hiding the divergence


def test_validation_on_non_finite_predictions_is_a_clear_error():
    m = make_module()
    with torch.no_grad():
        m.ema_dit.final_layer.linear.bias.fill_(float("nan"))  # validation samples with the EMA weights
    with pytest.raises(PPDError, match=r"validation: the model predicted non-finite depth for 2 of 2 images"):
        fit(m, [toy_batch(seed=0)], val=[toy_batch(seed=9)])


def test_corrupt_samples_in_validation_batches_are_counted_too():
    m = make_module()
    val = toy_batch(seed=9)
    val["n_corrupt"] = torch.tensor([0, 2])
    fit(m, [toy_batch(seed=i) for i in range(2)], val=[val])
    # 1 per training batch (toy_batch) + the 2 skipped in the validation stream, as the loader's warnings say
    assert m.corrupt_samples == 2 + 2


@pytest.mark.parametrize("content", [b"", b"PK\x05\x06" + bytes(18), "foreign"])
def test_resuming_from_a_bad_checkpoint_is_a_checkpoint_error(tmp_path, content):
    # issue 15.9: trainer.fit(ckpt_path=...) raised a bare EOFError (empty file), torch's "central
    # directory" text (a random zip) or KeyError 'pytorch-lightning_version' (another program's checkpoint)
    from ppd_lightning.errors import CheckpointError
    from ppd_lightning.training.checkpoint import RESUMABLE_KEYS, AtomicCheckpointIO

    path = tmp_path / "bad.ckpt"
    if content == "foreign":
        torch.save({"model": {"w": torch.zeros(2)}, "epoch": 3}, path)
    else:
        path.write_bytes(content)
    trainer = L.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        plugins=[AtomicCheckpointIO(required_keys=RESUMABLE_KEYS)],  # as train.py builds it
        default_root_dir=tmp_path,
    )
    loader = DataLoader(Batches([toy_batch()]), batch_size=None)
    with pytest.raises(CheckpointError) as e, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(make_module(), loader, ckpt_path=path, weights_only=True)
    assert str(e.value).startswith(f"{path}: ") and "\n" not in str(e.value)

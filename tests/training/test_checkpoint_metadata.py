"""Our checkpoints record what they were trained with (crop size, variant, DiT sizes), and readers use
that record, not the shape of a buffer or the presence of one."""

import logging
import warnings

import pytest
import torch
from test_module import fit, make_module, toy_batch

from ppd_lightning.errors import CheckpointError
from ppd_lightning.models.ppd import TRAIN_AREA
from ppd_lightning.weights.checkpoints import (
    FORMAT,
    METADATA_KEY,
    dit_state,
    is_training_checkpoint,
    load_model_from_checkpoint,
    training_area,
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    m = make_module()
    trainer = fit(m, [toy_batch(H=32, W=48, seed=i) for i in range(2)])
    path = tmp_path_factory.mktemp("ckpt") / "run.ckpt"
    trainer.save_checkpoint(path)
    return m, path


def _load(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_model_from_checkpoint(path)


def test_checkpoint_records_train_size_variant_and_dit(trained):
    m, path = trained
    ckpt = torch.load(path, weights_only=True)
    meta = ckpt[METADATA_KEY]
    assert meta["format"] == FORMAT == 1
    assert meta["train_size"] == [32, 48] and meta["variant"] == "cascade"
    assert meta["dit"] == dict(m.hparams["dit"])
    assert training_area(ckpt) == 32 * 48 and is_training_checkpoint(ckpt)
    # the recorded size survives a resume, even before the resumed run sees a batch
    resumed = make_module()
    resumed.on_load_checkpoint(ckpt)
    assert resumed.train_size == (32, 48)


def test_training_area_is_read_from_the_record_not_the_baseline_buffer(trained, tmp_path):
    _, path = trained
    ckpt = torch.load(path, weights_only=True)
    # a baseline map of another shape (or none at all) says nothing about the training crop
    ckpt["state_dict"]["mean_target_sum"] = torch.zeros(1, 8, 8)
    ckpt["state_dict"].pop("mean_target_count", None)  # (the baseline is a callback now: absent)
    torch.save(ckpt, tmp_path / "x.ckpt")
    assert _load(tmp_path / "x.ckpt").area == 32 * 48
    # init_dit= and export recognise it as ours by its record, not by 'mean_target_count'
    sd, _ = dit_state(tmp_path / "x.ckpt")
    ema = {k[len("ema_dit.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("ema_dit.")}
    assert sd.keys() == ema.keys() and all(torch.equal(sd[k], ema[k]) for k in sd)
    raw, _ = dit_state(tmp_path / "x.ckpt", use_ema=False)
    assert all(torch.equal(raw[k], ckpt["state_dict"][f"dit.{k}"]) for k in raw)


def test_checkpoint_without_a_crop_size_falls_back_to_the_released_area(trained, tmp_path, caplog):
    _, path = trained
    ckpt = torch.load(path, weights_only=True)
    ckpt[METADATA_KEY]["train_size"] = None  # saved before any training batch
    torch.save(ckpt, tmp_path / "early.ckpt")
    with caplog.at_level(logging.WARNING, logger="ppd_lightning.weights.checkpoints"):
        model = _load(tmp_path / "early.ckpt")
    assert model.area == TRAIN_AREA
    assert "records no training crop size" in caplog.text and str(tmp_path / "early.ckpt") in caplog.text


def test_checkpoint_without_the_record_is_not_ours(trained, tmp_path):
    _, path = trained
    ckpt = torch.load(path, weights_only=True)
    del ckpt[METADATA_KEY]
    torch.save(ckpt, tmp_path / "other.ckpt")
    assert not is_training_checkpoint(ckpt)
    with pytest.raises(CheckpointError, match=r"other.ckpt: not a ppd-lightning training checkpoint"):
        _load(tmp_path / "other.ckpt")


@pytest.mark.parametrize(
    "meta, match",
    [
        ({"format": 1, "train_size": [32]}, r"'ppd_lightning.train_size' must be \[H, W\]"),
        ({"format": 1, "train_size": [0, 48]}, r"'ppd_lightning.train_size' must be \[H, W\]"),
        ({"format": 99, "train_size": [32, 48]}, r"format' is 99; this ppd-lightning reads format 1 \(the file is newer"),
    ],
)
def test_bad_metadata_is_one_error_naming_the_file_and_key(trained, tmp_path, meta, match):
    _, path = trained
    ckpt = torch.load(path, weights_only=True)
    ckpt[METADATA_KEY] = meta
    bad = tmp_path / "bad.ckpt"
    torch.save(ckpt, bad)
    with pytest.raises(CheckpointError, match=match) as e:
        _load(bad)
    assert str(e.value).startswith(str(bad))
    with pytest.raises(CheckpointError, match=match):
        dit_state(bad)


def test_a_foreign_lightning_checkpoint_is_not_taken_for_ours(tmp_path):
    # a state dict wrapped like Lightning's, without our record or hyper-parameters: plain DiT weights
    foreign = {"state_dict": {"dit.w": torch.ones(2)}, "epoch": 1}
    assert not is_training_checkpoint(foreign)
    torch.save(foreign, tmp_path / "f.ckpt")
    sd, name = dit_state(tmp_path / "f.ckpt")
    assert list(sd) == ["w"] and name == str(tmp_path / "f.ckpt")

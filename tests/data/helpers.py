"""Shared helpers for the data tests (imported as a plain module from this directory)."""

from __future__ import annotations

from ppd_lightning.data.datamodule import DepthShardDataModule
from ppd_lightning.data.verify import verify_shards
from ppd_lightning.data.writer import write_shards


def convert_and_verify(source, root, out, **kw):
    manifest = write_shards(source, out, root=root, samples_per_shard=2, progress=False, **kw)
    report = verify_shards(manifest["pattern"], progress=False)
    assert report["bad"] == [], report["bad"]
    return manifest, report


def val_batches(urls, size, name="src", num_workers=0, batch_size=2, **kw):
    dm = DepthShardDataModule(
        train_sources=[{"urls": urls, "weight": 1.0, "name": name}],
        val_sources=[{"urls": urls, "name": name}],
        batch_size=batch_size,
        num_workers=num_workers,
        train_size=list(size),
        val_size=list(size),
        epoch_batches=2,
        shuffle_buffer=4,
        return_keys=True,
        **kw,
    )
    dm.setup("fit")
    return dm, list(dm.val_dataloader())

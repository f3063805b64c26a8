import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ppd_lightning.data.codec import encode_sample
from ppd_lightning.data.datamodule import DepthShardDataModule, NoReadableSamplesError
from ppd_lightning.data.writer import ensure_synthetic_shards
from ppd_lightning.data.shards import AtomicShardWriter

sys.path.insert(0, str(Path(__file__).parent))
from helpers import val_batches  # noqa: E402

SIZE = (24, 32)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn")
    paths = ensure_synthetic_shards(
        out, num_samples=16, height=30, width=40, seed=0, samples_per_shard=4, progress=False
    )
    return str(out / "synthetic-{000000..000003}.tar"), paths


def _dm(urls, **kw):
    args = dict(
        train_sources=[{"urls": urls, "weight": 1.0}],
        val_sources=[{"urls": urls}],
        batch_size=3,
        num_workers=0,
        train_size=list(SIZE),
        val_size=list(SIZE),
        epoch_batches=4,
        shuffle_buffer=8,
        return_keys=True,
    )
    args.update(kw)
    dm = DepthShardDataModule(**args)
    dm.setup("fit")
    return dm


def test_batch_contract(shards):
    dm = _dm(shards[0])
    batches = list(dm.train_dataloader())
    assert len(batches) == 4 == len(dm.train_dataloader())
    b = batches[0]
    assert b["image"].shape == (3, 3, *SIZE) and b["image"].dtype == torch.float32
    assert b["image"].min() >= 0 and b["image"].max() <= 1
    assert b["depth"].shape == (3, 1, *SIZE) and b["depth"].dtype == torch.float32
    assert (
        b["mask"].dtype == torch.bool and b["sky"].dtype == torch.bool and b["mask"].shape == b["depth"].shape
    )
    assert not (b["mask"] & b["sky"]).any()
    assert (b["depth"][~b["mask"]] == 0).all() and (b["depth"][b["mask"]] > 0).all()
    assert b["sky"].any() and b["dataset"] == ["synthetic"] * 3
    assert b["n_corrupt"].dtype == torch.int64 and b["n_corrupt"].shape == (3,) and b["n_corrupt"].sum() == 0


def test_epochs_differ_and_val_is_deterministic(shards):
    dm = _dm(shards[0])
    loader = dm.train_dataloader()
    e1 = [k for b in loader for k in b["key"]]
    e2 = [k for b in loader for k in b["key"]]
    assert len(e1) == len(e2) == 12 and e1 != e2
    v1 = [k for b in dm.val_dataloader() for k in b["key"]]
    v2 = [k for b in dm.val_dataloader() for k in b["key"]]
    assert v1 == v2 and len(v1) == len(set(v1)) == 16


@pytest.mark.parametrize("num_workers, world", [(2, 1), (0, 3)])
def test_val_each_sample_once_even_with_fewer_shards_than_readers(shards, num_workers, world):
    """3 readers over 4 shards (shard split) and 2*3=6 readers over 2 shards (sample split)."""
    urls = shards[0] if world == 1 else [shards[1][0], shards[1][1]]
    keys = []
    for rank in range(world):
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world))
        try:
            dm = _dm(urls, num_workers=num_workers)
            keys += [k for b in dm.val_dataloader() for k in b["key"]]
        finally:
            del os.environ["RANK"], os.environ["WORLD_SIZE"]
    assert len(keys) == len(set(keys)) == (16 if world == 1 else 8)


def test_mixture_follows_weights(tmp_path, shards):
    other = tmp_path / "other"
    ensure_synthetic_shards(other, 8, 30, 40, seed=5, samples_per_shard=4, progress=False)
    dm = _dm(
        shards[0],
        train_sources=[
            {"urls": shards[0], "weight": 0.8, "name": "a"},
            {"urls": str(other), "weight": 0.2, "name": "b"},
        ],
        epoch_batches=40,
        batch_size=4,
        shuffle_buffer=0,
    )
    keys = [k for b in dm.train_dataloader() for k in b["key"]]
    frac_b = np.mean(["other" in k for k in keys])
    assert 0.1 < frac_b < 0.3


def _corrupt_shards(tmp, good_shard):
    """Shard A: a good shard truncated mid-way. Shard B: 2 good samples, a bad PNG, a wrong-shape depth."""
    data = Path(good_shard).read_bytes()
    (tmp / "bad-000000.tar").write_bytes(data[: len(data) // 2])
    rng = np.random.default_rng(0)
    meta = {"dataset": "bad", "fx": 1.0, "fy": 1.0, "cx": 0.0, "cy": 0.0}
    rgb = rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)
    depth = np.full((30, 40), 5.0, np.float32)
    with AtomicShardWriter(tmp / "bad-000001.tar") as w:
        w.write(encode_sample("good0", rgb, depth, meta))
        broken = encode_sample("badpng", rgb, depth, meta)
        broken["rgb.png"] = broken["rgb.png"][:40]
        w.write(broken)
        w.write(encode_sample("good1", rgb, depth, meta))
        badshape = encode_sample("badshape", rgb, depth, meta)  # encode refuses a wrong shape, so
        buf = io.BytesIO()  # swap in a foreign depth.npy of the wrong shape afterwards
        np.save(buf, np.ones((30, 41), np.float32))
        w.write({**badshape, "depth.npy": buf.getvalue()})
        w.commit()
    return str(tmp / "bad-{000000..000001}.tar")


def test_corrupt_members_skipped_and_counted(tmp_path, shards, caplog):
    with pytest.raises(Exception, match="rgb is"):
        encode_sample(
            "x",
            np.zeros((2, 2, 3), np.uint8),
            np.ones((2, 3)),
            {"dataset": 1, "fx": 1, "fy": 1, "cx": 1, "cy": 1},
        )
    urls = _corrupt_shards(tmp_path, shards[1][0])
    for workers in (0, 2):
        dm, batches = val_batches(urls, SIZE, num_workers=workers)
        keys = sorted(k.rsplit("/", 1)[1] for b in batches for k in b["key"])
        assert "good0" in keys and "good1" in keys and "badpng" not in keys
        n_good_a = len(keys) - 2
        assert 0 < n_good_a < 4  # the truncated shard yields what precedes the damage
        assert sum(int(b["n_corrupt"].sum()) for b in batches) == 3  # truncation + bad png + bad shape
    # the training stream skips and counts too (PPDLightningModule.corrupt_samples sums n_corrupt)
    dm = _dm(urls, epoch_batches=6)
    total = sum(int(b["n_corrupt"].sum()) for b in dm.train_dataloader())
    assert total > 0
    assert "skipping" in caplog.text


def test_wrong_depth_shape_written_by_foreign_tool_is_counted(tmp_path):
    import io
    import tarfile

    meta = json.dumps({"dataset": "x", "fx": 1, "fy": 1, "cx": 0, "cy": 0}).encode()
    good = encode_sample("ok", np.zeros((30, 40, 3), np.uint8), np.ones((30, 40)), json.loads(meta))
    buf = io.BytesIO()
    np.save(buf, np.ones((30, 41), np.float32))
    bad = {**good, "__key__": "wrong", "depth.npy": buf.getvalue()}
    with tarfile.open(tmp_path / "w-000000.tar", "w") as tar:
        for s in (good, bad):
            for m, data in s.items():
                if not m.startswith("__"):
                    info = tarfile.TarInfo(f"{s['__key__']}.{m}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    _, batches = val_batches(str(tmp_path / "w-000000.tar"), SIZE)
    assert [k.rsplit("/", 1)[1] for b in batches for k in b["key"]] == ["ok"]
    assert sum(int(b["n_corrupt"].sum()) for b in batches) == 1


def test_source_without_readable_samples_is_an_error(tmp_path, shards):
    data = Path(shards[1][0]).read_bytes()
    (tmp_path / "t-000000.tar").write_bytes(data[:700])  # nothing complete survives
    dm = _dm(str(tmp_path / "t-000000.tar"))
    with pytest.raises(NoReadableSamplesError, match="holds a readable sample"):
        next(iter(dm.train_dataloader()))
    with pytest.raises(FileNotFoundError, match="do not exist"):
        _dm(str(tmp_path / "missing-{000000..000001}.tar"))


def _ddp_worker(rank, world, init_file, urls, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        dm = _dm(urls, num_workers=0, epoch_batches=3)  # setup() reads rank/world from torch.distributed
        train = [k for b in dm.train_dataloader() for k in b["key"]]
        val = [k for b in dm.val_dataloader() for k in b["key"]]
        Path(out_dir, f"{rank}.json").write_text(json.dumps({"rank": dm.rank, "train": train, "val": val}))
    finally:
        dist.destroy_process_group()


def test_two_process_ddp_disjoint_shards_equal_batches(tmp_path, shards):
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), shards[0], str(tmp_path)), nprocs=2, join=True)
    r = [json.loads((tmp_path / f"{i}.json").read_text()) for i in range(2)]
    assert [x["rank"] for x in r] == [0, 1]
    assert len(r[0]["train"]) == len(r[1]["train"]) == 9  # 3 batches of 3 on each rank

    def shard_set(keys):
        return {k.rsplit("/", 1)[0] for k in keys}

    assert not shard_set(r[0]["train"]) & shard_set(r[1]["train"])
    assert not shard_set(r[0]["val"]) & shard_set(r[1]["val"])
    all_val = r[0]["val"] + r[1]["val"]
    assert len(all_val) == len(set(all_val)) == 16


@pytest.mark.parametrize("num_workers", [0, 2])
def test_train_stream_resumes_at_any_batch_of_an_epoch(shards, num_workers):
    """A datamodule restored at (epoch, batches consumed) yields exactly the rest of the uninterrupted
    stream, whichever worker produced the next batch (the DataLoader interleaves workers round-robin)."""

    def keys(loader):
        return [tuple(b["key"]) for b in loader]

    dm = _dm(shards[0], num_workers=num_workers)
    passes = [keys(dm.train_dataloader()) for _ in range(2)]  # epochs 0 and 1
    assert len(passes[0]) == 4 and passes[0] != passes[1]
    assert dm.state_dict() == {"data_epoch": 2, "data_batches": 0}
    for done in range(5):
        resumed = _dm(shards[0], num_workers=num_workers)
        resumed.load_state_dict({"data_epoch": 0, "data_batches": done})
        got = keys(resumed.train_dataloader())
        assert got == (passes[0][done:] if done < 4 else passes[1]), done
        assert resumed.state_dict() == {"data_epoch": 1 if done < 4 else 2, "data_batches": 0}


def test_train_stream_position_counts_what_was_handed_out(shards):
    dm = _dm(shards[0])
    it = iter(dm.train_dataloader())
    next(it), next(it)
    assert dm.state_dict() == {"data_epoch": 0, "data_batches": 2}
    # a new iterator continues the unfinished pass (Lightning may recreate one within an epoch)
    assert len(list(dm.train_dataloader())) == 2
    assert dm.state_dict() == {"data_epoch": 1, "data_batches": 0}


@pytest.mark.parametrize(
    "state",
    [{}, {"data_epoch": 0}, {"data_epoch": -1, "data_batches": 0}, {"data_epoch": 0, "data_batches": 1.5}],
)
def test_bad_datamodule_state_is_one_clear_error(shards, state):
    dm = _dm(shards[0])
    with pytest.raises(
        ValueError, match="DepthShardDataModule state: 'data_(epoch|batches)' must be an int >= 0"
    ):
        dm.load_state_dict(state)

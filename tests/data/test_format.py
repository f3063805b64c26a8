import io
import json
import os
import tarfile

import numpy as np
import pytest

from ppd_lightning.data.codec import SampleError, decode_sample, encode_sample
from ppd_lightning.data.shards import (
    AtomicShardWriter,
    ShardError,
    expand_shard_urls,
    iter_tar_samples,
    stale_temporaries,
    write_shard_atomic,
)

META = {"dataset": "t", "fx": 10.0, "fy": 10.0, "cx": 7.5, "cy": 5.5}


def _arrays(h=12, w=16, seed=0):
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    depth = rng.uniform(1, 80, (h, w)).astype(np.float32)
    return rgb, depth


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_roundtrip_png_exact_rgb_and_depth_precision(dtype):
    rgb, depth = _arrays()
    depth[0, 0] = np.nan
    depth[0, 1] = -1.0
    sky = np.zeros(depth.shape, bool)
    sky[1, :] = True
    mask = np.ones(depth.shape, bool)
    mask[2, 3] = False
    members = encode_sample("k-1", rgb, depth, META, mask=mask, sky=sky, depth_dtype=dtype)
    s = decode_sample(members)
    np.testing.assert_array_equal(s.rgb, rgb)
    expect_valid = np.isfinite(depth) & (depth > 0) & ~sky & mask
    np.testing.assert_array_equal(s.mask, expect_valid)
    np.testing.assert_array_equal(s.sky, sky)
    assert (s.depth[~expect_valid] == 0).all()
    rtol = 1e-3 if dtype == "float16" else 0
    np.testing.assert_allclose(s.depth[expect_valid], depth[expect_valid], rtol=rtol)
    assert s.meta["has_sky"] and s.meta["depth_dtype"] == dtype


def test_jpg_is_lossy_but_close_and_passthrough_bytes_kept():
    rgb, depth = _arrays()
    rgb = np.full_like(rgb, 120)
    s = decode_sample(encode_sample("k", rgb, depth, META, rgb_format="jpg"))
    assert np.abs(s.rgb.astype(int) - 120).max() <= 2
    members = encode_sample("k", rgb, depth, META, rgb_format="jpg", rgb_bytes=b"raw-jpeg")
    assert members["rgb.jpg"] == b"raw-jpeg"


def test_mask_png_only_written_when_informative():
    rgb, depth = _arrays()
    assert "mask.png" not in encode_sample("k", rgb, depth, META, mask=np.ones(depth.shape, bool))


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda m: m.pop("depth.npy"), "missing member depth.npy"),
        (lambda m: m.update({"rgb.png": b"not a png"}), "rgb.png is not a decodable image"),
        (lambda m: m.update({"meta.json": b"{"}), "not valid JSON"),
        (
            lambda m: m.update({"meta.json": json.dumps({"dataset": "x"}).encode()}),
            "must be an object with fields",
        ),
    ],
)
def test_decode_errors_name_key_and_member(mutate, message):
    rgb, depth = _arrays()
    members = encode_sample("key7", rgb, depth, META)
    mutate(members)
    with pytest.raises(SampleError, match=message) as err:
        decode_sample(members)
    assert "key7" in str(err.value)


def test_wrong_depth_shape_rejected():
    rgb, depth = _arrays()
    members = encode_sample("k", rgb, depth, META)
    buf = io.BytesIO()
    np.save(buf, np.ones((3, 4), np.float32))
    members["depth.npy"] = buf.getvalue()
    with pytest.raises(SampleError, match=r"depth.npy is \(3, 4\) but rgb.png is \(12, 16\)"):
        decode_sample(members)


def test_encode_rejects_bad_key_and_meta():
    rgb, depth = _arrays()
    with pytest.raises(SampleError, match="sample key"):
        encode_sample("a.b", rgb, depth, META)
    with pytest.raises(SampleError, match="lacks required fields"):
        encode_sample("k", rgb, depth, {"dataset": "x"})


def test_tar_is_plain_posix_and_truncation_detected(tmp_path):
    rgb, depth = _arrays(64, 64)  # random pixels: members much larger than the tar padding
    samples = [encode_sample(f"s{i}", rgb, depth, META) for i in range(3)]
    path = tmp_path / "a.tar"
    write_shard_atomic(path, samples)
    with tarfile.open(path) as tar:
        names = tar.getnames()
    assert names[:4] == ["s0.rgb.png", "s0.depth.npy", "s0.meta.json", "s1.rgb.png"]
    with open(path, "rb") as fh:
        assert [s["__key__"] for s in iter_tar_samples(fh, str(path))] == ["s0", "s1", "s2"]
    data = path.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: int(len(data) * 0.5)])
    got = []
    with pytest.raises(ShardError, match="cut.tar"), open(cut, "rb") as fh:
        for s in iter_tar_samples(fh, str(cut)):
            got.append(s["__key__"])
    assert got and got[0] == "s0" and len(got) < 3


def test_atomic_writer_leaves_nothing_on_error(tmp_path):
    path = tmp_path / "x.tar"
    with pytest.raises(RuntimeError), AtomicShardWriter(path) as w:
        w.write({"__key__": "a", "x.txt": b"1"})
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def _sample(key: str, payload: bytes) -> dict:
    return {"__key__": key, "x.txt": payload}


def test_atomic_writer_streams_to_a_temporary_beside_the_shard_and_renames_on_commit(tmp_path):
    path = tmp_path / "d" / "s-000000.tar"  # parent created
    with AtomicShardWriter(path) as w:
        w.write(_sample("a", b"1"))
        assert w.tmp.parent == path.parent and w.tmp != path and w.tmp.is_file()
        assert not path.exists()  # nothing under the final name before commit
        assert w.commit() == path.stat().st_size
        with pytest.raises(ValueError, match="already committed"):
            w.write(_sample("b", b"2"))
    assert w.count == 1 and not w.tmp.exists()
    assert os.listdir(path.parent) == ["s-000000.tar"]
    with open(path, "rb") as fh:
        assert [s["x.txt"] for s in iter_tar_samples(fh, str(path))] == [b"1"]


def test_atomic_writer_abort_and_early_exit_keep_the_old_shard(tmp_path):
    path = tmp_path / "s.tar"
    write_shard_atomic(path, [_sample("old", b"0")])
    old = path.read_bytes()
    w = AtomicShardWriter(path)
    w.write(_sample("new", b"1"))
    w.abort()
    w.abort()  # idempotent
    with pytest.raises(ValueError, match="aborted"):
        w.commit()
    with AtomicShardWriter(path) as w2:  # left without commit: dropped like an error
        w2.write(_sample("new", b"1"))
    assert path.read_bytes() == old and os.listdir(tmp_path) == ["s.tar"]


def test_atomic_writer_failed_rename_keeps_the_old_shard_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "s.tar"
    write_shard_atomic(path, [_sample("old", b"0")])
    old = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError("rename refused")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="rename refused"):
        write_shard_atomic(path, [_sample("new", b"1")])
    assert path.read_bytes() == old and os.listdir(tmp_path) == ["s.tar"]


def test_temporaries_of_a_killed_writer_are_recognised_as_stale(tmp_path):
    w = AtomicShardWriter(tmp_path / "src-000003.tar")  # never committed nor aborted: a killed run
    w.write(_sample("a", b"1"))
    w._fh.flush()
    (tmp_path / "src-000000.tar").write_bytes(b"")  # a shard, not a temporary
    (tmp_path / ".other-000000.tar.1.ab.tmp").write_bytes(b"")  # another source's
    assert stale_temporaries(tmp_path, "src-*.tar") == [w.tmp]
    w.abort()
    assert stale_temporaries(tmp_path, "src-*.tar") == []
    (tmp_path / ".manifest.json.77.0c0d.tmp").write_bytes(b"{")
    assert stale_temporaries(tmp_path, "manifest.json") == [tmp_path / ".manifest.json.77.0c0d.tmp"]


def test_expand_shard_urls(tmp_path):
    for i in range(3):
        (tmp_path / f"d-{i:06d}.tar").write_bytes(b"")
    assert len(expand_shard_urls(str(tmp_path / "d-{000000..000002}.tar"))) == 3
    assert expand_shard_urls(str(tmp_path))[0].endswith("d-000000.tar")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="expands to no shards"):
        expand_shard_urls(str(tmp_path / "empty"))


def test_stock_webdataset_reads_our_shards(tmp_path):
    """The format is a contract: plain webdataset (no ppd_lightning code) decodes every member."""
    import webdataset as wds

    from ppd_lightning.data.writer import write_shards

    manifest = write_shards(
        "synthetic",
        tmp_path,
        options={"num_samples": 3, "height": 24, "width": 32, "seed": 0},
        samples_per_shard=2,
        progress=False,
    )
    samples = list(wds.WebDataset(manifest["pattern"], shardshuffle=False).decode("rgb8"))
    assert len(samples) == 3
    for s in samples:
        assert s["rgb.png"].shape == (24, 32, 3)
        depth = np.load(io.BytesIO(s["depth.npy"])) if isinstance(s["depth.npy"], bytes) else s["depth.npy"]
        assert depth.shape == (24, 32) and np.isfinite(depth).all()
        meta = s["meta.json"] if isinstance(s["meta.json"], dict) else json.loads(s["meta.json"])
        assert meta["dataset"] == "synthetic" and {"fx", "fy", "cx", "cy"} <= set(meta)

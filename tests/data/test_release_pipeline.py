"""The release's data pipeline (plain resize; UnrealStereo4K resize + random crop; Hypersim 0.1-65 m) and
the augmenting pipeline kept as an option; which experiment uses which."""

import io
import json
import sys
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from ppd_lightning.data.codec import DepthSample, encode_sample
from ppd_lightning.data.datamodule import DepthShardDataModule
from ppd_lightning.data.transforms import CropResize, ReleaseResize, restrict_depth_range

sys.path.insert(0, str(Path(__file__).parent))
from helpers import val_batches  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def _sample(h=30, w=40, dataset="vkitti2", seed=0):
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    depth = (
        np.arange(h * w, dtype=np.float32).reshape(h, w) % 53
    ) + 1.0  # traceable values, all inside 0.1-65 m
    mask = np.ones((h, w), bool)
    sky = np.zeros((h, w), bool)
    sky[:3] = True
    mask[:3] = False
    depth[:3] = 0
    mask[5, 5] = False
    depth[5, 5] = 0
    return DepthSample(rgb=rgb, depth=depth, mask=mask, sky=sky, meta={"dataset": dataset}, key="k")


def test_release_resize_is_a_plain_resize_without_flips_or_jitter():
    s = _sample()
    tf = ReleaseResize((16, 24))
    outs = [tf(s, np.random.default_rng(i)) for i in range(4)]
    for out in outs[1:]:  # no randomness at all
        for k in ("image", "depth", "mask", "sky"):
            assert np.array_equal(out[k], outs[0][k])
    out = outs[0]
    assert out["image"].shape == (16, 24, 3) and out["depth"].shape == (16, 24)
    np.testing.assert_array_equal(out["image"], cv2.resize(s.rgb, (24, 16), interpolation=cv2.INTER_LINEAR))
    np.testing.assert_array_equal(
        out["depth"], cv2.resize(s.depth, (24, 16), interpolation=cv2.INTER_NEAREST_EXACT)
    )
    assert set(np.unique(out["depth"])) <= set(np.unique(s.depth))  # nearest: never interpolated
    assert not (out["mask"] & out["sky"]).any() and (out["depth"][~out["mask"]] == 0).all()
    assert out["sky"][0].all() and not out["sky"][-1].any()
    # the aspect ratio is not kept: the whole field of view survives (a cover-crop would cut it)
    assert out["depth"][0, 0] == 0 and out["depth"][-1, -1] == s.depth[-1, -1]


def test_crop_from_resizes_then_crops_at_random_in_training_and_centred_in_validation():
    s = _sample(h=27, w=48, dataset="unrealstereo4k")
    crop = {"unrealstereo4k": (20, 36)}
    full = cv2.resize(s.depth, (36, 20), interpolation=cv2.INTER_NEAREST_EXACT)
    full_rgb = cv2.resize(s.rgb, (36, 20), interpolation=cv2.INTER_LINEAR)
    train = ReleaseResize((12, 16), train=True, crop_from=crop)
    corners = set()
    for i in range(20):
        out = train(s, np.random.default_rng(i))
        assert out["depth"].shape == (12, 16)
        hits = [
            (y, x)
            for y in range(20 - 12 + 1)
            for x in range(36 - 16 + 1)
            if np.array_equal(full[y : y + 12, x : x + 16], out["depth"])
            and np.array_equal(full_rgb[y : y + 12, x : x + 16], out["image"])
        ]
        assert hits, "the output is not a window of the 36x20 resize"
        corners.add(hits[0])
    assert len(corners) > 5  # random positions
    val = ReleaseResize((12, 16), train=False, crop_from=crop)(s)
    np.testing.assert_array_equal(val["depth"], full[4:16, 10:26])
    # other datasets are just resized
    other = ReleaseResize((12, 16), train=True, crop_from=crop)(_sample(h=27, w=48), np.random.default_rng(0))
    np.testing.assert_array_equal(
        other["depth"], cv2.resize(_sample(h=27, w=48).depth, (16, 12), interpolation=cv2.INTER_NEAREST_EXACT)
    )


def test_release_resize_errors():
    with pytest.raises(ValueError, match=r"crop_from\['unrealstereo4k'\]"):
        ReleaseResize((768, 1024), crop_from={"unrealstereo4k": [512, 1920]})
    with pytest.raises(ValueError, match="random generator"):
        ReleaseResize((12, 16), crop_from={"x": (20, 20)})(_sample(dataset="x"))


@pytest.mark.parametrize("transform", [ReleaseResize((30, 40)), CropResize((30, 40), train=False)])
def test_hypersim_range_is_applied_where_it_is_read(transform):
    s = _sample(dataset="hypersim")
    s.depth[10:12] = 70.0  # beyond Hypersim's 65 m
    s.depth[12, :4] = 0.08  # below 0.1 m
    out = transform(s, np.random.default_rng(0))
    assert not out["mask"][10:12].any() and (out["depth"][10:12] == 0).all()
    assert not out["mask"][12, :4].any()
    assert out["mask"][13:].sum() == s.mask[13:].sum()
    # other datasets keep their depth: the 80 m rule is the objective's, not the loader's
    far = _sample(dataset="vkitti2")
    far.depth[10:12] = 150.0
    assert transform(far, np.random.default_rng(0))["mask"][10:12].all()
    assert restrict_depth_range(far) is far


def _write_shard(path, samples):
    with tarfile.open(path, "w") as tar:
        for s in samples:
            for m, data in s.items():
                if not m.startswith("__"):
                    info = tarfile.TarInfo(f"{s['__key__']}.{m}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))


def test_datamodule_release_pipeline_end_to_end(tmp_path):
    rng = np.random.default_rng(0)
    depth = np.full((27, 48), 30.0, np.float32)
    depth[:, :8] = 70.0
    samples = [
        encode_sample(
            f"{name}{i}",
            rng.integers(0, 256, (27, 48, 3), dtype=np.uint8),
            depth,
            json.loads(json.dumps({"dataset": name, "fx": 1, "fy": 1, "cx": 0, "cy": 0})),
        )
        for i, name in enumerate(["hypersim", "unrealstereo4k"])
    ]
    _write_shard(tmp_path / "s-000000.tar", samples)
    dm, batches = val_batches(
        str(tmp_path / "s-000000.tar"),
        (12, 16),
        pipeline="release",
        crop_from={"unrealstereo4k": [20, 36]},
    )
    b = batches[0]
    assert b["image"].shape == (2, 3, 12, 16) and b["dataset"] == ["hypersim", "unrealstereo4k"]
    assert not b["mask"][0, 0, :, :2].any()  # Hypersim beyond 65 m: invalid, also in old shards
    assert b["mask"][1].all()  # 70 m is valid for UnrealStereo4K (the objective applies 80 m)
    train = next(iter(dm.train_dataloader()))
    assert train["image"].shape == (2, 3, 12, 16)


def test_datamodule_pipeline_errors():
    kw = dict(
        train_sources=[{"urls": "x"}],
        val_sources=None,
        batch_size=1,
        num_workers=0,
        train_size=[12, 16],
        val_size=[12, 16],
        epoch_batches=1,
    )
    with pytest.raises(ValueError, match="pipeline must be one of"):
        DepthShardDataModule(pipeline="paper", **kw)
    with pytest.raises(ValueError, match="crop_from is part of pipeline=release"):
        DepthShardDataModule(crop_from={"unrealstereo4k": [20, 36]}, **kw)
    with pytest.raises(ValueError, match="crop_from"):
        DepthShardDataModule(pipeline="release", crop_from={"unrealstereo4k": [8, 36]}, **kw)


@pytest.mark.parametrize(
    "experiment, pipeline, crop",
    [
        ("pretrain_512", "release", {}),
        ("finetune_1024", "release", {"unrealstereo4k": [1024, 1920]}),
        ("cascade_dit", "release", {"unrealstereo4k": [1024, 1920]}),
        ("demo", "augment", {}),
    ],
)
def test_paper_experiments_use_the_release_pipeline_and_timesteps(experiment, pipeline, crop, tmp_path):
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}", f"paths.data_dir={tmp_path}"])
    data = OmegaConf.to_container(cfg.data, resolve=False)
    assert data.get("pipeline") == pipeline and data.get("crop_from", {}) == crop
    assert cfg.model.timesteps.grid == 1000  # the release's integer timesteps
    assert cfg.model.target.min_depth == 0.1 and cfg.model.target.max_depth == 80.0
    if experiment == "demo":
        assert cfg.model.timesteps.uniform_fraction == 0.3  # the demo's option stays
    else:
        assert cfg.model.timesteps.uniform_fraction == 0.0


def test_hypersim_conversion_keeps_only_the_release_range(tmp_path):
    h5py = pytest.importorskip("h5py")
    from ppd_lightning.data.raw import hypersim

    h, w = 12, 16
    cam = tmp_path / "ai_001_001" / "images" / "scene_cam_00"
    (tmp_path / "ai_001_001" / "images").mkdir(parents=True)
    jpg = Path(f"{cam}_final_preview") / "frame.0000.tonemap.jpg"
    jpg.parent.mkdir()
    assert cv2.imwrite(str(jpg), np.zeros((h, w, 3), np.uint8))
    Path(f"{cam}_geometry_hdf5").mkdir()
    dist = np.full((h, w), 5.0, np.float32)
    dist[0] = 200.0  # planar depth beyond 65 m even at the image edge
    dist[1] = 0.05  # closer than 0.1 m
    with h5py.File(f"{cam}_geometry_hdf5/frame.0000.depth_meters.hdf5", "w") as f:
        f["dataset"] = dist
    (item,) = hypersim.list_items(str(tmp_path))
    raw = hypersim.load_item(str(tmp_path), item)
    assert np.isnan(raw.depth[:2]).all() and np.isfinite(raw.depth[2:]).all()
    assert raw.meta["valid_range"] == [0.1, 65.0]

"""The training objective is the release's: ``training_loss`` against every ``training*.json`` fixture in
$PPD_REFERENCE_DIR (sizes, loss weights and timesteps all read from the fixture), plus its rules on
hand-made batches and its errors."""

import json
import warnings

import pytest
import torch
from model_helpers import randomize, reference_dir, tiny_dit, tiny_encoder
from safetensors.torch import load_file

from ppd_lightning.objective import DepthTargetTransform, training_loss
from ppd_lightning.official import load_dit, load_semantic_encoder

TOL = 1e-5


def _training_cases():
    root = reference_dir()
    if not root.is_dir():
        pytest.fail(f"reference fixtures not found at {root}: set PPD_REFERENCE_DIR")
    cases = [
        p for p in sorted(root.glob("training*.json")) if json.loads(p.read_text()).get("case") == "training"
    ]
    if not cases:
        pytest.fail(f"no training*.json fixture with case 'training' in {root}")
    return [pytest.param(p, id=p.stem) for p in cases]


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def _fixture(meta_path):
    meta = json.loads(meta_path.read_text())
    tensors = load_file(str(meta_path.with_suffix(".safetensors")))
    state = {k[len("state_dict.") :]: v for k, v in tensors.items() if k.startswith("state_dict.")}
    dit = load_dit({k: v for k, v in state.items() if k.startswith("dit.")}).train()
    cfg = meta["official_config"]
    assert (dit.hidden_size, dit.depth, dit.num_heads, dit.patch_size, dit.semantic_dim) == (
        cfg["hidden_size"],
        cfg["depth"],
        cfg["num_heads"],
        cfg["patch_size"],
        cfg["semantic_dim"],
    )
    encoder = None
    if any(k.startswith("pretrained.") for k in state):
        encoder = load_semantic_encoder(
            {k: v for k, v in state.items() if k.startswith("pretrained.")},
            num_heads=meta["encoder_config"]["num_heads"],
        )
    batch = {k: tensors[f"input.{k}"] for k in ("image", "depth", "mask", "sky") if f"input.{k}" in tensors}
    for k in ("mask", "sky"):
        if k in batch:
            batch[k] = batch[k].bool()
    B = batch["image"].shape[0]
    assert meta["batch"] == B and list(batch["image"].shape[-2:]) == meta["input_hw"]
    t = tensors["input.timestep"].float() / 1000  # official integer timesteps
    assert t.shape == (B,) and torch.equal(tensors["input.timestep"], tensors["input.timestep"].round())
    return meta, tensors, dit, encoder, batch, t


@pytest.mark.parametrize("meta_path", _training_cases())
def test_training_loss_matches_the_release(meta_path):
    meta, ref, dit, encoder, batch, t = _fixture(meta_path)
    out = training_loss(
        dit, encoder, batch, noise=ref["input.noise"], t=t, grad_loss_weight=meta.get("grad_loss_weight", 0.0)
    )
    assert torch.equal(out["loss_mask"], ref["output.loss_mask"].bool())  # no pixel differs
    assert out["target"].shape == ref["output.target"].shape
    assert _rel(out["target"], ref["output.target"]) < TOL
    for name in ("loss", "loss_velocity", "loss_gradient"):
        if f"output.{name}" in ref:
            assert _rel(out[name].reshape(-1), ref[f"output.{name}"].reshape(-1)) < TOL, name
    out["loss"].backward()
    params = dict(dit.named_parameters())
    grads = [k[len("output.grad.") :] for k in ref if k.startswith("output.grad.")]
    assert grads, "the fixture holds no weight gradients"
    for name in grads:
        assert _rel(params[name].grad, ref[f"output.grad.{name}"]) < TOL, name
    if encoder is not None:
        assert all(p.grad is None for p in encoder.parameters())  # the encoder is frozen


# --- the release's rules on hand-made batches ---------------------------------------------------------


def _models(seed=0):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dit = randomize(tiny_dit(semantic_dim=24), seed=seed)
        enc = tiny_encoder(dim=24)
    return dit, enc


def _batch(B=2, H=32, W=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(B, 3, H, W, generator=g)
    depth = torch.rand(B, 1, H, W, generator=g) * 30 + 1
    mask = torch.ones(B, 1, H, W, dtype=torch.bool)
    sky = torch.zeros_like(mask)
    sky[:, :, :4] = True  # sky rows: depth 0, not valid (the shard contract)
    mask[:, :, :4] = False
    depth[:, :, :4] = 0
    depth[:, :, 4, :6] = 150.0  # valid in the shard, but beyond the release's 80 m
    depth[:, :, 5, :3] = 0.05  # below the release's 0.1 m
    mask[:, :, 6, :5] = False  # invalid
    depth[:, :, 6, :5] = 0
    noise = torch.randn(B, 1, H, W, generator=g)
    t = torch.tensor([202, 857][:B]) / 1000
    return {"image": image, "depth": depth, "mask": mask, "sky": sky}, noise, t


def test_loss_mask_sky_and_quantiles_follow_the_release():
    dit, enc = _models()
    batch, noise, t = _batch()
    out = training_loss(dit, enc, batch, noise=noise, t=t)
    lm = out["loss_mask"]
    assert lm.dtype == torch.bool and lm.shape == batch["mask"].shape
    assert lm[:, :, :4].all()  # sky is in the loss
    assert not lm[:, :, 4, :6].any() and not lm[:, :, 5, :3].any() and not lm[:, :, 6, :5].any()
    valid = batch["mask"] & (batch["depth"] > 0.1) & (batch["depth"] < 80)
    assert torch.equal(lm, valid | batch["sky"])
    # quantiles over the valid pixels only: sky (81 m) and 80-200 m never enter them
    for b in range(2):
        v = torch.log1p(batch["depth"][b][valid[b]])
        torch.testing.assert_close(out["lo"][b], torch.quantile(v, 0.02))
        torch.testing.assert_close(out["hi"][b], torch.quantile(v, 0.98))
    # sky at 81 m is beyond the 98 % quantile: it clamps to the top of the target range
    assert (out["target"][:, :, :4] == 0.5).all()
    tf = DepthTargetTransform()
    depth, _ = tf.release_depth(batch["depth"], batch["mask"], batch["sky"])
    assert (depth[:, :, :4] == 81.0).all() and depth[:, :, 4, :6].eq(80.0).all() and depth.min() >= 0.1


def test_sky_never_enters_the_quantiles():
    """Old code pushed sky to 1.05 x the farthest depth and let it into the quantiles, moving every target."""
    dit, enc = _models()
    batch, noise, t = _batch()
    with_sky = training_loss(dit, enc, batch, noise=noise, t=t)
    no_sky = training_loss(dit, enc, {**batch, "sky": torch.zeros_like(batch["sky"])}, noise=noise, t=t)
    assert torch.equal(with_sky["lo"], no_sky["lo"]) and torch.equal(with_sky["hi"], no_sky["hi"])
    rest = ~batch["sky"]
    assert torch.equal(with_sky["target"][rest], no_sky["target"][rest])
    assert torch.equal(with_sky["loss_mask"], no_sky["loss_mask"] | batch["sky"])
    assert not no_sky["loss_mask"][batch["sky"]].any()


def test_loss_is_the_masked_velocity_mse_plus_the_weighted_gradient_loss():
    dit, enc = _models()
    batch, noise, t = _batch()
    plain = training_loss(dit, enc, batch, noise=noise, t=t)
    assert "loss_gradient" not in plain and torch.equal(plain["loss"], plain["loss_velocity"])
    m = plain["loss_mask"].float()
    v_target = noise - plain["target"]
    expect = ((plain["velocity"] - v_target) ** 2 * m).sum() / (m.sum() + 1e-6)
    torch.testing.assert_close(plain["loss_velocity"], expect)
    tb = t.view(-1, 1, 1, 1)
    torch.testing.assert_close(plain["x_t"], (1 - tb) * plain["target"] + tb * noise)
    both = training_loss(dit, enc, batch, noise=noise, t=t, grad_loss_weight=0.2)
    assert both["loss_gradient"] > 0
    torch.testing.assert_close(both["loss"], both["loss_velocity"] + 0.2 * both["loss_gradient"])
    both["loss"].backward()
    assert dit.final_layer.linear.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in enc.parameters())


def test_a_batch_without_sky_is_a_batch_with_no_sky():
    dit, enc = _models()
    batch, noise, t = _batch()
    batch["sky"][:] = False
    no_key = {k: v for k, v in batch.items() if k != "sky"}
    a = training_loss(dit, enc, batch, noise=noise, t=t)
    b = training_loss(dit, enc, no_key, noise=noise, t=t)
    assert torch.equal(a["loss_mask"], b["loss_mask"]) and torch.equal(a["target"], b["target"])
    torch.testing.assert_close(a["loss"], b["loss"])


def test_dit_without_semantics_needs_no_encoder():
    dit = randomize(tiny_dit(variant="vanilla"))
    batch, noise, t = _batch()
    out = training_loss(dit, None, batch, noise=noise, t=t)
    assert out["semantics"] is None and torch.isfinite(out["loss"])
    sem_dit, _ = _models()
    with pytest.raises(ValueError, match="encoder is None"):
        training_loss(sem_dit, None, batch, noise=noise, t=t)


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda b, n, t: b.pop("depth"), r"missing key\(s\) \['depth'\]"),
        (lambda b, n, t: b.pop("mask"), r"missing key\(s\) \['mask'\]"),
        (lambda b, n, t: b.update(image=b["image"][:, :1]), "'image' must be"),
        (lambda b, n, t: b.update(depth=b["depth"][..., :-1]), "'depth' must be"),
        (lambda b, n, t: b.update(mask=b["mask"][:1]), "'mask' must be"),
        (lambda b, n, t: b.update(sky=b["sky"][:, :, 1:]), "'sky' must be"),
        (lambda b, n, t: b.update(depth=b["depth"].numpy()), "'depth' must be a torch.Tensor"),
        (lambda b, n, t: b.update(mask=b["depth"]), "'mask' must be bool"),
    ],
)
def test_bad_batches_name_the_key(change, match):
    dit, enc = _models()
    batch, noise, t = _batch()
    change(batch, noise, t)
    with pytest.raises(ValueError, match=match):
        training_loss(dit, enc, batch, noise=noise, t=t)


def test_bad_noise_or_timesteps_name_the_argument():
    dit, enc = _models()
    batch, noise, t = _batch()
    with pytest.raises(ValueError, match="'noise' must be"):
        training_loss(dit, enc, batch, noise=noise[:, :, 1:], t=t)
    with pytest.raises(ValueError, match="'t' must be"):
        training_loss(dit, enc, batch, noise=noise, t=t[:1])
    with pytest.raises(ValueError, match=r"'t' must lie in \[0, 1\]"):
        training_loss(dit, enc, batch, noise=noise, t=t * 1000)  # integer timesteps, not fractions

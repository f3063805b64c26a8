"""PPDLightningModule behaviour on hand-made batches (no files): losses, skip-on-NaN, EMA, encoder
handling, checkpoints."""

import math
import warnings

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset

from ppd_lightning.official import load_dit
from ppd_lightning.weights.checkpoints import export_dit, load_model_from_checkpoint

ENC = dict(allow_random=True, random_seed=0, embed_dim=32, depth=1, num_heads=2, img_size=56)
DIT = dict(hidden_size=32, depth=2, num_heads=2, patch_size=4, semantic_dim=32, variant="cascade")


def make_module(**kw):
    from ppd_lightning.training.module import PPDLightningModule

    cfg = dict(dit=dict(DIT), encoder=dict(ENC), ema_decay=0.9, val_steps=2, val_sets=["toy"])
    cfg.update(kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return PPDLightningModule(**cfg)


def toy_batch(B=2, H=32, W=48, seed=0, nan=False):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(B, 3, H, W, generator=g)
    # depth grows towards the top of the image, like a ground plane
    rows = torch.linspace(20, 2, H).view(1, 1, H, 1)
    depth = (rows + image[:, :1] * 2).expand(B, 1, H, W).clone()
    mask = torch.ones(B, 1, H, W, dtype=torch.bool)
    sky = torch.zeros_like(mask)
    sky[:, :, :3] = True
    mask[:, :, :3] = False
    depth[:, :, :3] = 0
    if nan:
        depth[0, 0, 10, 10] = float("nan")
        image[0, 0, 0, 0] = float("nan")
    return {
        "image": image,
        "depth": depth,
        "mask": mask,
        "sky": sky,
        "dataset": ["toy"] * B,
        "n_corrupt": torch.tensor([1, 0]),
    }


class Batches(IterableDataset):
    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


def fit(module, batches, val=None, **trainer_kw):
    kw = dict(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    kw.update(trainer_kw)
    trainer = L.Trainer(**kw)
    loader = DataLoader(Batches(batches), batch_size=None)
    val_loader = DataLoader(Batches(val), batch_size=None) if val else None
    trainer.fit(module, loader, val_loader)
    return trainer


def test_encoder_is_frozen_excluded_from_optimizer_and_checkpoint(tmp_path):
    m = make_module()
    opt = m.configure_optimizers()
    in_opt = {id(p) for group in opt.param_groups for p in group["params"]}
    assert not any(id(p) in in_opt for p in m.encoder.parameters())
    assert all(id(p) in in_opt for p in m.dit.parameters())
    assert not any(id(p) in in_opt for p in m.ema_dit.parameters())
    trainer = fit(m, [toy_batch(seed=i) for i in range(3)])
    assert not m.encoder.training
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    assert not any(k.startswith("encoder.") for k in ckpt["state_dict"])
    assert any(k.startswith("ema_dit.") for k in ckpt["state_dict"])
    counts = m.parameter_counts()
    assert counts["params/trainable"] == sum(p.numel() for p in m.dit.parameters())
    assert counts["params/frozen_encoder"] == sum(p.numel() for p in m.encoder.parameters()) > 0
    assert m.corrupt_samples == 3  # one per batch, from n_corrupt


def test_training_moves_dit_and_ema_lags_behind():
    m = make_module()
    before = {k: v.clone() for k, v in m.dit.state_dict().items()}
    fit(m, [toy_batch(seed=i) for i in range(4)])
    changed = [k for k, v in m.dit.state_dict().items() if not torch.equal(v, before[k])]
    assert changed
    assert int(m.ema_updates) == 4
    w, e, b = (x["final_layer.linear.weight"] for x in (m.dit.state_dict(), m.ema_dit.state_dict(), before))
    assert not torch.equal(e, b) and not torch.equal(e, w)


def test_non_finite_loss_skips_the_step_and_counts_it():
    m = make_module()
    fit(m, [toy_batch(seed=0)])
    after_good = {k: v.clone() for k, v in m.dit.state_dict().items()}
    ema_updates = int(m.ema_updates)
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(m, DataLoader(Batches([toy_batch(seed=1, nan=True)]), batch_size=None))
    assert m.skipped_steps == 1
    for k, v in m.dit.state_dict().items():
        assert torch.equal(v, after_good[k]), k
    assert int(m.ema_updates) == ema_updates


def test_too_many_non_finite_losses_stop_training_with_a_clear_error():
    m = make_module(max_bad_steps=2)
    with pytest.raises(RuntimeError, match="2 consecutive optimizer steps with a non-finite loss"):
        fit(m, [toy_batch(seed=i, nan=True) for i in range(3)])


def test_non_finite_losses_are_counted_per_optimizer_step_under_accumulation():
    # windows of 2 micro-batches: [nan, ok] is skipped whole (once), [ok, ok] steps
    m = make_module()
    fit(m, [toy_batch(seed=0, nan=True), toy_batch(seed=1), toy_batch(seed=2), toy_batch(seed=3)],
        accumulate_grad_batches=2)  # fmt: skip
    assert m.skipped_steps == 1 and int(m.ema_updates) == 1
    # one bad micro-batch in every window: no step ever happens, so the run must stop
    m = make_module(max_bad_steps=2)
    with pytest.raises(RuntimeError, match="2 consecutive optimizer steps"):
        fit(m, [toy_batch(seed=i, nan=i % 2 == 0) for i in range(6)], accumulate_grad_batches=2)


def test_grad_scaler_precision_still_steps_the_optimizer():
    # 16-mixed hands the closure's result to a GradScaler; a None there would skip every step silently
    from lightning.pytorch.plugins.precision import MixedPrecision

    m = make_module(ema_decay=None)
    before = {k: v.clone() for k, v in m.dit.state_dict().items()}
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    fit(m, [toy_batch(seed=i) for i in range(3)], plugins=[MixedPrecision("16-mixed", "cpu", scaler)])
    changed = [k for k, v in m.dit.state_dict().items() if not torch.equal(v, before[k])]
    assert changed and scaler._growth_tracker is not None


def test_cosine_schedule_spans_the_optimizer_steps_the_trainer_counts():
    from functools import partial

    from ppd_lightning.training.schedules import warmup_cosine

    def final_lr(**sched_kw):
        m = make_module(
            optimizer=partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.0),
            scheduler=partial(warmup_cosine, warmup_steps=1, min_lr_ratio=0.1, **sched_kw),
        )
        trainer = fit(m, [toy_batch(seed=i) for i in range(6)], accumulate_grad_batches=2)
        return trainer.optimizers[0].param_groups[0]["lr"]

    # 6 micro-batches / accumulation 2 = 3 optimizer steps: the cosine ends exactly at the last one
    assert final_lr() == pytest.approx(1e-4)
    assert final_lr(total_steps=None) == pytest.approx(1e-3)  # explicit null: constant after warm-up
    assert final_lr(total_steps=12) > 5e-4  # an explicit total is kept as given


def test_training_step_is_the_release_objective_on_rounded_timesteps(monkeypatch):
    """One implementation: the module hands its batch, noise and integer-valued t to ``training_loss`` and
    logs what it returns; sky is valid at 81 m (old code: 1.05 x the farthest depth, in the quantiles)."""
    import ppd_lightning.training.module as module_mod
    from ppd_lightning.objective import training_loss

    calls = []

    def spy(dit, encoder, batch, **kw):
        out = training_loss(dit, encoder, batch, **kw)
        calls.append((batch, kw, out))
        return out

    monkeypatch.setattr(module_mod, "training_loss", spy)
    m = make_module(grad_loss_weight=0.2)
    trainer = fit(m, [toy_batch(seed=0)])
    assert len(calls) == 1
    batch, kw, out = calls[0]
    assert kw["grad_loss_weight"] == 0.2 and kw["target"] is m.target
    t = kw["t"]
    assert t.shape == (2,) and ((t * 1000) - (t * 1000).round()).abs().max() < 1e-3  # integer timesteps
    assert kw["noise"].shape == batch["depth"].shape
    assert out["loss_mask"][:, :, :3].all() and (out["target"][:, :, :3] == 0.5).all()
    logged = trainer.callback_metrics
    assert float(logged["train/loss"]) == pytest.approx(float(out["loss"]))
    assert float(logged["train/loss_gradient"]) == pytest.approx(float(out["loss_gradient"]))


def test_continuous_timesteps_and_a_uniform_share_stay_options():
    m = make_module(timesteps=dict(grid=None, uniform_fraction=0.3))
    t = m.timesteps(4000, generator=torch.Generator().manual_seed(0))
    assert ((t * 1000) - (t * 1000).round()).abs().max() > 0.1
    assert (t > 0.95).float().mean() > 0.01  # the uniform share reaches t near 1


@pytest.mark.parametrize(
    "kw", [dict(grad_loss_weight=0.2), dict(align_loss_weight=0.5), dict(ema_decay=None)]
)
def test_optional_losses_and_no_ema(kw):
    m = make_module(**kw)
    trainer = fit(m, [toy_batch(seed=i) for i in range(2)])
    logged = trainer.callback_metrics
    assert math.isfinite(float(logged["train/loss"]))
    if "grad_loss_weight" in kw:
        assert float(logged["train/loss_gradient"]) > 0
    if "align_loss_weight" in kw:
        assert 0 < float(logged["train/loss_align"]) <= 2


def test_vanilla_variant_has_no_encoder():
    m = make_module(dit=dict(DIT, variant="vanilla"))
    assert m.encoder is None
    fit(m, [toy_batch()])


def test_validation_logs_model_and_baseline_metrics():
    from ppd_lightning.training.callbacks import MeanDepthBaseline

    m = make_module()
    baseline = MeanDepthBaseline(images=512)
    trainer = fit(
        m,
        [toy_batch(seed=i) for i in range(3)],
        val=[toy_batch(seed=9), toy_batch(seed=10)],
        callbacks=[baseline],
    )
    metrics = trainer.callback_metrics
    for key in ("val/toy/abs_rel", "val/toy/delta1", "val_baseline/toy/abs_rel", "val_baseline/toy/delta1"):
        assert key in metrics and math.isfinite(float(metrics[key])), key
    assert 0 <= float(metrics["val/toy/delta1"]) <= 1
    # the module itself knows nothing of the baseline: without the callback only the model is scored
    bare = fit(make_module(), [toy_batch(seed=i) for i in range(3)], val=[toy_batch(seed=9)])
    assert "val/toy/abs_rel" in bare.callback_metrics
    assert not any(k.startswith("val_baseline/") for k in bare.callback_metrics)
    # the baseline's sums are the callback's checkpoint state (a resumed run keeps the same baseline)
    state = baseline.state_dict()
    assert state["count"] == 3 * toy_batch().get("image").shape[0] and state["sum"].ndim == 3
    again = MeanDepthBaseline()
    again.load_state_dict(state)
    assert again.count == baseline.count and torch.equal(again.sum, baseline.sum)


def test_unknown_validation_source_is_a_clear_error():
    m = make_module()
    bad = toy_batch()
    bad["dataset"] = ["other", "other"]
    with pytest.raises(KeyError, match="'other' is not in model.val_sets"):
        fit(m, [toy_batch()], val=[bad])


def test_checkpoint_reload_and_export(tmp_path):
    m = make_module()
    trainer = fit(m, [toy_batch(seed=i) for i in range(3)])
    path = tmp_path / "run.ckpt"
    trainer.save_checkpoint(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_model_from_checkpoint(path)  # EMA weights, encoder rebuilt from its seed
        raw = load_model_from_checkpoint(path, use_ema=False)
    for k, v in model.dit.state_dict().items():
        torch.testing.assert_close(v, m.ema_dit.state_dict()[k])
    for k, v in raw.dit.state_dict().items():
        torch.testing.assert_close(v, m.dit.state_dict()[k])
    for k, v in model.encoder.state_dict().items():
        torch.testing.assert_close(v, m.encoder.state_dict()[k])
    out = export_dit(path, tmp_path / "export" / "ppd.safetensors")
    dit = load_dit(out)
    assert dit.config() == m.ema_dit.config()
    image = torch.rand(1, 3, 32, 48)
    noise = torch.randn(1, 1, 32, 48)
    torch.testing.assert_close(
        model.sample(image, 2, noise=noise), m.inference_model().sample(image, 2, noise=noise)
    )
    # infer() works at the training crop's area (32x48 here), not at the released model's 1024x768
    assert model.area == raw.area == 32 * 48
    assert model.working_size(480, 640) == (32, 48) and model.working_size(480, 640, area=64 * 96) == (64, 96)
    assert model.infer(torch.rand(1, 3, 60, 90), steps=1).shape == (1, 1, 60, 90)
    # run counters survive a resume
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["ppd"] == {"skipped_steps": 0, "corrupt_samples": 3}
    resumed = make_module()
    resumed.on_load_checkpoint(ckpt)
    assert (resumed.skipped_steps, resumed.corrupt_samples) == (0, 3)


def test_random_encoder_needs_explicit_permission():
    from ppd_lightning.weights.encoders import build_semantic_encoder

    with pytest.raises(ValueError, match="model.encoder.weights is not set"):
        build_semantic_encoder(size="vits")


def test_init_dit_from_our_checkpoint_an_export_and_a_mismatch(tmp_path):
    from ppd_lightning.official import CheckpointError
    from ppd_lightning.training.run import init_dit_weights

    src = make_module()
    trainer = fit(src, [toy_batch(seed=i) for i in range(2)])
    ckpt = tmp_path / "src.ckpt"
    trainer.save_checkpoint(ckpt)
    exported = export_dit(ckpt, tmp_path / "dit.safetensors")
    for source in (ckpt, exported):  # our checkpoint (its EMA weights) and the released key format
        dst = make_module()
        init_dit_weights(dst, str(source))
        for k, v in src.ema_dit.state_dict().items():
            torch.testing.assert_close(dst.dit.state_dict()[k], v)
            torch.testing.assert_close(dst.ema_dit.state_dict()[k], v)
    wrong = make_module(dit=dict(DIT, hidden_size=64))
    with pytest.raises(CheckpointError, match="shape mismatches"):
        init_dit_weights(wrong, str(exported))


def test_checkpoint_io_failed_save_keeps_the_previous_checkpoint(tmp_path):
    from ppd_lightning.training.checkpoint import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"global_step": 1}, path)
    with pytest.raises(Exception, match="pickle|lambda"):
        io.save_checkpoint({"global_step": 2, "unpicklable": lambda: 0}, path)
    assert io.load_checkpoint(path) == {"global_step": 1}
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]

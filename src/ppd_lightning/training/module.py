"""PPDLightningModule: Cascade SP-DiT + frozen semantic encoder + flow matching, as a LightningModule.

Knows batches (``image``, ``depth``, ``mask``, ``sky``, ``dataset``, ``n_corrupt``) and tensors, not
files. Validation samples with the same Euler sampler as inference and scores with the same alignment
and metrics as ``evaluate.py``.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Callable

import lightning as L
import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch import nn

from ppd_lightning.errors import DivergenceError
from ppd_lightning.evaluation.align import align_log_ransac
from ppd_lightning.evaluation.metrics import DepthMetrics
from ppd_lightning.flow import LogitNormalTimesteps
from ppd_lightning.losses import semantic_alignment_loss
from ppd_lightning.models import CascadeSPDiT, PixelPerfectDepth
from ppd_lightning.objective import DepthTargetTransform, training_loss
from ppd_lightning.weights.checkpoints import METADATA_KEY, training_metadata
from ppd_lightning.weights.encoders import build_semantic_encoder


class EMA:
    """Exponential moving average of a module's parameters, with the usual warm-up
    decay_t = min(decay, (1 + n) / (10 + n)) so short runs are not dominated by the initial weights."""

    def __init__(self, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay

    @torch.no_grad()
    def update(self, ema: nn.Module, model: nn.Module, num_updates: int) -> None:
        d = min(self.decay, (1 + num_updates) / (10 + num_updates))
        ema_p = [p for p in ema.parameters()]
        src_p = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_p, src_p, 1.0 - d)


def metric_logs(prefix: str, metrics, world_size: int) -> dict[str, float]:
    """``{prefix}/{name}/{abs_rel,delta1,rmse}`` of each metric that saw images; every metric is reset."""
    logs = {}
    for name, metric in metrics.items():
        if int(metric.count) == 0 and not world_size > 1:
            metric.reset()
            continue
        values = metric.compute()
        for k in ("abs_rel", "delta1", "rmse"):
            v = float(values[k])
            if not math.isnan(v):
                logs[f"{prefix}/{name}/{k}"] = v
        metric.reset()
    return logs


class PPDLightningModule(L.LightningModule):
    """Args:
    dit: CascadeSPDiT keyword arguments (variant and sizes).
    encoder: semantic encoder spec, see ``build_semantic_encoder`` (weights path, or a random size).
    optimizer: partial optimizer (``_partial_: true`` in Hydra), called with the trainable parameters.
    scheduler: optional partial ``LambdaLR``-style factory ``f(optimizer) -> scheduler`` (per optimizer
        step). A factory with a ``total_steps`` parameter that the config leaves out gets the number of
        optimizer steps this fit will take (``trainer.estimated_stepping_batches``: epochs, epoch length,
        gradient accumulation and devices included); an explicit ``total_steps: null`` means none.
    timesteps: ``LogitNormalTimesteps`` arguments: logit-normal ``loc`` and ``scale``, ``grid`` (1000: the
        release's rounded integer timesteps; null = continuous), ``uniform_fraction`` (the demo's option).
    target: DepthTargetTransform arguments (quantiles, valid range ``min_depth`` < d < ``max_depth``, sky at
        ``max_depth + sky_margin``).
    grad_loss_weight: weight of the multi-scale gradient loss on the x0 prediction (0.2 at 1024x768).
    The loss is ``ppd_lightning.objective.training_loss`` (the release's objective); this module only draws
    the noise and timesteps and adds the optional alignment loss.
    align_loss_weight / align_block: REPA-style alignment of the DiT tokens after ``align_block`` with the
        semantic tokens (ablation only).
    ema_decay: EMA of the DiT weights (None disables); used for validation and export when enabled.
    val_steps: Euler steps at validation.
    val_sets: names of the validation sources (batch['dataset']). Left out (the configs do), they are the
        datamodule's ``val_names`` (``data.val_sources[].name``), read in ``setup``; given, they are used
        only without such a datamodule (a module driven by hand); ``("synthetic",)`` when neither says.
    max_bad_steps: stop after this many consecutive optimizer steps skipped for a non-finite loss.
    seed: seeds the per-step noise and timesteps (a function of (seed, step, rank), so resuming
        reproduces the uninterrupted run).
    """

    def __init__(
        self,
        dit: dict,
        encoder: dict,
        optimizer: Callable | None = None,
        scheduler: Callable | None = None,
        timesteps: dict | None = None,
        target: dict | None = None,
        grad_loss_weight: float = 0.0,
        grad_loss_scales: int = 4,
        align_loss_weight: float = 0.0,
        align_block: int | None = None,
        ema_decay: float | None = 0.9999,
        val_steps: int = 4,
        val_sets: list[str] | tuple[str, ...] | None = None,
        max_bad_steps: int = 20,
        seed: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        built = None
        if dit.get("semantic_dim", 1) is None:  # follows the encoder's width (encoder=moge2: its dim_out)
            built = build_semantic_encoder(**encoder)
            dit = {**dit, "semantic_dim": built.dim_out}
            self.hparams["dit"] = dit  # checkpoints record the resolved width
        self.dit = CascadeSPDiT(**dit)
        self.encoder = (
            (built or build_semantic_encoder(**encoder))
            if self.dit.uses_semantics or align_loss_weight > 0
            else None
        )
        if (
            self.encoder is not None
            and self.dit.uses_semantics
            and self.encoder.dim_out != self.dit.semantic_dim
        ):
            raise ValueError(
                f"model.encoder width {self.encoder.dim_out} != model.dit.semantic_dim {self.dit.semantic_dim}"
            )
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.timesteps = LogitNormalTimesteps(**(timesteps or {}))
        self.target = DepthTargetTransform(**(target or {}))
        self.grad_loss_weight, self.grad_loss_scales = grad_loss_weight, grad_loss_scales
        self.align_loss_weight = align_loss_weight
        if align_loss_weight > 0:
            self.align_block = self.dit.depth // 2 - 1 if align_block is None else align_block
            h = self.dit.hidden_size
            self.align_projector = nn.Sequential(
                nn.Linear(h, 2 * h), nn.SiLU(), nn.Linear(2 * h, self.encoder.dim_out)
            )
        self.ema_decay = ema_decay
        self.ema = EMA(ema_decay) if ema_decay else None
        self.ema_dit = copy.deepcopy(self.dit).requires_grad_(False) if ema_decay else None
        self.val_steps, self.seed = val_steps, seed
        self._use_val_sets(["synthetic"] if val_sets is None else val_sets)
        self.max_bad_steps = max_bad_steps
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long), persistent=True)
        self.skipped_steps = 0  # optimizer steps skipped (a non-finite loss in any of their micro-batches)
        self._bad_in_a_row = 0
        self._skip_next_step = False  # set by any micro-batch of the current accumulation window
        self.corrupt_samples = 0
        self.train_size: tuple[int, int] | None = None  # the first training crop (H, W), for checkpoints

    def _use_val_sets(self, names) -> None:
        """One validation metric per validation source name."""
        self.val_sets = [str(n) for n in names]
        self.val_metrics = nn.ModuleDict({n: DepthMetrics() for n in self.val_sets}).to(self.device)

    def setup(self, stage: str) -> None:
        # The validation names are the datamodule's (data.val_sources[].name): written once, in the data config.
        dm = getattr(self._trainer, "datamodule", None)
        names = getattr(dm, "val_names", None)
        if names and list(names) != self.val_sets:
            self._use_val_sets(names)
            self.hparams["val_sets"] = list(self.val_sets)  # checkpoints record the resolved names

    # --- parameters ----------------------------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        params = list(self.dit.parameters())
        if self.align_loss_weight > 0:
            params += list(self.align_projector.parameters())
        return params

    def parameter_counts(self) -> dict[str, int]:
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self.trainable_parameters())
        frozen = sum(p.numel() for p in self.encoder.parameters()) if self.encoder is not None else 0
        ema = sum(p.numel() for p in self.ema_dit.parameters()) if self.ema_dit is not None else 0
        return {
            "params/total": total,
            "params/trainable": trainable,
            "params/frozen_encoder": frozen,
            "params/ema": ema,
        }

    def configure_optimizers(self):
        factory = self.optimizer_factory or (
            lambda params: torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
        )
        optimizer = factory(self.trainable_parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": self._build_scheduler(optimizer), "interval": "step"},
        }

    def _build_scheduler(self, optimizer):
        factory = self.scheduler_factory
        given = getattr(factory, "keywords", {})
        try:
            takes_total = "total_steps" in inspect.signature(factory).parameters
        except (TypeError, ValueError):
            takes_total = False
        if not takes_total or "total_steps" in given:
            return factory(optimizer)
        # Counted by the trainer, so epochs x epoch length / accumulation is never hand-computed in a config.
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ValueError(
                "the LR schedule needs model.scheduler.total_steps: the trainer cannot count this fit's "
                "optimizer steps (no max_steps and no epoch length)"
            )
        return factory(optimizer, total_steps=int(total))

    def inference_model(self, use_ema: bool = True) -> PixelPerfectDepth:
        dit = self.ema_dit if (use_ema and self.ema_dit is not None) else self.dit
        encoder = self.encoder if dit.uses_semantics else None
        return PixelPerfectDepth(dit, encoder, steps=self.val_steps, shift=self.target.shift)

    # --- checkpoints: the frozen encoder is not saved; it is re-attached on load ----------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        sd = checkpoint["state_dict"]
        for k in [k for k in sd if k.startswith("encoder.")]:
            del sd[k]
        checkpoint["ppd"] = {"skipped_steps": self.skipped_steps, "corrupt_samples": self.corrupt_samples}
        if self.encoder is not None:  # kind, sizes, weights file or seed: what rebuilds it on load
            checkpoint["semantic_encoder"] = self.encoder.spec()
        # what it was trained with, read by ppd_lightning.weights (crop size, variant, DiT sizes)
        checkpoint[METADATA_KEY] = training_metadata(self.hparams["dit"], self.train_size)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if self.encoder is not None:
            checkpoint["state_dict"].update({f"encoder.{k}": v for k, v in self.encoder.state_dict().items()})
        counters = checkpoint.get("ppd", {})
        self.skipped_steps = counters.get("skipped_steps", 0)
        self.corrupt_samples = counters.get("corrupt_samples", 0)
        size = (checkpoint.get(METADATA_KEY) or {}).get("train_size")
        self.train_size = None if size is None else (int(size[0]), int(size[1]))

    # --- training ------------------------------------------------------------------------------------
    def _generator(self, *salt: int) -> torch.Generator:
        g = torch.Generator(device=self.device)
        g.manual_seed(hash((self.seed, self.global_rank) + salt) % (2**63))
        return g

    def training_step(self, batch: dict, batch_idx: int) -> dict:
        image = batch["image"]
        B = image.shape[0]
        if self.train_size is None:
            self.train_size = (int(image.shape[-2]), int(image.shape[-1]))
        g = self._generator(int(self.global_step), batch_idx)
        t = self.timesteps(B, image.device, g)
        noise = torch.randn((B, 1, *image.shape[-2:]), device=image.device, generator=g)
        features = {}
        hook = None
        if self.align_loss_weight > 0:
            hook = self.dit.blocks[self.align_block].register_forward_hook(
                lambda m, i, o: features.update(x=o)
            )
        try:
            out = training_loss(
                self.dit,
                self.encoder,
                batch,
                noise=noise,
                t=t,
                grad_loss_weight=self.grad_loss_weight,
                grad_loss_scales=self.grad_loss_scales,
                target=self.target,
                check_t_range=False,  # drawn just above from LogitNormalTimesteps: no GPU sync per step
            )
        finally:
            if hook is not None:
                hook.remove()
        loss = out["loss"]
        logs = {"train/loss_velocity": out["loss_velocity"]}
        if "loss_gradient" in out:
            logs["train/loss_gradient"] = out["loss_gradient"]
        if self.align_loss_weight > 0:
            H, W = image.shape[-2:]
            grid = self._block_grid(self.align_block, H, W)
            sem_grid = (H // 16, W // 16)
            semantics = out["semantics"] if out["semantics"] is not None else self.encoder(image)
            loss_a = semantic_alignment_loss(features["x"], semantics, self.align_projector, grid, sem_grid)
            loss = loss + self.align_loss_weight * loss_a
            logs["train/loss_align"] = loss_a
        logged_loss = loss.detach()  # the real value, NaN/inf included, even when the step is skipped
        loss = self._guard_non_finite(loss)
        logs["train/loss"] = logged_loss
        logs["train/skipped_steps"] = float(self.skipped_steps)
        n_corrupt = batch.get("n_corrupt")
        if n_corrupt is not None:
            self.corrupt_samples += int(n_corrupt.sum())
            logs["data/corrupt_samples"] = float(self.corrupt_samples)
        self.log_dict(logs, prog_bar=False, batch_size=B)
        self.log("loss", logged_loss, prog_bar=True, logger=False, batch_size=B)
        # the x0 target goes out with the loss for callbacks (the mean-depth baseline averages it)
        return {"loss": loss, "target": out["target"].detach()}

    def _block_grid(self, block: int, H: int, W: int) -> tuple[int, int]:
        coarse = self.dit.variant == "cascade" and block < self.dit.coarse_depth
        p = self.dit.embed_patch if coarse else self.dit.patch_size
        return H // p, W // p

    def _guard_non_finite(self, loss: torch.Tensor) -> torch.Tensor:
        """A non-finite loss (on any rank) marks the current optimizer step for skipping on every rank;
        backward still runs on a zero surrogate so DDP's gradient hooks fire consistently. The step is
        counted once in ``optimizer_step``, however many micro-batches of its accumulation window were bad."""
        bad = not bool(torch.isfinite(loss))
        if self.trainer is not None and self.trainer.world_size > 1:
            bad = bool(self.trainer.strategy.reduce_boolean_decision(bad, all=False))
        if not bad:
            return loss
        self._skip_next_step = True
        return sum(p.sum() for p in self.trainable_parameters()) * 0.0

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        # Under FSDP each rank holds gradient shards: the norm must be computed across ranks, which only the
        # root FSDP module can do (Lightning's FSDP precision plugin refuses norm clipping for that reason).
        if gradient_clip_val and isinstance(self.trainer.strategy, FSDPStrategy):
            if gradient_clip_algorithm not in (None, "norm"):
                raise ValueError(
                    f"under FSDP only norm clipping is supported, got {gradient_clip_algorithm!r}"
                )
            self.trainer.model.clip_grad_norm_(gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        # The closure (forward + backward of the last micro-batch) runs first, so that a non-finite loss
        # is known before anything is stepped.
        result = optimizer_closure() if optimizer_closure is not None else None
        if self._skip_next_step:
            self._skip_next_step = False
            self.skipped_steps += 1
            self._bad_in_a_row += 1
            optimizer.zero_grad(set_to_none=True)
            if self._bad_in_a_row >= self.max_bad_steps:
                raise DivergenceError(
                    f"{self._bad_in_a_row} consecutive optimizer steps with a non-finite loss (last at step "
                    f"{self.global_step}): stopping. Lower the learning rate, enable gradient clipping, or "
                    "check the data for NaN/Inf depth."
                )
            return
        self._bad_in_a_row = 0
        # Hand the closure's result on: precision plugins read a None as "backward was skipped" (a
        # GradScaler would then neither unscale, step nor update, and training would silently stall).
        optimizer.step(closure=lambda: result)
        if self.ema is not None:
            self.ema.update(self.ema_dit, self.dit, int(self.ema_updates))
            self.ema_updates += 1

    @torch.no_grad()
    # --- validation ----------------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val_model = self.inference_model(use_ema=True)

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        image = batch["image"]
        depth, mask = batch["depth"].float(), batch["mask"].bool()
        g = self._generator(10**9, dataloader_idx, batch_idx)
        # The model's depth as released (x0 + 0.5, about [0, 1]), which is what the ppd protocol aligns; its
        # ratio-of-means fallback assumes a positive, depth-like prediction.
        pred = self._val_model.sample(image, steps=self.val_steps, generator=g)
        n_corrupt = batch.get("n_corrupt")
        if n_corrupt is not None:  # skips in the validation stream count too (they are logged as well)
            self.corrupt_samples += int(n_corrupt.sum())
        bad = ~torch.isfinite(pred.flatten(1)).all(1)
        if bool(bad.any()):
            raise DivergenceError(
                f"validation: the model predicted non-finite depth for {int(bad.sum())} of {len(bad)} images "
                f"(validation batch {batch_idx}, step {self.global_step}): its weights (EMA when enabled) have "
                "diverged; check train/loss and train/skipped_steps, lower the learning rate or resume from "
                "an earlier checkpoint"
            )
        aligned = align_log_ransac(pred.float(), depth, mask, generator=g)
        names = batch.get("dataset") or [self.val_sets[0]] * image.shape[0]
        for name in set(names):
            if name not in self.val_metrics:
                raise KeyError(
                    f"validation source {name!r} is not in model.val_sets {self.val_sets} "
                    "(data.val_sources[].name: a source's name must be its shards' dataset name)"
                )
            sel = torch.tensor([n == name for n in names], device=image.device)
            self.val_metrics[name].update(aligned[sel], depth[sel], mask[sel])
        return {
            "image": image,
            "pred": aligned,
            "raw_pred": pred,
            "depth": depth,
            "mask": mask,
            "sky": batch.get("sky"),
            "names": names,
        }

    def on_validation_epoch_end(self) -> None:
        logs = metric_logs("val", self.val_metrics, self.trainer.world_size)
        if logs:
            self.log_dict(logs, sync_dist=False)
        first = f"val/{self.val_sets[0]}/abs_rel"
        if first in logs:
            self.log("val_abs_rel", logs[first], prog_bar=True)
        self._val_model = None

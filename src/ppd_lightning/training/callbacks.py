"""Callbacks: the mean-depth baseline, validation panels (pictures) and parameter counts."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ppd_lightning import visualize
from ppd_lightning.evaluation.align import align_log_ransac
from ppd_lightning.evaluation.metrics import DepthMetrics
from ppd_lightning.flow import depth_from_x0


class MeanDepthBaseline(L.Callback):
    """The dataset-mean baseline: the mean of the first ``images`` training targets (x0 maps), turned
    into a depth like the model's and aligned to each validation image exactly like the model's prediction
    (same ppd log-RANSAC, an independent seeded generator). Logged as ``val_baseline/<set>/<metric>``
    beside the model's ``val/<set>/<metric>``; a model must beat it to have learnt anything from the image.
    Its sums are checkpointed with the callback, so a resumed run keeps the same baseline."""

    def __init__(self, images: int = 512):
        self.images = int(images)
        self.sum = torch.zeros(0)
        self.count = 0
        self.metrics: nn.ModuleDict | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.count >= self.images or not isinstance(outputs, dict) or "target" not in outputs:
            return
        x0 = outputs["target"].detach()
        s = x0.float().sum(0).cpu()
        if self.sum.shape != s.shape:
            if self.sum.numel():
                return  # keep the first resolution seen
            self.sum = torch.zeros_like(s)
        self.sum += s
        self.count += x0.shape[0]

    def prediction(self, like: torch.Tensor, shift: float) -> torch.Tensor | None:
        """The baseline as a model depth map shaped like ``like`` (B, 1, H, W), or None before training."""
        if self.count == 0:
            return None
        m = depth_from_x0((self.sum / self.count)[None].to(like.device), shift)
        if m.shape[-2:] != like.shape[-2:]:
            m = F.interpolate(m, size=like.shape[-2:], mode="bilinear", align_corners=False)
        return m.expand_as(like).contiguous().float()

    def on_validation_epoch_start(self, trainer, pl_module):
        self.metrics = nn.ModuleDict({n: DepthMetrics() for n in pl_module.val_sets}).to(pl_module.device)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if self.metrics is None or not isinstance(outputs, dict) or "raw_pred" not in outputs:
            return
        baseline = self.prediction(outputs["raw_pred"], pl_module.target.shift)
        if baseline is None:
            return
        g = pl_module._generator(2 * 10**9, dataloader_idx, batch_idx)  # independent of the model's draws
        depth, mask, names = outputs["depth"], outputs["mask"], outputs["names"]
        aligned = align_log_ransac(baseline, depth, mask, generator=g)
        for name in set(names):
            sel = torch.tensor([n == name for n in names], device=depth.device)
            self.metrics[name].update(aligned[sel], depth[sel], mask[sel])

    def on_validation_epoch_end(self, trainer, pl_module):
        from ppd_lightning.training.module import metric_logs

        if self.metrics is None:
            return
        logs = metric_logs("val_baseline", self.metrics, trainer.world_size)
        if logs:
            pl_module.log_dict(logs, sync_dist=False)
        self.metrics = None

    def state_dict(self) -> dict:
        return {"images": self.images, "sum": self.sum, "count": self.count}

    def load_state_dict(self, state_dict: dict) -> None:
        self.sum = state_dict.get("sum", torch.zeros(0))
        self.count = int(state_dict.get("count", 0))


class ValidationPanels(L.Callback):
    """Image | prediction | ground truth | error panels of the first validation batch, every validation
    epoch: written as PNG under ``<dirpath>/`` and sent to W&B when that logger is active. Rank 0 only.

    Tiles are upscaled with nearest neighbours to at least ``min_height`` pixels, prediction and ground
    truth share one colour range with a key in metres, sky (``outputs["sky"]``) is grey and pixels without
    ground truth black. The last panel is kept as ``last_panel`` (``train()`` writes it as ``demo.png``)."""

    def __init__(self, dirpath: str, num_images: int = 4, min_height: int = 192):
        if min_height < 0:
            raise ValueError(f"ValidationPanels min_height must be >= 0, got {min_height}")
        self.dirpath, self.num_images, self.min_height = Path(dirpath), num_images, int(min_height)
        self.last_panel: np.ndarray | None = None

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if batch_idx != 0 or dataloader_idx != 0 or not trainer.is_global_zero or trainer.sanity_checking:
            return
        rows = []
        n = min(self.num_images, outputs["image"].shape[0])
        for i in range(n):
            image = outputs["image"][i].float().permute(1, 2, 0).cpu().numpy()
            pred = outputs["pred"][i, 0].float().cpu().numpy()
            gt = outputs["depth"][i, 0].float().cpu().numpy()
            valid = outputs["mask"][i, 0].cpu().numpy()
            sky = outputs["sky"][i, 0].cpu().numpy() if outputs.get("sky") is not None else None
            rows.append(
                visualize.depth_panel(
                    image, pred, gt, valid, sky=sky, min_height=self.min_height, colorbars=True
                )
            )
        if not rows:
            return
        width = max(r.shape[1] for r in rows)
        rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
        panel = np.concatenate(rows, axis=0)
        visualize.write_image(self.dirpath / f"val_step{trainer.global_step:07d}.png", panel)
        for logger in trainer.loggers:
            if type(logger).__name__ == "WandbLogger":
                logger.log_image(key="val/panels", images=[panel], step=trainer.global_step)
        self.last_panel = panel


class ParameterCounts(L.Callback):
    """Logs total / trainable / frozen parameter counts once, at the start of fit."""

    def on_fit_start(self, trainer, pl_module):
        counts = pl_module.parameter_counts()
        for logger in trainer.loggers:
            logger.log_hyperparams(counts)
        if trainer.is_global_zero:
            print("parameters: " + ", ".join(f"{k.split('/')[1]} {v / 1e6:.2f}M" for k, v in counts.items()))

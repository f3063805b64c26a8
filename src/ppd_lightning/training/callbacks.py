"""Callbacks: validation panels (pictures) and parameter counts."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np

from ppd_lightning import visualize


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

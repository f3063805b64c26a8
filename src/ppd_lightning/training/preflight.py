"""Checks ``train()`` runs before anything expensive: config types (a key named in the message rather
than ``TypeError: '<' not supported`` from deep inside), image sizes the model can take (before the first
step, not after an epoch), and a warning for more CPU processes than cores."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from typing import Any

from ppd_lightning.errors import ConfigError, check_config

log = logging.getLogger("ppd_lightning.train")

#: keys the training code compares or computes with: (kind, lower bound); see errors.check_config
TRAIN_CONFIG_TYPES: dict[str, tuple[str, float | None]] = {
    "seed": ("int", None),
    "data.batch_size": ("int", 1),
    "data.val_batch_size": ("int?", 1),
    "data.num_workers": ("int", 0),
    "data.train_size": ("size", 1),
    "data.val_size": ("size", 1),
    "data.epoch_batches": ("int", 1),
    "data.shuffle_buffer": ("int", 0),
    "model.val_steps": ("int", 1),
    "model.ema_decay": ("float?", 0),
    "model.grad_loss_weight": ("float", 0),
    "model.align_loss_weight": ("float", 0),
    "model.max_bad_steps": ("int", 1),
    "model.optimizer.lr": ("float", 0),
    "model.optimizer.weight_decay": ("float", 0),
    "trainer.max_steps": ("int", -1),
    "trainer.max_epochs": ("int?", -1),
    "trainer.num_nodes": ("int", 1),
    "trainer.accumulate_grad_batches": ("int", 1),
    "trainer.gradient_clip_val": ("float?", 0),
    "trainer.log_every_n_steps": ("int", 1),
    "trainer.check_val_every_n_epoch": ("int?", 1),
}


def check_train_config(cfg: Mapping) -> None:
    """Types and bounds of :data:`TRAIN_CONFIG_TYPES`, and ``trainer.devices``; :class:`ConfigError`
    naming the key otherwise."""
    check_config(cfg, TRAIN_CONFIG_TYPES)
    trainer = cfg.get("trainer") or {}
    if "devices" in trainer:
        devices = trainer["devices"]
        ok = (
            (isinstance(devices, str) and re.fullmatch(r"\s*(auto|-1|\d+|\d+(\s*,\s*\d+)+,?)\s*", devices))
            or (isinstance(devices, int) and not isinstance(devices, bool) and devices >= -1 and devices != 0)
            or (
                not isinstance(devices, (str, bytes, int))
                and hasattr(devices, "__len__")
                and len(devices) > 0
                and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in devices)
            )
        )
        if not ok:
            raise ConfigError(
                "trainer.devices: expected a positive integer, -1 (all), 'auto' or a list of device "
                f"indices, got {devices!r}"
            )


def check_sizes(model: Any, datamodule: Any) -> None:
    """Training and validation crops must be multiples of the DiT's size multiple (its patching and the
    H/16 semantic grid); checked before the first step (a bad ``val_size`` would otherwise only fail
    after a whole training epoch)."""
    m = int(model.dit.size_multiple)
    for key in ("train_size", "val_size"):
        size = getattr(datamodule, key, None)
        if size is None:
            continue
        h, w = (int(x) for x in size)
        if h % m or w % m:
            fix = [max(m, round(h / m) * m), max(m, round(w / m) * m)]
            raise ConfigError(
                f"data.{key}: {h}x{w} is not a multiple of {m} (this DiT's patching and the 16-pixel "
                f"semantic grid need multiples of {m}), e.g. data.{key}=[{fix[0]},{fix[1]}]"
            )


def cpu_processes(trainer_cfg: Mapping) -> int | None:
    """How many processes a CPU trainer config starts on this machine (None if not a CPU run)."""
    if str(trainer_cfg.get("accelerator", "auto")) != "cpu":
        return None
    devices = trainer_cfg.get("devices", 1)
    if isinstance(devices, str) and devices.strip().isdigit():
        devices = int(devices)
    if isinstance(devices, int) and devices > 0:
        return devices
    if not isinstance(devices, (str, int)) and hasattr(devices, "__len__"):
        return len(devices)
    return None


def warn_cpu_oversubscription(trainer_cfg: Mapping, cores: int | None = None) -> str | None:
    """A warning (logged and returned) when a CPU run starts more processes than the machine has cores:
    ``trainer.devices=8`` on a 2-core CPU runs 8 gloo processes that mostly wait on each other."""
    if int(os.environ.get("LOCAL_RANK", 0) or 0) != 0:
        return None  # the processes Lightning starts for the other ranks: rank 0 has said it
    n = cpu_processes(trainer_cfg)
    cores = cores or _available_cores()
    if n is None or n <= cores:
        return None
    message = (
        f"trainer.devices={n} on the CPU starts {n} training processes on {cores} CPU core(s): they "
        f"share the cores and mostly wait on each other (slower than trainer.devices={cores}); "
        "for a GPU run use trainer=gpu or trainer=ddp"
    )
    log.warning(message)
    return message


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - macOS/Windows
        return os.cpu_count() or 1

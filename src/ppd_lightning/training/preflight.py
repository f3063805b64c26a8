"""Checks ``train()`` runs once the model and data are built, before anything expensive: image sizes the
model can take (before the first step, not after an epoch), and a warning for more CPU processes than
cores. Config types and bounds are checked earlier, against ``training.config.TrainSchema``."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from ppd_lightning.errors import ConfigError

log = logging.getLogger("ppd_lightning.train")

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

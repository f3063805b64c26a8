"""The schema of ``conf/train.yaml``: the types and bounds of the keys training computes with.

``train()`` checks the composed config against :class:`TrainSchema` before building anything, so a bad
value is one error naming its key (``data.batch_size: expected an integer >= 1, got 'abc'``) rather than
a ``TypeError`` from deep inside Lightning after the data is read. The groups that Hydra instantiates
(``data``, ``model``, ``trainer``) keep their other keys, which their constructors check.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from ppd_lightning.config import check, minimum, size
from ppd_lightning.errors import ConfigError

__all__ = ["TrainSchema", "check_train_config"]


@dataclass
class DataSchema:
    batch_size: int = field(default=MISSING, metadata=minimum(1))
    val_batch_size: int | None = field(default=MISSING, metadata=minimum(1))
    num_workers: int = field(default=MISSING, metadata=minimum(0))
    train_size: list[int] = field(default=MISSING, metadata=size())
    val_size: list[int] = field(default=MISSING, metadata=size())
    epoch_batches: int = field(default=MISSING, metadata=minimum(1))
    shuffle_buffer: int = field(default=MISSING, metadata=minimum(0))


@dataclass
class OptimizerSchema:
    lr: float = field(default=MISSING, metadata=minimum(0))
    weight_decay: float = field(default=MISSING, metadata=minimum(0))


@dataclass
class ModelSchema:
    val_steps: int = field(default=MISSING, metadata=minimum(1))
    ema_decay: float | None = field(default=MISSING, metadata=minimum(0))
    grad_loss_weight: float = field(default=MISSING, metadata=minimum(0))
    align_loss_weight: float = field(default=MISSING, metadata=minimum(0))
    max_bad_steps: int = field(default=MISSING, metadata=minimum(1))
    optimizer: OptimizerSchema = field(default_factory=OptimizerSchema)


@dataclass
class TrainerSchema:
    max_steps: int = field(default=MISSING, metadata=minimum(-1))
    max_epochs: int | None = field(default=MISSING, metadata=minimum(-1))
    num_nodes: int = field(default=MISSING, metadata=minimum(1))
    accumulate_grad_batches: int = field(default=MISSING, metadata=minimum(1))
    gradient_clip_val: float | None = field(default=MISSING, metadata=minimum(0))
    log_every_n_steps: int = field(default=MISSING, metadata=minimum(1))
    check_val_every_n_epoch: int | None = field(default=MISSING, metadata=minimum(1))
    devices: Any = MISSING  # an int, 'auto', '0,1' or a list: checked by _check_devices


@dataclass
class TrainSchema:
    seed: int = MISSING
    ckpt_path: str | None = MISSING
    init_dit: str | None = MISSING
    compile: bool = MISSING
    validate_after_fit: bool = MISSING
    float32_matmul_precision: str | None = MISSING
    data: DataSchema = field(default_factory=DataSchema)
    model: ModelSchema = field(default_factory=ModelSchema)
    trainer: TrainerSchema = field(default_factory=TrainerSchema)


def check_train_config(cfg: Any) -> None:
    """:class:`TrainSchema` and ``trainer.devices``; :class:`ConfigError` naming the key otherwise."""
    check(TrainSchema, cfg, extras=True)
    trainer = cfg.get("trainer") or {}
    if "devices" in trainer:
        _check_devices(trainer["devices"])


def _check_devices(devices: Any) -> None:
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

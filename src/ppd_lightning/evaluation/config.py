"""The schema of ``conf/evaluate.yaml``: the types and bounds of every top-level key ``evaluate.py`` reads.

The YAML holds the values (and their documentation); this holds the types. ``evaluate()`` reads the
composed config through :func:`~ppd_lightning.config.typed`, so a wrong value is one error naming its key
and no key has a second default in the code. The ``benchmark`` and ``protocol`` groups are mappings
whose keys their readers check (each benchmark and protocol has its own).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from ppd_lightning.config import minimum

__all__ = ["EdgeConfig", "EvaluateConfig", "OfficialConfig"]


@dataclass
class OfficialConfig:
    dit: str | None = MISSING
    semantics: str | None = MISSING


@dataclass
class EdgeConfig:
    enabled: Any = MISSING  # auto | false
    low: float = field(default=MISSING, metadata=minimum(0))
    high: float = field(default=MISSING, metadata=minimum(0))
    dilation: int = field(default=MISSING, metadata=minimum(0))
    max_points: int = field(default=MISSING, metadata=minimum(1))


@dataclass
class EvaluateConfig:
    benchmark: dict[str, Any] = MISSING
    protocol: dict[str, Any] = MISSING
    benchmarks: Any = MISSING  # null, a list of names or a comma-separated string
    data_root: str | None = MISSING
    roots: dict[str, str] = MISSING
    splits: dict[str, str | None] = MISSING
    allow_missing: bool = MISSING
    predictions: str | None = MISSING
    ckpt: str | None = MISSING
    use_ema: bool = MISSING
    official: OfficialConfig = field(default_factory=OfficialConfig)
    steps: int = field(default=MISSING, metadata=minimum(1))
    ensemble: int = field(default=MISSING, metadata=minimum(1))
    seed: int = MISSING
    infer_area: int | None = field(default=MISSING, metadata=minimum(1))
    upsample: str = MISSING  # edge | bilinear | nearest: checked by PixelPerfectDepth.infer
    batch_size: int = field(default=MISSING, metadata=minimum(1))
    num_workers: int = field(default=MISSING, metadata=minimum(0))
    device: str | None = MISSING
    limit: int | None = field(default=MISSING, metadata=minimum(1))
    panels: int = field(default=MISSING, metadata=minimum(0))
    save_predictions: bool = MISSING
    progress: bool = MISSING
    edge: EdgeConfig = field(default_factory=EdgeConfig)
    output_dir: str = MISSING

"""Weights I/O, below both training and evaluation (no Lightning here): every weight format read with
``torch.load(..., weights_only=True)`` or safetensors, models and encoders built from them, and export.

- :mod:`.files`: the one safe reader (``load_torch_file``), prefixes, strict loading;
- :mod:`.checkpoints`: our training checkpoints: their recorded metadata and :func:`dit_state`, the one
  place that picks the (EMA) DiT weights out of any source;
- :mod:`.released`: the released ``ppd.pth``/``ppd_moge.pth`` DiTs and their semantic encoders
  (``depth_anything_v2_vit*.pth``, DINOv2, MoGe-2's ``moge2.pt``), sizes inferred from the weights;
- :mod:`.encoders`: the frozen semantic encoder from a config or a checkpoint's recorded spec;
- :mod:`.model`: a ready :class:`~ppd_lightning.models.PixelPerfectDepth` from one of our checkpoints,
  and ``export_dit``.

A package rather than one module because together these are ~650 lines with four separate concerns.
"""

from ppd_lightning.errors import CheckpointError
from ppd_lightning.weights.checkpoints import (
    FORMAT,
    METADATA_KEY,
    dit_state,
    is_training_checkpoint,
    read_checkpoint,
    training_area,
    training_metadata,
)
from ppd_lightning.weights.encoders import build_from_spec, build_semantic_encoder
from ppd_lightning.weights.files import (
    StateSource,
    load_strict,
    load_torch_file,
    read_state_dict,
    take_prefix,
)
from ppd_lightning.weights.model import export_dit, load_model_from_checkpoint
from ppd_lightning.weights.released import (
    infer_dit_config,
    infer_encoder_config,
    load_dit,
    load_pixel_perfect_depth,
    load_semantic_encoder,
)

__all__ = [
    "FORMAT",
    "METADATA_KEY",
    "CheckpointError",
    "StateSource",
    "build_from_spec",
    "build_semantic_encoder",
    "dit_state",
    "export_dit",
    "infer_dit_config",
    "infer_encoder_config",
    "is_training_checkpoint",
    "load_dit",
    "load_model_from_checkpoint",
    "load_pixel_perfect_depth",
    "load_semantic_encoder",
    "load_strict",
    "load_torch_file",
    "read_checkpoint",
    "read_state_dict",
    "take_prefix",
    "training_area",
    "training_metadata",
]

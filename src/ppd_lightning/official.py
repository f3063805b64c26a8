"""The public entry points for the released Pixel-Perfect Depth weights (``ppd.pth``, ``ppd_moge.pth``
and their semantic encoders ``depth_anything_v2_vit*.pth`` / ``moge2.pt``)::

    from ppd_lightning.official import load_dit, load_semantic_encoder, load_pixel_perfect_depth

They live in :mod:`ppd_lightning.weights` (which reads every weight format); this module keeps the
documented names importable from here.
"""

from ppd_lightning.errors import CheckpointError
from ppd_lightning.weights.files import (
    StateSource,
    load_strict,
    load_torch_file,
    read_state_dict,
    take_prefix,
)
from ppd_lightning.weights.released import (
    infer_dit_config,
    infer_encoder_config,
    is_moge2_checkpoint,
    load_dit,
    load_pixel_perfect_depth,
    load_semantic_encoder,
)

__all__ = [
    "CheckpointError",  # defined in ppd_lightning.errors, kept importable from here
    "StateSource",
    "infer_dit_config",
    "infer_encoder_config",
    "is_moge2_checkpoint",
    "load_dit",
    "load_pixel_perfect_depth",
    "load_semantic_encoder",
    "load_strict",
    "load_torch_file",
    "read_state_dict",
    "take_prefix",
]

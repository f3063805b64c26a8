"""The public entry points for the released weights and for our checkpoints: the one facade.

    from ppd_lightning.official import load_pixel_perfect_depth, load_dit, load_semantic_encoder
    model = load_pixel_perfect_depth("ppd.pth", "depth_anything_v2_vitl.pth")   # or ppd_moge.pth + moge2.pt
    model = load_checkpoint("last.ckpt")                                          # one of our training runs
    moge = load_moge2("moge2.pt")                                                 # MoGe-2's metric geometry
    dit = load_video_dit("ppvd.pth")                                              # PPVD (with pi3.safetensors)

Every size is inferred from the weights; every file is read with ``torch.load(..., weights_only=True)``
or safetensors. The model classes have the same entry points (``PixelPerfectDepth.from_released``,
``PixelPerfectDepth.from_checkpoint``). Inside the package these names live in :mod:`ppd_lightning.weights`
(the word there is "released"; "official" is only this facade's name and the ``official=`` key of
``evaluate.py`` that mirrors it).
"""

from ppd_lightning.errors import CheckpointError
from ppd_lightning.weights.checkpoints import export_dit
from ppd_lightning.weights.checkpoints import load_model_from_checkpoint as load_checkpoint
from ppd_lightning.weights.encoders import infer_encoder_config, load_semantic_encoder
from ppd_lightning.weights.hub import released
from ppd_lightning.weights.moge2 import load_moge2
from ppd_lightning.weights.ppvd import load_video_dit
from ppd_lightning.weights.released import infer_dit_config, load_dit, load_pixel_perfect_depth

__all__ = [
    "CheckpointError",  # defined in ppd_lightning.errors, importable from here for callers' except clauses
    "export_dit",
    "infer_dit_config",
    "infer_encoder_config",
    "load_checkpoint",
    "load_dit",
    "load_moge2",
    "load_pixel_perfect_depth",
    "load_semantic_encoder",
    "load_video_dit",
    "released",
]

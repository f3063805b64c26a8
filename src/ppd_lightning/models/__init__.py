"""Model code: no Lightning, no file formats."""

from ppd_lightning.models.dit import CascadeSPDiT
from ppd_lightning.models.pi3 import Pi3Semantics
from ppd_lightning.models.ppd import PixelPerfectDepth
from ppd_lightning.models.ppvd import PixelPerfectVideoDepth
from ppd_lightning.models.semantics import SemanticEncoder
from ppd_lightning.models.video_dit import VideoDiT

__all__ = [
    "CascadeSPDiT",
    "PixelPerfectDepth",
    "PixelPerfectVideoDepth",
    "Pi3Semantics",
    "SemanticEncoder",
    "VideoDiT",
]

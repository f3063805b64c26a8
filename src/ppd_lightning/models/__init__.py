"""Model code: no Lightning, no file formats."""

from ppd_lightning.models.dit import CascadeSPDiT
from ppd_lightning.models.ppd import PixelPerfectDepth
from ppd_lightning.models.semantics import SemanticEncoder

__all__ = ["CascadeSPDiT", "PixelPerfectDepth", "SemanticEncoder"]

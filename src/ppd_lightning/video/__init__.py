"""Video depth: :class:`PixelPerfectVideoDepth` (the release's PPVD, window by window in bounded memory;
API in :mod:`ppd_lightning.models.ppvd`)."""

from ppd_lightning.models.ppvd import PixelPerfectVideoDepth

__all__ = ["PixelPerfectVideoDepth"]

"""Geometric transforms of decoded samples to the training resolution.

The image is resampled with area averaging (shrinking) or bilinear interpolation (enlarging);
depth, validity mask and sky mask are resampled with exact nearest-neighbour, so a depth value is
never interpolated across an occlusion edge and the masks stay aligned with the depth.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .format import DepthSample


@dataclass(frozen=True)
class CropResize:
    """Resize so the sample covers ``size`` (aspect kept), then crop ``size``; optional flip.

    Training (``train=True``): the scale is ``cover * U(scale_range)`` (zoom-in augmentation), the
    crop position is uniform and the sample is flipped horizontally with probability ``hflip``.
    Evaluation: cover scale, centre crop, no flip, so it is deterministic.
    The crop is taken in source pixels first, so only the needed region is resampled.
    """

    size: tuple[int, int]  # (H, W)
    train: bool = True
    scale_range: tuple[float, float] = (1.0, 1.25)
    hflip: float = 0.5

    def __call__(self, sample: DepthSample, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
        th, tw = int(self.size[0]), int(self.size[1])
        h, w = sample.depth.shape
        scale = max(th / h, tw / w)
        if self.train:
            if rng is None:
                raise ValueError("CropResize(train=True) needs a random generator")
            scale *= float(rng.uniform(*self.scale_range))
        ch, cw = min(h, max(1, round(th / scale))), min(w, max(1, round(tw / scale)))
        if self.train:
            y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        else:
            y0, x0 = (h - ch) // 2, (w - cw) // 2
        win = (slice(y0, y0 + ch), slice(x0, x0 + cw))
        rgb, depth = sample.rgb[win], sample.depth[win]
        # pack the two masks into one uint8 so they are resampled with one call and stay aligned
        masks = sample.mask[win].astype(np.uint8) | (sample.sky[win].astype(np.uint8) << 1)
        if (ch, cw) != (th, tw):
            shrink = ch > th or cw > tw
            rgb = cv2.resize(rgb, (tw, th), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
            depth = cv2.resize(depth, (tw, th), interpolation=cv2.INTER_NEAREST_EXACT)
            masks = cv2.resize(masks, (tw, th), interpolation=cv2.INTER_NEAREST_EXACT)
        if self.train and self.hflip > 0 and rng.random() < self.hflip:
            # cv2.flip writes contiguous arrays (a [:, ::-1] view would be copied again downstream)
            rgb, depth, masks = cv2.flip(rgb, 1), cv2.flip(depth, 1), cv2.flip(masks, 1)
        # A DepthSample's depth is already 0 wherever its mask is false, and depth and masks went
        # through the same nearest-neighbour pixel picks, so that still holds here.
        return {
            "image": np.ascontiguousarray(rgb),
            "depth": np.ascontiguousarray(depth, dtype=np.float32),
            "mask": (masks & 1).astype(bool),
            "sky": (masks & 2).astype(bool),
        }

"""Geometric transforms of decoded samples to the training resolution.

Two pipelines (``DepthShardDataModule(pipeline=...)``):

- ``release`` (``ReleaseResize``): the release's data pipeline, used by the paper's experiments: a plain
  resize to the stage's size (image bilinear), no flip, no scale jitter; sets listed in ``crop_from``
  (UnrealStereo4K: 1920x1024) are resized to that size first, then cropped to the stage's size at random.
- ``augment`` (``CropResize``): this project's augmentation (cover-resize with zoom-in jitter, random crop,
  horizontal flip; area averaging when shrinking), kept as an option; the CPU demo uses it.

In both, depth, validity mask and sky mask are resampled with exact nearest-neighbour, so a depth value
is never interpolated across an occlusion edge and the masks stay aligned with the depth; and both apply
the release's per-dataset valid depth range (``DATASET_DEPTH_RANGE``: Hypersim 0.1-65 m) to what they read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import cv2
import numpy as np

from ppd_lightning.errors import ConfigError

from .codec import DepthSample
from .raw import hypersim

# Valid depth (metres, exclusive bounds) per dataset, as the release's loaders read it (each defined by
# its converter). Applied to every sample read, so the range is the release's whatever the shards hold.
DATASET_DEPTH_RANGE: dict[str, tuple[float, float]] = {"hypersim": hypersim.VALID_RANGE}


def restrict_depth_range(sample: DepthSample) -> DepthSample:
    """Mark depth outside its dataset's ``DATASET_DEPTH_RANGE`` invalid (depth 0, mask false)."""
    rng = DATASET_DEPTH_RANGE.get(str(sample.meta.get("dataset", "")))
    if rng is None:
        return sample
    keep = sample.mask & (sample.depth > rng[0]) & (sample.depth < rng[1])
    if np.array_equal(keep, sample.mask):
        return sample
    depth = np.where(keep, sample.depth, np.float32(0)).astype(np.float32, copy=False)
    return DepthSample(
        rgb=sample.rgb, depth=depth, mask=keep, sky=sample.sky, meta=sample.meta, key=sample.key
    )


def _pack_masks(mask: np.ndarray, sky: np.ndarray) -> np.ndarray:
    # one uint8 for both masks, so they are resampled with one call and stay aligned
    return mask.astype(np.uint8) | (sky.astype(np.uint8) << 1)


def _resize(rgb, depth, masks, size: tuple[int, int], image_interp: int):
    th, tw = size
    if depth.shape == (th, tw):
        return rgb, depth, masks
    rgb = cv2.resize(rgb, (tw, th), interpolation=image_interp)
    depth = cv2.resize(depth, (tw, th), interpolation=cv2.INTER_NEAREST_EXACT)
    masks = cv2.resize(masks, (tw, th), interpolation=cv2.INTER_NEAREST_EXACT)
    return rgb, depth, masks


def _output(rgb, depth, masks) -> dict[str, np.ndarray]:
    # A DepthSample's depth is already 0 wherever its mask is false, and depth and masks went
    # through the same nearest-neighbour pixel picks, so that still holds here.
    return {
        "image": np.ascontiguousarray(rgb),
        "depth": np.ascontiguousarray(depth, dtype=np.float32),
        "mask": (masks & 1).astype(bool),
        "sky": (masks & 2).astype(bool),
    }


class ReleaseResize:
    """The release's pipeline: resize to ``size`` (H, W) (image bilinear, depth and masks nearest).

    ``crop_from`` maps a dataset name (``meta["dataset"]``) to an intermediate (H, W): such a sample is
    resized to it and then cropped to ``size``, at a uniform random position in training and centred
    otherwise (the release: UnrealStereo4K at 1920x1024, then a random 1024x768 crop). No flips, no
    scale jitter.
    """

    def __init__(self, size, train: bool = True, crop_from: Mapping[str, tuple[int, int]] | None = None):
        self.size = (int(size[0]), int(size[1]))
        self.train = bool(train)
        self.crop_from: dict[str, tuple[int, int]] = {}
        for name, hw in dict(crop_from or {}).items():
            if len(hw) != 2 or int(hw[0]) < self.size[0] or int(hw[1]) < self.size[1]:
                raise ConfigError(
                    f"data.crop_from[{name!r}] must be [H, W] at least the output size {list(self.size)}, got {hw!r}"
                )
            self.crop_from[str(name)] = (int(hw[0]), int(hw[1]))

    def __repr__(self) -> str:
        return f"ReleaseResize(size={self.size}, train={self.train}, crop_from={self.crop_from})"

    def __call__(self, sample: DepthSample, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
        sample = restrict_depth_range(sample)
        rgb, depth = sample.rgb, sample.depth
        masks = _pack_masks(sample.mask, sample.sky)
        th, tw = self.size
        first = self.crop_from.get(str(sample.meta.get("dataset", "")))
        if first is None:
            return _output(*_resize(rgb, depth, masks, self.size, cv2.INTER_LINEAR))
        rgb, depth, masks = _resize(rgb, depth, masks, first, cv2.INTER_LINEAR)
        h, w = first
        if self.train:
            if rng is None:
                raise ValueError("ReleaseResize(train=True) needs a random generator to crop")
            y0, x0 = int(rng.integers(0, h - th + 1)), int(rng.integers(0, w - tw + 1))
        else:
            y0, x0 = (h - th) // 2, (w - tw) // 2
        win = (slice(y0, y0 + th), slice(x0, x0 + tw))
        return _output(rgb[win], depth[win], masks[win])


@dataclass(frozen=True)
class CropResize:
    """This project's augmentation (``pipeline: augment``): resize so the sample covers ``size`` (aspect
    kept), then crop ``size``; optional flip.

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
        sample = restrict_depth_range(sample)
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
        masks = _pack_masks(sample.mask[win], sample.sky[win])
        if (ch, cw) != (th, tw):
            shrink = ch > th or cw > tw
            rgb = cv2.resize(rgb, (tw, th), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
            depth = cv2.resize(depth, (tw, th), interpolation=cv2.INTER_NEAREST_EXACT)
            masks = cv2.resize(masks, (tw, th), interpolation=cv2.INTER_NEAREST_EXACT)
        if self.train and self.hflip > 0 and rng.random() < self.hflip:
            # cv2.flip writes contiguous arrays (a [:, ::-1] view would be copied again downstream)
            rgb, depth, masks = cv2.flip(rgb, 1), cv2.flip(depth, 1), cv2.flip(masks, 1)
        return _output(rgb, depth, masks)

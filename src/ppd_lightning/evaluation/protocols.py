"""Evaluation protocols: which pixels count, geometric preparation, and the alignment.

``marigold`` (the protocol most tables use): least-squares scale and shift in depth space, then the
prediction is clipped to the benchmark's ``[min_depth, max_depth]`` and to ``>= 1e-6``.

``ppd`` (the released Pixel-Perfect Depth evaluation): RANSAC in ``log(d + 1)`` space
(:func:`~ppd_lightning.evaluation.align.align_log_ransac`), clipped to ``[1e-3, max gt]``.

Per benchmark (valid = ``min_depth < d < max_depth`` and the reader's own validity), the settings are the
:data:`PROTOCOLS` table at the end of this file, and only there: ranges, crops (KITTI's 352x1216 and Eigen
masks, NYUv2's Eigen crop under ``marigold``), ETH3D's resize under ``ppd``, DIODE's gradient mask.

ETH3D under ``marigold`` (``alignment_max_res = 1024``): Marigold's ``align_depth_least_square``
brings the maps down with ``torch.nn.Upsample(scale_factor=s, mode="nearest")``,
``s = min(1024 / H, 1024 / W)``, applied to ``torch.as_tensor(x).unsqueeze(0)``, a (1, H, W) tensor.
``Upsample`` reads a 3-D tensor as (N, C, L) and resamples only L: the width goes to ``floor(W * s)``
columns and every row is kept, so a 4032 x 6048 map is fitted at 4032 x 1024 (not 683 x 1024) and a
portrait 6048 x 4032 one at 6048 x 682. The fit looks one-dimensional because it is, in Marigold's
code; reproducing it (:func:`~ppd_lightning.evaluation.align.align_least_squares`) is what makes our
ETH3D numbers Marigold's (AbsRel and delta1 to 1e-6 in ``tests/evaluation/test_protocols.py``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace

import cv2
import numpy as np
import torch

from ppd_lightning.evaluation.align import align_least_squares, align_log_ransac
from ppd_lightning.evaluation.datasets import Sample
from ppd_lightning.geometry import as_hw

__all__ = ["PROTOCOLS", "BenchmarkSpec", "Prepared", "Protocol", "get_protocol"]


@dataclass(frozen=True)
class BenchmarkSpec:
    """How one benchmark is scored under one protocol."""

    min_depth: float
    max_depth: float = math.inf
    kb_crop: bool = False  # KITTI: crop 352 x 1216, bottom rows, centred columns (image and gt)
    eigen_mask: str | None = None  # "nyu" or "kitti"
    resize: tuple[int, int] | None = None  # (W, H): image INTER_AREA, gt INTER_NEAREST, before all else
    grad_threshold: float | None = None  # exclude Sobel |dx| + |dy| of the depth above this
    # least squares: fit on maps brought down as Marigold's --alignment_max_res does (1024 for ETH3D:
    # nearest, the width only, see the module docstring), applied at full size
    alignment_max_res: int | None = None


@dataclass
class Prepared:
    """A sample after the protocol's geometry, plus what is needed to map predictions onto it."""

    name: str
    image: np.ndarray | None  # (h, w, 3) uint8, what a model sees; None when not decoded
    depth: np.ndarray  # (h, w) float32
    mask: np.ndarray  # (h, w) bool, the pixels scored
    original_shape: tuple[int, int]  # (H, W) of the benchmark image
    intrinsics: np.ndarray | None = None


@dataclass(frozen=True)
class Protocol:
    name: str
    alignment: str  # "least_squares" or "log_ransac"
    specs: dict[str, BenchmarkSpec]
    clip_min: float = 1e-6  # marigold: final lower clip
    pred_interpolation: str = "nearest"  # how predictions are brought to the ground truth's size
    ransac: dict = field(default_factory=dict)  # options for align_log_ransac

    def spec(self, benchmark: str) -> BenchmarkSpec:
        if benchmark not in self.specs:
            raise ValueError(f"protocol {self.name} has no settings for {benchmark!r}")
        return self.specs[benchmark]

    def with_overrides(self, overrides: dict | None = None, **fields) -> Protocol:
        """A copy with per-benchmark ``BenchmarkSpec`` fields and/or protocol fields replaced."""
        specs = dict(self.specs)
        for bench, values in (overrides or {}).items():
            values = dict(values)
            if values.get("resize") is not None:
                values["resize"] = tuple(int(v) for v in values["resize"])
            specs[bench] = replace(specs[bench], **values) if bench in specs else BenchmarkSpec(**values)
        return replace(self, specs=specs, **fields)

    # -- geometry and masks -------------------------------------------------------------------
    @staticmethod
    def _kb_box(h: int, w: int) -> tuple[int, int, int, int]:
        ch, cw = min(352, h), min(1216, w)
        return h - ch, (w - cw) // 2, ch, cw

    def _geometry(self, spec: BenchmarkSpec, shape: tuple[int, int]):
        """The crop box (top, left, h, w) and the resize (W, H) applied to an original-size map."""
        h, w = shape
        box = self._kb_box(h, w) if spec.kb_crop else (0, 0, h, w)
        return box, spec.resize

    def prepare(self, sample: Sample, benchmark: str) -> Prepared:
        spec = self.spec(benchmark)
        image, depth, valid = sample.image, sample.depth, sample.valid
        k = None if sample.intrinsics is None else sample.intrinsics.copy()
        (top, left, ch, cw), size = self._geometry(spec, depth.shape)
        depth, valid = (x[top : top + ch, left : left + cw] for x in (depth, valid))
        if image is not None:
            if image.shape[:2] != sample.depth.shape:
                raise ValueError(
                    f"{sample.name}: image is {image.shape[0]}x{image.shape[1]}, depth "
                    f"{sample.depth.shape[0]}x{sample.depth.shape[1]} (the reader brings them to one size)"
                )
            image = image[top : top + ch, left : left + cw]
        if k is not None:
            k[0, 2] -= left
            k[1, 2] -= top
        if size is not None and (depth.shape[1], depth.shape[0]) != tuple(size):
            sx, sy = size[0] / depth.shape[1], size[1] / depth.shape[0]
            if image is not None:
                image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            depth = cv2.resize(
                np.where(valid, depth, 0).astype(np.float32), size, interpolation=cv2.INTER_NEAREST
            )
            valid = cv2.resize(valid.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
            if k is not None:
                k[0] *= sx
                k[1] *= sy
        d = np.where(valid, depth, 0.0).astype(np.float32)
        with np.errstate(invalid="ignore"):
            mask = valid & (d > spec.min_depth) & (d < spec.max_depth)
        mask &= self._eigen_mask(spec, d.shape)
        if spec.grad_threshold is not None:
            gx = cv2.Sobel(d, cv2.CV_32F, 1, 0, ksize=3)
            gy = cv2.Sobel(d, cv2.CV_32F, 0, 1, ksize=3)
            mask &= (np.abs(gx) + np.abs(gy)) <= spec.grad_threshold
        image = None if image is None else np.ascontiguousarray(image)
        return Prepared(sample.name, image, d, mask, depth_shape(sample), k)

    @staticmethod
    def _eigen_mask(spec: BenchmarkSpec, shape: tuple[int, int]) -> np.ndarray:
        h, w = shape
        if spec.eigen_mask is None:
            return np.ones(shape, bool)
        m = np.zeros(shape, bool)
        if spec.eigen_mask == "nyu":
            m[45:471, 41:601] = True
        elif spec.eigen_mask == "kitti":
            m[int(0.3324324 * h) : int(0.91351351 * h), int(0.0359477 * w) : int(0.96405229 * w)] = True
        else:
            raise ValueError(f"unknown eigen_mask {spec.eigen_mask!r} (nyu or kitti)")
        return m

    def map_prediction(
        self, pred: np.ndarray, prepared: Prepared, benchmark: str, source: str = ""
    ) -> np.ndarray:
        """Bring a prediction onto the prepared ground truth's grid.

        A prediction at the benchmark image's original size gets the same crop/resize as the
        ground truth; one already at the prepared size is used as is; any other size is resized to
        the prepared size (``pred_interpolation``) with a warning.
        """
        pred = as_hw(pred, f"prediction {source or prepared.name}").astype(np.float32, copy=False)
        target = prepared.depth.shape
        if pred.shape == target:
            return pred
        interp = cv2.INTER_NEAREST if self.pred_interpolation == "nearest" else cv2.INTER_LINEAR
        if pred.shape == prepared.original_shape:
            spec = self.spec(benchmark)
            (top, left, ch, cw), size = self._geometry(spec, pred.shape)
            pred = pred[top : top + ch, left : left + cw]
            if size is not None and pred.shape != target:
                pred = cv2.resize(pred, (target[1], target[0]), interpolation=interp)
            if pred.shape == target:
                return pred
        warnings.warn(
            f"prediction {source or prepared.name} is {pred.shape[0]}x{pred.shape[1]}, ground truth is "
            f"{target[0]}x{target[1]}: resized ({self.pred_interpolation})",
            stacklevel=2,
        )
        return cv2.resize(pred, (target[1], target[0]), interpolation=interp)

    # -- alignment ------------------------------------------------------------------------------
    def align(
        self,
        pred: torch.Tensor,
        gt: torch.Tensor,
        mask: torch.Tensor,
        benchmark: str,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Align a batch (B,H,W) of predictions to metric depth and apply the protocol's clipping."""
        if self.alignment == "least_squares":
            spec = self.spec(benchmark)
            out = align_least_squares(pred, gt, mask, max_resolution=spec.alignment_max_res)
            out = out.clamp(min=spec.min_depth, max=spec.max_depth)
            return out.clamp_min(self.clip_min)
        if self.alignment == "log_ransac":
            return align_log_ransac(pred, gt, mask, generator=generator, **self.ransac)
        raise ValueError(f"unknown alignment {self.alignment!r}")


def depth_shape(sample: Sample) -> tuple[int, int]:
    return (int(sample.depth.shape[0]), int(sample.depth.shape[1]))


_KITTI = dict(kb_crop=True, eigen_mask="kitti")

PROTOCOLS: dict[str, Protocol] = {
    "marigold": Protocol(
        name="marigold",
        alignment="least_squares",
        pred_interpolation="bilinear",
        specs={
            "nyuv2": BenchmarkSpec(1e-3, 10.0, eigen_mask="nyu"),
            "kitti": BenchmarkSpec(1e-5, 80.0, **_KITTI),
            "eth3d": BenchmarkSpec(1e-5, math.inf, alignment_max_res=1024),
            "scannet": BenchmarkSpec(1e-3, 10.0),
            "diode": BenchmarkSpec(0.6, 350.0),  # Marigold's DIODE range, on top of the mask file
            "hypersim": BenchmarkSpec(1e-3, 65.0),
        },
    ),
    "ppd": Protocol(
        name="ppd",
        alignment="log_ransac",
        pred_interpolation="nearest",
        ransac={"max_trials": 1000},
        specs={
            "nyuv2": BenchmarkSpec(0.1, 10.0),
            "kitti": BenchmarkSpec(0.1, 80.0, **_KITTI),
            "eth3d": BenchmarkSpec(0.01, math.inf, resize=(2048, 1360)),
            "scannet": BenchmarkSpec(0.01, 10.0),
            "diode": BenchmarkSpec(0.6, 350.0, grad_threshold=0.3),
            "hypersim": BenchmarkSpec(0.01, 65.0),
        },
    ),
}


def get_protocol(name: str, overrides: dict | None = None, ransac: dict | None = None) -> Protocol:
    """The protocol ``name`` with optional per-benchmark spec overrides and RANSAC options."""
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; choose from {', '.join(PROTOCOLS)}")
    proto = PROTOCOLS[name]
    fields = {}
    if ransac:
        fields["ransac"] = {**proto.ransac, **ransac}
    return proto.with_overrides(overrides, **fields)

"""Where evaluation's predictions come from, behind one interface (as MoGe's ``test/baseline.py``).

A predictor turns prepared benchmark samples into :class:`Prediction` s at the sample's prepared size:

- :class:`SavedPredictions`: ``.npy`` files saved by any method, read and mapped onto the sample by the
  protocol; cheap and I/O-bound, so it runs inside the DataLoader's workers (``in_workers``), and it
  needs no decoded image (``needs_image``);
- :class:`ModelPredictor`: a :class:`~ppd_lightning.models.PixelPerfectDepth` run in the main process on
  the device, on batches of equal-size images, with optional test-time ensembling.

``evaluation/run.py`` knows only this interface; a video predictor is a third implementation.
Models are loaded through the model classes' entry points (no Lightning).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol as Interface

import numpy as np
import torch

from ppd_lightning.errors import ConfigError, InputError, MissingFileError
from ppd_lightning.evaluation.files import confine_name
from ppd_lightning.evaluation.protocols import Prepared, Protocol
from ppd_lightning.geometry import as_hw
from ppd_lightning.models.ppd import PixelPerfectDepth

__all__ = [
    "ModelPredictor",
    "Prediction",
    "Predictor",
    "SavedPredictions",
    "build_predictor",
    "prediction_path",
    "resolve_device",
]

log = logging.getLogger(__name__)


@dataclass
class Prediction:
    """One sample's prediction at its prepared size. ``path``: the file it was read from (None: computed
    here, then it must be finite everywhere, and ``save_predictions`` writes it)."""

    depth: np.ndarray  # float32 (h, w)
    path: Path | None = None
    spread: np.ndarray | None = None  # ensemble: per-pixel standard deviation across members

    def describe(self, name: str) -> str:
        return (
            f"prediction {self.path}" if self.path is not None else f"the model's prediction for image {name}"
        )


class Predictor(Interface):
    needs_image: bool  # whether samples must decode their image (else only for panels)
    in_workers: bool  # whether predict_many runs inside the DataLoader's worker processes

    def for_benchmark(self, name: str, protocol: Protocol, several: bool) -> Predictor: ...

    def predict_many(self, samples: Sequence[Prepared]) -> list[Prediction]: ...


def prediction_path(root: str | Path, name: str, suffix: str = ".npy") -> Path:
    """``<root>/<rgb relative path with its suffix replaced by .npy>``; a ``name`` that is absolute
    or climbs out of ``root`` is refused (``UnsafeNameError`` naming it)."""
    return Path(root) / Path(confine_name(name, "image name")).with_suffix(suffix)


def read_prediction(path: Path) -> np.ndarray:
    """A saved prediction: float32 (H, W), from an ``.npy`` of shape HxW, 1xHxW or HxWx1."""
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - truncated, pickled, .npz, text...: one named error
        raise InputError(f"prediction {path}: not a readable .npy array ({type(e).__name__}: {e})") from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf":
        got = arr.dtype if isinstance(arr, np.ndarray) else type(arr).__name__
        raise InputError(f"prediction {path}: expected a numeric HxW array, got {got}")
    return as_hw(arr, f"prediction {path}").astype(np.float32, copy=False)


class SavedPredictions:
    """Predictions saved by any method as ``<dir>/<rgb path with .npy suffix>`` (float32 H x W), mapped
    onto the prepared sample by the protocol (the benchmark's crop and resize)."""

    needs_image = False
    in_workers = True

    def __init__(self, directory: str | Path, protocol: Protocol | None = None, benchmark: str = "") -> None:
        self.directory = Path(directory).expanduser()
        if not self.directory.is_dir():
            raise MissingFileError(
                f"predictions directory {self.directory} does not exist; expected "
                "<DIR>/<rgb relative path with its suffix replaced by .npy>"
            )
        self.protocol, self.benchmark = protocol, benchmark

    def for_benchmark(self, name: str, protocol: Protocol, several: bool = False) -> SavedPredictions:
        """Bound to one benchmark; with several benchmarks, ``<dir>/<name>/`` when it exists."""
        directory = self.directory / name if several and (self.directory / name).is_dir() else self.directory
        return SavedPredictions(directory, protocol, name)

    def load(self, name: str) -> np.ndarray:
        """The raw saved array for image ``name`` (not mapped onto any sample)."""
        path = prediction_path(self.directory, name)
        if not path.is_file():
            raise MissingFileError(
                f"no prediction for {name}: expected {path} (float32 HxW .npy, named after the rgb path)"
            )
        return read_prediction(path)

    def predict_many(self, samples: Sequence[Prepared]) -> list[Prediction]:
        if self.protocol is None:
            raise RuntimeError("SavedPredictions.predict_many before for_benchmark()")  # a bug, not input
        out = []
        for p in samples:
            path = prediction_path(self.directory, p.name)
            depth = self.protocol.map_prediction(self.load(p.name), p, self.benchmark, source=str(path))
            out.append(Prediction(depth, path=path))
        return out


class ModelPredictor:
    """Runs ``model.infer`` on prepared images, batched by size, with optional test-time ensembling.

    ``ensemble = N > 1`` runs N samplings with noise seeds ``seed, seed + 1, ...`` and returns the
    per-pixel median (mean of the two middle values for even N) and the per-pixel standard
    deviation across members as the spread.
    """

    needs_image = True
    in_workers = False

    def __init__(
        self,
        model: torch.nn.Module,
        device: torch.device,
        steps: int = 4,
        ensemble: int = 1,
        seed: int = 0,
        infer_area: int | None = None,
        upsample: str = "nearest",
    ) -> None:
        if ensemble < 1:
            raise ConfigError(f"ensemble must be >= 1, got {ensemble}")
        self.model = model.to(device).eval()
        self.device = device
        self.steps, self.ensemble, self.seed, self.infer_area = (
            int(steps),
            int(ensemble),
            int(seed),
            infer_area,
        )
        self.upsample = upsample  # infer's output_mode: working size -> the prepared image's size

    def for_benchmark(self, name: str, protocol: Protocol, several: bool = False) -> ModelPredictor:
        return self

    def predict_many(self, samples: Sequence[Prepared]) -> list[Prediction]:
        out: list[Prediction | None] = [None] * len(samples)
        groups: dict[tuple, list[int]] = {}
        for i, p in enumerate(samples):
            groups.setdefault(p.image.shape, []).append(i)
        for idx in groups.values():
            preds, spreads = self.predict([samples[i].image for i in idx])
            for j, i in enumerate(idx):
                out[i] = Prediction(preds[j], spread=spreads[j])
        return out  # type: ignore[return-value]

    @torch.no_grad()
    def predict(self, images: Sequence[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
        """uint8 (h, w, 3) images of one size -> (predictions, spreads) as float32 (h, w) arrays."""
        x = torch.stack([torch.from_numpy(np.ascontiguousarray(im)) for im in images]).to(self.device)
        x = x.permute(0, 3, 1, 2).float() / 255.0
        kwargs = {"steps": self.steps, "output_mode": self.upsample}
        if self.infer_area is not None:
            kwargs["area"] = int(self.infer_area)
        members = []
        for i in range(self.ensemble):
            gen = torch.Generator(device=self.device).manual_seed(self.seed + i)
            members.append(self.model.infer(x, generator=gen, **kwargs)[:, 0].float())
        stack = torch.stack(members)  # (N, B, h, w)
        if self.ensemble == 1:
            pred, spread = stack[0], None
        else:
            s = stack.sort(0).values
            n = self.ensemble
            pred = 0.5 * (s[(n - 1) // 2] + s[n // 2])
            spread = stack.std(0, unbiased=False)
        preds = [p.cpu().numpy() for p in pred]
        spreads = [None] * len(preds) if spread is None else [s.cpu().numpy() for s in spread]
        return preds, spreads


def resolve_device(name: str | None) -> torch.device:
    """``None``/``""``/``"auto"``: CUDA when available, else CPU; otherwise the named device."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_predictor(cfg) -> Predictor:
    """Exactly one of ``predictions``, ``ckpt`` or ``official.dit`` selects where predictions come from
    (``cfg``: an :class:`~ppd_lightning.evaluation.config.EvaluateConfig`)."""
    sources = (("predictions", cfg.predictions), ("ckpt", cfg.ckpt), ("official.dit", cfg.official.dit))
    chosen = [k for k, v in sources if v]
    if len(chosen) != 1:
        raise ConfigError(
            "choose exactly one prediction source: predictions=<DIR> (saved .npy of any method), "
            "ckpt=<our checkpoint>, or official.dit=<ppd.pth> official.semantics=<depth_anything_v2_vitl.pth> "
            "(or a released name: official.dit=ppd)" + (f" (got {', '.join(chosen)})" if chosen else "")
        )
    if chosen[0] == "predictions":
        return SavedPredictions(cfg.predictions)
    if chosen[0] == "ckpt":
        model = PixelPerfectDepth.from_checkpoint(cfg.ckpt, use_ema=cfg.use_ema)
    else:
        model = PixelPerfectDepth.from_released(cfg.official.dit, cfg.official.semantics)
    return ModelPredictor(
        model, resolve_device(cfg.device), cfg.steps, cfg.ensemble, cfg.seed, cfg.infer_area, cfg.upsample
    )

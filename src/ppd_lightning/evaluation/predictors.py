"""Prediction providers for evaluation: saved ``.npy`` files of any method (:class:`SavedPredictions`), or a
model, ours or released (:class:`ModelPredictor`).

A ``ModelPredictor`` maps a list of prepared images to float32 (h, w) predictions at the prepared size;
saved predictions are read at whatever size was saved and mapped by the protocol. Models are loaded by
:mod:`ppd_lightning.weights` (no Lightning), and run through :class:`~ppd_lightning.models.PixelPerfectDepth`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = ["ModelPredictor", "SavedPredictions", "build_predictor", "prediction_path", "resolve_device"]

log = logging.getLogger(__name__)


def prediction_path(root: str | Path, name: str, suffix: str = ".npy") -> Path:
    """``<root>/<rgb relative path with its suffix replaced by .npy>``; a ``name`` that is absolute
    or climbs out of ``root`` is refused (``UnsafeNameError`` naming it)."""
    from ppd_lightning.evaluation.files import confine_name

    return Path(root) / Path(confine_name(name, "image name")).with_suffix(suffix)


class SavedPredictions:
    """Predictions saved by any method as ``<dir>/<rgb path with .npy suffix>`` (float32 H x W)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory).expanduser()
        if not self.directory.is_dir():
            raise FileNotFoundError(
                f"predictions directory {self.directory} does not exist; expected "
                "<DIR>/<rgb relative path with its suffix replaced by .npy>"
            )

    def load(self, name: str) -> np.ndarray:
        path = prediction_path(self.directory, name)
        if not path.is_file():
            raise FileNotFoundError(
                f"no prediction for {name}: expected {path} (float32 HxW .npy, named after the rgb path)"
            )
        try:
            arr = np.load(path, allow_pickle=False)
        except Exception as e:  # noqa: BLE001 - truncated, pickled, .npz, text...: one named error
            raise ValueError(
                f"prediction {path}: not a readable .npy array ({type(e).__name__}: {e})"
            ) from None
        if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf":
            got = arr.dtype if isinstance(arr, np.ndarray) else type(arr).__name__
            raise ValueError(f"prediction {path}: expected a numeric HxW array, got {got}")
        if arr.ndim == 3 and 1 in (arr.shape[0], arr.shape[-1]):
            arr = arr.reshape(arr.shape[1:] if arr.shape[0] == 1 else arr.shape[:2])
        if arr.ndim != 2 or 0 in arr.shape:
            raise ValueError(f"prediction {path}: expected an HxW (or HxWx1) array, got shape {arr.shape}")
        return np.asarray(arr, np.float32)


class ModelPredictor:
    """Runs ``model.infer`` on prepared images, with optional test-time ensembling.

    ``ensemble = N > 1`` runs N samplings with noise seeds ``seed, seed + 1, ...`` and returns the
    per-pixel median (mean of the two middle values for even N) and the per-pixel standard
    deviation across members as the spread.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        device: torch.device,
        steps: int = 4,
        ensemble: int = 1,
        seed: int = 0,
        infer_area: int | None = None,
    ) -> None:
        if ensemble < 1:
            raise ValueError(f"ensemble must be >= 1, got {ensemble}")
        self.model = model.to(device).eval()
        self.device = device
        self.steps, self.ensemble, self.seed, self.infer_area = (
            int(steps),
            int(ensemble),
            int(seed),
            infer_area,
        )

    @torch.no_grad()
    def predict(self, images: Sequence[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
        """uint8 (h, w, 3) images of one size -> (predictions, spreads) as float32 (h, w) arrays."""
        x = torch.stack([torch.from_numpy(np.ascontiguousarray(im)) for im in images]).to(self.device)
        x = x.permute(0, 3, 1, 2).float() / 255.0
        kwargs = {"steps": self.steps}
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


def released_model(dit: str, semantics: str | None) -> torch.nn.Module:
    """A released DiT (``ppd.pth``, or an exported ``.safetensors``) with its optional encoder."""
    from ppd_lightning.models import PixelPerfectDepth
    from ppd_lightning.weights import load_dit, load_semantic_encoder

    dit_module = load_dit(dit)
    encoder = load_semantic_encoder(semantics) if semantics else None
    return PixelPerfectDepth(dit_module, encoder)


def checkpoint_model(path: str, use_ema: bool = True) -> torch.nn.Module:
    """One of our training checkpoints, rebuilt without Lightning."""
    from ppd_lightning.weights import load_model_from_checkpoint

    return load_model_from_checkpoint(path, use_ema=use_ema, map_location="cpu")


def build_predictor(cfg: dict) -> SavedPredictions | ModelPredictor:
    """Exactly one of ``predictions``, ``ckpt`` or ``official.dit`` selects where predictions come from."""
    official = cfg.get("official") or {}
    chosen = [k for k, v in (("predictions", cfg.get("predictions")), ("ckpt", cfg.get("ckpt")),
                             ("official.dit", official.get("dit"))) if v]  # fmt: skip
    if len(chosen) != 1:
        raise ValueError(
            "choose exactly one prediction source: predictions=<DIR> (saved .npy of any method), "
            "ckpt=<our checkpoint>, or official.dit=<ppd.pth> official.semantics=<depth_anything_v2_vitl.pth>"
            + (f" (got {', '.join(chosen)})" if chosen else "")
        )
    if chosen[0] == "predictions":
        return SavedPredictions(cfg["predictions"])
    device = resolve_device(cfg.get("device"))
    if chosen[0] == "ckpt":
        model = checkpoint_model(cfg["ckpt"], use_ema=bool(cfg.get("use_ema", True)))
    else:
        model = released_model(official["dit"], official.get("semantics"))
    return ModelPredictor(
        model,
        device,
        steps=int(cfg.get("steps", 4)),
        ensemble=int(cfg.get("ensemble", 1)),
        seed=int(cfg.get("seed", 0)),
        infer_area=cfg.get("infer_area"),
    )

"""Reading weight files: one safe reader for every format, prefixes, and strict loading.

Files are read with ``torch.load(..., weights_only=True)`` (no pickle code execution) or safetensors;
every failure is one :class:`~ppd_lightning.errors.CheckpointError` naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import torch

from ppd_lightning.errors import CheckpointError

WeightsLike = str | os.PathLike | Mapping[str, torch.Tensor]

__all__ = [
    "StateDict",
    "WeightsLike",
    "WeightFile",
    "as_state_dict",
    "load_strict",
    "load_torch_file",
    "read_object",
    "read_state_dict",
    "require",
    "take_prefix",
]


class WeightFile(NamedTuple):
    """What a weight file holds (any object ``weights_only`` loading allows), and the name errors use."""

    content: object
    name: str


class StateDict(NamedTuple):
    """Tensors by key and the name of the file they came from: every error about them names it."""

    tensors: dict[str, torch.Tensor]
    name: str

    def under(self, prefix: str, ignore: tuple[str, ...] = ()) -> StateDict:
        """The tensors under ``prefix`` (stripped), see :func:`take_prefix`."""
        return StateDict(take_prefix(self.tensors, prefix, self.name, ignore), self.name)

    def require(self, key: str) -> torch.Tensor:
        return require(self.tensors, key, self.name)

    def load_into(self, module: torch.nn.Module) -> torch.nn.Module:
        load_strict(module, self.tensors, self.name)
        return module


def read_state_dict(source: WeightsLike) -> StateDict:
    """Path (.pth/.pt/.bin via weights_only torch.load, or .safetensors) or mapping -> StateDict."""
    return as_state_dict(*read_object(source))


def load_torch_file(source: str | os.PathLike, map_location="cpu") -> object:
    """``torch.load(..., weights_only=True)`` (or safetensors for ``.safetensors``) with every failure as
    one :class:`CheckpointError` naming the file: missing, empty, truncated, not a checkpoint at all (a
    random zip, text), or a pickle holding more than tensors and plain containers."""
    path = Path(source)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path}: cannot read checkpoint: the file is empty (0 bytes)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device=str(map_location))
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any reader failure is one clear error naming the file
        if "Weights only load failed" in str(e):  # a pickle of other Python objects
            raise CheckpointError(
                f"{path}: cannot read checkpoint: not a file of tensors and plain containers (another "
                "program's pickled Python objects, or no pickle at all; refused, as unpickling other objects "
                "could run arbitrary code)"
            ) from e
        kind = "safetensors" if path.suffix == ".safetensors" else "PyTorch (torch.save)"
        text = str(e)
        if "PytorchStreamReader" in text or "inline_container" in text or isinstance(e, EOFError):
            detail = "its archive is incomplete or is not a torch.save archive"
        else:  # the reader's own words, first sentence only
            detail = f"{type(e).__name__}: {text.splitlines()[0] if text else ''}".split(". ")[0][:160]
        raise CheckpointError(
            f"{path}: cannot read checkpoint ({size} bytes): truncated, or not a {kind} checkpoint ({detail})"
        ) from e


def read_object(source: WeightsLike) -> WeightFile:
    """What a path holds (weights_only torch.load or safetensors) or an already loaded mapping, named."""
    if isinstance(source, Mapping):
        return WeightFile(source, "<state dict>")
    return WeightFile(load_torch_file(source), str(Path(source)))


def as_state_dict(content: object, name: str) -> StateDict:
    """A file's content as tensors by key (a plain state dict saved inside a 'state_dict' wrapper too)."""
    if isinstance(content, Mapping) and isinstance(content.get("state_dict"), Mapping):
        content = content["state_dict"]
    if not isinstance(content, Mapping) or not all(isinstance(v, torch.Tensor) for v in content.values()):
        raise CheckpointError(f"{name}: expected a state dict of tensors, got {type(content).__name__}")
    return StateDict(dict(content), name)


def take_prefix(sd: dict[str, torch.Tensor], prefix: str, name: str, ignore: tuple[str, ...] = ()) -> dict:
    """Keys under ``prefix`` (stripped) when any key has it; other keys are an error unless ignored."""
    if not any(k.startswith(prefix) for k in sd):
        return sd
    other = [k for k in sd if not k.startswith(prefix) and not k.startswith(ignore)]
    if other:
        raise CheckpointError(f"{name}: unexpected keys outside '{prefix}*': {preview(other)}")
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def preview(keys: list[str], n: int = 8) -> str:
    keys = sorted(keys)
    more = f" ... (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def require(sd: Mapping, key: str, name: str) -> torch.Tensor:
    if key not in sd:
        raise CheckpointError(
            f"{name}: missing key '{key}' (is this a Pixel-Perfect Depth / DINOv2 checkpoint?)"
        )
    return sd[key]


def load_strict(module: torch.nn.Module, sd: Mapping[str, torch.Tensor], name: str) -> None:
    """load_state_dict that reports missing/unexpected keys and shape mismatches in one error line."""
    own = module.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong = [
        f"{k} {tuple(sd[k].shape)} != {tuple(own[k].shape)}"
        for k in own
        if k in sd and sd[k].shape != own[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {preview(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {preview(unexpected)}")
    if wrong:
        problems.append(f"shape mismatches: {preview(wrong, 4)}")
    if problems:
        raise CheckpointError(f"{name}: " + "; ".join(problems))
    module.load_state_dict(sd, strict=True)

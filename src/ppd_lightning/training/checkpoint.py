"""The Lightning checkpoint IO of training: atomic writes, and safe loading when a fit resumes.

Reading our checkpoints outside a fit (rebuilding a model, export, ``init_dit=``) is
:mod:`ppd_lightning.weights`, which needs no Lightning."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ppd_lightning import atomic
from ppd_lightning.errors import CheckpointError
from ppd_lightning.weights.files import load_torch_file

#: what Lightning reads when it resumes a fit
RESUMABLE_KEYS = ("pytorch-lightning_version", "state_dict", "optimizer_states", "loops")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes to a temporary file in the target directory, fsyncs, then renames over the target: a run
    killed mid-write leaves the previous checkpoint intact, never a truncated one."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        with atomic.replacing(path) as f:
            torch.save(checkpoint, f)

    def __init__(self, required_keys: tuple[str, ...] = ()):
        super().__init__()
        #: keys a loaded checkpoint must have (``RESUMABLE_KEYS`` for ``trainer.fit(ckpt_path=...)``)
        self.required_keys = tuple(required_keys)

    def load_checkpoint(self, path, map_location=None, weights_only: bool | None = True) -> dict[str, Any]:
        """What ``trainer.fit(ckpt_path=...)`` resumes from: an empty, truncated or foreign file is one
        :class:`CheckpointError` naming it (not Lightning's ``EOFError`` or ``KeyError``)."""
        if weights_only is False:  # asked for explicitly: Lightning's own loader
            return super().load_checkpoint(path, map_location=map_location, weights_only=False)
        ckpt = load_torch_file(path, map_location=map_location if map_location is not None else "cpu")
        missing = [k for k in self.required_keys if not isinstance(ckpt, dict) or k not in ckpt]
        if missing:
            raise CheckpointError(
                f"{path}: not a resumable ppd-lightning training checkpoint (missing {', '.join(missing)}); "
                "use init_dit= to start from weights only"
            )
        return ckpt

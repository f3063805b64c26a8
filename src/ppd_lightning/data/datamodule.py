"""``DepthShardDataModule``: weighted mixture of depth shard sources, DDP- and worker-correct.

Training stream (per rank, per DataLoader worker), infinite:
    shards of each source are split by rank (nodesplitter) and then by worker; each worker cycles
    forever through its part in a fresh random order per pass (resampling without replacement
    within a pass) -> samples -> weighted random choice of source per sample -> shuffle buffer of
    raw (undecoded) samples -> decode + random crop/scale/flip -> batch inside the worker.
    The epoch is ``epoch_batches`` batches on every rank (``WebLoader.with_epoch``), so all ranks
    step the same number of times and DDP never waits at the end of an epoch.
    When a source has fewer shards than ranks (or than workers of a rank), the ranks (workers)
    share all its shards, with different random orders.

Validation stream, finite, no resampling, no duplicates: with ``G = world_size * num_workers``
readers, a source with at least ``G`` shards is split by shard (reader ``g`` reads shards
``g, g + G, ...``); a source with fewer shards is split by sample (every reader streams every
shard and keeps samples ``g, g + G, ...``), which costs extra reading but still yields each sample
exactly once. Ranks can then get batch counts that differ by one or more: log validation metrics
with torchmetrics / ``sync_dist`` at epoch end, not with per-step collectives.

Corrupt data (truncated tar, undecodable image, wrong depth shape, ...) is skipped with a warning;
each batch carries ``n_corrupt`` (B,) int64: how many skip events the producing worker had since
its previous sample, so ``sum(batch["n_corrupt"])`` over all batches counts skips exactly.
A source whose shards of one reader contain no readable sample at all is an error.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from itertools import islice
from typing import Any

import lightning as L
import torch
import webdataset as wds

from ppd_lightning.errors import CheckpointError, ConfigError

from .stream import MAKE_SHARDS_HINT, DepthShardStream, NoReadableSamplesError, collate, parse_sources
from .transforms import ReleaseResize
from .writer import ensure_synthetic_shards

PIPELINES = ("augment", "release")
log = logging.getLogger(__name__)

__all__ = [
    "DepthShardDataModule",
    "DepthShardStream",
    "NoReadableSamplesError",
    "OwnShardDataModule",
    "collate",
    "parse_sources",
]


class _StreamPosition:
    """Where the training stream stands: the data epoch of the pass in progress and how many of its
    batches the loader has handed out. Kept by the datamodule (``state_dict``, so in every checkpoint)
    across the loaders Lightning creates; a run resumed from any checkpoint continues the stream at the
    batch after the last one it trained on.

    The position, not ``trainer.current_epoch``, decides: Lightning creates a resumed run's first iterator
    before it advances its epoch counter (a checkpoint saved on an epoch's last batch would replay that
    epoch), and counts an epoch cut short by ``max_steps`` as complete (the resumed run would skip the rest
    of it). The trainer's epoch only places the first pass of a run resumed from a checkpoint that has no
    position (written before it was recorded). ``length_fn`` gives the batches of a pass."""

    def __init__(self, epoch_fn, length_fn):
        self.epoch_fn, self.length_fn = epoch_fn, length_fn
        self.epoch, self.batches = 0, 0
        self.known = False  # set by a first pass or a restored checkpoint

    def normalized(self) -> tuple[int, int]:
        """(epoch, batches consumed) of the next batch to draw: a finished pass is the next epoch's start."""
        if self.batches >= self.length_fn():
            return self.epoch + 1, 0
        return self.epoch, self.batches

    def start_pass(self) -> tuple[int, int]:
        """The (epoch, batches to skip) of a new iterator: the rest of the pass in progress, or the next
        epoch from its start."""
        epoch, done = self.normalized()
        trainer_epoch = None if self.known else self.epoch_fn()
        if trainer_epoch is not None:
            epoch, done = int(trainer_epoch), 0
        self.epoch, self.batches, self.known = epoch, done, True
        return epoch, done

    def count(self, batches):
        for batch in batches:
            self.batches += 1
            yield batch


class _EpochLoader(wds.WebLoader):
    """WebLoader that sets the dataset's epoch before each pass, so every pass (and every restarted,
    non-persistent worker) reads a fresh random stream. With a ``position`` (training) the stream is a
    function of (data epoch, batches already consumed), so a resumed run reads what the uninterrupted run
    would have read, from any checkpoint; Lightning may create (and drop) more than one iterator per
    epoch, so counting ``__iter__`` calls would not be reproducible. Without it, passes are counted."""

    def __init__(self, *args, position: _StreamPosition | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.position = position

    def __iter__(self):
        ds = self.pipeline[0].dataset
        if self.position is None:
            ds.epoch, ds.skip_batches = ds.epoch + 1, 0
            return super().__iter__()
        ds.epoch, ds.skip_batches = self.position.start_pass()
        batches = super().__iter__()
        if ds.skip_batches and self.nsamples > 0:  # with_epoch: the pass's remaining batches only
            batches = islice(batches, max(self.nsamples - ds.skip_batches, 0))
        return self.position.count(batches)


def _dist_info(trainer: Any | None) -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    if trainer is not None:
        return int(trainer.global_rank), int(trainer.world_size)
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class DepthShardDataModule(L.LightningDataModule):
    """Weighted mixture of WebDataset depth shards; batches follow the contract in the module doc.

    Args:
        train_sources / val_sources: lists of ``{urls, weight, name}``; ``urls`` is a brace
            pattern, a directory of ``*.tar`` or a list of those. ``name`` defaults to the shard
            directory's name. ``weight`` is relative (normalised over the list).
        batch_size: training batch size per rank. ``val_batch_size`` defaults to it.
        num_workers: DataLoader workers per rank (0 = read in the main process).
        train_size / val_size: ``[H, W]`` of the produced images.
        epoch_batches: training batches per epoch per rank.
        shuffle_buffer: raw (still encoded) samples held per worker for shuffling.
        seed: base seed; streams differ per rank, worker and epoch.
        pipeline: ``augment`` (default): this project's augmentation, random scale + crop + flip (see
            ``CropResize``; ``scale_range``, ``hflip``); ``release``: the release's pipeline, a plain resize to
            the size, no flip or jitter, except the datasets in ``crop_from`` (see ``ReleaseResize``).
        crop_from: ``{dataset: [H, W]}`` for ``pipeline=release``: resize those to [H, W], then crop (random
            in training, centred in validation); the paper: ``{unrealstereo4k: [1024, 1920]}``.
        return_keys: also put ``key`` (list of ``"<shard>/<sample key>"``) in batches.
        generate: ``{split: ensure_synthetic_shards arguments}``: the embedded synthetic world's shards, made
            in ``prepare_data`` when missing (Lightning calls it on each node's local rank 0; the other ranks
            wait at the trainer's barrier). None: the shards must exist.

    After ``setup``, ``val_names`` lists the validation sources' names (what ``batch['dataset']`` holds).
    """

    def __init__(
        self,
        train_sources: list[dict[str, Any]],
        val_sources: list[dict[str, Any]] | None,
        batch_size: int,
        num_workers: int,
        train_size: list[int],
        val_size: list[int],
        epoch_batches: int,
        shuffle_buffer: int = 500,
        seed: int = 0,
        val_batch_size: int | None = None,
        scale_range: list[float] = (1.0, 1.25),
        hflip: float = 0.5,
        pin_memory: bool | None = None,
        prefetch_factor: int = 2,
        return_keys: bool = False,
        pipeline: str = "augment",
        crop_from: dict[str, list[int]] | None = None,
        generate: dict[str, dict[str, Any]] | None = None,
    ):
        super().__init__()
        # sizes and counts are checked against training.config.TrainSchema when train.py starts
        if pipeline not in PIPELINES:
            raise ConfigError(f"data.pipeline must be one of {PIPELINES}, got {pipeline!r}")
        if crop_from and pipeline != "release":
            raise ConfigError(
                "data.crop_from is part of pipeline=release; with pipeline=augment every set is cropped"
            )
        self.train_sources_cfg = [dict(s) for s in train_sources]
        self.val_sources_cfg = [dict(s) for s in (val_sources or [])]
        self.batch_size = int(batch_size)
        self.val_batch_size = int(val_batch_size or batch_size)
        self.num_workers = int(num_workers)
        self.train_size = (int(train_size[0]), int(train_size[1]))
        self.val_size = (int(val_size[0]), int(val_size[1]))
        self.epoch_batches = int(epoch_batches)
        self.shuffle_buffer = int(shuffle_buffer)
        self.seed = int(seed)
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.hflip = float(hflip)
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        self.prefetch_factor = int(prefetch_factor)
        self.return_keys = bool(return_keys)
        self.pipeline = pipeline
        self.crop_from = {str(k): [int(v[0]), int(v[1])] for k, v in dict(crop_from or {}).items()}
        if pipeline == "release":  # built here so a bad crop_from fails at construction
            for size in (self.train_size, self.val_size):
                ReleaseResize(size, crop_from=self.crop_from)
        self.generate = self._check_generate(generate)
        self.val_names: list[str] | None = None  # set by setup
        self.rank, self.world_size = 0, 1
        self._train_ds: DepthShardStream | None = None
        self._val_ds: DepthShardStream | None = None
        self._position = _StreamPosition(self._trainer_epoch, self._pass_length)

    @staticmethod
    def _check_generate(generate) -> dict[str, dict[str, Any]]:
        if generate is None:
            return {}
        if not isinstance(generate, Mapping):
            raise ConfigError(
                f"data.generate must be a mapping {{split: generation arguments}}, got {generate!r}"
            )
        import inspect

        allowed = inspect.signature(ensure_synthetic_shards).parameters
        for split, params in generate.items():
            if not isinstance(params, Mapping) or "out_dir" not in params:
                raise ConfigError(
                    f"data.generate.{split} must be a mapping of ensure_synthetic_shards arguments with "
                    f"'out_dir', got {params!r}"
                )
            unknown = sorted(set(params) - set(allowed))
            if unknown:
                raise ConfigError(
                    f"data.generate.{split} has unknown keys {unknown}; allowed: {list(allowed)}"
                )
        return {str(k): dict(v) for k, v in generate.items()}

    def prepare_data(self) -> None:
        """Make the ``generate`` shards that are missing (idempotent; Lightning runs it on one process per
        node, the others wait)."""
        if not self.generate:
            return
        for split, params in self.generate.items():
            ensure_synthetic_shards(**params)
            log.info("synthetic %s shards ready in %s", split, params["out_dir"])

    def setup(self, stage: str | None = None) -> None:
        self.rank, self.world_size = _dist_info(getattr(self, "trainer", None))
        train = parse_sources(self.train_sources_cfg, "train", self.missing_shards_hint("train"))
        val = parse_sources(self.val_sources_cfg, "val", self.missing_shards_hint("val"))
        self.val_names = [s["name"] for s in val]
        common = dict(
            rank=self.rank, world_size=self.world_size, seed=self.seed, return_keys=self.return_keys
        )
        if train:
            self._train_ds = DepthShardStream(
                train,
                self.train_size,
                self.batch_size,
                train=True,
                shuffle_buffer=self.shuffle_buffer,
                scale_range=self.scale_range,
                hflip=self.hflip,
                transform=self._release(self.train_size, train=True),
                **common,
            )
        if val:
            self._val_ds = DepthShardStream(
                val,
                self.val_size,
                self.val_batch_size,
                train=False,
                transform=self._release(self.val_size, train=False),
                **common,
            )

    def missing_shards_hint(self, split: str) -> str:
        """What an error about missing ``split`` shards tells the user to do."""
        return MAKE_SHARDS_HINT

    def _release(self, size: tuple[int, int], train: bool) -> ReleaseResize | None:
        """The release pipeline's transform, or None (the stream's default augmentation)."""
        if self.pipeline != "release":
            return None
        return ReleaseResize(size, train=train, crop_from=self.crop_from)

    def _trainer_epoch(self) -> int | None:
        trainer = getattr(self, "trainer", None)
        return None if trainer is None else int(trainer.current_epoch)

    def _pass_length(self) -> int:
        """Training batches per epoch: ``epoch_batches``, or fewer under ``limit_train_batches``."""
        n = getattr(getattr(self, "trainer", None), "num_training_batches", math.inf)
        finite = isinstance(n, int | float) and math.isfinite(n)
        return min(self.epoch_batches, int(n)) if finite else self.epoch_batches

    def _loader(self, ds: DepthShardStream, persistent: bool, position=None) -> wds.WebLoader:
        kw: dict[str, Any] = dict(batch_size=None, num_workers=self.num_workers, pin_memory=self.pin_memory)
        if self.num_workers > 0:
            kw.update(prefetch_factor=self.prefetch_factor, persistent_workers=persistent)
        return _EpochLoader(ds, position=position, **kw)

    def train_dataloader(self) -> wds.WebLoader:
        if self._train_ds is None:
            raise RuntimeError("train_dataloader() needs setup() and at least one train source")
        # Not persistent: each epoch's workers must see the new data epoch (see DepthShardStream.epoch).
        loader = self._loader(self._train_ds, persistent=False, position=self._position)
        return loader.with_epoch(self.epoch_batches).with_length(self.epoch_batches, silent=True)

    def state_dict(self) -> dict[str, int]:
        """The training stream's position (saved by Lightning in every checkpoint): the data epoch and
        the batches of it already trained on."""
        epoch, done = self._position.normalized()
        return {"data_epoch": epoch, "data_batches": done}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for key in ("data_epoch", "data_batches"):
            value = state_dict.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise CheckpointError(
                    f"DepthShardDataModule state: {key!r} must be an int >= 0, got {value!r} "
                    f"(state keys: {sorted(state_dict)})"
                )
        self._position.epoch = state_dict["data_epoch"]
        self._position.batches = state_dict["data_batches"]
        self._position.known = True

    def val_dataloader(self) -> wds.WebLoader | list:
        if self._val_ds is None:
            return []
        return self._loader(self._val_ds, persistent=False)


class OwnShardDataModule(DepthShardDataModule):
    """``DepthShardDataModule`` over ``<root>/train`` and ``<root>/val``, the shards ``make_shards folder``
    writes from your own RGB-D data (``conf/data/own.yaml``); when they are missing, the error says how to
    make them. Building it reads nothing (configs compose and instantiate without data)."""

    def __init__(self, root: str, **kwargs: Any):
        super().__init__(**kwargs)
        self.root = str(root)

    def missing_shards_hint(self, split: str) -> str:
        hint = "(write it with --val-fraction or --val-list) " if split == "val" else ""
        return (
            f"{hint}make them with `python -m ppd_lightning.data.make_shards folder <your folder> "
            f"--out {self.root}` (data.root={self.root})"
        )

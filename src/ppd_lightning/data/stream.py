"""The iterable behind ``DepthShardDataModule``'s loaders (see the datamodule docstring).

Kept free of Lightning so spawned DataLoader workers import only torch, webdataset and OpenCV.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from ppd_lightning.errors import ConfigError, MissingFileError, PPDError

from .codec import SampleError, decode_sample
from .shards import ShardError, expand_shard_urls, iter_tar_samples
from .transforms import CropResize

log = logging.getLogger(__name__)


class NoReadableSamplesError(PPDError, RuntimeError):
    """A source produced no decodable sample from any of its shards."""


MAKE_SHARDS_HINT = "make them with `python -m ppd_lightning.data.make_shards ...`"


def _local(url: str) -> bool:
    return "://" not in url and not url.startswith("pipe:")


def parse_sources(
    sources: Sequence[Mapping[str, Any]] | None, split: str, missing_hint: str = MAKE_SHARDS_HINT
) -> list[dict[str, Any]]:
    """Normalise the ``[{urls, weight, name}]`` of ``data.<split>_sources`` (dicts or OmegaConf nodes),
    expand the urls and check that the local shards exist: a folder without shards, or listed shards
    that are not there, is one :class:`MissingFileError` naming them and ending with ``missing_hint``
    (how to make them)."""
    what = f"data.{split}_sources"
    out = []
    for i, src in enumerate(sources or []):
        if not isinstance(src, Mapping) or "urls" not in src:
            raise ConfigError(
                f"{what}[{i}] must be a mapping with 'urls' (and optional weight, name), got {src!r}"
            )
        unknown = set(src) - {"urls", "weight", "name"}
        if unknown:
            raise ConfigError(f"{what}[{i}] has unknown keys {sorted(unknown)}; allowed: urls, weight, name")
        urls = src["urls"]
        urls = urls if isinstance(urls, str) else [str(u) for u in urls]
        weight = float(src.get("weight", 1.0))
        if not weight > 0:
            raise ConfigError(f"{what}[{i}] weight must be > 0, got {weight}")
        folder = isinstance(urls, str) and _local(urls) and "{" not in urls and not urls.endswith(".tar")
        if folder and not any(Path(urls).glob("*.tar")):  # a folder that is missing or holds no shard
            raise MissingFileError(f"no {split} shards in {urls}; {missing_hint}")
        shards = expand_shard_urls(urls)
        name = str(src.get("name") or Path(shards[0]).parent.name or f"source{i}")
        missing = [u for u in shards if _local(u) and not os.path.isfile(u)]
        if missing:
            raise MissingFileError(
                f"source {name!r}: {len(missing)} of {len(shards)} shards do not exist, e.g. {missing[0]}; "
                f"{missing_hint}"
            )
        out.append({"name": name, "urls": shards, "weight": weight})
    return out


def _partition(items: list[str], index: int, count: int) -> list[str]:
    """``items[index::count]`` when there are enough items, else all of them (shared)."""
    return items[index::count] if len(items) >= count else list(items)


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack transformed numpy samples into the batch contract (see module docstring)."""
    # NHWC -> NCHW while still uint8 (a quarter of the bytes), then one conversion to float
    image = torch.from_numpy(np.stack([s["image"] for s in samples])).permute(0, 3, 1, 2).contiguous()
    batch = {
        "image": image.float().div_(255.0),
        "depth": torch.from_numpy(np.stack([s["depth"] for s in samples]))[:, None],
        "mask": torch.from_numpy(np.stack([s["mask"] for s in samples]))[:, None],
        "sky": torch.from_numpy(np.stack([s["sky"] for s in samples]))[:, None],
        "dataset": [s["dataset"] for s in samples],
        "n_corrupt": torch.tensor([s["n_corrupt"] for s in samples], dtype=torch.int64),
    }
    if "key" in samples[0]:
        batch["key"] = [s["key"] for s in samples]
    return batch


def worker_skip(consumed: int, wid: int, num_workers: int) -> int:
    """How many of a pass's first ``consumed`` batches worker ``wid`` produced (batch b comes from worker
    ``b % num_workers``)."""
    if consumed < 0 or not 0 <= wid < num_workers:
        raise ValueError(f"worker_skip: bad consumed={consumed}, wid={wid}, num_workers={num_workers}")
    return max(consumed - wid + num_workers - 1, 0) // num_workers


class DepthShardStream(IterableDataset):
    """The per-rank iterable behind the loaders; yields collated batches (batching is done in the
    workers so ``with_epoch`` counts batches)."""

    def __init__(
        self,
        sources: list[dict[str, Any]],
        size: tuple[int, int],
        batch_size: int,
        train: bool,
        rank: int,
        world_size: int,
        seed: int = 0,
        shuffle_buffer: int = 0,
        scale_range: tuple[float, float] = (1.0, 1.25),
        hflip: float = 0.5,
        return_keys: bool = False,
        transform=None,
    ):
        super().__init__()
        if not sources:
            raise ValueError("DepthShardStream needs at least one source")
        self.sources = sources
        self.batch_size = int(batch_size)
        self.train = train
        self.rank, self.world_size = int(rank), int(world_size)
        self.seed = int(seed)
        self.shuffle_buffer = int(shuffle_buffer)
        # ``transform(sample, rng)``, e.g. ReleaseResize; default: the CropResize augmentation
        self.transform = transform or CropResize(
            tuple(size), train=train, scale_range=tuple(scale_range), hflip=hflip
        )
        self.return_keys = return_keys
        # Set by the loader in the main process before each pass (the data epoch, and how many of that
        # epoch's batches were already consumed, over all workers, by a run this one resumes); training
        # workers are not persistent, so each pass's workers see the new values.
        self.epoch = 0
        self.skip_batches = 0

    # -- reading ---------------------------------------------------------------------------------

    def _read_shard(self, url: str, src: str, stats: _Stats, keep=None) -> Iterator[dict[str, Any]]:
        """Raw samples of one shard; an unreadable or truncated shard counts one skip event.

        ``keep(index)`` selects samples by their index in the shard (sample-level splitting); the
        damage in a truncated shard is attributed to the index where it happened.
        """
        index = 0
        try:
            with wds.gopen(url, "rb") as stream:
                for members in iter_tar_samples(stream, url):
                    if keep is None or keep(index):
                        members["__source__"] = src
                        yield members
                    index += 1
        except (ShardError, OSError) as exc:
            if keep is None or keep(index):
                stats.skip(src)
                log.warning("skipping rest of shard: %s", exc)

    def _train_source(self, src: dict[str, Any], wid: int, nw: int, rng, stats: _Stats) -> Iterator[dict]:
        shards = _partition(_partition(src["urls"], self.rank, self.world_size), wid, nw)
        while True:
            n = 0
            for i in rng.permutation(len(shards)):
                for members in self._read_shard(shards[i], src["name"], stats):
                    n += 1
                    yield members
            if n == 0:
                raise NoReadableSamplesError(
                    f"source {src['name']!r}: none of its {len(shards)} shard(s) for rank {self.rank} "
                    f"worker {wid} holds a readable sample, e.g. {shards[0]}"
                )

    def _raw_train(self, wid: int, nw: int, rng, stats: _Stats) -> Iterator[dict[str, Any]]:
        streams = [self._train_source(s, wid, nw, rng, stats) for s in self.sources]
        weights = np.array([s["weight"] for s in self.sources], dtype=np.float64)
        weights /= weights.sum()
        buffer: list[dict[str, Any]] = []
        warmup = min(self.shuffle_buffer, 64)  # start yielding once a little is buffered
        while True:
            j = int(rng.choice(len(streams), p=weights)) if len(streams) > 1 else 0
            members = next(streams[j])
            if self.shuffle_buffer <= 1:
                yield members
                continue
            buffer.append(members)
            if len(buffer) < warmup:
                continue
            k = int(rng.integers(len(buffer)))
            buffer[k], buffer[-1] = buffer[-1], buffer[k]
            if len(buffer) >= self.shuffle_buffer or rng.random() < 0.5:
                yield buffer.pop()

    def _raw_val(self, wid: int, nw: int, stats: _Stats) -> Iterator[dict[str, Any]]:
        readers = self.world_size * nw
        g = self.rank * nw + wid
        for src in self.sources:
            urls = src["urls"]
            if len(urls) >= readers:
                plan = [(u, None) for u in urls[g::readers]]
            else:
                counter = [0]  # global sample index across this source's shards

                def keep(_index: int, counter=counter) -> bool:
                    mine = counter[0] % readers == g
                    counter[0] += 1
                    return mine

                plan = [(u, keep) for u in urls]
            for url, keep in plan:
                yield from self._read_shard(url, src["name"], stats, keep)

    # -- iteration -------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        # The stream is a function of (seed, rank, worker, epoch) only. The DataLoader takes batches from
        # its workers round-robin starting at worker 0, so batch b of a pass comes from worker b % nw. A
        # pass resumed after ``skip_batches`` consumed batches must continue with batch k = skip_batches,
        # i.e. with worker k % nw: DataLoader worker i plays the stream of worker (i + k) % nw, which drops
        # the batches it had produced (same rng draws, no collate). The rest is then exactly what the
        # uninterrupted pass would have yielded, in the same order.
        wid = (wid + self.skip_batches) % nw
        rng = np.random.default_rng([self.seed, self.rank, wid, self.epoch])
        to_skip = worker_skip(self.skip_batches, wid, nw)
        stats = _Stats(self.sources)
        raw = self._raw_train(wid, nw, rng, stats) if self.train else self._raw_val(wid, nw, stats)
        batch: list[dict[str, Any]] = []
        pending: dict[str, Any] | None = None  # one sample of look-ahead so trailing skips are counted
        for members in raw:
            src = members["__source__"]
            try:
                sample = decode_sample(members)
                out = self.transform(sample, rng)
            except (SampleError, ValueError, cv2.error) as exc:
                stats.skip(src)
                log.warning(
                    "skipping corrupt sample %s in %s: %s",
                    members.get("__key__"),
                    members.get("__url__"),
                    exc,
                )
                stats.check(src, self.rank, wid)
                continue
            stats.good[src] += 1
            out["dataset"] = str(sample.meta.get("dataset", src))
            if self.return_keys:
                out["key"] = f"{members['__url__']}/{members['__key__']}"
            out["n_corrupt"], stats.pending = stats.pending, 0
            if pending is not None:
                batch.append(pending)
                if len(batch) == self.batch_size:
                    if to_skip > 0:
                        to_skip -= 1
                    else:
                        yield collate(batch)
                    batch = []
            pending = out
        # only a finite (validation) stream gets here: the last sample takes the trailing skips
        if pending is not None:
            pending["n_corrupt"] += stats.pending
            batch.append(pending)
        if batch:
            yield collate(batch)
        elif stats.pending:
            raise NoReadableSamplesError(
                f"validation rank {self.rank} worker {wid}: all {stats.pending} sample(s)/shard(s) it read "
                "were corrupt; nothing to validate on"
            )


class _Stats:
    """Per-iterator skip bookkeeping (lives in one worker; never shared)."""

    MAX_BAD_BEFORE_GOOD = 100

    def __init__(self, sources: list[dict[str, Any]]):
        self.pending = 0  # skip events since the last sample handed on
        self.good = {s["name"]: 0 for s in sources}
        self.bad = {s["name"]: 0 for s in sources}

    def skip(self, src: str) -> None:
        self.pending += 1
        self.bad[src] += 1

    def check(self, src: str, rank: int, wid: int) -> None:
        if self.good[src] == 0 and self.bad[src] >= self.MAX_BAD_BEFORE_GOOD:
            raise NoReadableSamplesError(
                f"source {src!r}: the first {self.bad[src]} samples read by rank {rank} worker {wid} "
                "were all corrupt; check the shards with `python -m ppd_lightning.data.make_shards verify`"
            )

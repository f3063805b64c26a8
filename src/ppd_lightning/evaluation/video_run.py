"""The video evaluation loop: VDA-layout benchmark -> saved predictions or a video model -> protocol.

``evaluate.py protocol=vda benchmark=scannet_video benchmark.root=<DIR> predictions=<DIR>`` ends up in
:func:`evaluate_video`, which writes ``<output_dir>/metrics.json`` (``{benchmark: {abs_rel, rmse,
delta1, n_sequences, n_frames, ...}}``, or ``{tae, n_sequences, n_pairs, ...}`` for ``metric: tae``)
and ``<benchmark>_per_sequence.csv``, and prints a table. :func:`evaluate_video_benchmark` is the same
for one benchmark, from Python.

Each sequence is read twice, frame by frame: pass 1 accumulates the alignment's sums
(:class:`~ppd_lightning.evaluation.video_protocols.LeastSquares`), pass 2 aligns and scores. A video
model runs once per sequence, in pass 1; its depths wait in an anonymous temporary file
(:class:`~ppd_lightning.video.io.DepthStore`) for pass 2. Memory does not grow with the length.

A prediction that is not finite on a valid pixel (anywhere, for the TAE, which uses every pixel) is an
error naming the file: it would otherwise drop the pixel or give the sequence NaN. Frames without a
saved prediction are an error, unless ``allow_missing=true``: they are then skipped, as VDA's
``eval.py`` and ``eval_tae.py`` skip them (a consecutive pair of the TAE then spans the gap, as there).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from ppd_lightning import atomic
from ppd_lightning.errors import ConfigError, DivergenceError, InputError, MissingFileError
from ppd_lightning.evaluation.files import confine_name
from ppd_lightning.evaluation.metrics import format_table
from ppd_lightning.evaluation.video_datasets import (
    SavedVideoPredictions,
    VideoBenchmark,
    VideoFrame,
    VideoSequence,
)
from ppd_lightning.evaluation.video_protocols import (
    DEPTH_METRICS,
    LeastSquares,
    VideoBenchmarkSpec,
    VideoProtocol,
    frame_metrics,
    tae_pair,
)

__all__ = [
    "VideoModelPredictor",
    "VideoPredictor",
    "evaluate_video",
    "evaluate_video_benchmark",
    "format_video_table",
    "is_video_config",
]

log = logging.getLogger(__name__)


class VideoPredictor(Protocol):
    """Anything that maps a sequence's frames to its depths: ``predict_sequence(frames)`` takes an
    iterator of uint8 RGB (H, W, 3) frames and yields one (H, W) prediction per frame, in order."""

    def predict_sequence(self, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]: ...


class VideoModelPredictor:
    """A :class:`~ppd_lightning.video.PixelPerfectVideoDepth` (or anything with its ``iter_video(frames,
    steps=, noise=)``) as a :class:`VideoPredictor`. Every sequence starts from the same initial latent,
    drawn on the CPU from ``seed`` (as ``predict`` does), so a run is reproducible on any device."""

    def __init__(self, model, steps: int = 4, seed: int = 0) -> None:
        self.model, self.steps, self.seed = model, int(steps), int(seed)
        self._noise = None

    def predict_sequence(self, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        if self._noise is None:
            from ppd_lightning.video.run import initial_noise

            self._noise = initial_noise(self.model, self.seed)
        with torch.no_grad():
            for depth in self.model.iter_video(frames, steps=self.steps, noise=self._noise):
                if isinstance(depth, torch.Tensor):
                    depth = depth.detach().float().cpu().numpy()
                yield np.asarray(depth, np.float32).reshape(np.shape(depth)[-2:])


def is_video_config(cfg: Any) -> bool:
    """Whether ``cfg`` (the evaluate config, typed or a mapping) selects a video benchmark
    (``benchmark.kind: video``); a video protocol (``vda``, ``ppd_video``) on image benchmarks is a
    ``ConfigError``."""

    def get(key: str):  # one key, without resolving the rest (output_dir needs Hydra's runtime)
        return getattr(cfg, key, None) if dataclasses.is_dataclass(cfg) else cfg.get(key)

    bench, protocol = _plain(get("benchmark") or {}), _plain(get("protocol") or {})
    video = bench.get("kind") == "video"
    if not video and protocol.get("kind") == "video":
        if get("benchmarks"):
            raise ConfigError(
                f"protocol={protocol.get('name')} is for video benchmarks, which run one at a time: "
                "benchmark=<name> instead of benchmarks=[...]"
            )
        raise ConfigError(
            f"protocol={protocol.get('name')} is for video benchmarks (benchmark=scannet_video, kitti_video, "
            f"sintel_video, bonn_video, scannet_tae, ...), not benchmark={bench.get('name')}"
        )
    return video


# -- one sequence -----------------------------------------------------------------------------------
def _check_finite(pred: np.ndarray, where: np.ndarray | None, what: str, model: bool) -> None:
    bad = ~np.isfinite(pred)
    if where is not None:
        bad &= where
    n = int(bad.sum())
    if n:
        y, x = np.argwhere(bad)[0]
        scope = "pixels" if where is None else "valid pixels"
        msg = f"{what}: {n} non-finite value(s) on {scope}, first at row {y}, column {x}"
        if model:
            raise DivergenceError(msg)
        raise InputError(msg + "; a prediction must be finite where it is scored")


class _Sequence:
    """Scores one sequence: ``first`` yields ``(frame, raw prediction, what)`` for pass 1 (the fit),
    ``second()`` the same again for pass 2 (align and score)."""

    def __init__(self, bench: VideoBenchmark, spec: VideoBenchmarkSpec, protocol: VideoProtocol):
        self.bench, self.spec, self.protocol = bench, spec, protocol

    def _frame(self, frame: VideoFrame, raw: np.ndarray, what: str, model: bool):
        gt = self.spec.crop_map(self.bench.depth(frame))
        pred = self.protocol.map_prediction(self.spec, raw, gt.shape)
        mask = self.protocol.valid(self.spec, gt)
        _check_finite(pred, None if self.spec.metric == "tae" or model else mask, what, model)
        return gt, pred, mask

    def score(
        self, name: str, first: Iterator, second: Callable[[], Iterator], model: bool
    ) -> dict[str, Any]:
        fits, n_valid, shapes = self._fit(first, model)
        row: dict[str, Any] = {"sequence": name, "n_frames": len(n_valid)}
        if not self.protocol.per_frame and fits:
            row["scale"], row["shift"] = fits[0]
        if self.spec.metric == "depth":
            row.update(self._depth_metrics(second(), fits, n_valid, model))
        else:
            row.update(self._tae(second(), fits, shapes))
        return row

    def _fit(self, first: Iterator, model: bool):
        """Pass 1: (scale, shift) per sequence (or per frame), valid-pixel counts, cropped gt shapes."""
        sums: list[LeastSquares] = []
        n_valid, shapes = [], []
        for frame, raw, what in first:
            gt, pred, mask = self._frame(frame, raw, what, model)
            if self.protocol.per_frame or not sums:
                sums.append(LeastSquares())
            sums[-1].add(*self.protocol.fit_values(pred, gt, mask))
            n_valid.append(int(mask.sum()))
            shapes.append(gt.shape)
        return [s.solve() for s in sums], n_valid, shapes

    def _alignment(self, fits: list, i: int) -> tuple[float, float]:
        return fits[i if self.protocol.per_frame else 0]

    def _depth_metrics(self, second: Iterator, fits: list, n_valid: list[int], model: bool) -> dict:
        """Pass 2 of ``metric: depth``: the per-frame metrics averaged over the frames with a valid
        pixel (VDA leaves the others out of the mean)."""
        sums = dict.fromkeys(DEPTH_METRICS, 0.0)
        scored = 0
        for i, (frame, raw, what) in enumerate(second):
            if n_valid[i] == 0:
                continue
            gt, pred, mask = self._frame(frame, raw, what, model)
            depth = self.protocol.to_depth(pred, *self._alignment(fits, i), self.spec)
            values, _ = frame_metrics(depth, gt, mask)
            for k in DEPTH_METRICS:
                sums[k] += values[k]
            scored += 1
        return {"n_scored": scored, **{k: (sums[k] / scored if scored else math.nan) for k in DEPTH_METRICS}}

    def _tae(self, second: Iterator, fits: list, shapes: list) -> dict:
        """Pass 2 of ``metric: tae``: both directions of every consecutive pair of aligned depths,
        ``100 * sum / 2(N - 1)`` as VDA's ``eval_TAE`` (the ground truth is not needed again)."""
        total, previous, pairs = 0.0, None, 0
        for i, (frame, raw, _) in enumerate(second):
            pred = self.protocol.map_prediction(self.spec, raw, shapes[i])
            depth = self.protocol.to_depth(pred, *self._alignment(fits, i), self.spec)
            if previous is not None:
                prev_frame, prev_depth = previous
                if prev_depth.shape != depth.shape:
                    raise InputError(
                        f"{self.bench.root / frame.gt_depth}: ground truth is {depth.shape} after the crop, the "
                        f"previous frame's {prev_depth.shape} (the TAE compares consecutive frames on one grid)"
                    )
                total += tae_pair(prev_depth, depth, prev_frame.K, prev_frame.pose, frame.pose)
                pairs += 1
            previous = (frame, depth)
        return {"n_pairs": pairs, "tae": 100.0 * total / (2 * pairs) if pairs else math.nan}


def _saved_source(saved: SavedVideoPredictions, seq: VideoSequence, allow_missing: bool):
    missing = [f for f in seq.frames if not saved.exists(f)]
    if missing and not allow_missing:
        raise MissingFileError(
            f"no prediction for {missing[0].image}: expected {saved.path(missing[0])} ({len(missing)} of the "
            f"{len(seq.frames)} frames of sequence {seq.name} have none; float32 HxW .npy named after the image "
            "path; allow_missing=true skips missing frames, as VDA's eval.py does)"
        )
    if missing:
        log.warning(
            "%s: %d frame(s) without a prediction skipped (allow_missing=true)", seq.name, len(missing)
        )
    kept = [f for f in seq.frames if saved.exists(f)]

    def stream() -> Iterator:
        for f in kept:
            yield f, saved.load(f), f"prediction {saved.path(f)}"

    return stream, len(missing)


# -- one benchmark ----------------------------------------------------------------------------------
def _as_spec(benchmark) -> VideoBenchmarkSpec:
    return (
        benchmark if isinstance(benchmark, VideoBenchmarkSpec) else VideoBenchmarkSpec.from_config(benchmark)
    )


def _as_protocol(protocol) -> VideoProtocol:
    return protocol if isinstance(protocol, VideoProtocol) else VideoProtocol.from_config(protocol)


def evaluate_video_benchmark(
    benchmark: Mapping | VideoBenchmarkSpec,
    protocol: Mapping | VideoProtocol,
    predictor: SavedVideoPredictions | VideoPredictor | str | Path,
    root: str | Path | None = None,
    output_dir: str | Path | None = None,
    allow_missing: bool = False,
    limit: int | None = None,
    save_predictions: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Score one video benchmark; returns its row of ``metrics.json``.

    ``benchmark``/``protocol``: the config groups (``conf/benchmark/<name>.yaml``,
    ``conf/protocol/{vda,ppd_video}.yaml``) or their parsed specs. ``predictor``: a folder of saved
    predictions, :class:`SavedVideoPredictions`, or a :class:`VideoPredictor` (run on every sequence).
    ``root``: the benchmark folder (default ``benchmark["root"]``). ``output_dir``: where
    ``<name>_per_sequence.csv`` (and, with ``save_predictions`` and a model, the raw predictions under
    ``<name>/predictions/``) go; ``None`` writes nothing. ``limit``: the first N sequences only.
    """
    spec, protocol = _as_spec(benchmark), _as_protocol(protocol)
    if root is None and isinstance(benchmark, Mapping):
        root = benchmark.get("root")
    if root is None or str(root) == "":
        raise MissingFileError(
            f"no root given for {spec.name}: set benchmark.root=<the folder VDA's dataset_extract script "
            f"writes, holding {spec.json}>"
        )
    sequences = spec.sequences if limit is None else min(int(limit), spec.sequences or int(limit))
    bench = VideoBenchmark(
        root, spec.json, spec.dataset, spec.frames, sequences, need_camera=spec.metric == "tae"
    )
    if isinstance(predictor, (str, Path)):
        predictor = SavedVideoPredictions(predictor)
    saved = predictor.for_benchmark(bench) if isinstance(predictor, SavedVideoPredictions) else None
    if saved is None and not hasattr(predictor, "predict_sequence"):
        raise TypeError(
            f"predictor must be saved predictions or have predict_sequence(), got {type(predictor)}"
        )
    out = None if output_dir is None else Path(output_dir).expanduser()
    runner = _Sequence(bench, spec, protocol)
    rows: list[dict[str, Any]] = []
    n_missing = 0
    bar = tqdm(
        total=bench.n_frames, desc=f"{spec.name} ({protocol.name})", unit="frame", disable=not progress
    )
    for seq in bench.sequences:
        with contextlib.ExitStack() as stack:
            if saved is not None:
                stream, missing = _saved_source(saved, seq, allow_missing)
                n_missing += missing
                first, second = stream(), stream
            else:
                first, second = _model_source(
                    predictor, bench, seq, stack, out if save_predictions else None, spec
                )
            rows.append(runner.score(seq.name, _counting(first, bar), second, model=saved is None))
    bar.close()
    result = _summarise(spec, protocol, rows)
    result["missing_frames"] = n_missing
    result["json"] = {
        "name": bench.json_name,
        "sha256": bench.json_sha256,
        "sequences_listed": bench.n_listed,
    }
    if out is not None:
        _write_csv(out / f"{confine_name(spec.name, 'benchmark name')}_per_sequence.csv", rows)
    return result


def _counting(items: Iterator, bar) -> Iterator:
    for item in items:
        yield item
        bar.update(1)


def _model_source(predictor, bench: VideoBenchmark, seq: VideoSequence, stack, save_dir: Path | None, spec):
    """Pass 1 runs the model and keeps its depths in a temporary store; pass 2 reads them back."""
    from ppd_lightning.video.io import DepthStore

    store = stack.enter_context(DepthStore())

    def first() -> Iterator:
        frames = iter(seq.frames)
        count = 0
        for frame, depth in zip(frames, predictor.predict_sequence(bench.images(seq)), strict=False):
            depth = np.asarray(depth, np.float32)
            if depth.ndim != 2:
                raise ValueError(
                    f"the video predictor gave a {depth.shape} map for {frame.image}; expected (H, W)"
                )
            store.append(depth)
            if save_dir is not None:
                rel = Path(frame.image).with_suffix(".npy").as_posix()
                atomic.write_npy(
                    save_dir / spec.name / "predictions" / confine_name(rel, "image name"), depth
                )
            count += 1
            yield frame, depth, f"the model's prediction for {frame.image}"
        if count != len(seq.frames):
            raise RuntimeError(
                f"the video predictor gave {count} depths for the {len(seq.frames)} frames of {seq.name}"
            )

    def second() -> Iterator:
        for frame, depth in zip(seq.frames, store, strict=True):
            yield frame, depth, f"the model's prediction for {frame.image}"

    return first(), second


def _summarise(spec: VideoBenchmarkSpec, protocol: VideoProtocol, rows: list[dict]) -> dict[str, Any]:
    keys = DEPTH_METRICS if spec.metric == "depth" else ("tae",)
    kept = [r for r in rows if all(math.isfinite(r[k]) for k in keys)]
    if len(kept) < len(rows):
        names = ", ".join(r["sequence"] for r in rows if r not in kept)
        why = "no frame with a valid pixel" if spec.metric == "depth" else "fewer than 2 frames"
        log.warning("%s: %d sequence(s) with %s left out: %s", spec.name, len(rows) - len(kept), why, names)
    result: dict[str, Any] = {k: (float(np.mean([r[k] for r in kept])) if kept else math.nan) for k in keys}
    result["n_sequences"] = len(kept)
    if spec.metric == "depth":
        result["n_frames"] = int(sum(r["n_scored"] for r in kept))
    else:
        result["n_pairs"] = int(sum(r["n_pairs"] for r in kept))
    result["protocol"] = protocol.name
    result["per_frame_alignment"] = bool(protocol.per_frame)
    return result


def _write_csv(path: Path, rows: list[dict]) -> None:
    fields: list[str] = []
    for r in rows:
        fields.extend(k for k in r if k not in fields)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, restval="")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{v:.8g}" if isinstance(v, float) else v) for k, v in r.items()})
    atomic.write_text(path, buf.getvalue())


def format_video_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    cols = [c for c in (*DEPTH_METRICS, "tae") if any(c in r for r in results.values())]
    return format_table(results, cols, count="n_sequences")


# -- the command ------------------------------------------------------------------------------------
def _plain(cfg: Any) -> dict:
    """The evaluate config as a plain dict: from a composed ``DictConfig``, the typed
    ``EvaluateConfig`` (:mod:`ppd_lightning.evaluation.config`) or a mapping."""
    from omegaconf import DictConfig, OmegaConf

    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return dataclasses.asdict(cfg)
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return dict(cfg)


def _root(cfg: Mapping, bench: Mapping) -> Any:
    """``roots.<name>``, else ``benchmark.root``, else ``<data_root>/<dataset>`` (VDA's
    ``--benchmark_path``, which holds one folder per data set)."""
    name = bench.get("name")
    root = (cfg.get("roots") or {}).get(name) or bench.get("root")
    if not root and cfg.get("data_root"):
        root = Path(cfg["data_root"]).expanduser() / str(bench.get("dataset") or name)
    return root


def _device(name) -> torch.device:
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_video_predictor(cfg: Mapping) -> SavedVideoPredictions | VideoPredictor:
    """``predictions=<DIR>`` (saved ``.npy`` of any method), or the released PPVD:
    ``official.dit=<ppvd.pth> official.semantics=<Pi3's model.safetensors>`` (run in float32 on
    ``device``, ``steps`` Euler steps, the initial latent from ``seed``)."""
    official = cfg.get("official") or {}
    chosen = [k for k in ("predictions", "ckpt") if cfg.get(k)] + (
        ["official.dit"] if official.get("dit") else []
    )
    if len(chosen) != 1:
        raise ConfigError(
            "a video benchmark needs exactly one prediction source: predictions=<DIR> (saved .npy per frame, "
            "named after the json's images) or official.dit=<ppvd.pth> official.semantics=<Pi3 model.safetensors>"
            + (f" (got {', '.join(chosen)})" if chosen else "")
        )
    if cfg.get("ckpt"):
        raise ConfigError(
            "ckpt= is an image checkpoint; video benchmarks take predictions=<DIR> or the PPVD files"
        )
    if cfg.get("predictions"):
        return SavedVideoPredictions(cfg["predictions"])
    from ppd_lightning.video import PixelPerfectVideoDepth

    steps = int(cfg.get("steps", 4))
    model = PixelPerfectVideoDepth.from_released(official["dit"], official.get("semantics"), steps=steps)
    return VideoModelPredictor(
        model.to(_device(cfg.get("device"))).eval(), steps=steps, seed=int(cfg.get("seed", 0))
    )


def evaluate_video(
    cfg: Any, predictor: SavedVideoPredictions | VideoPredictor | None = None
) -> dict[str, dict]:
    """``evaluate.py`` for a video benchmark (``benchmark.kind: video``): one benchmark, written to
    ``<output_dir>/metrics.json`` as ``{benchmark: metrics}``; returns that dict."""
    cfg = _plain(cfg)
    if not cfg.get("output_dir"):
        raise ValueError("output_dir is not set")
    if cfg.get("benchmarks"):
        raise ConfigError(
            "benchmarks=[...] is for image benchmarks; run one video benchmark at a time (benchmark=<name>)"
        )
    bench_cfg = dict(cfg.get("benchmark") or {})
    output_dir = Path(cfg["output_dir"]).expanduser()
    output_dir.mkdir(parents=True, exist_ok=True)
    spec = VideoBenchmarkSpec.from_config(bench_cfg)
    protocol = VideoProtocol.from_config(dict(cfg.get("protocol") or {}))
    if predictor is None:
        predictor = build_video_predictor(cfg)
    result = evaluate_video_benchmark(
        spec,
        protocol,
        predictor,
        root=_root(cfg, bench_cfg),
        output_dir=output_dir,
        allow_missing=bool(cfg.get("allow_missing", False)),
        limit=cfg.get("limit"),
        save_predictions=bool(cfg.get("save_predictions", False)),
        progress=bool(cfg.get("progress", True)),
    )
    results = {spec.name: result}
    atomic.write_json(output_dir / "metrics.json", results)
    print(
        f"\nprotocol: {protocol.name}{' (per-frame alignment)' if protocol.per_frame else ''}   output: {output_dir}"
    )
    print(format_video_table(results))
    return results

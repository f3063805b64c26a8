"""The evaluation loop behind ``evaluate.py``: benchmark -> predictions -> protocol -> metrics.

Writes into ``output_dir``: ``metrics.json`` (``{benchmark: {metric: value, ..., "n_images": N,
"split": {"name", "sha256", "entries", "missing"} or null when the root was scanned}}``, rewritten
atomically after each benchmark), ``<benchmark>_per_image.csv``, optional colourised panels
(``<benchmark>/panels/``), saved model predictions and ensemble spreads (``<benchmark>/predictions/``,
``<benchmark>/spread/``), and prints a table. Every output path is checked to lie under
``output_dir``.

A prediction that is not finite on a scored pixel is an error naming the file (saved predictions)
or the image (model predictors, where any non-finite value is an error): it would otherwise drop the
pixel or, through the alignment, the whole image from the average, i.e. give a better score.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ppd_lightning import atomic
from ppd_lightning.config import typed
from ppd_lightning.errors import ConfigError, InputError
from ppd_lightning.evaluation.config import EvaluateConfig
from ppd_lightning.evaluation.datasets import PINNED_SPLITS, build_benchmark
from ppd_lightning.evaluation.edges import EdgeChamfer
from ppd_lightning.evaluation.files import UnsafeNameError, confine_name
from ppd_lightning.evaluation.metrics import METRIC_NAMES, DepthMetrics, depth_metrics_per_image, format_table
from ppd_lightning.evaluation.predictors import Prediction, Predictor, build_predictor, resolve_device
from ppd_lightning.evaluation.protocols import Prepared, Protocol, get_protocol
from ppd_lightning.evaluation.video_run import evaluate_video, is_video_config
from ppd_lightning.visualize import colorize, depth_panel, write_image

__all__ = ["OutputWriter", "evaluate", "evaluate_benchmark", "format_table", "resolve_benchmarks"]

log = logging.getLogger(__name__)


def _names(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [s.strip() for s in value.split(",") if s.strip()]
    return [str(v) for v in value]


def resolve_benchmarks(cfg: Mapping) -> list[dict]:
    """The benchmarks to run: ``benchmarks`` (list or comma string) or the single ``benchmark``.

    A benchmark's root is ``roots.<name>``, else ``benchmark.root`` when it is the selected
    ``benchmark`` group, else ``<data_root>/<name>`` or ``<data_root>/<name>.tar``. Its split is
    ``splits.<name>`` when that key is set (``null``: scan the root), else ``benchmark.split`` for
    the selected group, else ``pinned``: the benchmark's pinned list (:data:`PINNED_SPLITS`; none: scan).
    """
    bench = dict(cfg.get("benchmark") or {})
    names = _names(cfg.get("benchmarks")) or _names(bench.get("name"))
    if not names:
        raise ConfigError("no benchmark selected: set benchmark=<name> or benchmarks=[a,b]")
    roots = dict(cfg.get("roots") or {})
    splits = dict(cfg.get("splits") or {})
    data_root = cfg.get("data_root")
    runs = []
    for name in names:
        own = bench if bench.get("name") == name else {"name": name}
        root = roots.get(name) or own.get("root")
        if not root and data_root:
            base = Path(data_root).expanduser()
            root = next((p for p in (base / name, base / f"{name}.tar") if p.exists()), base / name)
        if name in splits:
            split = splits[name]
        elif own is bench:
            split = bench.get("split")
        else:
            split = "pinned"
        if split == "pinned":  # the list published numbers use, named in one place (PINNED_SPLITS)
            split = PINNED_SPLITS.get(name)
        runs.append(
            {
                "name": name,
                "root": root,
                "split": split,
                "options": dict(own.get("options") or {}),
            }
        )
    return runs


class _Items(Dataset):
    """Benchmark samples after the protocol's geometry, with their prediction when the predictor runs in
    the workers (saved predictions: reading and mapping them is I/O)."""

    def __init__(
        self, dataset, protocol: Protocol, benchmark: str, predictor: Predictor, images_for: int = 0
    ):
        self.dataset, self.protocol, self.benchmark, self.predictor = dataset, protocol, benchmark, predictor
        self.images_for = images_for  # a predictor that needs no image decodes the first N (panels) only

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[Prepared, Prediction | None]:
        sample = self.dataset.get(i, with_image=self.predictor.needs_image or i < self.images_for)
        prepared = self.protocol.prepare(sample, self.benchmark)
        if self.predictor.in_workers:
            return prepared, self.predictor.predict_many([prepared])[0]
        return prepared, None


def out_path(output_dir: Path, *parts: str) -> Path:
    """``output_dir/parts...``, refused (naming it) unless it lies under ``output_dir``."""
    rel = confine_name("/".join(parts), "output path")
    path = output_dir / rel
    base = output_dir.resolve()
    resolved = path.resolve()
    if resolved != base and base not in resolved.parents:
        raise UnsafeNameError(f"output path {path} resolves to {resolved}, outside {base}; refused")
    return path


def _check_finite(p: Prepared, pred: Prediction) -> None:
    """A prediction must be finite where it is scored (a model's: everywhere), else an error naming it."""
    anywhere = pred.path is None
    bad = ~np.isfinite(pred.depth)
    if not anywhere:
        bad &= p.mask
    n = int(bad.sum())
    if n:
        y, x = np.argwhere(bad)[0]
        where = "pixels" if anywhere else "scored pixels (valid ground truth)"
        raise InputError(
            f"{pred.describe(p.name)}: {n} non-finite value(s) on {where}, first at row {y}, column {x} "
            f"({pred.depth[y, x]}); a prediction must be finite where it is scored"
        )


class OutputWriter:
    """Everything one benchmark writes under ``output_dir`` besides ``metrics.json``: colourised panels
    of the first ``panels`` images, the model's predictions (``save_predictions``), ensemble spreads,
    and the per-image CSV. Every path is checked to lie under ``output_dir``; every file is atomic."""

    def __init__(self, output_dir: Path, benchmark: str, panels: int = 0, save_predictions: bool = False):
        self.output_dir, self.benchmark = output_dir, benchmark
        self.panels_left, self.save_predictions = int(panels), bool(save_predictions)
        self.rows: list[dict] = []

    def _path(self, kind: str, stem: str, suffix: str) -> Path:
        return out_path(self.output_dir, self.benchmark, kind, f"{stem}{suffix}")

    def add(self, p: Prepared, pred: Prediction, aligned: np.ndarray, row: dict) -> None:
        self.rows.append(row)
        stem = Path(confine_name(p.name, "image name")).with_suffix("").as_posix()
        if self.panels_left > 0 and p.image is not None:
            write_image(self._path("panels", stem, ".png"), depth_panel(p.image, aligned, p.depth, p.mask))
            self.panels_left -= 1
        if self.save_predictions and pred.path is None:
            atomic.write_npy(self._path("predictions", stem, ".npy"), pred.depth)
        if pred.spread is not None:
            atomic.write_npy(self._path("spread", stem, ".npy"), pred.spread)
            write_image(self._path("spread", stem, ".png"), colorize(pred.spread, cmap="inferno"))

    def finish(self) -> None:
        fields = ["name", "n_valid", *METRIC_NAMES]
        if any("edge_chamfer" in r for r in self.rows):
            fields.append("edge_chamfer")
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=fields, restval="")
        writer.writeheader()
        for r in self.rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
        atomic.write_text(out_path(self.output_dir, f"{self.benchmark}_per_image.csv"), buf.getvalue())


def _collate(batch):
    return batch


def evaluate_benchmark(
    name: str,
    root,
    protocol: Protocol,
    predictor: Predictor,
    output_dir: Path,
    split=None,
    options: Mapping | None = None,
    batch_size: int = 1,
    num_workers: int = 0,
    device: torch.device | None = None,
    limit: int | None = None,
    panels: int = 0,
    save_predictions: bool = False,
    seed: int = 0,
    edge: Mapping | None = None,
    progress: bool = True,
    several: bool = False,
) -> dict[str, float]:
    """Score one benchmark: prepare, predict, check, align and score each image; the files go through
    an :class:`OutputWriter`. Returns the benchmark's row of ``metrics.json``."""
    device = device or torch.device("cpu")
    dataset = build_benchmark(name, root, split=split, limit=limit, **dict(options or {}))
    predictor = predictor.for_benchmark(name, protocol, several)
    loader = DataLoader(
        _Items(dataset, protocol, name, predictor, images_for=int(panels)),
        batch_size=max(1, int(batch_size)),
        num_workers=int(num_workers),
        collate_fn=_collate,
    )
    metric = DepthMetrics().to(device)
    edge = dict(edge or {})
    edge_on = edge.pop("enabled", "auto")
    edge_metric = EdgeChamfer(**edge) if edge_on not in (False, "false", "off") else None
    generator = torch.Generator().manual_seed(int(seed))  # RANSAC samples: reproducible runs
    writer = OutputWriter(output_dir, name, panels, save_predictions)
    bar = tqdm(total=len(dataset), desc=f"{name} ({protocol.name})", unit="img", disable=not progress)
    for batch in loader:
        prepared = [b[0] for b in batch]
        preds = [b[1] for b in batch] if predictor.in_workers else predictor.predict_many(prepared)
        for p, pred in zip(prepared, preds):
            _check_finite(p, pred)
        for idx in _groups([p.depth.shape for p in prepared]):
            # non-finite values off the scored pixels (allowed in saved predictions, e.g. sky) must
            # not reach the fit: they are zeroed for it and put back afterwards
            raw_t = torch.from_numpy(np.stack([preds[i].depth for i in idx])).to(device)
            finite_t = torch.isfinite(raw_t)
            pred_t = torch.where(finite_t, raw_t, torch.zeros_like(raw_t))
            gt_t = torch.from_numpy(np.stack([prepared[i].depth for i in idx])).to(device)
            mask_t = torch.from_numpy(np.stack([prepared[i].mask for i in idx])).to(device)
            aligned = protocol.align(pred_t, gt_t, mask_t, name, generator=generator)
            aligned = torch.where(finite_t, aligned, torch.full_like(aligned, float("nan")))
            metric.update(aligned, gt_t, mask_t)
            values, n_valid = depth_metrics_per_image(aligned, gt_t, mask_t)
            for j, i in enumerate(idx):
                p = prepared[i]
                row: dict[str, Any] = {"name": p.name, "n_valid": int(n_valid[j])}
                row.update({k: float(values[k][j]) for k in METRIC_NAMES})
                if edge_metric is not None and p.intrinsics is not None and n_valid[j] > 0:
                    edge_metric.update(aligned[j].cpu(), p.depth, p.mask, p.intrinsics)
                    row["edge_chamfer"] = edge_metric.last_value
                writer.add(p, preds[i], aligned[j].cpu().numpy(), row)
        bar.update(len(batch))
    bar.close()
    writer.finish()

    result = {k: float(v) for k, v in metric.compute().items()}
    result["n_images"] = int(metric.count)
    if edge_metric is not None and any("edge_chamfer" in r for r in writer.rows):
        result["edge_chamfer"] = float(edge_metric.compute())
        result["n_images_edge"] = int(edge_metric.count)
    result["split"] = None if dataset.split_info is None else dict(dataset.split_info)
    skipped = len(writer.rows) - result["n_images"]
    if skipped:
        log.warning("%s: %d images without a valid pixel were skipped", name, skipped)
    return result


def _groups(shapes: list[tuple]) -> list[list[int]]:
    """Indices grouped by equal shape (first-seen order)."""
    groups: dict[tuple, list[int]] = {}
    for i, s in enumerate(shapes):
        groups.setdefault(tuple(s), []).append(i)
    return list(groups.values())


def evaluate(cfg: Any) -> dict[str, dict[str, float]]:
    """Run the configured benchmark(s) (``cfg``: the composed ``conf/evaluate.yaml``, checked against
    :class:`~ppd_lightning.evaluation.config.EvaluateConfig`); returns ``{benchmark: metrics}`` as in
    ``metrics.json``."""
    if isinstance(cfg.get("official"), str):  # official=ppd: a released model's name, both its files
        cfg = OmegaConf.merge(cfg, {"official": {"dit": cfg.get("official"), "semantics": None}})
    cfg = typed(EvaluateConfig, cfg)
    if is_video_config(cfg):  # benchmark.kind: video (VDA's layouts, protocol=vda | ppd_video)
        return evaluate_video(cfg)
    output_dir = Path(cfg.output_dir).expanduser()
    output_dir.mkdir(parents=True, exist_ok=True)
    protocol = get_protocol(cfg.protocol["name"], cfg.protocol.get("overrides"), cfg.protocol.get("ransac"))
    runs = resolve_benchmarks(dataclasses.asdict(cfg))
    predictor = build_predictor(cfg)
    device = resolve_device(cfg.device)
    results: dict[str, dict[str, float]] = {}
    for run in runs:
        results[run["name"]] = evaluate_benchmark(
            run["name"],
            run["root"],
            protocol,
            predictor,
            output_dir,
            split=run["split"],
            options={**run["options"], "allow_missing": cfg.allow_missing},
            batch_size=cfg.batch_size,
            num_workers=cfg.num_workers,
            device=device,
            limit=cfg.limit,
            panels=cfg.panels,
            save_predictions=cfg.save_predictions,
            seed=cfg.seed,
            edge=dataclasses.asdict(cfg.edge),
            progress=cfg.progress,
            several=len(runs) > 1,
        )
        atomic.write_json(out_path(output_dir, "metrics.json"), results)
    print(f"\nprotocol: {protocol.name}   output: {output_dir}")
    print(format_table(results))
    for bench, r in results.items():
        info = r.get("split")
        if info is None:
            print(f"{bench}: every pair found in the root was scored (no split list)")
            continue
        if info.get("missing"):
            print(
                f"{bench}: PARTIAL RUN, {info['missing']} of {info['entries']} files of split "
                f"{info['name']} missing: NOT comparable with published numbers"
            )
        if info.get("limit") is not None:
            print(f"{bench}: limit={info['limit']}: only the first images of split {info['name']}")
    return results

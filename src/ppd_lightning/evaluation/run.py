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
import io
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ppd_lightning import atomic
from ppd_lightning.evaluation.datasets import PINNED_SPLITS, build_benchmark
from ppd_lightning.evaluation.edges import EdgeChamfer
from ppd_lightning.evaluation.files import UnsafeNameError, confine_name
from ppd_lightning.evaluation.metrics import METRIC_NAMES, DepthMetrics, depth_metrics_per_image
from ppd_lightning.evaluation.predictors import (
    ModelPredictor,
    SavedPredictions,
    build_predictor,
    prediction_path,
    resolve_device,
)
from ppd_lightning.evaluation.protocols import Prepared, Protocol, get_protocol
from ppd_lightning.visualize import colorize, depth_panel, write_image

__all__ = ["evaluate", "evaluate_benchmark", "format_table", "resolve_benchmarks"]

log = logging.getLogger(__name__)


def _plain(cfg: Any) -> dict:
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return dict(cfg)


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
    the selected group, else the benchmark's pinned list (:data:`PINNED_SPLITS`; none: scan).
    """
    bench = dict(cfg.get("benchmark") or {})
    names = _names(cfg.get("benchmarks")) or _names(bench.get("name"))
    if not names:
        raise ValueError("no benchmark selected: set benchmark=<name> or benchmarks=[a,b]")
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
    """Benchmark samples after the protocol's geometry, with saved predictions when given."""

    def __init__(
        self,
        dataset,
        protocol: Protocol,
        benchmark: str,
        saved: SavedPredictions | None,
        images_for: int = 0,
    ):
        self.dataset, self.protocol, self.benchmark, self.saved = dataset, protocol, benchmark, saved
        self.images_for = images_for  # saved predictions: decode the rgb of the first N (panels) only

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[Prepared, np.ndarray | None]:
        with_image = self.saved is None or i < self.images_for
        sample = self.dataset.get(i, with_image=with_image)
        prepared = self.protocol.prepare(sample, self.benchmark)
        pred = None
        if self.saved is not None:
            raw = self.saved.load(prepared.name)
            path = prediction_path(self.saved.directory, prepared.name)
            pred = self.protocol.map_prediction(raw, prepared, self.benchmark, source=str(path))
        return prepared, pred


def _out_path(output_dir: Path, *parts: str) -> Path:
    """``output_dir/parts...``, refused (naming it) unless it lies under ``output_dir``."""
    rel = confine_name("/".join(parts), "output path")
    path = output_dir / rel
    base = output_dir.resolve()
    resolved = path.resolve()
    if resolved != base and base not in resolved.parents:
        raise UnsafeNameError(f"output path {path} resolves to {resolved}, outside {base}; refused")
    return path


def _check_finite(pred: np.ndarray, mask: np.ndarray, what: str, anywhere: bool) -> None:
    """Raise naming ``what`` when ``pred`` is not finite on a scored pixel (or ``anywhere``)."""
    bad = ~np.isfinite(pred)
    if not anywhere:
        bad &= mask
    n = int(bad.sum())
    if n:
        y, x = np.argwhere(bad)[0]
        where = "pixels" if anywhere else "scored pixels (valid ground truth)"
        raise ValueError(
            f"{what}: {n} non-finite value(s) on {where}, first at row {y}, column {x} "
            f"({pred[y, x]}); a prediction must be finite where it is scored"
        )


def _collate(batch):
    return batch


def evaluate_benchmark(
    name: str,
    root,
    protocol: Protocol,
    predictor: SavedPredictions | ModelPredictor,
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
) -> dict[str, float]:
    """Score one benchmark; writes its per-image CSV and returns its row of ``metrics.json``."""
    device = device or torch.device("cpu")
    dataset = build_benchmark(name, root, split=split, limit=limit, **dict(options or {}))
    saved = predictor if isinstance(predictor, SavedPredictions) else None
    items = _Items(dataset, protocol, name, saved, images_for=int(panels))
    loader = DataLoader(
        items, batch_size=max(1, int(batch_size)), num_workers=int(num_workers), collate_fn=_collate
    )
    metric = DepthMetrics().to(device)
    edge = dict(edge or {})
    edge_on = edge.pop("enabled", "auto")
    edge_metric = EdgeChamfer(**edge) if edge_on not in (False, "false", "off") else None
    generator = torch.Generator().manual_seed(int(seed))  # RANSAC samples: reproducible runs
    rows: list[dict] = []
    n_panels = 0
    bar = tqdm(total=len(dataset), desc=f"{name} ({protocol.name})", unit="img", disable=not progress)
    for batch in loader:
        prepared = [b[0] for b in batch]
        spreads: list[np.ndarray | None] = [None] * len(batch)
        if saved is not None:
            preds = [b[1] for b in batch]
        else:
            preds = [None] * len(batch)
            for idx in _groups([p.image.shape for p in prepared]):
                out, spr = predictor.predict([prepared[i].image for i in idx])
                for j, i in enumerate(idx):
                    preds[i], spreads[i] = out[j], spr[j]
        for i, p in enumerate(prepared):
            if saved is not None:
                what = f"prediction {prediction_path(saved.directory, p.name)}"
            else:
                what = f"the model's prediction for image {p.name}"
            _check_finite(preds[i], p.mask, what, anywhere=saved is None)
        for idx in _groups([p.depth.shape for p in prepared]):
            # non-finite values off the scored pixels (allowed in saved predictions, e.g. sky) must
            # not reach the fit: they are zeroed for it and put back afterwards
            raw_t = torch.from_numpy(np.stack([preds[i] for i in idx])).to(device)
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
                rows.append(row)
                stem = Path(confine_name(p.name, "image name")).with_suffix("").as_posix()
                if n_panels < int(panels) and p.image is not None:
                    panel = depth_panel(p.image, aligned[j].cpu().numpy(), p.depth, p.mask)
                    write_image(_out_path(output_dir, name, "panels", f"{stem}.png"), panel)
                    n_panels += 1
                if saved is None and save_predictions:
                    atomic.write_npy(_out_path(output_dir, name, "predictions", f"{stem}.npy"), preds[i])
                if spreads[i] is not None:
                    atomic.write_npy(_out_path(output_dir, name, "spread", f"{stem}.npy"), spreads[i])
                    write_image(
                        _out_path(output_dir, name, "spread", f"{stem}.png"),
                        colorize(spreads[i], cmap="inferno"),
                    )
        bar.update(len(batch))
    bar.close()

    result = {k: float(v) for k, v in metric.compute().items()}
    result["n_images"] = int(metric.count)
    if edge_metric is not None and any("edge_chamfer" in r for r in rows):
        result["edge_chamfer"] = float(edge_metric.compute())
        result["n_images_edge"] = int(edge_metric.count)
    result["split"] = None if dataset.split_info is None else dict(dataset.split_info)
    _write_csv(_out_path(output_dir, f"{name}_per_image.csv"), rows)
    skipped = len(rows) - result["n_images"]
    if skipped:
        log.warning("%s: %d images without a valid pixel were skipped", name, skipped)
    return result


def _groups(shapes: list[tuple]) -> list[list[int]]:
    """Indices grouped by equal shape (first-seen order)."""
    groups: dict[tuple, list[int]] = {}
    for i, s in enumerate(shapes):
        groups.setdefault(tuple(s), []).append(i)
    return list(groups.values())


def _write_csv(path: Path, rows: list[dict]) -> None:
    fields = ["name", "n_valid", *METRIC_NAMES]
    if any("edge_chamfer" in r for r in rows):
        fields.append("edge_chamfer")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, restval="")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    atomic.write_text(path, buf.getvalue())


def format_table(results: Mapping[str, Mapping[str, float]]) -> str:
    """A plain-text table: one row per benchmark, lower-is-better metrics then the deltas."""
    cols = ["n_images", *METRIC_NAMES]
    if any("edge_chamfer" in r for r in results.values()):
        cols.append("edge_chamfer")
    width = max([9, *(len(n) for n in results)])
    head = f"{'benchmark':<{width}} " + " ".join(f"{c:>9}" for c in cols)
    lines = [head, "-" * len(head)]
    for bench, r in results.items():
        cells = []
        for c in cols:
            v = r.get(c, math.nan)
            cells.append(f"{int(v):>9d}" if c == "n_images" else f"{v:>9.4f}")
        lines.append(f"{bench:<{width}} " + " ".join(cells))
    return "\n".join(lines)


def evaluate(cfg: Any) -> dict[str, dict[str, float]]:
    """Run the configured benchmark(s); returns ``{benchmark: metrics}`` as in ``metrics.json``."""
    cfg = _plain(cfg)
    if not cfg.get("output_dir"):
        raise ValueError("output_dir is not set")
    output_dir = Path(cfg["output_dir"]).expanduser()
    output_dir.mkdir(parents=True, exist_ok=True)
    proto_cfg = dict(cfg.get("protocol") or {"name": "marigold"})
    protocol = get_protocol(proto_cfg["name"], proto_cfg.get("overrides"), proto_cfg.get("ransac"))
    runs = resolve_benchmarks(cfg)
    predictor = build_predictor(cfg)
    device = resolve_device(cfg.get("device"))
    results: dict[str, dict[str, float]] = {}
    for run in runs:
        chosen = predictor
        if (
            isinstance(predictor, SavedPredictions)
            and len(runs) > 1
            and (predictor.directory / run["name"]).is_dir()
        ):
            chosen = SavedPredictions(predictor.directory / run["name"])
        results[run["name"]] = evaluate_benchmark(
            run["name"],
            run["root"],
            protocol,
            chosen,
            output_dir,
            split=run["split"],
            options={**run["options"], "allow_missing": bool(cfg.get("allow_missing", False))},
            batch_size=int(cfg.get("batch_size", 1)),
            num_workers=int(cfg.get("num_workers", 0)),
            device=device,
            limit=cfg.get("limit"),
            panels=int(cfg.get("panels", 0) or 0),
            save_predictions=bool(cfg.get("save_predictions", False)),
            seed=int(cfg.get("seed", 0)),
            edge=cfg.get("edge"),
            progress=bool(cfg.get("progress", True)),
        )
        atomic.write_json(_out_path(output_dir, "metrics.json"), results)
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

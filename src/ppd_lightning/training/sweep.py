"""Hydra callback: after a multirun, one summary table (markdown + CSV) of every job's results.json."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from ppd_lightning import atomic

COLUMNS = (
    "model/abs_rel",
    "model/delta1",
    "baseline/abs_rel",
    "baseline/delta1",
    "run/global_step",
    "run/train_seconds",
)


def summarize(sweep_dir: str | Path) -> tuple[Path, Path] | None:
    sweep_dir = Path(sweep_dir)
    rows = []
    for path in sorted(sweep_dir.glob("*/results.json"), key=lambda p: (len(p.parent.name), p.parent.name)):
        r = json.loads(path.read_text())
        row: dict[str, Any] = {
            "job": path.parent.name,
            "overrides": " ".join(r.get("run", {}).get("overrides", [])),
        }
        for col in COLUMNS:
            section, key = col.split("/")
            row[col] = r.get(section, {}).get(key, "")
        rows.append(row)
    if not rows:
        return None
    header = ["job", "overrides", *COLUMNS]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header)
    writer.writeheader()
    writer.writerows(rows)
    csv_path = atomic.write_text(sweep_dir / "summary.csv", buf.getvalue())

    def fmt(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(row[h]) for h in header) + " |" for row in rows]
    md_path = atomic.write_text(sweep_dir / "summary.md", "\n".join(lines) + "\n")
    print(f"\nAblation summary ({len(rows)} runs): {md_path}\n" + "\n".join(lines))
    return md_path, csv_path


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        summarize(config.hydra.sweep.dir)

"""Loggers whose history survives a resume: the CSV file is continued (not restarted) and W&B resumes the
run id recorded in the run directory."""

from __future__ import annotations

import csv
import io
import logging
import os
import secrets
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only

from ppd_lightning import atomic

log = logging.getLogger(__name__)

WANDB_ID_FILE = "wandb_run_id"


def _step(row: dict) -> int | None:
    try:
        return int(row.get("step") or "")
    except ValueError:
        return None


class ResumableCSVLogger(Logger):
    """Metrics as ``<save_dir>/<name>/<version>/metrics.csv``, one row per logged step, built on Lightning's
    public ``Logger`` interface only (Lightning's ``CSVLogger`` deletes an existing file, and changing that
    meant overriding its private methods, which any Lightning release may rename).

    A fresh run (``resume=False``) starts the file anew. A resumed run (``train.py`` sets ``resume`` when it
    resumes from a checkpoint) keeps the rows logged before its first step and replaces the later ones,
    which the killed run logged past its checkpoint and this run logs again; a partial last row (a run
    killed mid-write) is dropped. The file is rewritten atomically at every ``save`` (Lightning calls it
    every ``flush_logs_every_n_steps`` steps, at every checkpoint and at the end), so a killed run's file
    holds at least every row up to the checkpoint it will be resumed from.
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        name: str = "csv",
        version: str = "",
        resume: bool = False,
        flush_logs_every_n_steps: int = 100,
    ):
        super().__init__()
        self._save_dir, self._name, self._version = str(save_dir), str(name), str(version)
        self.resume = bool(resume)
        self.flush_every = int(flush_logs_every_n_steps)
        self._rows: list[dict[str, Any]] = []
        self._history: list[dict[str, Any]] | None = None  # rows of the run being resumed, read lazily

    @property
    def name(self) -> str:
        return self._name

    @property
    def version(self) -> str:
        return self._version

    @property
    def save_dir(self) -> str:
        return self._save_dir

    @property
    def log_dir(self) -> str:
        return os.path.join(self._save_dir, self._name, self._version)

    @property
    def metrics_file(self) -> Path:
        return Path(self.log_dir) / "metrics.csv"

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass  # recorded in <run dir>/config.yaml and in every checkpoint

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        row = {k: (v.item() if hasattr(v, "item") else v) for k, v in metrics.items()}
        row["step"] = step if step is not None else len(self._rows)
        self._rows.append(row)
        if self.flush_every > 0 and len(self._rows) % self.flush_every == 0:
            self.save()

    def _read_history(self) -> list[dict[str, Any]]:
        if not (self.resume and self.metrics_file.is_file()):
            return []
        with open(self.metrics_file, newline="") as f:
            # a partial last row has no usable step, or more fields than the header (DictReader's None key)
            return [r for r in csv.DictReader(f) if None not in r and _step(r) is not None]

    @rank_zero_only
    def save(self) -> None:
        if not self._rows:
            return
        if self._history is None:
            first = min(int(r["step"]) for r in self._rows)
            self._history = [r for r in self._read_history() if _step(r) < first]
        rows = self._history + self._rows
        keys: dict[str, None] = {}
        for r in rows:
            keys.update(dict.fromkeys(r))
        fields = [k for k in keys if k != "step"] + ["step"]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)
        atomic.write_text(self.metrics_file, buf.getvalue())

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.save()

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        self.save()


def wandb_run_id(output_dir: str | os.PathLike, resume: bool, write: bool) -> str:
    """The W&B run id of the run in ``output_dir``: the recorded one when resuming (so W&B continues that
    run), else a new one, recorded in ``<output_dir>/wandb_run_id`` (by the process that ``write``s: rank 0).
    """
    path = Path(output_dir) / WANDB_ID_FILE
    if resume and path.is_file():
        run_id = path.read_text().strip()
        if run_id and run_id.isalnum():
            return run_id
        log.warning("%s does not hold a W&B run id (%r): starting a new W&B run", path, run_id[:40])
    run_id = secrets.token_hex(4)
    if write:
        atomic.write_text(path, run_id + "\n")
    return run_id

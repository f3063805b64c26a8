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

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from ppd_lightning import atomic

log = logging.getLogger(__name__)

WANDB_ID_FILE = "wandb_run_id"


def _step(row: dict) -> int | None:
    try:
        return int(row.get("step") or "")
    except ValueError:
        return None


class _ResumedWriter(ExperimentWriter):
    """Lightning's CSV writer, except that a resumed run keeps the rows of ``metrics.csv`` logged before
    its first step (Lightning deletes the file), and every rewrite of the file is atomic."""

    def __init__(self, log_dir: str, resume: bool):
        self._resume = resume
        self._history: list[dict[str, Any]] | None = None
        super().__init__(log_dir=log_dir)
        if resume and os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as f:
                reader = csv.DictReader(f)
                # a run killed in the middle of an append leaves a partial last row: no usable step, or
                # more fields than the header (DictReader's None key)
                self._history = [r for r in reader if None not in r and _step(r) is not None]
                self.metrics_keys = list(reader.fieldnames or [])
            if not self.metrics_keys:  # no header: nothing to keep
                self._history = None
                os.remove(self.metrics_file_path)

    def _check_log_dir_exists(self) -> None:
        if not self._resume:  # a fresh run: Lightning's behaviour (warn, delete the old metrics.csv)
            super()._check_log_dir_exists()

    def save(self) -> None:
        if self._history is not None and self.metrics:
            # rows the interrupted run logged at or after the step this run starts logging from are
            # logged again by this run: keep only the earlier ones
            first = min(int(m["step"]) for m in self.metrics)
            kept = [r for r in self._history if _step(r) < first]
            self._write_all(self.metrics_keys, kept)
            self._history = None
        super().save()

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        with open(self.metrics_file_path, newline="") as f:
            rows = list(csv.DictReader(f))
        self._write_all(fieldnames, rows)

    def _write_all(self, fieldnames: list[str], rows: list[dict[str, Any]]) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)
        atomic.write_text(self.metrics_file_path, buf.getvalue())


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` that continues ``metrics.csv`` when ``resume`` is set (``train.py`` sets it when it
    resumes from a checkpoint), and flushes at every checkpoint save, so a killed run's file holds at least
    every row up to the checkpoint it will be resumed from."""

    def __init__(self, *args, resume: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.resume = bool(resume)

    @property
    @rank_zero_experiment
    def experiment(self) -> _ResumedWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ResumedWriter(log_dir=self.log_dir, resume=self.resume)
        return self._experiment

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

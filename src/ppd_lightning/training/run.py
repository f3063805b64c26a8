"""train(cfg): the body of ``train.py``. Composes data, model, callbacks, loggers and trainer from the Hydra
config, trains (resuming with ``ckpt_path=last``), validates, and writes ``<run dir>/results.json``."""

from __future__ import annotations

import logging
import math
import time
import warnings
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from ppd_lightning import atomic
from ppd_lightning.errors import MissingFileError, is_user_error
from ppd_lightning.weights.checkpoints import dit_state

log = logging.getLogger("ppd_lightning.train")


def resolve_ckpt_path(ckpt_path: str | None, output_dir: Path) -> str | None:
    if ckpt_path in (None, "", "null"):
        return None
    if ckpt_path == "last":
        last = output_dir / "checkpoints" / "last.ckpt"
        if last.is_file():
            return str(last)
        log.warning("ckpt_path=last but %s does not exist: starting from scratch", last)
        return None
    if not Path(ckpt_path).is_file():
        raise MissingFileError(f"ckpt_path={ckpt_path}: no such checkpoint file")
    return ckpt_path


def init_dit_weights(model, source: str) -> None:
    """Start from given DiT weights (a released ppd.pth, an exported .safetensors, or one of our training
    checkpoints, whose EMA weights are taken), without optimizer state. Keys and shapes must match."""
    state = dit_state(source, use_ema=True)
    state.load_into(model.dit)
    if model.ema_dit is not None:
        model.ema_dit.load_state_dict(model.dit.state_dict())
    log.info("initialised the DiT from %s", state.name)


def instantiate(cfg: DictConfig, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate``, except that an error of ours raised by the constructor is raised as
    itself (one line, naming the key), not inside Hydra's ``InstantiationException``."""
    from hydra.errors import InstantiationException

    try:
        return hydra.utils.instantiate(cfg, **kwargs)
    except InstantiationException as e:
        if is_user_error(e.__cause__):
            raise e.__cause__ from None
        raise


def instantiate_list(cfg: DictConfig | None) -> list[Any]:
    if not cfg:
        return []
    return [instantiate(c) for _, c in cfg.items() if c is not None and "_target_" in c]


def instantiate_loggers(cfg: DictConfig | None, output_dir: Path, resume: bool) -> list[Any]:
    """The configured loggers, continuing the run's history when ``resume``: our CSV logger keeps the
    rows before the resumed step, and a W&B logger without an explicit id gets the run's recorded id
    (``<run dir>/wandb_run_id``; a new one, recorded, when not resuming)."""
    from lightning.pytorch.loggers import WandbLogger
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    from ppd_lightning.training.loggers import ResumableCSVLogger, wandb_run_id

    if not cfg:
        return []
    loggers = []
    for _, c in cfg.items():
        if c is None or "_target_" not in c:
            continue
        overrides = {}
        is_wandb = issubclass(hydra.utils.get_class(c["_target_"]), WandbLogger)
        if is_wandb and not c.get("id") and not c.get("version"):
            # only rank 0 logs to W&B (and records the id); the other ranks' id is never used
            overrides["id"] = wandb_run_id(output_dir, resume, write=rank_zero_only.rank == 0)
        logger = instantiate(c, **overrides)
        if isinstance(logger, ResumableCSVLogger):
            logger.resume = resume
        loggers.append(logger)
    return loggers


def remove_stale_temporaries(output_dir: Path, callbacks: list) -> None:
    """Delete the temporary files a killed run (kill -9, OOM) left while writing checkpoints or results
    (up to a checkpoint's size each): in the run directory and the checkpoint directories, nowhere else."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    dirs = {output_dir, output_dir / "checkpoints"}
    dirs |= {Path(cb.dirpath) for cb in callbacks if isinstance(cb, ModelCheckpoint) and cb.dirpath}
    for d in sorted(dirs):
        for path in atomic.remove_stale_temporaries(d):
            log.info("removed a stale temporary file of an interrupted run: %s", path)


def format_table(results: dict) -> str:
    rows = [("", "AbsRel (lower is better)", "delta1 (higher is better)")]
    for name in ("model", "baseline"):
        r = results.get(name) or {}
        rows.append((name, f"{r.get('abs_rel', float('nan')):.4f}", f"{r.get('delta1', float('nan')):.4f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def collect_results(metrics: dict[str, Any], val_name: str) -> dict:
    def get(prefix: str, key: str) -> float:
        v = metrics.get(f"{prefix}/{val_name}/{key}")
        return float(v) if v is not None else float("nan")

    return {
        "model": {k: get("val", k) for k in ("abs_rel", "delta1", "rmse")},
        "baseline": {k: get("val_baseline", k) for k in ("abs_rel", "delta1", "rmse")},
    }


# Warnings about things this project does on purpose, silenced by their exact message (nothing else is):
# the semantic encoder is frozen, so it sits in eval mode while the DiT trains; and Lightning 2.6's own
# pytree helper uses an isinstance check that torch >= 2.10 deprecates (not our code, nothing to act on).
INTENTIONAL_WARNINGS = (
    r"Found \d+ module\(s\) in eval mode at the start of training",
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
)


class _DropAdvertisements(logging.Filter):
    """Drops Lightning's "💡 Tip: ... try installing ..." lines (product suggestions, not about this run)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).lstrip().startswith("💡 Tip")


_ADVERTISEMENT_FILTER = _DropAdvertisements()


def quiet_intentional_warnings() -> None:
    for message in INTENTIONAL_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    # filters act on the logger a record is made at: Lightning's rank-zero helpers log at these two
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if _ADVERTISEMENT_FILTER not in logger.filters:
            logger.addFilter(_ADVERTISEMENT_FILTER)


def write_demo_image(callbacks: list, path: Path) -> Path | None:
    """Write the last validation panel (held-out scenes: image | prediction | ground truth | error) that a
    ``ValidationPanels`` callback made to ``path``; None when no such callback made one."""
    from ppd_lightning import visualize
    from ppd_lightning.training.callbacks import ValidationPanels

    for cb in callbacks:
        if isinstance(cb, ValidationPanels) and cb.last_panel is not None:
            return visualize.write_image(path, cb.last_panel)
    return None


def train(cfg: DictConfig) -> dict:
    from ppd_lightning.training.config import check_train_config
    from ppd_lightning.training.preflight import check_sizes, warn_cpu_oversubscription

    check_train_config(cfg)  # a bad key is one error naming it, before any data or model is built
    warn_cpu_oversubscription(cfg.trainer)
    quiet_intentional_warnings()
    output_dir = Path(cfg.paths.output_dir)
    L.seed_everything(cfg.seed, workers=True)
    if cfg.get("float32_matmul_precision"):
        torch.set_float32_matmul_precision(cfg.float32_matmul_precision)

    datamodule = instantiate(cfg.data, _convert_="all")  # its prepare_data makes missing shards
    model = instantiate(cfg.model)
    check_sizes(model, datamodule)  # train and val crops fit the DiT: checked before the first step
    if cfg.get("init_dit"):
        init_dit_weights(model, cfg.init_dit)
    if cfg.get("compile"):
        # in place (nn.Module.compile): parameter names, checkpoints and EMA stay as without compile
        model.dit.compile()

    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), output_dir)
    callbacks = instantiate_list(cfg.get("callbacks"))
    loggers = instantiate_loggers(cfg.get("logger"), output_dir, resume=ckpt_path is not None)
    from ppd_lightning.training.checkpoint import RESUMABLE_KEYS, AtomicCheckpointIO

    trainer: L.Trainer = instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=loggers or False,
        plugins=[AtomicCheckpointIO(required_keys=RESUMABLE_KEYS)],  # a foreign ckpt_path: CheckpointError
    )
    if trainer.is_global_zero:
        log.info("run directory: %s", output_dir)
        remove_stale_temporaries(output_dir, callbacks)
        atomic.write_text(output_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))

    started = time.time()
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    train_seconds = time.time() - started
    if not trainer.interrupted and not cfg.trainer.get("fast_dev_run"):
        # the end state, whatever the step-based checkpoint interval (collective: every rank calls it)
        trainer.save_checkpoint(
            output_dir / "checkpoints" / "last.ckpt", weights_only=False
        )  # full: resumable

    results: dict[str, Any] = {}
    if cfg.get("validate_after_fit", True) and datamodule.val_sources_cfg:
        metrics = trainer.validate(model, datamodule=datamodule, verbose=False)
        merged = {k: float(v) for d in metrics for k, v in d.items()}
        results = collect_results(merged, model.val_sets[0])
    results["run"] = {
        "global_step": int(trainer.global_step),
        "epochs": int(trainer.current_epoch),
        "train_seconds": round(train_seconds, 1),
        "skipped_steps": int(model.skipped_steps),
        "corrupt_samples": int(model.corrupt_samples),
        "parameters": model.parameter_counts(),
        "overrides": list(cfg.get("overrides") or []),
    }
    if trainer.is_global_zero:
        atomic.write_json(output_dir / "results.json", results)
        demo = write_demo_image(callbacks, output_dir / "demo.png")
        if "model" in results:
            print(
                f"\nHeld-out synthetic scenes ({model.val_sets[0]}), {results['run']['global_step']} steps, "
                f"{train_seconds / 60:.1f} min:\n{format_table(results)}\nresults: {output_dir / 'results.json'}"
                + (f"\ndemo:    {demo} (image | prediction | ground truth | error)" if demo else "")
            )
    objective = results.get("model", {}).get("abs_rel", math.nan)
    results["objective"] = objective
    return results
